"""Whether a work tree is as a snapshot left it, told from its files' stamps, without git.

A step that reports its diff snapshots its work tree before and after it runs: two git
processes each time, about as long as a short step. The stamp of a tree (every entry's
path, size, mode, inode, mtime and ctime, `.git` left out) tells that nothing in it changed
since: any write, rename, chmod, creation or removal changes a ctime or the set of paths,
and a ctime cannot be set back. What git adds besides the files is its index (a file
tracked though ignored, or untracked though present) and `info/exclude`; git replaces the
index by a rename, so their inode, size and times are kept with the stamp too. A tree whose
stamp is the one its last snapshot had is that snapshot's tree, and a step that changed
nothing runs no git at all.

Timestamps are coarse: the kernel's clock ticks every few milliseconds, and some file
systems keep whole seconds (two on FAT), so a write in the same tick as the one a stamp saw
may leave the same ctime. A tree with an entry changed within `RACY_NS` of its stamp has no
stamp (git's "racy" files, the same problem). Nor has a tree of more than `MAX_ENTRIES`
entries (for an hour, without walking it again), one that is not the top of its own git
directory (git would snapshot more than its files), or one holding another repository (a
submodule's commits live outside its files): git alone says what they hold.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RACY_NS = 2_000_000_000
# Reading an entry's stamp costs ~8 µs: a tree found larger is left to git for `KEPT_S`.
MAX_ENTRIES = 1000
# git's gc prunes unreachable trees two weeks old; one pruned sooner (`git prune`) fails the
# step's diff, which then runs again.
KEPT_S = 3600.0
KEPT_TREES = 256
GIT_STATE = ("index", "info/exclude")


@dataclass(frozen=True)
class Stamp:
    files: str  # the work tree's entries
    git: str  # git's index and excludes


# By resolved path: the stamp of the tree's last snapshot, its git tree, when it was taken.
_trees: OrderedDict[Path, tuple[Stamp, str, float]] = OrderedDict()
# By resolved path: when the tree was found to have more than MAX_ENTRIES entries.
_large: OrderedDict[Path, float] = OrderedDict()


def stamp(root: Path) -> Stamp | None:
    """The stamp of the work tree at `root` (resolved), or None (blocking: run it in a
    thread)."""
    if not (root / ".git").is_dir():
        return None
    found_large = _large.get(root)
    if found_large is not None and time.monotonic() - found_large < KEPT_S:
        return None
    settled_before = time.time_ns() - RACY_NS
    entries: list[str] = []
    pending = [root]
    try:
        while pending:
            directory = pending.pop()
            with os.scandir(directory) as found:
                for entry in found:
                    if entry.name == ".git":
                        if directory == root:
                            continue
                        return None  # a nested repository or a submodule
                    info = entry.stat(follow_symlinks=False)
                    if max(info.st_ctime_ns, info.st_mtime_ns) >= settled_before:
                        return None
                    if len(entries) == MAX_ENTRIES:
                        _remember(_large, root, time.monotonic())
                        return None
                    entries.append(_line(entry.path, info))
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(Path(entry.path))
        git = [
            _line(str(p), p.stat()) for p in (root / ".git" / n for n in GIT_STATE) if p.exists()
        ]
    except OSError:  # changing under us: git will say what it holds
        return None
    return Stamp(files=_digest(sorted(entries)), git=_digest(git))


def _digest(lines: list[str]) -> str:
    return hashlib.blake2b("\n".join(lines).encode(), digest_size=20).hexdigest()


def _line(path: str, info: os.stat_result) -> str:
    return (
        f"{path}\0{info.st_size}\0{info.st_mode}\0{info.st_ino}"
        f"\0{info.st_mtime_ns}\0{info.st_ctime_ns}"
    )


def known_tree(root: Path, tree_stamp: Stamp | None) -> str | None:
    """The git tree of `root` when its last snapshot had this stamp, still fresh."""
    kept = _trees.get(root)
    if tree_stamp is None or kept is None or kept[0] != tree_stamp:
        return None
    if time.monotonic() - kept[2] > KEPT_S:
        return None
    _trees.move_to_end(root)
    return kept[1]


def keep(root: Path, before: Stamp | None, after: Stamp | None, tree: str) -> None:
    """Remember `tree`, read by git between the stamps `before` and `after`, as what `root`
    holds while its stamp is `after`: git's own snapshot may rewrite its index, and a tree
    whose files changed meanwhile is not kept."""
    if before is None or after is None or before.files != after.files:
        _trees.pop(root, None)
        return
    _remember(_trees, root, (after, tree, time.monotonic()))


def _remember(kept: OrderedDict[Path, Any], root: Path, value: Any) -> None:
    kept[root] = value
    kept.move_to_end(root)
    while len(kept) > KEPT_TREES:
        kept.popitem(last=False)
