"""Liveness, readiness, health, metrics and the docs."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import yaml

from settings import Settings
from tests.conftest import Api, free_port, serve


async def test_healthz_and_readyz(api: Api) -> None:
    async with api.client() as client:
        live = await client.get("/healthz")
        ready = await client.get("/readyz")
    assert live.status_code == 200 and live.json()["status"] == "ok"
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "migrations": "ok", "temporal": "ok"}


async def test_readyz_names_missing_migrations(settings: Settings, tmp_path: Path) -> None:
    empty = settings.model_copy(update={"database_url": f"sqlite:///{tmp_path / 'empty.db'}"})
    async with serve(empty) as base, httpx.AsyncClient(base_url=base) as client:
        answer = await client.get("/readyz")
    assert answer.status_code == 503
    body = answer.json()
    assert body["error_code"] == "NOT_READY"
    assert body["checks"]["migrations"].startswith("at nothing")
    assert "migrations" in body["detail"] and body["timestamp"].endswith("Z")


async def test_readyz_and_health_name_an_unreachable_temporal(settings: Settings) -> None:
    offline = settings.model_copy(update={"temporal_address": f"127.0.0.1:{free_port()}"})
    async with serve(offline) as base, httpx.AsyncClient(base_url=base) as client:
        ready = await client.get("/readyz")
        health = await client.get("/health")
    assert ready.status_code == 503
    assert ready.json()["checks"]["temporal"].startswith("unreachable")
    assert ready.json()["checks"]["database"] == "ok"
    assert health.status_code == 200 and health.json()["status"] == "degraded"


async def test_health_is_unhealthy_without_the_database(settings: Settings) -> None:
    url = f"postgresql+psycopg://postgres:s3cret@127.0.0.1:{free_port()}/nope"
    broken = settings.model_copy(update={"database_url": url})
    async with serve(broken) as base, httpx.AsyncClient(base_url=base) as client:
        health = await client.get("/health")
        ready = await client.get("/ready")
    assert health.status_code == ready.status_code == 503
    body = health.json()
    assert body["status"] == "unhealthy" and body["database"].startswith("error")
    assert "s3cret" not in health.text and "127.0.0.1" not in body["database_identity"]


async def test_health_has_the_autopack_shape(api: Api) -> None:
    async with api.client() as client:
        answer = await client.get("/health")
        alias = await client.get("/ready")
    body = answer.json()
    assert answer.status_code == 200 and body["status"] == "healthy"
    assert set(body) >= {"status", "database_identity", "database", "kill_switches", "version"}
    assert len(body["database_identity"]) == 12
    assert api.settings.db_url not in answer.text
    assert body["kill_switches"] == {
        "pause_new_work": False,
        "auto_approve": True,
        "enable_consolidated_metrics": False,
    }
    assert alias.json()["database_identity"] == body["database_identity"]


async def test_metrics_count_requests_by_route_template(api: Api) -> None:
    async with api.client() as client:
        await client.delete("/auth/tokens/some-id")
        text = (await client.get("/metrics")).text
    assert (
        'pilothouse_http_requests_total{method="DELETE",route="/auth/tokens/{token_id}",'
        'status="401"}' in text
    )
    assert "pilothouse_http_request_duration_seconds_bucket" in text
    assert "pilothouse_workflow_starts_total" in text
    assert "pilothouse_decisions_total" in text


async def test_docs_are_served(api: Api) -> None:
    async with api.client() as client:
        spec = (await client.get("/openapi.json")).json()
        as_yaml = yaml.safe_load((await client.get("/api/docs/openapi.yaml")).text)
        swagger = await client.get("/api/docs")
        redoc = await client.get("/redoc")
        # Every script and style the pages load comes from this server, not a CDN.
        linked = re.findall(r'(?:src|href)="([^"]+)"', swagger.text + redoc.text)
        fetched = {url: await client.get(url) for url in linked}
    assert spec == as_yaml
    assert "/auth/tokens" in spec["paths"]
    assert {"HTTPBearer", "APIKeyHeader"} <= set(spec["components"]["securitySchemes"])
    assert "swagger-ui" in swagger.text and "redoc" in redoc.text
    assert {u.rsplit("/", 1)[-1] for u in linked} >= {
        "swagger-ui-bundle.js",
        "swagger-ui.css",
        "redoc.standalone.js",
        "favicon.png",
    }
    for url, answer in fetched.items():
        assert url.startswith("/docs/assets/") and answer.status_code == 200, url
        assert len(answer.content) > 1000, url
