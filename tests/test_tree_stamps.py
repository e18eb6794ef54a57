"""A work tree's snapshot without git when its files' stamps say nothing changed, and git
whenever they cannot say it (activities/tree_stamps.py). A real git, counted by a shim."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from activities import tree_stamps
from activities.work_trees import LOCKS, changes, snapshot


@pytest.fixture(autouse=True)
def racy_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """A short racy window keeps these tests quick; what it guards is the same."""
    monkeypatch.setattr(tree_stamps, "RACY_NS", 200_000_000)


def settled() -> None:
    """Wait until every change made so far is older than the racy window."""
    time.sleep(tree_stamps.RACY_NS / 1e9 + 0.05)


def work_tree(root: Path) -> Path:
    tree = root / "tree"
    tree.mkdir()
    subprocess.run(["git", "init", "--quiet", str(tree)], check=True)
    (tree / "a.txt").write_text("one\n")
    (tree / "sub").mkdir()
    (tree / "sub" / "b.txt").write_text("two\n")
    settled()
    return tree


def git_runs(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


async def test_a_tree_as_its_last_snapshot_left_it_runs_no_git(
    tmp_path: Path, argv_log: Path
) -> None:
    tree = work_tree(tmp_path)
    ran = len(git_runs(argv_log))
    before = await snapshot(tree, tmp_path / LOCKS)
    assert [line.split()[-2:] for line in git_runs(argv_log)[ran:]] == [
        ["add", "--all"],
        ["core.fsmonitor=false", "write-tree"],
    ]
    assert await snapshot(tree, tmp_path / LOCKS) == before
    assert (await changes(tree, before, tmp_path, Path("p.patch"))).files_changed == []
    assert len(git_runs(argv_log)) == ran + 2


async def test_a_same_size_rewrite_with_its_mtime_put_back_is_still_a_change(
    tmp_path: Path, argv_log: Path
) -> None:
    tree = work_tree(tmp_path)
    before = await snapshot(tree, tmp_path / LOCKS)
    target = tree / "sub" / "b.txt"
    old = target.stat()
    target.write_text("TWO\n")
    os.utime(target, ns=(old.st_atime_ns, old.st_mtime_ns))
    settled()  # not racy: only the ctime tells
    diff = await changes(tree, before, tmp_path, Path("p.patch"))
    assert diff.files_changed == ["sub/b.txt"]
    assert (diff.lines_added, diff.lines_removed) == (1, 1)


@pytest.mark.parametrize("change", ["create", "remove", "rename", "chmod", "mkdir"])
async def test_every_kind_of_change_is_seen(tmp_path: Path, argv_log: Path, change: str) -> None:
    tree = work_tree(tmp_path)
    before = await snapshot(tree, tmp_path / LOCKS)
    ran = len(git_runs(argv_log))
    a = tree / "a.txt"
    if change == "create":
        (tree / "new.txt").write_text("new\n")
    elif change == "remove":
        a.unlink()
    elif change == "rename":
        a.rename(tree / "c.txt")
    elif change == "chmod":
        a.chmod(0o755)
    else:
        (tree / "empty").mkdir()  # git holds no empty directory: no diff, but git decides
    diff = await changes(tree, before, tmp_path, Path("p.patch"))
    assert len(git_runs(argv_log)) >= ran + 2  # the second snapshot went to git
    expected = {
        "create": ["new.txt"],
        "remove": ["a.txt"],
        "rename": ["a.txt", "c.txt"],
        "chmod": ["a.txt"],
        "mkdir": [],
    }[change]
    assert sorted(diff.files_changed) == expected


async def test_a_change_to_the_index_alone_is_seen(tmp_path: Path, argv_log: Path) -> None:
    """A file tracked though ignored is in git's snapshot: `git add -f` changes the tree
    without touching a file of the work tree."""
    tree = work_tree(tmp_path)
    (tree / ".gitignore").write_text("*.log\n")
    (tree / "build.log").write_text("kept\n")
    settled()
    before = await snapshot(tree, tmp_path / LOCKS)
    assert await snapshot(tree, tmp_path / LOCKS) == before  # from the stamp
    subprocess.run(["git", "-C", str(tree), "add", "-f", "build.log"], check=True)
    settled()
    diff = await changes(tree, before, tmp_path, Path("p.patch"))
    assert diff.files_changed == ["build.log"]


async def test_a_commit_in_a_nested_repository_is_seen(tmp_path: Path, argv_log: Path) -> None:
    """A nested repository is a gitlink in the snapshot: its commits change the tree, and
    they live in its own `.git`, so a tree that holds one has no stamp."""
    tree = work_tree(tmp_path)
    nested = tree / "vendor"
    subprocess.run(["git", "init", "--quiet", str(nested)], check=True)
    commit = ["git", "-C", str(nested), "-c", "user.name=t", "-c", "user.email=t@t", "commit"]
    subprocess.run([*commit, "--quiet", "--allow-empty", "-m", "one"], check=True)
    settled()
    assert tree_stamps.stamp(tree) is None
    before = await snapshot(tree, tmp_path / LOCKS)
    subprocess.run([*commit, "--quiet", "--allow-empty", "-m", "two"], check=True)
    settled()
    diff = await changes(tree, before, tmp_path, Path("p.patch"))
    assert diff.files_changed == ["vendor"]


def test_no_stamp_for_a_fresh_change_a_subdirectory_or_a_large_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = work_tree(tmp_path)
    assert tree_stamps.stamp(tree) is not None
    assert tree_stamps.stamp(tree / "sub") is None  # git would snapshot the whole repository
    (tree / "a.txt").write_text("changed just now\n")
    with monkeypatch.context() as wide:
        # "Just now" however slow this machine is between the write and the stamp.
        wide.setattr(tree_stamps, "RACY_NS", 60_000_000_000)
        assert tree_stamps.stamp(tree) is None
    settled()
    assert tree_stamps.stamp(tree) is not None
    many = tree / "many"
    many.mkdir()
    for i in range(tree_stamps.MAX_ENTRIES):
        (many / str(i)).touch()
    settled()
    assert tree_stamps.stamp(tree) is None
    shutil.rmtree(many)
    settled()
    assert tree_stamps.stamp(tree) is None  # not walked again for a while
