"""Public probes: liveness, readiness, health, Prometheus metrics. No token needed."""

from __future__ import annotations

from typing import Literal

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy import text

from api.errors import now_iso
from api.route import strict_router
from settings import VERSION, Settings
from store.engine import Database
from store.migrate import current_revision, head_revision

router = strict_router(tags=["probes"])


class Liveness(BaseModel):
    status: Literal["ok"] = "ok"
    version: str = VERSION


class Readiness(BaseModel):
    ready: bool
    status: Literal["ready", "not_ready"]
    checks: dict[str, str] = Field(description="database, migrations, temporal: ok or the problem")
    detail: str | None = Field(None, description="What is not ready, when something is not")
    error_code: str | None = None
    timestamp: str
    version: str = VERSION


class Health(BaseModel):
    status: Literal["healthy", "degraded", "unhealthy"]
    timestamp: str
    database_identity: str = Field(description="A hash of the database URL, for drift detection")
    database: str = Field(description="`connected` or `error: …`")
    temporal: str = Field(description="`connected` or `error: …`")
    kill_switches: dict[str, bool]
    version: str = VERSION
    service: str = "pilothouse"


async def _database_problem(db: Database) -> str | None:
    try:
        async with db.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return None


async def _migration_problem(db: Database) -> str | None:
    try:
        current = await current_revision(db)
    except Exception as exc:
        return f"unknown: {type(exc).__name__}"
    head = head_revision()
    return None if current == head else f"at {current or 'nothing'}, head is {head}"


async def _readiness(request: Request) -> Readiness:
    db: Database = request.app.state.db
    db_problem = await _database_problem(db)
    problems = {
        "database": db_problem,
        "migrations": "database unreachable" if db_problem else await _migration_problem(db),
        "temporal": await request.app.state.temporal.problem(),
    }
    failing = {name: p for name, p in problems.items() if p}
    return Readiness(
        ready=not failing,
        status="not_ready" if failing else "ready",
        checks={name: p or "ok" for name, p in problems.items()},
        detail="; ".join(f"{name} {p}" for name, p in failing.items()) or None,
        error_code="NOT_READY" if failing else None,
        timestamp=now_iso(),
    )


@router.get("/healthz", summary="Liveness")
@router.get("/api/v1/healthz", summary="Liveness (operator console path)")
async def healthz() -> Liveness:
    """Answers while the process serves requests; checks nothing else."""
    return Liveness()


@router.get(
    "/readyz",
    summary="Readiness",
    responses={503: {"model": Readiness, "description": "Something is not ready"}},
)
async def readyz(request: Request) -> Response:
    """Ready when the database answers, migrations are at head and Temporal answers."""
    result = await _readiness(request)
    return JSONResponse(
        result.model_dump(mode="json", exclude_none=True), status_code=200 if result.ready else 503
    )


@router.get(
    "/health",
    summary="Health with database identity and kill switches",
    responses={503: {"model": Health, "description": "Unhealthy: the database is unreachable"}},
)
@router.get("/ready", summary="Health (alias of /health)", include_in_schema=True)
async def health(request: Request) -> Response:
    """`unhealthy` (503) without the database; `degraded` without Temporal."""
    settings: Settings = request.app.state.settings
    db_problem = await _database_problem(request.app.state.db)
    temporal_problem = await request.app.state.temporal.problem()
    state: Literal["healthy", "degraded", "unhealthy"] = (
        "unhealthy" if db_problem else "degraded" if temporal_problem else "healthy"
    )
    body = Health(
        status=state,
        timestamp=now_iso(),
        database_identity=settings.database_identity,
        database=f"error: {db_problem}" if db_problem else "connected",
        temporal=f"error: {temporal_problem}" if temporal_problem else "connected",
        kill_switches=settings.kill_switches,
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=503 if db_problem else 200)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
