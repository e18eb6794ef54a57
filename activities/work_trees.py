"""What a work tree changed, and putting one at a commit or a patch.

What a step changed is the difference between two snapshots of the work tree (git trees,
written without a commit); what a task changed is its work tree against the commit it
started from (`summary`).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import uuid
from pathlib import Path

from pydantic import BaseModel, Field

from activities import tree_stamps
from activities.file_locks import locked
from activities.git import CHECKOUT, DIFF, git, run_git, workspace_error

PATCH_EXCERPT_BYTES = 8 * 1024
# Under the artifacts directory: the snapshot locks of work trees.
LOCKS = ".locks"


class Diff(BaseModel):
    patch_path: str | None = Field(None, description="Relative to the artifacts directory")
    patch_excerpt: str = Field("", description="The patch's start; the whole is in the file")
    files_changed: list[str] = Field(default_factory=list)
    lines_added: int = 0
    lines_removed: int = 0


class ChangesSummary(BaseModel):
    files_changed: int = 0
    insertions: int = 0
    deletions: int = 0


async def snapshot(path: Path, locks: Path) -> str:
    """The work tree as it is, as a git tree id. Touches no branch and no commit. Steps
    that run at once in one work tree (a parallel tier's phases) take turns: git's index
    has one lock. Ours lives in `locks` (a directory of our data), not in a user's tree.
    A tree whose files' stamps are those of its last snapshot is that snapshot's tree
    (`tree_stamps`), with no git run."""
    root = await asyncio.to_thread(path.resolve)
    name = hashlib.sha256(str(root).encode()).hexdigest()[:24]
    await asyncio.to_thread(locks.mkdir, parents=True, exist_ok=True)
    async with locked(locks / f"snapshot-{name}.lock"):
        # Taken first: a change while git reads the tree makes it a stamp never seen again.
        before = await asyncio.to_thread(tree_stamps.stamp, root)
        tree = tree_stamps.known_tree(root, before)
        if tree is None:
            await git(path, "add", "--all")
            tree = (await git(path, "write-tree")).strip()
            # Without a first stamp nothing is kept: a second walk would be wasted.
            after = await asyncio.to_thread(tree_stamps.stamp, root) if before else None
            tree_stamps.keep(root, before, after, tree)
        return tree


def _numstat(text: str) -> tuple[list[str], int, int]:
    files, added, removed = [], 0, 0
    for line in text.splitlines():
        plus, minus, name = line.split("\t", 2)
        files.append(name)
        # Binary files count as changed, with no lines.
        added += int(plus) if plus.isdigit() else 0
        removed += int(minus) if minus.isdigit() else 0
    return files, added, removed


async def changes(path: Path, before: str, artifacts: Path, patch_file: Path) -> Diff:
    """What changed in the work tree since `before`; the patch goes to `artifacts/patch_file`."""
    after = await snapshot(path, artifacts / LOCKS)
    if after == before:
        return Diff()
    files, added, removed = _numstat(await git(path, *DIFF, "--numstat", before, after))
    if not files:
        return Diff()
    patch = await git(path, *DIFF, before, after)
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


async def summary(path: Path, base: str) -> ChangesSummary:
    """The work tree (committed, staged, unstaged and untracked) against `base`. Staged
    through a copy of the index, so the work tree's own index is left as it is."""
    git_dir = path / (await git(path, "rev-parse", "--git-dir")).strip()
    index = git_dir / f"pilothouse-summary-{uuid.uuid4().hex[:8]}.index"
    if await asyncio.to_thread((git_dir / "index").is_file):
        await asyncio.to_thread(shutil.copyfile, git_dir / "index", index)
    env = {**os.environ, "GIT_INDEX_FILE": str(index)}
    try:
        await git(path, "add", "--all", env=env)
        tree = (await git(path, "write-tree", env=env)).strip()
    finally:
        await asyncio.to_thread(index.unlink, True)
    files, added, removed = _numstat(await git(path, *DIFF, "--numstat", base, tree))
    return ChangesSummary(files_changed=len(files), insertions=added, deletions=removed)


async def checkout(path: Path, commit: str) -> None:
    """The work tree at `commit`, detached; uncommitted changes that would be lost refuse."""
    if commit.startswith("-"):
        raise workspace_error(f"{commit!r} is not a commit")
    await git(path, *CHECKOUT, "checkout", "--quiet", "--detach", commit, "--")


async def apply_patch(path: Path, patch: str) -> None:
    """`git apply`: the whole patch or, when any part does not apply, nothing."""
    if not patch.strip():
        return
    code, _, err = await run_git(path, ("apply", "--whitespace=nowarn", "-"), None, patch.encode())
    if code != 0:
        raise workspace_error(f"the patch does not apply in {path}: {err.strip()[-500:]}")
