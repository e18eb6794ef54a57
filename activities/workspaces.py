"""Workspaces: the git work tree a resource's steps run in, and what they changed there.

A run works in a directory the caller names (a git work tree), in a clone of a repository,
or in a scratch directory made a repository here. What a step changed is the difference
between two snapshots of the work tree (git trees, written without a commit), taken by the
step executor before and after the command; the patch is kept with the run's artifacts.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from pydantic import BaseModel, Field
from temporalio import activity
from temporalio.exceptions import ApplicationError

GIT = (
    "git",
    "-c",
    "user.name=Pilothouse",
    "-c",
    "user.email=pilothouse@localhost",
    # Only transports that move data: never `ext::`, which runs a command.
    "-c",
    "protocol.ext.allow=never",
)
PATCH_EXCERPT_BYTES = 8 * 1024


class WorkspaceIn(BaseModel):
    resource_id: str
    workdir: str | None = None
    repository: str | None = None


class Workspace(BaseModel):
    path: str


class Diff(BaseModel):
    patch_path: str | None = Field(None, description="Relative to the artifacts directory")
    patch_excerpt: str = Field("", description="The patch's start; the whole is in the file")
    files_changed: list[str] = Field(default_factory=list)
    lines_added: int = 0
    lines_removed: int = 0


async def git(cwd: Path, *args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        *GIT,
        *args,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise ApplicationError(
            f"git {args[0]} failed in {cwd}: {err.decode(errors='replace').strip()[-500:]}",
            type="WorkspaceError",
            non_retryable=True,
        )
    return out.decode(errors="replace")


class Workspaces:
    def __init__(self, data_dir: Path, artifacts_dir: Path) -> None:
        self.data_dir = data_dir
        self.artifacts_dir = artifacts_dir

    @activity.defn(name="workspaces.prepare")
    async def prepare(self, w: WorkspaceIn) -> Workspace:
        if w.workdir:
            path = Path(w.workdir)
            if not await asyncio.to_thread(path.is_dir):
                raise ApplicationError(
                    f"workdir {w.workdir} is not a directory",
                    type="WorkspaceError",
                    non_retryable=True,
                )
            await git(path, "rev-parse", "--is-inside-work-tree")
            return Workspace(path=str(path))
        path = self.data_dir.resolve() / "workspaces" / w.resource_id
        if await asyncio.to_thread((path / ".git").is_dir):
            return Workspace(path=str(path))  # a retried attempt: it was made already
        await asyncio.to_thread(path.mkdir, parents=True, exist_ok=True)
        if w.repository:
            await git(path.parent, "clone", "--quiet", "--", w.repository, str(path))
        else:
            await git(path, "init", "--quiet")
            await git(path, "commit", "--quiet", "--allow-empty", "-m", "pilothouse: start")
        return Workspace(path=str(path))


async def snapshot(path: Path) -> str:
    """The work tree as it is, as a git tree id. Touches no branch and no commit."""
    await git(path, "add", "--all")
    return (await git(path, "write-tree")).strip()


async def changes(path: Path, before: str, artifacts: Path, patch_file: Path) -> Diff:
    """What changed in the work tree since `before`; the patch goes to `artifacts/patch_file`."""
    after = await snapshot(path)
    numstat = await git(path, "diff", "--numstat", "--no-renames", before, after)
    files, added, removed = [], 0, 0
    for line in numstat.splitlines():
        plus, minus, name = line.split("\t", 2)
        files.append(name)
        # Binary files count as changed, with no lines.
        added += int(plus) if plus.isdigit() else 0
        removed += int(minus) if minus.isdigit() else 0
    if not files:
        return Diff()
    patch = await git(path, "diff", "--no-renames", before, after)
    target = artifacts / patch_file
    await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread(target.write_text, patch)
    return Diff(
        patch_path=str(patch_file),
        patch_excerpt=patch[:PATCH_EXCERPT_BYTES],
        files_changed=files,
        lines_added=added,
        lines_removed=removed,
    )
