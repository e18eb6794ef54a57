"""Shared helpers for the job tests: create a job, wait for a state, read the events."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx


def stage(
    name: str, *argv: str, gate: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": name, "run": list(argv) or ["true"], **extra}
    if gate is not None:
        spec["gate"] = gate
    return spec


GATE = {"required": True}


async def create_job(client: httpx.AsyncClient, *stages: dict[str, Any], **body: Any) -> str:
    answer = await client.post("/api/v1/jobs", json={"stages": list(stages), **body})
    assert answer.status_code == 201, answer.text
    job_id: str = answer.json()["id"]
    return job_id


async def wait_state(
    client: httpx.AsyncClient, job_id: str, *states: str, seconds: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        job: dict[str, Any] = (await client.get(f"/api/v1/jobs/{job_id}")).json()
        if job["state"] in states and (
            job["state"] != "needs_approval" or job["open_gate"] is not None
        ):
            return job
        assert time.monotonic() < deadline, f"job never reached {states}: {job}"
        await asyncio.sleep(0.1)


async def event_types(client: httpx.AsyncClient, job_id: str) -> list[str]:
    page = (await client.get(f"/api/v1/jobs/{job_id}/events", params={"limit": 500})).json()
    return [e["type"] for e in page["items"]]
