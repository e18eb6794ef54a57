"""Whether a work tree is as a snapshot left it, told from its files' stamps, without git.

A step that reports its diff snapshots its work tree before and after it runs: two git
processes each time, about as long as a short step. The stamp of a tree (every entry's
path, size, mode, inode, mtime and ctime, `.git` left out) tells that nothing in it changed
since: any write, rename, chmod, creation or removal changes a ctime or the set of paths,
and a ctime cannot be set back. So a tree whose stamp is the one its last snapshot had is
that snapshot's tree, and a step that changed nothing runs no git at all.

Timestamps are coarse: the kernel's clock ticks every few milliseconds, and some file
systems keep whole seconds (two on FAT), so a write in the same tick as the one a stamp saw
may leave the same ctime. A tree with an entry changed within `RACY_NS` of its stamp has no
stamp (git's "racy" files, the same problem). A tree of more than `MAX_ENTRIES` entries, or
one that is not the top of its git work tree (git would snapshot more than its files), has
none either: git alone says what it holds. The stamp reads the work tree, not git's index:
a step that only changes the index (`git rm --cached` of an ignored file) is not seen.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import OrderedDict
from pathlib import Path

RACY_NS = 2_000_000_000
MAX_ENTRIES = 2000
# git prunes unreachable objects two weeks old at the earliest: a tree kept here is used
# long before.
KEPT_S = 3600.0
KEPT_TREES = 256

# By resolved path: the stamp of the tree's last snapshot, its git tree, when it was taken.
_trees: OrderedDict[Path, tuple[str, str, float]] = OrderedDict()


def stamp(root: Path) -> str | None:
    """The stamp of the work tree at `root` (resolved), or None (blocking: run it in a
    thread)."""
    if not (root / ".git").exists():
        return None
    settled_before = time.time_ns() - RACY_NS
    entries: list[str] = []
    pending = [root]
    while pending:
        directory = pending.pop()
        try:
            with os.scandir(directory) as found:
                for entry in found:
                    if directory == root and entry.name == ".git":
                        continue
                    info = entry.stat(follow_symlinks=False)
                    if max(info.st_ctime_ns, info.st_mtime_ns) >= settled_before:
                        return None
                    if len(entries) == MAX_ENTRIES:
                        return None
                    entries.append(
                        f"{entry.path}\0{info.st_size}\0{info.st_mode}\0{info.st_ino}"
                        f"\0{info.st_mtime_ns}\0{info.st_ctime_ns}"
                    )
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(Path(entry.path))
        except OSError:  # changing under us: git will say what it holds
            return None
    entries.sort()
    return hashlib.blake2b("\n".join(entries).encode(), digest_size=20).hexdigest()


def known_tree(root: Path, tree_stamp: str | None) -> str | None:
    """The git tree of `root` when its last snapshot had this stamp, still fresh."""
    kept = _trees.get(root)
    if tree_stamp is None or kept is None or kept[0] != tree_stamp:
        return None
    if time.monotonic() - kept[2] > KEPT_S:
        return None
    return kept[1]


def keep(root: Path, tree_stamp: str | None, tree: str) -> None:
    """Remember `tree` as what `root` held when it had this stamp."""
    if tree_stamp is None:
        _trees.pop(root, None)
        return
    _trees[root] = (tree_stamp, tree, time.monotonic())
    _trees.move_to_end(root)
    while len(_trees) > KEPT_TREES:
        _trees.popitem(last=False)
