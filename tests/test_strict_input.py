"""Strict input at the edge: unknown fields, bounds, bodies that are not JSON, and sizes.

Each refusal is a 4xx with an error code and the field it is about, and writes nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from api.route import MAX_URL_BYTES
from settings import LIMITS
from store.tokens import Scope
from tests.conftest import Api, make_token
from tests.jobs_helpers import GATE, stage


async def refused(
    client: httpx.AsyncClient, path: str, body: Any, status: int = 422, **kwargs: Any
) -> dict[str, Any]:
    answer = await client.post(path, json=body, **kwargs)
    assert answer.status_code == status, answer.text
    error: dict[str, Any] = answer.json()
    assert error["error_code"] and error["detail"] and error["timestamp"].endswith("Z")
    return error


async def assert_no_jobs(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/v1/jobs")).json()["total"] == 0


async def test_a_typo_in_a_gate_is_refused_naming_the_nearest_field(
    admin: httpx.AsyncClient,
) -> None:
    error = await refused(
        admin, "/api/v1/jobs", {"stages": [{"name": "a", "run": ["true"], "gaet": GATE}]}
    )
    assert error["error_code"] == "VALIDATION_ERROR"
    assert error["field"] == "body.stages.0.gaet"
    assert "body.stages.0.gaet: unknown field; did you mean `gate`?" in error["detail"]
    nested = await refused(admin, "/api/v1/jobs", {"stages": [stage("a", gate={"requird": True})]})
    assert (
        "body.stages.0.gate.requird: unknown field; did you mean `required`?" in (nested["detail"])
    )
    params = await refused(admin, "/api/v1/jobs", {"stages": [stage("a")], "parms": {}})
    assert "did you mean `params`?" in params["detail"]
    await assert_no_jobs(admin)


async def test_decision_and_resume_bodies_refuse_unknown_fields(admin: httpx.AsyncClient) -> None:
    # Refused before any job is looked up: the body is wrong whatever the job.
    reason = await refused(admin, "/api/v1/jobs/job-x/reject", {"reasn": "no"})
    assert "body.reasn: unknown field; did you mean `reason`?" in reason["detail"]
    resume = await refused(admin, "/api/v1/jobs/job-x/resume", {"parmas": {}})
    assert "did you mean `params`?" in resume["detail"]
    inbox = await refused(admin, "/api/v1/approvals/g/decide", {"outcome": "approve", "x": 1})
    assert inbox["field"] == "body.x"
    # Fields the console sends and Pilothouse ignores on purpose stay accepted.
    ignored = await admin.post(
        "/api/v1/jobs/job-x/approve", json={"operator": "me", "decision": "approve"}
    )
    assert ignored.status_code == 404


async def test_bodies_that_are_not_json_say_so(admin: httpx.AsyncClient) -> None:
    body = b'{"stages": [{"name": "a", "run": ["true"]}]}'
    plain = await admin.post("/api/v1/jobs", content=body, headers={"Content-Type": "text/plain"})
    assert plain.status_code == 415 and plain.json()["error_code"] == "UNSUPPORTED_MEDIA_TYPE"
    assert "application/json" in plain.json()["detail"]
    bare = await admin.post("/api/v1/jobs", content=body)
    assert bare.status_code == 415
    broken = await admin.post(
        "/api/v1/jobs", content=b"{stages", headers={"Content-Type": "application/json"}
    )
    assert broken.status_code == 400 and broken.json()["error_code"] == "INVALID_JSON"
    assert "not valid JSON" in broken.json()["detail"]
    await assert_no_jobs(admin)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"timeout_seconds": 1e16}, "body.stages.0.timeout_seconds"),
        ({"gate": {"timeout_seconds": 1e20}}, "body.stages.0.gate.timeout_seconds"),
        ({"gate": {"timeout_minutes": 1e15}}, "body.stages.0.gate.timeout_minutes"),
        ({"gate": {"reminder_every_seconds": 1e20}}, "body.stages.0.gate.reminder_every_seconds"),
        (
            {"gate": {"reminder_every_seconds": 1e-300}},
            "body.stages.0.gate.reminder_every_seconds",
        ),
        ({"gate": {"input_schema": {"type": "bogus"}}}, "body.stages.0.gate.input_schema"),
        ({"run": ["echo", "a\x00b"]}, "body.stages.0.run.1"),
        ({"env": {"X": "a\x00"}}, "body.stages.0.env.X"),
        ({"cwd": "/tmp\x00"}, "body.stages.0.cwd"),
        ({"run": ["x"] * (LIMITS.max_argv_items + 1)}, "body.stages.0.run"),
        ({"retries": 2**70}, "body.stages.0.retries"),
    ],
    ids=lambda v: str(v)[:40] if isinstance(v, dict) else str(v),
)
async def test_what_a_workflow_cannot_run_is_refused(
    admin: httpx.AsyncClient, spec: dict[str, Any], field: str
) -> None:
    body = {"stages": [{"name": "a", "run": ["true"], **spec}]}
    error = await refused(admin, "/api/v1/jobs", body)
    assert field in error["detail"], error
    await assert_no_jobs(admin)


async def test_infinity_nan_and_nul_are_refused_anywhere_in_a_body(
    admin: httpx.AsyncClient,
) -> None:
    for text in (
        b'{"stages": [{"name": "a", "run": ["true"], "timeout_seconds": Infinity}]}',
        b'{"stages": [{"name": "a", "run": ["true"]}], "params": {"x": NaN}}',
        b'{"stages": [{"name": "a", "run": ["true"]}], "params": {"x": "a\\u0000"}}',
    ):
        answer = await admin.post(
            "/api/v1/jobs", content=text, headers={"Content-Type": "application/json"}
        )
        assert answer.status_code == 422, answer.text
        assert answer.json()["detail"].startswith("body")
    await assert_no_jobs(admin)


async def test_sizes_are_bounded(admin: httpx.AsyncClient) -> None:
    too_many = {"stages": [stage(f"s{n}") for n in range(LIMITS.max_stages + 1)]}
    assert "body.stages" in (await refused(admin, "/api/v1/jobs", too_many))["detail"]
    big_params = {"stages": [stage("a")], "params": {"blob": "x" * (LIMITS.max_params_bytes + 1)}}
    assert "body.params" in (await refused(admin, "/api/v1/jobs", big_params))["detail"]
    reason = await refused(
        admin, "/api/v1/jobs/job-x/reject", {"reason": "x" * (LIMITS.max_text_chars + 1)}
    )
    assert reason["field"] == "body.reason"
    await assert_no_jobs(admin)


async def test_a_body_over_the_limit_is_413_unread(api: Api, admin: httpx.AsyncClient) -> None:
    limit = api.settings.max_body_bytes
    huge = {"stages": [stage("a")], "params": {"blob": "x" * (limit + 10)}}
    declared = await refused(admin, "/api/v1/jobs", huge, status=413)
    assert declared["error_code"] == "PAYLOAD_TOO_LARGE"

    async def chunks() -> AsyncIterator[bytes]:
        # No Content-Length: the API counts what arrives and stops reading at the limit.
        for _ in range(limit // 65536 + 2):
            yield b" " * 65536

    streamed = await admin.post(
        "/api/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert streamed.status_code == 413
    await assert_no_jobs(admin)


async def test_filters_and_offsets_are_checked_like_bodies(admin: httpx.AsyncClient) -> None:
    state = await admin.get("/api/v1/jobs", params={"state": "bogus"})
    assert state.status_code == 422 and "needs_approval" in state.json()["detail"]
    for path, params in (
        ("/api/v1/jobs", {"skip": 2**64}),
        ("/auth/tokens", {"skip": 2**63}),
        ("/api/v1/jobs/job-x/events", {"after": 2**64}),
    ):
        answer = await admin.get(path, params=params)
        assert answer.status_code == 422, (path, answer.text)
    typo = await admin.get("/api/v1/jobs", params={"stat": "failed"})
    assert typo.status_code == 422
    assert typo.json()["detail"] == "query.stat: unknown field; did you mean `state`?"
    nul = await admin.get("/api/v1/jobs/job-%00")
    assert nul.status_code == 422 and "NUL" in nul.json()["detail"]
    long_urls: tuple[tuple[str, dict[str, str]], ...] = (
        ("/api/v1/jobs", {"state": "x" * MAX_URL_BYTES}),
        ("/runs/run-1/artifacts/file", {"path": "a/" * (MAX_URL_BYTES // 2)}),
        ("/api/v1/jobs/" + "j" * MAX_URL_BYTES, {}),
    )
    for url, query in long_urls:
        long = await admin.get(url, params=query)
        assert long.status_code == 414, (url[:40], long.text[:200])
        assert long.json()["error_code"] == "URI_TOO_LONG"
    near = await admin.get("/api/v1/jobs", params={"state": "x" * (MAX_URL_BYTES - 100)})
    assert near.status_code == 422 and "state" in near.json()["detail"]


async def test_tokens_need_scopes_and_whoami_names_them(api: Api, admin: httpx.AsyncClient) -> None:
    bare = await refused(admin, "/auth/tokens", {"name": "bot"})
    assert bare["field"] == "body.scopes"
    forever = await refused(
        admin, "/auth/tokens", {"name": "bot", "scopes": ["admin"], "expires_in": 2**62}
    )
    assert forever["field"] == "body.expires_in"
    token = await make_token(api.db, "reader", Scope.jobs_read)
    async with api.client(token) as reader:
        me = (await reader.get("/whoami")).json()
    assert (me["name"], me["scopes"], me["message"]) == ("reader", ["jobs:read"], "reader")


async def test_the_validator_takes_documented_shapes_only(admin: httpx.AsyncClient) -> None:
    bodies: list[dict[str, Any]] = [{}, {"gates": {"a": {}}}, {"yaml": "a: 1", "config": {}}]
    for body in bodies:
        error = await refused(admin, "/api/v1/config/validate", body)
        assert '{"yaml":' in error["detail"] and '{"config":' in error["detail"], body
    typo = (
        await admin.post(
            "/api/v1/config/validate",
            json={"yaml": "gates:\n  build: {requird: true}\npipline: {}\n"},
        )
    ).json()
    assert typo["valid"] is False
    messages = {e["path"]: e["message"] for e in typo["errors"]}
    assert "did you mean `required`?" in messages["gates.build.requird"]
    assert "did you mean `pipeline`?" in messages["pipline"]
    lonely = (
        await admin.post(
            "/api/v1/config/validate",
            json={"config": {"gates": {"publish": {"required": True}}}},
        )
    ).json()
    assert lonely["valid"] is True and lonely["warnings"][0]["path"] == "gates.publish"


async def test_the_openapi_document_describes_the_errors_sent(api: Api) -> None:
    async with api.client() as client:
        spec = (await client.get("/openapi.json")).json()
    create = spec["paths"]["/api/v1/jobs"]["post"]["responses"]
    for status in ("400", "413", "414", "415", "422"):
        assert create[status]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorBody"
        }, status
    error_body = spec["components"]["schemas"]["ErrorBody"]
    assert {"detail", "error_code", "timestamp", "field"} <= set(error_body["properties"])
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    download = spec["paths"]["/api/v1/jobs/{job_id}/artifacts/{artifact_id}"]["get"]
    assert "text/plain" in download["responses"]["200"]["content"]
    listing = spec["paths"]["/api/v1/jobs/{job_id}/artifacts"]["get"]["responses"]["200"]
    ref = listing["content"]["application/json"]["schema"]["$ref"]
    assert {"items", "total", "skip", "limit", "links"} <= set(
        spec["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"]
    )
