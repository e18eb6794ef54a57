"""Scratch repositories: empty, with one empty commit on `main`, copied from one made once
in the workspaces directory. `git init` and a first commit are two git processes, ~15 ms on
the way of every run that names no directory or repository; a copy takes ~2 ms."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import uuid
from pathlib import Path

from activities.git import git

TEMPLATE = ".empty-repository"  # a dot: not a workspace (list_workspaces skips it)


async def make_empty_repository(workspaces_dir: Path, path: Path) -> None:
    """Make `path`, which must not exist, an empty repository with one empty commit."""
    template = workspaces_dir / TEMPLATE
    if not await asyncio.to_thread((template / ".git").is_dir):
        await _make_template(workspaces_dir, template)
    # Contents and modes: the times and extended attributes of a template are not its copy's.
    await asyncio.to_thread(
        shutil.copytree, template, path, symlinks=True, copy_function=shutil.copy
    )


async def _make_template(workspaces_dir: Path, template: Path) -> None:
    # Built aside and renamed into place, so a template that exists is whole; a process
    # that loses the race to make it uses the winner's.
    aside = workspaces_dir / f"{TEMPLATE}.{uuid.uuid4().hex[:8]}.tmp"
    await asyncio.to_thread(aside.mkdir, parents=True)
    try:
        # No template: git's sample hooks and description would be copied for every run.
        await git(aside, "init", "--quiet", "--initial-branch=main", "--template=")
        await git(aside, "commit", "--quiet", "--allow-empty", "-m", "pilothouse: start")
        with contextlib.suppress(OSError):
            await asyncio.to_thread(os.rename, aside, template)
    finally:
        await asyncio.to_thread(shutil.rmtree, aside, True)
