"""The operator file: pipelines and per-stage gates, served sanitized, validated by path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from operator_file import load
from settings import Settings
from tests.conftest import Api, serve
from tests.jobs_helpers import wait_state

OPERATOR_YAML = """
server:
  host: "127.0.0.1"
  port: 8008
security:
  admin_token_env: "ADMIN_TOKEN"
  default_token: "very-secret-default"
  cors:
    enabled: false
    allow_origins: []
gates:
  script:
    required: true
    auto_approve: false
    timeout_minutes: 60
pipelines:
  video:
    description: "outline, then a script someone signs off"
    stages:
      - name: outline
        run: ["echo", "outline"]
      - name: script
        run: ["echo", "script"]
"""


@pytest.fixture
async def console(api: Api, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    path = tmp_path / "operator.yaml"
    path.write_text(OPERATOR_YAML)
    settings: Settings = api.settings.model_copy(update={"operator_file": path})
    async with (
        serve(settings) as base,
        httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {api.admin_token}"}, timeout=30
        ) as client,
    ):
        yield client


async def test_operator_config_is_served_without_secrets(console: httpx.AsyncClient) -> None:
    answer = await console.get("/api/v1/config/operator")
    assert answer.status_code == 200
    assert "very-secret-default" not in answer.text
    body = answer.json()
    assert body["security"]["default_token"] == "***"
    assert body["security"]["admin_token_env"] == "***"
    assert body["gates"]["script"]["timeout_seconds"] == 3600
    assert body["pipelines"]["video"]["stages"][1]["name"] == "script"


async def test_validate_names_each_error_path(console: httpx.AsyncClient) -> None:
    good = (await console.post("/api/v1/config/validate")).json()
    assert (good["valid"], good["errors"], good["warnings"]) == (True, [], [])
    bad = await console.post(
        "/api/v1/config/validate",
        json={"config": {"gates": {"script": {"on_timeout": "maybe"}}, "pipelines": {"p": {}}}},
    )
    paths = {e["path"] for e in bad.json()["errors"]}
    assert bad.json()["valid"] is False
    assert {"gates.script.on_timeout", "pipelines.p.stages"} <= paths
    broken = await console.post("/api/v1/config/validate", json={"yaml": "gates: [unclosed"})
    assert broken.json()["valid"] is False and "YAML" in broken.json()["errors"][0]["message"]


@pytest.mark.usefixtures("worker")
async def test_a_named_pipeline_takes_its_gates_from_the_file(console: httpx.AsyncClient) -> None:
    made = await console.post("/api/v1/jobs", json={"pipeline": "video", "params": {"n": 1}})
    assert made.status_code == 201, made.text
    job = await wait_state(console, made.json()["id"], "needs_approval")
    assert job["stage"] == "script" and job["pipeline"] == "video"
    assert job["open_gate"]["deadline"] is not None
    await console.post(f"/api/v1/jobs/{job['id']}/approve")
    await wait_state(console, job["id"], "completed")


def test_a_bad_operator_file_stops_the_api_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "operator.yaml"
    path.write_text("gates:\n  script:\n    required: sometimes\n")
    with pytest.raises(ValueError, match=r"gates\.script\.required"):
        load(path)
