"""The event log over HTTP: polling, SSE with resume, keepalives, `done`, one watcher."""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx
import pytest
import sqlalchemy as sa

from api.streams import EventHub
from settings import Settings
from store import events
from store.engine import Database, is_sqlite
from tests.conftest import Api, serve
from tests.jobs_helpers import GATE, create_job, stage, wait_state
from tests.sse_client import Frame, frames

pytestmark = pytest.mark.usefixtures("worker")


async def read_until(
    client: httpx.AsyncClient,
    url: str,
    stop: str,
    headers: dict[str, str] | None = None,
    limit: int | None = None,
) -> list[Frame]:
    got: list[Frame] = []
    async with client.stream("GET", url, headers=headers or {}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for frame in frames(response):
            got.append(frame)
            data_frames = [f for f in got if f.id is not None]
            if frame.event == stop or (frame.data or {}).get("type") == stop:
                break
            if limit is not None and len(data_frames) >= limit:
                break
    return got


async def test_the_stream_replays_follows_and_ends_with_done(admin: httpx.AsyncClient) -> None:
    job_id = await create_job(admin, stage("a"), stage("b", gate=GATE))
    url = f"/api/v1/jobs/{job_id}/events/stream"
    first = await asyncio.wait_for(read_until(admin, url, "gate_pause"), 60)
    assert (
        first[0].event == "connected" and first[0].data == {"job_id": job_id, "status": "queued"}
    ) or first[0].event == "connected"
    await admin.post(f"/api/v1/jobs/{job_id}/approve")
    whole = await asyncio.wait_for(read_until(admin, url, "done"), 60)
    ids = [f.id for f in whole if f.id is not None]
    polled = (await admin.get(f"/api/v1/jobs/{job_id}/events")).json()["items"]
    assert ids == [e["id"] for e in polled]
    assert whole[-1].event == "done" and whole[-1].data == {"status": "completed"}
    assert [f.data["type"] for f in whole if f.id is not None][-1] == "job_completed"  # type: ignore[index]


async def test_last_event_id_resumes_without_gap_or_duplicate(admin: httpx.AsyncClient) -> None:
    job_id = await create_job(admin, stage("a"), stage("b"), stage("c", gate=GATE))
    await wait_state(admin, job_id, "needs_approval")
    url = f"/api/v1/jobs/{job_id}/events/stream"
    head = await read_until(admin, url, "never", limit=3)
    head_ids = [f.id for f in head if f.id is not None]
    await admin.post(f"/api/v1/jobs/{job_id}/approve")
    rest = await asyncio.wait_for(
        read_until(admin, url, "done", headers={"Last-Event-ID": str(head_ids[-1])}), 60
    )
    rest_ids = [f.id for f in rest if f.id is not None]
    polled = [e["id"] for e in (await admin.get(f"/api/v1/jobs/{job_id}/events")).json()["items"]]
    assert head_ids + rest_ids == polled


async def test_polling_pages_by_id(admin: httpx.AsyncClient) -> None:
    job_id = await create_job(admin, stage("a"), stage("b"))
    await wait_state(admin, job_id, "completed")
    first = (await admin.get(f"/api/v1/jobs/{job_id}/events", params={"limit": 2})).json()
    assert len(first["items"]) == 2 and first["has_more"] and first["total"] == 6
    rest = (
        await admin.get(f"/api/v1/jobs/{job_id}/events", params={"after": first["last_id"]})
    ).json()
    assert [e["type"] for e in rest["items"]][-1] == "job_completed" and not rest["has_more"]
    bad = await admin.get(f"/api/v1/jobs/{job_id}/events", params={"after": -1})
    assert bad.status_code == 422 and "query.after" in bad.json()["detail"]


async def test_keepalive_comments_while_waiting(api: Api) -> None:
    quick: Settings = api.settings.model_copy(update={"sse_keepalive_seconds": 0.2})
    async with (
        serve(quick) as base,
        httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {api.admin_token}"}, timeout=30
        ) as client,
    ):
        job_id = await create_job(client, stage("a", gate=GATE))
        await wait_state(client, job_id, "needs_approval")
        seen: list[Frame] = []
        async with client.stream("GET", f"/api/v1/jobs/{job_id}/events/stream") as response:
            async for frame in frames(response):
                seen.append(frame)
                if frame.comment == "keepalive":
                    break
        assert any(f.comment == "keepalive" for f in seen)
        await client.post(f"/api/v1/jobs/{job_id}/approve")
        await wait_state(client, job_id, "completed")


async def test_one_watcher_feeds_a_hundred_subscribers(db: Database) -> None:
    hub = EventHub(db)
    await hub.start()
    try:
        async with contextlib.AsyncExitStack() as stack:
            subscriptions = [
                await stack.enter_async_context(hub.subscribe("job-fan")) for _ in range(100)
            ]
            async with db.session() as session:
                await events.append(session, "job", "job-fan", "ping")
                await session.commit()
            deadline = time.monotonic() + 10
            while not all(s.queue.qsize() == 1 for s in subscriptions):
                assert time.monotonic() < deadline, "not every subscriber got the event"
                await asyncio.sleep(0.02)
            if not is_sqlite(db.url):
                async with db.engine.connect() as conn:
                    listeners = (
                        await conn.execute(
                            sa.text(
                                "SELECT count(*) FROM pg_stat_activity "
                                "WHERE datname = current_database() AND query LIKE 'LISTEN%'"
                            )
                        )
                    ).scalar_one()
                assert listeners == 1
            assert hub.subscriber_count == 100
    finally:
        await hub.stop()


async def test_open_streams_do_not_hold_database_connections(admin: httpx.AsyncClient) -> None:
    # More streams than the connection pool holds (5 + 10), and the API still answers.
    job_id = await create_job(admin, stage("a", gate=GATE))
    await wait_state(admin, job_id, "needs_approval")
    connected = 0
    all_in = asyncio.Event()

    async def follow() -> None:
        nonlocal connected
        async with admin.stream("GET", f"/api/v1/jobs/{job_id}/events/stream") as response:
            async for frame in frames(response):
                if frame.event == "connected":
                    connected += 1
                    if connected == 25:
                        all_in.set()
                if frame.event == "done":
                    return

    streams = [asyncio.create_task(follow()) for _ in range(25)]
    await asyncio.wait_for(all_in.wait(), 30)
    assert (await admin.get(f"/api/v1/jobs/{job_id}")).status_code == 200
    await admin.post(f"/api/v1/jobs/{job_id}/approve")
    await asyncio.wait_for(asyncio.gather(*streams), 60)


async def test_a_last_event_id_that_is_no_event_id_starts_afresh(
    admin: httpx.AsyncClient,
) -> None:
    job_id = await create_job(admin, stage("a"))
    await wait_state(admin, job_id, "completed")
    url = f"/api/v1/jobs/{job_id}/events/stream"
    polled = [e["id"] for e in (await admin.get(f"/api/v1/jobs/{job_id}/events")).json()["items"]]
    for last in (str(2**64), "-1", "abc"):
        got = await asyncio.wait_for(
            read_until(admin, url, "done", headers={"Last-Event-ID": last}), 30
        )
        assert [f.id for f in got if f.id is not None] == polled, last
