"""Session templates: made, listed with filters, read; a task definition inherits a
template's options and tools, and its executions run the agent with them."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import Api
from tests.test_schedules import finished
from tests.test_tasks import event_rows, github, settings  # noqa: F401  (fixtures)

DEVOPS = {
    "name": "DevOps Investigation Template",
    "description": "Pre-configured for infrastructure debugging",
    "category": "DEVOPS",
    "sdk_options": {"allowed_tools": ["Bash", "Read"], "permission_mode": "plan", "max_turns": 7},
    "default_mode": "interactive",
    "is_public": False,
}


async def make(admin: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    answer = await admin.post("/api/v1/session-templates", json={**DEVOPS, **fields})
    assert answer.status_code == 201, answer.text
    created: dict[str, Any] = answer.json()
    assert set(created) == {"id", "name", "category", "created_at"}
    return created


async def test_templates_are_made_filtered_and_read(admin: httpx.AsyncClient) -> None:
    devops = await make(admin)
    public = await make(admin, name="Docs", category="WRITING", is_public=True)
    listed = (await admin.get("/api/v1/session-templates")).json()
    assert listed["total"] == 2
    by_category = await admin.get("/api/v1/session-templates", params={"category": "DEVOPS"})
    assert [t["id"] for t in by_category.json()["items"]] == [devops["id"]]
    publics = await admin.get("/api/v1/session-templates", params={"is_public": "true"})
    assert [t["id"] for t in publics.json()["items"]] == [public["id"]]
    assert publics.json()["items"][0] == {
        "id": public["id"],
        "name": "Docs",
        "category": "WRITING",
        "is_public": True,
    }
    one = (await admin.get(f"/api/v1/session-templates/{devops['id']}")).json()
    assert one["sdk_options"] == DEVOPS["sdk_options"] and one["default_mode"] == "interactive"
    assert one["description"] == DEVOPS["description"]
    assert (await admin.get("/api/v1/session-templates/nope")).status_code == 404
    typo = await admin.post("/api/v1/session-templates", json={**DEVOPS, "is_publik": True})
    assert typo.status_code == 422 and "is_public" in typo.json()["detail"]
    bad = await admin.post(
        "/api/v1/session-templates", json={**DEVOPS, "sdk_options": {"max_turns": 0}}
    )
    assert bad.status_code == 422 and "max_turns" in bad.json()["detail"]


async def test_a_definition_inherits_its_templates_options_and_tools(
    api: Api, admin: httpx.AsyncClient, worker: object
) -> None:
    template = await make(admin)
    answer = await admin.post(
        "/api/v1/tasks",
        json={
            "name": "Disk check",
            "prompt_template": "Check the disks",
            "template_id": template["id"],
            "sdk_options": {"max_turns": 9},
        },
    )
    assert answer.status_code == 201, answer.text
    task_id = answer.json()["id"]
    definition = (await admin.get(f"/api/v1/tasks/{task_id}")).json()
    assert definition["definition"]["tools"] == ["Bash", "Read"]
    # Its own options win over the template's; the rest is the template's.
    assert definition["config"]["max_turns"] == 9
    assert definition["config"]["permission_mode"] == "plan"
    started = await admin.post(f"/api/v1/tasks/{task_id}/execute", json={})
    assert started.status_code == 200, started.text
    [run] = await finished(admin, task_id, 1)
    assert run["status"] == "completed", run["error"]
    [first] = [e for e in await event_rows(api, run["id"]) if e.type == "stage_started"]
    argv = first.payload["argv"]
    assert argv[argv.index("--allowedTools") + 1] == "Bash,Read"
    assert argv[argv.index("--max-turns") + 1] == "9"
    assert argv[argv.index("--permission-mode") + 1] == "plan"
