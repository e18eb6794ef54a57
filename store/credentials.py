"""Repository credentials: where a token comes from, how git gets it, and how it stays out
of what we say.

Workflow inputs carry a `CredentialRef` (a task id or a key name), never the token: a
workflow's history can be read in the Temporal UI. The activity that talks to a remote
resolves the reference (the task's `credential` column or a registered key, both
encrypted at rest) and hands the token to git through `GIT_ASKPASS` and the environment,
so it is in no URL, argv or file. Any text that may have met a token (git's stderr, an HTTP
error body) goes through `redact` before it reaches an exception, a log or an event.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Literal

from pydantic import BaseModel
from temporalio.exceptions import ApplicationError

from store.engine import Database
from store.models import Key, Task
from store.secrets import Secrets, SecretUnreadable

ASKPASS_FILE = "git-askpass.sh"
# git calls GIT_ASKPASS with its prompt as the only argument: "Username for 'https://…': "
# or "Password for 'https://x-access-token@…': ". GitHub takes any user name with a token.
ASKPASS_SCRIPT = """#!/bin/sh
# Written by Pilothouse: answers git's credential prompts from its environment.
case "$1" in
  Username*) printf '%s\\n' "${PILOTHOUSE_GIT_USERNAME:-x-access-token}" ;;
  *) [ -n "$PILOTHOUSE_GIT_PASSWORD" ] || exit 1
     printf '%s\\n' "$PILOTHOUSE_GIT_PASSWORD" ;;
esac
"""
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s'\"]+@")


class CredentialRef(BaseModel):
    """What a workflow input carries instead of a secret."""

    kind: Literal["task", "key"]
    id: str  # the task id (Task.credential) or the key name (Key.token)


def _missing(message: str) -> ApplicationError:
    return ApplicationError(message, type="CredentialMissing", non_retryable=True)


async def resolve(db: Database, secrets: Secrets, ref: CredentialRef | None) -> str | None:
    """The clear token a reference names, or None when there is none to use."""
    if ref is None:
        return None
    async with db.session() as session:
        if ref.kind == "key":
            key = await session.get(Key, ref.id)
            if key is None:
                raise _missing(f"no key named {ref.id!r} is registered")
            stored: str | None = key.token
        else:
            task = await session.get(Task, ref.id)
            if task is None:
                raise _missing(f"no task {ref.id!r} to take a credential from")
            stored = task.credential
    if stored is None:
        return None
    try:
        return secrets.decrypt(stored)
    except SecretUnreadable:
        raise _missing(
            f"the credential of {ref.kind} {ref.id!r} does not decrypt with this secret key"
        ) from None


def askpass(data_dir: Path) -> Path:
    """The askpass script in the data directory (mode 0700), written on first use. It is
    replaced atomically so a git starting meanwhile never runs half a script."""
    path = data_dir.resolve() / ASKPASS_FILE
    try:
        if path.read_text() == ASKPASS_SCRIPT and os.access(path, os.X_OK):
            return path
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{ASKPASS_FILE}.{uuid.uuid4().hex[:8]}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700)
    with os.fdopen(fd, "w") as f:
        f.write(ASKPASS_SCRIPT)
    os.replace(temporary, path)
    return path


def git_env(data_dir: Path, token: str | None) -> dict[str, str]:
    """The environment for a git command that talks to a remote: the process's own, plus
    the askpass script and the token. Never a terminal prompt, which would hang a worker."""
    env = dict(os.environ)
    env.update(GIT_ASKPASS=str(askpass(data_dir)), GIT_TERMINAL_PROMPT="0")
    # ssh remotes: no host-key or passphrase question either.
    env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
    env.pop("PILOTHOUSE_GIT_PASSWORD", None)
    if token:
        env["PILOTHOUSE_GIT_PASSWORD"] = token
    return env


def redact(text: str, *secrets: str | None) -> str:
    """`text` with URL user info removed and every given secret masked."""
    text = _USERINFO.sub(r"\1", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
