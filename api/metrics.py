"""Prometheus metrics: HTTP by route template and status, latency, workflow starts, decisions."""

from __future__ import annotations

import time

from prometheus_client import Counter, Histogram
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HTTP_REQUESTS = Counter(
    "pilothouse_http_requests_total",
    "HTTP requests by method, route template and status",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "pilothouse_http_request_duration_seconds",
    "HTTP request latency by method and route template",
    ["method", "route"],
)
WORKFLOW_STARTS = Counter(
    "pilothouse_workflow_starts_total", "Workflows started through the API", ["kind"]
)
DECISIONS = Counter("pilothouse_decisions_total", "Gate decisions applied", ["outcome", "via"])


def _route_template(app: ASGIApp, scope: Scope) -> str:
    route = scope.get("route")
    if route is not None:
        return str(route.path)
    # The router sets scope["route"] only on success; find the template ourselves
    # so 401s and 404s on real routes still count under their template.
    for candidate in getattr(app, "routes", []):
        match, _ = candidate.matches(scope)
        if match == Match.FULL:
            return str(candidate.path)
    return "<unmatched>"


class MetricsMiddleware:
    """Pure ASGI, so it never buffers a streaming (SSE) response."""

    def __init__(self, app: ASGIApp, router: ASGIApp) -> None:
        self.app = app
        self.router = router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = _route_template(self.router, scope)
            HTTP_REQUESTS.labels(scope["method"], route, str(status)).inc()
            HTTP_LATENCY.labels(scope["method"], route).observe(time.perf_counter() - start)
