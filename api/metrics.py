"""The API's Prometheus metrics: HTTP latency, ingest, reservations, this process's spool.

No per-session label: per-session numbers are the API's JSON, not metrics.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokenquota.producers.spool_depth import pending_bytes

from .auth import Caller
from .state import reader

__all__ = ["INGESTED", "RESERVATIONS", "SPOOL_BYTES", "RequestTimer", "router"]

HTTP_SECONDS = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency of the tokenquota API",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
INGESTED = Counter(
    "tokenquota_ingested_events_total", "Events POSTed to /v1/events, by result", ["result"]
)
RESERVATIONS = Counter(
    "tokenquota_http_reservations_total",
    "Reservations asked over HTTP, by status and rejection reason",
    ["status", "reason"],
)
SPOOL_BYTES = Gauge(
    "tokenquota_spool_bytes", "Bytes this process's emitter holds that Kafka has not acked"
)

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, caller: Caller = reader) -> Response:
    """Prometheus text format (a read token with api.tokens configured)."""
    SPOOL_BYTES.set(pending_bytes(request.app.state.api.settings.spool_dir))
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


class RequestTimer:
    """ASGI middleware: time every request by its route template (never the raw path).

    Plain ASGI rather than `@app.middleware("http")`: Starlette's BaseHTTPMiddleware runs
    each request in a task group of its own and streams the response through it, which
    costs more per request than the timing itself.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            # The router put the matched route into this same scope.
            template = getattr(scope.get("route"), "path", "unmatched")
            HTTP_SECONDS.labels(scope["method"], template, str(status)).observe(
                time.perf_counter() - started
            )
