"""Git, as the workspaces run it: configured so nothing a work tree or the machine names
runs or sees a credential, in its own process group, heartbeating inside an activity.

A failure is a `WorkspaceError`, not retried: what git refused it refuses again. Its text
never carries a URL's user info or the token handed over (git may echo a URL it was given).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from collections.abc import Mapping
from pathlib import Path

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.heartbeats import HEARTBEAT_S
from store import credentials

GIT = (
    "git",
    "-c",
    "user.name=Pilothouse",
    "-c",
    "user.email=pilothouse@localhost",
    # Only transports that move data: never `ext::`, which runs a command.
    "-c",
    "protocol.ext.allow=never",
    # Nothing a work tree's own config names runs when we commit, check out or push.
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "core.fsmonitor=false",
)
# Talking to a remote: no credential helper of the machine's may see (or store) the token.
REMOTE = ("-c", "credential.helper=")
# Writing a work tree is most of a clone's time: one process per core writes files.
CHECKOUT = ("-c", f"checkout.workers={os.cpu_count() or 1}")
# No diff driver or text filter a work tree's config names runs either.
DIFF = ("diff", "--no-renames", "--no-ext-diff", "--no-textconv")


def workspace_error(message: str) -> ApplicationError:
    return ApplicationError(message, type="WorkspaceError", non_retryable=True)


async def run_git(
    cwd: Path, args: tuple[str, ...], env: Mapping[str, str] | None, stdin: bytes | None
) -> tuple[int, str, str]:
    """One git command, its exit status left to the caller. It heartbeats while it runs
    inside an activity (a fetch can be long), and a canceled activity kills it."""
    process = await asyncio.create_subprocess_exec(
        *GIT,
        *args,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        # Its own group, so a cancel also ends what git started (a remote helper, ssh).
        start_new_session=True,
    )
    talking = asyncio.ensure_future(process.communicate(stdin))
    try:
        while not (await asyncio.wait({talking}, timeout=HEARTBEAT_S))[0]:
            # A local activity has no heartbeat: its cancel comes from the workflow.
            if activity.in_activity() and not activity.info().is_local:
                activity.heartbeat()
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await asyncio.shield(talking)
        raise
    out, err = talking.result()
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def git(
    cwd: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    secret: str | None = None,
    stdin: bytes | None = None,
) -> str:
    """Runs git; a failure is a WorkspaceError whose text has no URL user info and no
    `secret` in it (git may echo a URL it was given)."""
    code, out, err = await run_git(cwd, args, env, stdin)
    if code != 0:
        said = credentials.redact(err.strip()[-500:], secret)
        raise workspace_error(f"git {args[0]} failed in {cwd}: {said}")
    return out


async def config_value(path: Path, key: str) -> str | None:
    code, out, _ = await run_git(path, ("config", "--get", key), None, None)
    return out.strip() if code == 0 else None


def refuse_embedded_password(url: str) -> None:
    if re.match(r"(?i)[a-z][a-z0-9+.-]*://[^/@\s]*:[^/@\s]*@", url):
        raise workspace_error(
            "a repository URL must not carry a password; pass the token as a credential"
        )
