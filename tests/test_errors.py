"""Every error, from any layer, has `{detail, error_code, timestamp}`."""

from __future__ import annotations

import httpx
import pytest

from settings import Settings
from tests.conftest import Api, serve


def assert_shape(body: dict[str, object]) -> None:
    assert {"detail", "error_code", "timestamp"} <= set(body)
    assert str(body["timestamp"]).endswith("Z")


async def test_unknown_path_is_a_shaped_404(api: Api) -> None:
    async with api.client() as client:
        answer = await client.get("/no/such/thing")
    assert answer.status_code == 404
    assert_shape(answer.json())
    assert answer.json()["error_code"] == "NOT_FOUND"
    assert "/no/such/thing" in answer.json()["detail"]


async def test_wrong_method_is_a_shaped_405(api: Api) -> None:
    async with api.client() as client:
        answer = await client.put("/healthz")
    assert answer.status_code == 405
    assert answer.json()["error_code"] == "METHOD_NOT_ALLOWED"


async def test_bad_json_is_a_shaped_400_and_a_bad_query_a_422(api: Api) -> None:
    async with api.client(api.admin_token) as client:
        answer = await client.post(
            "/auth/tokens", content=b"{not json", headers={"Content-Type": "application/json"}
        )
        bad_limit = await client.get("/auth/tokens", params={"limit": 1000})
    assert answer.status_code == 400 and answer.json()["error_code"] == "INVALID_JSON"
    assert "not valid JSON" in answer.json()["detail"]
    assert_shape(answer.json())
    assert bad_limit.status_code == 422 and "query.limit" in bad_limit.json()["detail"]


async def test_lists_page_with_links(api: Api) -> None:
    async with api.client(api.admin_token) as client:
        for n in range(3):
            await client.post("/auth/tokens", json={"name": f"t{n}", "scopes": ["jobs:read"]})
        first = (await client.get("/auth/tokens", params={"limit": 2})).json()
        second = (await client.get(first["links"]["next"])).json()
    assert first["total"] == 4 and len(first["items"]) == 2 and first["links"]["prev"] is None
    assert second["skip"] == 2 and len(second["items"]) == 2 and second["links"]["next"] is None
    assert second["links"]["prev"] is not None
    names = {i["name"] for i in first["items"]} | {i["name"] for i in second["items"]}
    assert names == {"admin", "t0", "t1", "t2"}


async def test_cors_is_off_by_default(api: Api) -> None:
    async with api.client() as client:
        answer = await client.options(
            "/healthz",
            headers={"Origin": "http://evil.test", "Access-Control-Request-Method": "GET"},
        )
    assert "access-control-allow-origin" not in answer.headers


async def test_cors_allows_only_the_configured_origins(settings: Settings) -> None:
    allowed = settings.model_copy(update={"cors_origins": ["http://console.test"]})
    async with serve(allowed) as base, httpx.AsyncClient(base_url=base) as client:
        good = await client.options(
            "/healthz",
            headers={"Origin": "http://console.test", "Access-Control-Request-Method": "GET"},
        )
        bad = await client.options(
            "/healthz",
            headers={"Origin": "http://evil.test", "Access-Control-Request-Method": "GET"},
        )
    assert good.headers["access-control-allow-origin"] == "http://console.test"
    assert "access-control-allow-origin" not in bad.headers


def test_cors_origins_read_from_a_comma_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PILOTHOUSE_CORS_ORIGINS", "http://a.test, http://b.test")
    assert Settings(_env_file=None).cors_origins == ["http://a.test", "http://b.test"]
