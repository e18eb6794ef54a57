"""Benchmark: `pilothouse up` from start to `/readyz` 200, cold and warm, beside the raw
Temporal dev server's own start, plus the resident memory of the three processes when idle.

Run: `make bench` or `python -m bench.startup [--rounds N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from temporalio.client import Client

from settings import Settings
from stack import dev_server_argv
from tests.conftest import free_port

IDLE_S = 5


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def command_name(pid: int) -> str:
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    text = " ".join(a.decode() for a in argv if a)
    if "start-dev" in text:
        return "temporal"
    return text.split()[-1] if text else "?"


async def raw_dev_server(data_dir: Path) -> float:
    """Seconds from spawn until the bare dev server answers a health check."""
    port = free_port()
    settings = Settings(data_dir=data_dir, temporal_port=port, ui_port=free_port(), _env_file=None)
    start = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        *dev_server_argv(settings, data_dir / "raw-temporal.db"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        while True:
            try:
                client = await Client.connect(f"127.0.0.1:{port}")
                await client.service_client.check_health()
                return time.perf_counter() - start
            except Exception:
                await asyncio.sleep(0.02)
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 30)


def pilothouse_up(data_dir: Path, measure_memory: bool) -> tuple[float, dict[str, int]]:
    """Seconds from spawn until /readyz is 200, and idle RSS by process when asked."""
    ports = {"api": free_port(), "temporal": free_port(), "ui": free_port()}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PILOTHOUSE_")}
    env.update(
        PILOTHOUSE_DATA_DIR=str(data_dir),
        PILOTHOUSE_API_PORT=str(ports["api"]),
        PILOTHOUSE_TEMPORAL_PORT=str(ports["temporal"]),
        PILOTHOUSE_UI_PORT=str(ports["ui"]),
    )
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "up"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{ports['api']}/readyz"
    try:
        while True:
            assert process.poll() is None, "pilothouse up exited"
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
        elapsed = time.perf_counter() - start
        memory: dict[str, int] = {}
        if measure_memory:
            time.sleep(IDLE_S)
            memory = {command_name(p): rss_kib(p) for p in children(process.pid)}
            memory["supervisor (up)"] = rss_kib(process.pid)
        return elapsed, memory
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    raw_cold: list[float] = []
    raw_warm: list[float] = []
    cold: list[float] = []
    warm: list[float] = []
    memory: dict[str, int] = {}
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            data_dir = Path(tmp)
            raw_cold.append(asyncio.run(raw_dev_server(data_dir)))
            raw_warm.append(asyncio.run(raw_dev_server(data_dir)))
            seconds, _ = pilothouse_up(data_dir / "ph", measure_memory=False)
            cold.append(seconds)
            seconds, memory = pilothouse_up(data_dir / "ph", measure_memory=True)
            warm.append(seconds)

    def line(name: str, ours: list[float], raw: list[float]) -> str:
        o, r = statistics.median(ours), statistics.median(raw)
        ratio = o / r
        return f"{name:6} pilothouse up {o:6.2f} s   raw dev server {r:6.2f} s   {ratio:5.2f}x"

    print(f"startup to ready, median of {args.rounds} rounds")
    print(line("cold", cold, raw_cold))
    print(line("warm", warm, raw_warm))
    print(f"resident memory after {IDLE_S} s idle (warm start)")
    for name, kib in sorted(memory.items()):
        print(f"  {name:18} {kib / 1024:7.1f} MiB")
    print(f"  {'total':18} {sum(memory.values()) / 1024:7.1f} MiB")


if __name__ == "__main__":
    main()
