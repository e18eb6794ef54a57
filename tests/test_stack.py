"""`pilothouse up` as a user runs it: a real subprocess, real ports, a real data directory."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from temporalio.client import Client, WorkflowExecutionStatus

from stack import port_taken
from tests.conftest import free_port


@dataclass
class Up:
    process: asyncio.subprocess.Process
    ports: dict[str, int]
    lines: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}"

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    async def read_until(self, marker: str, seconds: float = 90) -> None:
        assert self.process.stdout is not None
        deadline = time.monotonic() + seconds
        while not any(marker in line for line in self.lines):
            left = deadline - time.monotonic()
            assert left > 0, f"no {marker!r} in time; output:\n{self.output}"
            raw = await asyncio.wait_for(self.process.stdout.readline(), left)
            assert raw, f"up exited early ({self.process.returncode}):\n{self.output}"
            self.lines.append(raw.decode().rstrip())

    async def stop(self) -> int:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        return await self.finish()

    async def finish(self) -> int:
        assert self.process.stdout is not None
        rest = await asyncio.wait_for(self.process.stdout.read(), 60)
        self.lines += rest.decode().splitlines()
        return await asyncio.wait_for(self.process.wait(), 60)


def up_env(data_dir: Path, ports: dict[str, int]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PILOTHOUSE_")}
    env.update(
        PILOTHOUSE_DATA_DIR=str(data_dir),
        PILOTHOUSE_API_PORT=str(ports["api"]),
        PILOTHOUSE_TEMPORAL_PORT=str(ports["temporal"]),
        PILOTHOUSE_UI_PORT=str(ports["ui"]),
    )
    return env


@asynccontextmanager
async def pilothouse_up(data_dir: Path, ports: dict[str, int]) -> AsyncIterator[Up]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli",
        "up",
        env=up_env(data_dir, ports),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    up = Up(process, ports)
    try:
        yield up
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def three_ports() -> dict[str, int]:
    return {"api": free_port(), "temporal": free_port(), "ui": free_port()}


async def test_up_starts_everything_and_a_second_up_keeps_it(tmp_path: Path) -> None:
    ports = three_ports()
    async with pilothouse_up(tmp_path, ports) as up:
        await up.read_until("press Ctrl-C")
        token = re.search(r"Admin token\s+(ph_\S+)", up.output)
        assert token, up.output
        assert f"http://127.0.0.1:{ports['api']}/docs" in up.output
        assert f"http://127.0.0.1:{ports['ui']}" in up.output
        async with httpx.AsyncClient(base_url=up.base) as http:
            assert (await http.get("/readyz")).status_code == 200
            me = await http.get("/whoami", headers={"X-API-Key": token.group(1)})
            assert me.json()["scopes"] == ["admin"]
            ui = await http.get(f"http://127.0.0.1:{ports['ui']}/")
            assert ui.status_code == 200
        client = await Client.connect(f"127.0.0.1:{ports['temporal']}")
        # No worker polls this queue, so the workflow stays in flight across the restart.
        handle = await client.start_workflow("Unregistered", id="in-flight", task_queue="nobody")
        assert await up.stop() == 0
    for port in ports.values():
        assert not port_taken(port), f"port {port} still held after stop"

    async with pilothouse_up(tmp_path, ports) as again:
        await again.read_until("press Ctrl-C")
        assert "Admin token" not in again.output
        async with httpx.AsyncClient(base_url=again.base) as http:
            me = await http.get("/whoami", headers={"Authorization": f"Bearer {token.group(1)}"})
            assert me.status_code == 200
        client = await Client.connect(f"127.0.0.1:{ports['temporal']}")
        described = await client.get_workflow_handle(handle.id).describe()
        assert described.status == WorkflowExecutionStatus.RUNNING
        assert await again.stop() == 0


async def test_a_taken_port_is_one_clear_line(tmp_path: Path) -> None:
    ports = three_ports()
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", ports["temporal"]))
        blocker.listen()
        async with pilothouse_up(tmp_path, ports) as up:
            code = await up.finish()
    assert code == 1
    assert f"port {ports['temporal']}" in up.output and "Temporal" in up.output
    assert "Traceback" not in up.output
    assert len([line for line in up.lines if line.strip()]) == 1
