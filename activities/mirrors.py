"""A bare mirror per repository in the data directory, and a task's clone made from it.

The mirror is fetched when a task starts, under a file lock so two tasks never fetch one
mirror at once, and a clone of it is a local one (its pack files hardlinked, nothing
copied or sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

from activities.file_locks import locked
from activities.git import REMOTE, git, run_git, workspace_error
from settings import Settings
from store import credentials


def mirror_path(settings: Settings, url: str) -> Path:
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    return settings.mirrors_dir / f"{key}.git"


async def clone_from_mirror(
    settings: Settings, url: str, token: str | None, target_branch: str | None, aside: Path
) -> tuple[str, str]:
    """A clone of the repository's mirror at `aside`, not checked out, its base branch and
    commit (returned) kept in its config. None for `target_branch`: the remote's default."""
    async with _mirror(settings, url, token, target_branch is None) as mirror:
        base_branch = (
            target_branch or (await git(mirror, "symbolic-ref", "--short", "HEAD")).strip()
        )
        code, out, _ = await run_git(
            mirror,
            ("rev-parse", "--verify", "--quiet", f"refs/heads/{base_branch}^{{commit}}"),
            None,
            None,
        )
        if code != 0:
            shown = credentials.redact(url, token)
            raise workspace_error(f"branch {base_branch!r} does not exist in {shown}")
        base_commit = out.strip()
        # A local clone: the mirror's packs are hardlinked. No checkout yet, so the
        # lock is held for milliseconds only.
        await git(
            aside.parent,
            "clone",
            "--quiet",
            "--local",
            "--no-checkout",
            "--config",
            f"pilothouse.baseBranch={base_branch}",
            "--config",
            f"pilothouse.baseCommit={base_commit}",
            "--",
            str(mirror),
            str(aside),
        )
    return base_branch, base_commit


@contextlib.asynccontextmanager
async def _mirror(
    settings: Settings, url: str, token: str | None, want_head: bool
) -> AsyncIterator[Path]:
    """The repository's bare mirror, made or fetched now, held locked while in use."""
    mirror = mirror_path(settings, url)
    mirrors, key = mirror.parent, mirror.name.removesuffix(".git")
    await asyncio.to_thread(mirrors.mkdir, parents=True, exist_ok=True)
    env = credentials.git_env(settings.data_dir, token)
    async with locked(mirrors / f"{key}.lock"):
        if await asyncio.to_thread((mirror / "HEAD").is_file):
            await git(
                mirror, *REMOTE, "fetch", "--quiet", "--prune", "origin", env=env, secret=token
            )
            if want_head:  # the remote's default branch may have changed since
                said = await git(
                    mirror,
                    *REMOTE,
                    "ls-remote",
                    "--symref",
                    "origin",
                    "HEAD",
                    env=env,
                    secret=token,
                )
                head = re.match(r"ref: (refs/heads/\S+)\tHEAD", said)
                if head:
                    await git(mirror, "symbolic-ref", "HEAD", head.group(1))
        else:
            aside = mirrors / f"{key}.git.tmp"  # ours alone: the lock is held
            await asyncio.to_thread(shutil.rmtree, aside, True)
            # --no-local: a local origin is read as a pack, not as hardlinked loose files.
            await git(
                mirrors,
                *REMOTE,
                "clone",
                "--quiet",
                "--bare",
                "--no-local",
                "--",
                url,
                str(aside),
                env=env,
                secret=token,
            )
            await git(aside, "config", "remote.origin.fetch", "+refs/heads/*:refs/heads/*")
            await git(aside, "config", "--add", "remote.origin.fetch", "+refs/tags/*:refs/tags/*")
            await asyncio.to_thread(os.rename, aside, mirror)
        yield mirror
