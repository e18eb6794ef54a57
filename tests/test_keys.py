"""Keys and MCP servers over the real API: tokens encrypted at rest and never shown, strict
input, scopes, and the `--mcp-config` the agent gets from the enabled servers."""

from __future__ import annotations

import httpx
from sqlmodel import select

from settings import Settings
from store.engine import Database
from store.mcp import mcp_config
from store.models import Key, McpServer
from store.secrets import Secrets
from store.tokens import Scope
from tests.conftest import Api, make_token

TOKEN = "ghp_s3cr3tT0kenValue0123456789"
KEY = {"name": "my-github-key", "provider": "github", "token": TOKEN}
CONTEXT7 = {
    "name": "context7",
    "package": "@anthropic-ai/context7",
    "args": ["--transport", "stdio"],
}


async def test_a_key_is_registered_listed_and_deleted_without_its_token_shown(
    admin: httpx.AsyncClient, api: Api
) -> None:
    answers = []
    created = await admin.post("/api/v1/keys", json=KEY)
    answers.append(created)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["name"] == "my-github-key" and body["provider"] == "github"
    assert body["token"] == "[redacted]" and body["created_by"] == "admin"
    await admin.post("/api/v1/keys", json=KEY | {"name": "a-gitlab-key", "provider": "gitlab"})
    listed = await admin.get("/api/v1/keys")
    answers.append(listed)
    assert listed.status_code == 200
    page = listed.json()
    assert [k["name"] for k in page["items"]] == ["a-gitlab-key", "my-github-key"]
    assert page["total"] == 2 and all(k["token"] == "[redacted]" for k in page["items"])
    answers.append(await admin.post("/api/v1/keys", json=KEY))  # the 409
    answers.append(await admin.post("/api/v1/keys", json=KEY | {"provider": "svn"}))  # a 422
    deleted = await admin.delete("/api/v1/keys/my-github-key")
    assert deleted.status_code == 204 and deleted.content == b""
    listed = await admin.get("/api/v1/keys")
    assert [k["name"] for k in listed.json()["items"]] == ["a-gitlab-key"]
    for answer in answers:
        assert TOKEN not in answer.text, answer.request.url


async def test_the_token_is_encrypted_at_rest(admin: httpx.AsyncClient, api: Api) -> None:
    assert (await admin.post("/api/v1/keys", json=KEY)).status_code == 201
    async with api.db.session() as session:
        row = (await session.exec(select(Key))).one()
    assert row.token != TOKEN and TOKEN not in row.token
    assert Secrets.of(api.settings).decrypt(row.token) == TOKEN
    assert (api.settings.data_dir / "secret.key").exists()


async def test_a_taken_name_is_409_and_an_unknown_one_404(admin: httpx.AsyncClient) -> None:
    assert (await admin.post("/api/v1/keys", json=KEY)).status_code == 201
    again = await admin.post("/api/v1/keys", json=KEY | {"token": "ghp_other"})
    assert again.status_code == 409 and again.json()["error_code"] == "KEY_EXISTS"
    missing = await admin.delete("/api/v1/keys/no-such-key")
    assert missing.status_code == 404 and missing.json()["error_code"] == "KEY_NOT_FOUND"


