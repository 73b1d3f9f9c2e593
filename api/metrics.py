"""The API's Prometheus metrics: HTTP latency, ingest, reservations, this process's spool.

No per-session label: per-session numbers are the API's JSON, not metrics.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from tokenquota.producers.spool_depth import pending_bytes

__all__ = ["INGESTED", "RESERVATIONS", "SPOOL_BYTES", "observe_requests", "router"]

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
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    SPOOL_BYTES.set(pending_bytes(request.app.state.api.settings.spool_dir))
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def observe_requests(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """Middleware: time every request by its route template (never the raw path)."""
    started = time.perf_counter()
    response = await call_next(request)
    route = request.scope.get("route")
    template = getattr(route, "path", "unmatched")
    HTTP_SECONDS.labels(request.method, template, str(response.status_code)).observe(
        time.perf_counter() - started
    )
    return response
