"""Benchmark: a task's clone from a warm mirror (`workspaces.clone`, called directly, no
Temporal) beside a plain `git clone` of the same origin, for a repository of about 5,000
small files; then the raw git variants the activity was chosen from, to show where the time
goes. Target: ratio at or below 0.5.

Run: `.venv/bin/python -m bench.workspaces [--files 5000] [--rounds 9] [--packed]`.
`--packed` repacks the origin first (as a served repository is); by default its objects are
loose, as a repository just committed is, and a local `git clone` then hardlinks each one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from activities.mirrors import mirror_path
from activities.workspaces import CloneIn, Workspaces
from bench.jobs import peak_kib
from settings import Settings
from store.engine import Database

DIRS = 50


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def make_origin(root: Path, files: int, packed: bool) -> Path:
    work = root / "origin"
    for n in range(files):
        folder = work / f"pkg{n % DIRS:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"module_{n}.py").write_text(f"VALUE = {n}\n\ndef f():\n    return VALUE\n")
    git(work, "init", "--quiet", "--initial-branch=main")
    git(work, "add", "--all")
    git(work, "-c", "user.name=b", "-c", "user.email=b@b", "commit", "--quiet", "-m", "files")
    if packed:
        git(work, "gc", "--quiet")
    return work


Step = Callable[[Path], Awaitable[None]]


async def interleaved(steps: dict[str, Step], root: Path, rounds: int) -> dict[str, float]:
    """Median milliseconds of each step, run in turn within each round (the disk here is
    shared and its speed drifts: each round meets the same weather), after a warm-up round."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for n in range(rounds + 1):
        for name, step in steps.items():
            target = root / "target"
            os.sync()  # the last step's writes and deletions are not paid by this one
            start = time.perf_counter()
            await step(target)
            elapsed = (time.perf_counter() - start) * 1000
            shutil.rmtree(target, ignore_errors=True)
            if n:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


def raw(cwd: Path | None, *args: str) -> Step:
    async def step(target: Path) -> None:
        git(cwd or target, *[str(target) if a == "{target}" else a for a in args])

    return step


async def main(files: int, rounds: int, packed: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-workspaces-") as tmp:
        root = Path(tmp)
        origin = make_origin(root, files, packed)
        settings = Settings(data_dir=root / "data", _env_file=None)
        db = Database(settings.db_url)  # never opened: the clones carry no credential
        workspaces = Workspaces(db, settings)
        url = str(origin)
        mirror = mirror_path(settings, url)
        owner = settings.workspaces_dir / "bench"

        async def ours(target: Path) -> None:
            await workspaces.clone(CloneIn(owner_id="bench", repo_url=url, branch="pilothouse/b"))
            owner.rename(target)

        def split(workers: int) -> Step:
            async def step(target: Path) -> None:
                git(root, "clone", "--quiet", "--no-checkout", str(mirror), str(target))
                git(
                    target,
                    "-c",
                    f"checkout.workers={workers}",
                    "checkout",
                    "--quiet",
                    "-b",
                    "x",
                    "main",
                )

            return step

        await ours(root / "warm")  # makes the mirror
        cpus = os.cpu_count() or 1
        steps: dict[str, Step] = {
            "plain `git clone <path>`": raw(root, "clone", "--quiet", url, "{target}"),
            "plain `git clone file://<path>`": raw(
                root, "clone", "--quiet", f"file://{url}", "{target}"
            ),
            "workspaces.clone, warm mirror": ours,
            "mirror fetch, nothing new": raw(mirror, "fetch", "--quiet", "origin"),
            "clone --local (hardlinks) + checkout": raw(
                root, "clone", "--quiet", str(mirror), "{target}"
            ),
            "clone --shared (alternates) + checkout": raw(
                root, "clone", "--quiet", "--shared", str(mirror), "{target}"
            ),
            "clone --no-checkout only": raw(
                root, "clone", "--quiet", "--no-checkout", str(mirror), "{target}"
            ),
            **{
                f"clone --no-checkout + checkout, {w} worker{'s' if w > 1 else ''}": split(w)
                for w in sorted({1, cpus, 2 * cpus, 4 * cpus})
            },
        }
        ms = await interleaved(steps, root, rounds)
        plain, plain_file, activity = list(ms.values())[:3]
        print(
            f"origin: {files:,} files in {DIRS} directories, "
            f"{'packed' if packed else 'loose objects'}; median of {rounds} interleaved rounds, {cpus} cores"
        )
        for name, value in ms.items():
            print(f"  {name:48} {value:7.1f} ms")
        print(
            f"ratio workspaces.clone / plain clone: {activity / plain:4.2f}x (path), "
            f"{activity / plain_file:4.2f}x (file://)   (target ≤ 0.5x)"
        )
        print(f"peak memory  bench {peak_kib(os.getpid()) / 1024:6.1f} MiB")
        await db.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--packed", action="store_true", help="repack the origin first")
    args = parser.parse_args()
    asyncio.run(main(args.files, args.rounds, args.packed))
