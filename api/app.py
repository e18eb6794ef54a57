"""The FastAPI application and its lifespan: database, Temporal link, routers, middleware."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from api import errors
from api.metrics import MetricsMiddleware
from api.resources import resource_routes
from api.routers import (
    approvals,
    config,
    dashboard,
    docs,
    gates,
    jobs,
    keys,
    mcp,
    probes,
    run_reads,
    runs,
    session_templates,
    task_definitions,
    tasks,
    telegram_webhook,
    tokens,
    workspaces,
)
from api.streams import EventHub, agent_stream_json
from api.telegram_updates import TelegramUpdates
from api.temporal import TemporalLink
from operator_file import load
from settings import VERSION, Settings
from store.engine import Database
from store.models import Job, Run, Task
from store.tokens import Scope, TokenCache
from telegram_bot import BotLink
from workflows.runs import RUN_ENDS
from workflows.task_spec import TAKES_INSTRUCTIONS, TASK_ENDS, TASK_SETTLED

DESCRIPTION = """
Pilothouse runs agent and pipeline work as durable Temporal workflows that stop at
approval gates for a human to decide.

**Auth.** Every route but the probes, `/metrics` and these docs needs a token, sent as
`Authorization: Bearer <token>` or `X-API-Key: <token>`. A missing or unknown token is a 401;
a token without the route's scope is a 403. Admin tokens hold every scope.

**Errors** always have the body `{detail, error_code, timestamp}`.
**Lists** take `?skip=&limit=` and answer `{items, total, skip, limit, links}`.
**Creates** honour an `Idempotency-Key` header: repeating it returns the same resource.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.db = Database(settings.db_url)
        app.state.hub = EventHub(app.state.db)
        app.state.temporal = TemporalLink(settings)
        await app.state.hub.start()
        await app.state.temporal.start()
        link = BotLink(settings) if settings.telegram_on else None
        if link is not None:
            await link.start()
            app.state.telegram = TelegramUpdates(
                settings, app.state.db, lambda: app.state.temporal.client, link
            )
        try:
            yield
        finally:
            if link is not None:
                await link.stop()
            await app.state.temporal.stop()
            await app.state.hub.stop()
            await app.state.db.dispose()

    app = FastAPI(
        title="Pilothouse",
        version=VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
        # Served by api/routers/docs.py, with their assets from here rather than a CDN.
        docs_url=None,
        redoc_url=None,
        openapi_tags=[
            {"name": "auth", "description": "API tokens and their scopes"},
            {"name": "jobs", "description": "Pipeline jobs: stages, gates, events, artifacts"},
            {"name": "runs", "description": "Build runs: tiers, phases, builders and auditors"},
            {"name": "tasks", "description": "Coding-agent tasks on git workspaces"},
            {"name": "keys", "description": "Registered repository credentials, encrypted"},
            {"name": "mcp", "description": "MCP servers given to every agent (admin)"},
            {"name": "approvals", "description": "The inbox of open gates, across families"},
            {"name": "config", "description": "The operator file: pipelines and gates"},
            {"name": "probes", "description": "Liveness, readiness, health and metrics"},
        ],
    )
    app.state.settings = settings
    app.state.tokens = TokenCache(settings.token_recheck_seconds)
    app.state.operator = load(settings.operator_file)
    errors.install(app)
    for router in (
        probes.router,
        docs.router,
        tokens.router,
        jobs.router,
        resource_routes(
            kind="job",
            prefix="/api/v1/jobs",
            table=Job,
            read_scope=Scope.jobs_read,
            terminal=jobs.TERMINAL,
            tags=["jobs"],
        ),
        runs.router,
        # Before the run's resource routes: `/runs/{id}/artifacts/index` is not an artifact id.
        run_reads.router,
        dashboard.router,
        resource_routes(
            kind="run",
            prefix="/runs",
            table=Run,
            read_scope=Scope.runs_read,
            terminal=RUN_ENDS,
            tags=["runs"],
        ),
        tasks.router,
        task_definitions.router,
        session_templates.router,
        resource_routes(
            kind="task",
            prefix="/api/v1/tasks",
            table=Task,
            read_scope=Scope.tasks_read,
            # The coding-agent stream closes once the task has settled, ended or not.
            terminal=TASK_ENDS | TAKES_INSTRUCTIONS,
            tags=["tasks"],
            stream_path="/stream",
            shape=agent_stream_json,
            settles=lambda event: event.type in TASK_SETTLED,
        ),
        workspaces.router,
        gates.router,
        approvals.router,
        config.router,
        keys.router,
        mcp.router,
        # Only with a bot token: without, Telegram is off and nothing else changes.
        *([telegram_webhook.router] if settings.telegram_on else []),
    ):
        app.include_router(router)
    app.mount(docs.ASSETS, docs.assets(), name="docs-assets")
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
        )
    app.add_middleware(MetricsMiddleware, router=app.router)
    logging.getLogger("pilothouse").setLevel(settings.log_level.upper())
    return app