async def test_a_repeated_idempotency_key_returns_the_same_key(admin: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": "key-create-1"}
    first = await admin.post("/api/v1/keys", json=KEY, headers=headers)
    second = await admin.post("/api/v1/keys", json=KEY, headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    other = await admin.post("/api/v1/keys", json=KEY | {"token": "ghp_x"}, headers=headers)
    assert other.status_code == 422 and other.json()["error_code"] == "IDEMPOTENCY_KEY_REUSED"


async def test_bad_key_bodies_are_422_naming_the_field(admin: httpx.AsyncClient) -> None:
    cases = {
        "body.tokn": KEY | {"tokn": "x"},
        "body.name": KEY | {"name": "has space"},
        "body.provider": KEY | {"provider": "svn"},
        "body.token": KEY | {"token": "two words"},
    }
    for field, body in cases.items():
        answer = await admin.post("/api/v1/keys", json=body)
        assert answer.status_code == 422, (field, answer.text)
        assert answer.json()["field"] == field
    unknown = await admin.post("/api/v1/keys", json=KEY | {"tokn": "x"})
    assert "did you mean `token`?" in unknown.json()["detail"]
    for name in ("", "a/b", "../etc", "x" * 101):
        answer = await admin.post("/api/v1/keys", json=KEY | {"name": name})
        assert answer.status_code == 422, name
    for token in ("", "x" * 4097, "tab\there"):
        answer = await admin.post("/api/v1/keys", json=KEY | {"token": token})
        assert answer.status_code == 422
        if token:
            assert token not in answer.text


async def test_keys_and_mcp_servers_need_a_token_and_their_scopes(api: Api) -> None:
    reader = await make_token(api.db, "reader", Scope.tasks_read)
    writer = await make_token(api.db, "writer", Scope.tasks_write)
    async with api.client() as anonymous, api.client(reader) as r, api.client(writer) as w:
        for path, body in (("/api/v1/keys", KEY), ("/api/v1/mcp/servers", CONTEXT7)):
            assert (await anonymous.get(path)).status_code == 401
            assert (await anonymous.post(path, json=body)).status_code == 401
            assert (await anonymous.delete(f"{path}/x")).status_code == 401
            # MCP servers' args often hold keys: only an admin reads them.
            assert (await r.get(path)).status_code == (200 if path.endswith("keys") else 403)
            refused = await r.post(path, json=body)
            assert refused.status_code == 403
            assert refused.json()["error_code"] == "INSUFFICIENT_SCOPE"
            assert (await r.delete(f"{path}/{body['name']}")).status_code == 403
            assert (await w.get(path)).status_code == 403
        assert (await w.post("/api/v1/keys", json=KEY)).status_code == 201
        assert (await w.delete(f"/api/v1/keys/{KEY['name']}")).status_code == 204
        # An MCP server's command runs inside every agent: registering one takes an admin.
        assert (await w.post("/api/v1/mcp/servers", json=CONTEXT7)).status_code == 403
        assert (await w.delete("/api/v1/mcp/servers/x")).status_code == 403


async def test_mcp_servers_are_registered_listed_and_deleted(admin: httpx.AsyncClient) -> None:
    created = await admin.post("/api/v1/mcp/servers", json=CONTEXT7)
    assert created.status_code == 201, created.text
    assert created.json() | {"created_at": None} == {
        "name": "context7",
        "package": "@anthropic-ai/context7",
        "command": "npx",
        "args": ["--transport", "stdio"],
        "enabled": True,
        "created_by": "admin",
        "created_at": None,
    }
    second = {"name": "fs", "package": "@mcp/fs", "enabled": False}
    assert (await admin.post("/api/v1/mcp/servers", json=second)).status_code == 201
    page = (await admin.get("/api/v1/mcp/servers")).json()
    assert [(s["name"], s["enabled"]) for s in page["items"]] == [
        ("context7", True),
        ("fs", False),
    ]
    taken = await admin.post("/api/v1/mcp/servers", json=CONTEXT7)
    assert taken.status_code == 409 and taken.json()["error_code"] == "MCP_SERVER_EXISTS"
    assert (await admin.delete("/api/v1/mcp/servers/context7")).status_code == 204
    gone = await admin.delete("/api/v1/mcp/servers/context7")
    assert gone.status_code == 404 and gone.json()["error_code"] == "MCP_SERVER_NOT_FOUND"
    assert [s["name"] for s in (await admin.get("/api/v1/mcp/servers")).json()["items"]] == ["fs"]


async def test_bad_mcp_server_bodies_are_422(admin: httpx.AsyncClient) -> None:
    cases = {
        "body.package": [CONTEXT7 | {"package": "--eval=evil"}, CONTEXT7 | {"package": "a b"}],
        "body.command": [CONTEXT7 | {"command": "-c"}, CONTEXT7 | {"command": ""}],
        "body.args": [CONTEXT7 | {"args": ["x"] * 1000}, CONTEXT7 | {"args": "--one"}],
        "body.args.0": [CONTEXT7 | {"args": ["x" * 5000]}],
        "body.pakage": [CONTEXT7 | {"pakage": "x"}],
        "body.name": [CONTEXT7 | {"name": "a b"}],
    }
    for field, bodies in cases.items():
        for body in bodies:
            answer = await admin.post("/api/v1/mcp/servers", json=body)
            assert answer.status_code == 422, (field, answer.text)
            assert answer.json()["field"] == field, answer.text


async def test_mcp_config_lists_the_enabled_servers_for_the_agent(
    admin: httpx.AsyncClient, db: Database, settings: Settings
) -> None:
    async with db.session() as session:
        assert await mcp_config(session) is None
    off = {"name": "off", "package": "@mcp/off", "enabled": False}
    uvx = {"name": "time", "package": "mcp-server-time", "command": "uvx", "args": ["--tz=UTC"]}
    for body in (CONTEXT7, off, uvx):
        assert (await admin.post("/api/v1/mcp/servers", json=body)).status_code == 201
    async with db.session() as session:
        config = await mcp_config(session)
    assert config == {
        "mcpServers": {
            "context7": {
                "command": "npx",
                "args": ["-y", "@anthropic-ai/context7", "--transport", "stdio"],
            },
            "time": {"command": "uvx", "args": ["mcp-server-time", "--tz=UTC"]},
        }
    }
    for name in ("context7", "time"):
        assert (await admin.delete(f"/api/v1/mcp/servers/{name}")).status_code == 204
    async with db.session() as session:
        assert await mcp_config(session) is None
        assert len((await session.exec(select(McpServer))).all()) == 1
