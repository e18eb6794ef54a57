"""Process groups: a step's command leads a group of its own, so stopping it stops
everything it started.

The executor heartbeats for as long as a step is handled (`heartbeats.pulse`): while its
command runs, which is also how a cancel reaches it, and while it is stopped or recorded.
A cancel, the timeout or a silence stops the whole group with SIGTERM, then SIGKILL after
a grace period. A pgid file names the running group for good (pid and start time), so an
attempt after a worker died mid-step stops the orphan it left.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from activities.heartbeats import HEARTBEAT_S

# How long a SIGKILLed group may take to be gone before we stop waiting for it.
GROUP_EXIT_S = 5.0


@contextlib.contextmanager
def children_watched_by_pidfd(loop: asyncio.AbstractEventLoop) -> Iterator[None]:
    """Have `loop`, while it runs the worker, learn of its children's ends from pidfds.
    Python 3.11 waits for each child in a thread started for it: about 0.3 ms and a thread
    for every step, and that thread's wakeups contend for the GIL with the loop. Python
    3.12 chooses pidfds on its own where the kernel has them. The watcher is process-wide
    and bound to `loop`: it goes when the block ends."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        yield
        return
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:  # a kernel before 5.3, or a sandbox that refuses it
        yield
        return
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(loop)
    asyncio.set_child_watcher(watcher)
    try:
        yield
    finally:
        # Closes it; Python 3.11's default takes over.
        asyncio.set_child_watcher(asyncio.ThreadedChildWatcher())


@dataclass
class Heard:
    """When a streamed command last printed anything."""

    at: float = field(default_factory=time.monotonic)


async def supervise(
    process: asyncio.subprocess.Process,
    pgid_file: Path,
    timeout_seconds: float | None,
    kill_grace_seconds: float,
    heard: Heard | None = None,
    idle_seconds: float | None = None,
) -> tuple[int, str]:
    """Wait until the leader exits; stop the group on a cancel, the timeout, or (with
    `heard`) a silence of `idle_seconds`. The caller heartbeats meanwhile (`pulse`)."""
    deadline = time.monotonic() + timeout_seconds if timeout_seconds else None

    def quiet_until() -> float | None:
        if heard is None or idle_seconds is None:
            return None
        return heard.at + idle_seconds

    try:
        while True:
            ends = [t for t in (deadline, quiet_until()) if t is not None]
            wait = min([HEARTBEAT_S, *(t - time.monotonic() for t in ends)])
            try:
                code = await asyncio.wait_for(process.wait(), max(wait, 0.01))
                return code, "succeeded" if code == 0 else "failed"
            except TimeoutError:
                now = time.monotonic()
                quiet = quiet_until()
                if deadline is not None and now >= deadline:
                    ended = "timed_out"
                elif quiet is not None and now >= quiet:
                    ended = "idle"
                else:
                    continue
                await asyncio.shield(stop_group(process, kill_grace_seconds))
                return await process.wait(), ended
    except asyncio.CancelledError:
        await asyncio.shield(stop_group(process, kill_grace_seconds))
        raise
    finally:
        # On the loop, like `write_pgid_file`: cheaper than a thread's round trip.
        pgid_file.unlink(missing_ok=True)  # noqa: ASYNC240


async def stop_group(process: asyncio.subprocess.Process, grace_seconds: float) -> None:
    """SIGTERM the process group, then SIGKILL it if it is still there after the grace."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), grace_seconds)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
    # The leader is gone; children that ignored SIGTERM may linger in the group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    # A SIGKILL is delivered, not done: wait until nothing of the group runs, so "stopped"
    # is true when we say it (a cancel waiting for completion relies on it).
    await asyncio.to_thread(wait_group_gone, process.pid, GROUP_EXIT_S)


def wait_group_gone(pgid: int, seconds: float) -> None:
    """Poll /proc until no process of the group runs, for at most `seconds` (blocking)."""
    deadline = time.monotonic() + seconds
    while group_running(pgid) and time.monotonic() < deadline:
        time.sleep(0.02)


def group_running(pgid: int) -> bool:
    """Whether a process of the group still runs; zombies do not count."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue  # gone while we looked
        if group == str(pgid) and state not in ("Z", "X"):
            return True
    return False


def start_time(pid: int) -> str:
    """The kernel's start time of a process: with the pid, it names one process for good."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):  # gone already: /proc answers ENOENT or ESRCH
        return "?"


def write_pgid_file(pgid_file: Path, pgid: int) -> None:
    """Name the group as `stop_orphan` reads it back. It blocks, briefly: a few bytes to a
    local file cost less on the event loop than a thread's round trip (~0.2 ms a step in a
    busy worker)."""
    pgid_file.write_text(f"{pgid} {start_time(pgid)}")


def stop_orphan(pgid_file: Path) -> None:
    """Kill the process group an earlier attempt left behind, if it is still that group."""
    try:
        pid_text, started = pgid_file.read_text().split()
        pgid = int(pid_text)
    except (FileNotFoundError, ValueError):
        return
    if start_time(pgid) == started:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        # The next attempt works in the same directory: the orphan must be gone first.
        wait_group_gone(pgid, GROUP_EXIT_S)
    pgid_file.unlink(missing_ok=True)
