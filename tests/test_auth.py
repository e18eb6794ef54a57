"""Tokens: hashed at rest, accepted in two headers, scoped, managed by admins and the CLI."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from store.models import Token
from store.tokens import Scope
from tests.conftest import Api, make_token


def cli(api: Api, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PILOTHOUSE_DATABASE_URL=api.settings.db_url)
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], env=env, capture_output=True, text=True, timeout=60
    )


async def test_cli_token_prints_the_secret_alone_and_works_in_both_headers(api: Api) -> None:
    made = cli(api, "token", "create", "ci-bot", "--scopes", "jobs:read,runs:read")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert made.stdout == secret + "\n" and secret.startswith("ph_")
    for header in ("bearer", "x-api-key"):
        async with api.client(secret, header) as client:
            answer = await client.get("/whoami")
        assert answer.status_code == 200, answer.text
        assert answer.json()["message"] == "ci-bot"
        assert answer.json()["scopes"] == ["jobs:read", "runs:read"]


async def test_cli_lists_and_revokes_tokens(api: Api) -> None:
    secret = cli(api, "token", "create", "temp", "--scopes", "sessions:read").stdout.strip()
    listed = cli(api, "token", "list")
    assert "temp" in listed.stdout and "sessions:read" in listed.stdout
    assert secret not in listed.stdout
    assert cli(api, "token", "revoke", "temp").returncode == 0
    async with api.client(secret) as client:
        answer = await client.get("/whoami")
    assert answer.status_code == 401
    assert answer.json()["error_code"] == "INVALID_TOKEN"
    missing = cli(api, "token", "revoke", "temp")
    assert missing.returncode == 1 and "no live token" in missing.stderr


async def test_cli_rejects_unknown_scopes_by_name(api: Api) -> None:
    made = cli(api, "token", "create", "bad", "--scopes", "jobs:read,jobs:fly")
    assert made.returncode == 1
    assert "jobs:fly" in made.stderr and made.stdout == ""


async def test_tokens_are_stored_as_hashes_only(api: Api) -> None:
    async with api.db.session() as session:
        rows = (await session.exec(sa.select(Token))).all()  # type: ignore[call-overload]
    dumped = repr([tuple(r) for r in rows])
    assert api.admin_token not in dumped
    assert len(rows) == 1


async def test_missing_and_invalid_tokens_are_401(api: Api) -> None:
    async with api.client() as client:
        missing = await client.get("/auth/tokens")
    async with api.client("ph_nope") as client:
        invalid = await client.get("/auth/tokens")
    assert missing.status_code == invalid.status_code == 401
    assert missing.json()["error_code"] == "NOT_AUTHENTICATED"
    assert invalid.json()["error_code"] == "INVALID_TOKEN"
    assert missing.headers["www-authenticate"] == "Bearer"


async def test_token_routes_are_for_admins_only(api: Api) -> None:
    reader = await make_token(api.db, "reader", Scope.sessions_read, Scope.jobs_write)
    async with api.client(reader) as client:
        for method, path in (
            ("GET", "/auth/tokens"),
            ("POST", "/auth/tokens"),
            ("DELETE", "/auth/tokens/x"),
        ):
            answer = await client.request(method, path, json={"name": "x"})
            assert answer.status_code == 403, (method, path)
            assert answer.json()["error_code"] == "INSUFFICIENT_SCOPE"
            assert "admin" in answer.json()["detail"]


async def test_admin_creates_lists_and_revokes(api: Api) -> None:
    async with api.client(api.admin_token) as client:
        made = await client.post(
            "/auth/tokens", json={"name": "bot", "scopes": ["approvals:write"], "expires_in": 3600}
        )
        assert made.status_code == 201, made.text
        body = made.json()
        assert body["token"].startswith("ph_") and body["expires_at"]
        listed = await client.get("/auth/tokens")
        assert listed.json()["total"] == 2
        assert all("token" not in item for item in listed.json()["items"])
        assert await _whoami(api, body["token"]) == 200
        revoked = await client.delete(f"/auth/tokens/{body['id']}")
        assert revoked.status_code == 200
        assert await _whoami(api, body["token"]) == 401
        assert (await client.get("/auth/tokens")).json()["total"] == 1
        everything = await client.get("/auth/tokens", params={"include_revoked": "true"})
        assert everything.json()["total"] == 2
        gone = await client.delete("/auth/tokens/no-such-id")
        assert gone.status_code == 404 and gone.json()["error_code"] == "TOKEN_NOT_FOUND"


async def _whoami(api: Api, token: str) -> int:
    async with api.client(token) as client:
        return (await client.get("/whoami")).status_code


async def test_expired_tokens_are_refused(api: Api) -> None:
    reader = await make_token(api.db, "short", Scope.jobs_read)
    assert await _whoami(api, reader) == 200
    async with api.db.session() as session:
        await session.exec(
            sa.update(Token)
            .where(Token.name == "short")  # type: ignore[arg-type]
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        await session.commit()
    # Like a revoke, a changed expiry is read once the API's recheck has passed.
    await asyncio.sleep(api.settings.token_recheck_seconds)
    assert await _whoami(api, reader) == 401


async def test_a_live_name_cannot_be_taken_twice(api: Api) -> None:
    async with api.client(api.admin_token) as client:
        first = await client.post("/auth/tokens", json={"name": "dup", "scopes": ["jobs:read"]})
        again = await client.post("/auth/tokens", json={"name": "dup", "scopes": ["jobs:read"]})
        assert first.status_code == 201
        assert again.status_code == 409 and again.json()["error_code"] == "TOKEN_NAME_TAKEN"
        await client.delete(f"/auth/tokens/{first.json()['id']}")
        reused = await client.post("/auth/tokens", json={"name": "dup", "scopes": ["jobs:read"]})
        assert reused.status_code == 201


async def test_idempotency_key_returns_the_same_token(api: Api) -> None:
    body = {"name": "once", "scopes": ["tasks:read"]}
    async with api.client(api.admin_token) as client:
        headers = {"Idempotency-Key": "create-once-1"}
        first = await client.post("/auth/tokens", json=body, headers=headers)
        second = await client.post("/auth/tokens", json=body, headers=headers)
        other = await client.post("/auth/tokens", json={**body, "name": "twice"}, headers=headers)
        bad = await client.post("/auth/tokens", json=body, headers={"Idempotency-Key": "a b"})
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] == second.json()["id"]
    assert first.json()["token"] and second.json()["token"] is None
    assert other.status_code == 422 and other.json()["error_code"] == "IDEMPOTENCY_KEY_REUSED"
    assert bad.status_code == 422 and "Idempotency-Key" in bad.json()["detail"]


async def test_bad_token_bodies_name_the_field(api: Api) -> None:
    async with api.client(api.admin_token) as client:
        answer = await client.post("/auth/tokens", json={"name": "x", "scopes": ["root"]})
        empty = await client.post("/auth/tokens", json={"name": "", "scopes": ["admin"]})
        short = await client.post(
            "/auth/tokens", json={"name": "y", "scopes": ["admin"], "expires_in": 5}
        )
    assert answer.status_code == 422
    assert answer.json()["error_code"] == "VALIDATION_ERROR"
    assert "body.scopes.0" in answer.json()["detail"]
    assert "body.name" in empty.json()["detail"]
    assert "body.expires_in" in short.json()["detail"]
