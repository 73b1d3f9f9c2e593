"""The FastAPI app: lifespan (client, dashboard), routes, errors as JSON, metrics."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from tokenquota import __version__
from tokenquota.config import Settings
from tokenquota.dashboard import AsyncTokenDashboard
from tokenquota.errors import IntegrationError, QueryValueError, UnknownSessionError
from tokenquota.gc_settings import bulk_gc
from tokenquota.health import check_integration_health_async
from tokenquota.producers import TokenQuota
from tokenquota.schemas import Source
from tokenquota.schemas.codec import pattern_reason

from . import browse, ingest, reads, reservations
from .auth import RateLimiter
from .body_limit import BodyLimit
from .docs import mount_docs
from .lane import ReservationLane
from .metrics import RequestTimer
from .metrics import router as metrics_router
from .page import mount_page
from .state import ApiState, reader

__all__ = ["create_app"]

log = logging.getLogger("tokenquota.api")


def create_app(settings: Settings) -> FastAPI:
    """The HTTP API over `settings`' broker and database."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        quota = TokenQuota(settings, source=Source(component="sdk", name="http-api"))
        await quota.start()
        dashboard = AsyncTokenDashboard(settings)
        try:
            await dashboard.open()
            app.state.api = ApiState(
                settings,
                quota,
                dashboard,
                RateLimiter(settings.api.rate_limit, settings.api.rate_burst),
            )
            # Frozen out of collection once started: a full collection walked every
            # object of FastAPI, pydantic and the clients, a pause of 60-75 ms about
            # once a second under load, which every request in flight waited out.
            with bulk_gc():
                yield
        finally:
            await dashboard.close()
            await quota.close()

    app = FastAPI(
        title="tokenquota",
        version=__version__,
        summary="Token budgets, usage and costs of LLM agents and MCP tools",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # served by mount_docs, behind the tokens
        lifespan=lifespan,
    )
    # Added first, so it runs inside the request timer (the last added runs outermost).
    app.add_middleware(ReservationLane)
    # Around the lane too: no route reads more than MAX_BODY_BYTES of a body.
    app.add_middleware(BodyLimit)
    app.add_middleware(RequestTimer)
    app.include_router(ingest.router)
    app.include_router(reservations.router)
    app.include_router(reads.router)
    app.include_router(browse.router)
    app.include_router(metrics_router)
    mount_docs(app, tokens_required=bool(settings.api.tokens))
    mount_page(app)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers (no authentication)."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request, caller: object = reader) -> JSONResponse:
        """The integration health check: 200 when ok or degraded, 503 when down."""
        health = await check_integration_health_async(settings)
        return JSONResponse(
            status_code=503 if health.status == "down" else 200,
            content=health.model_dump(mode="json"),
        )

    # Starlette's class, which FastAPI's extends: the router's own 404 and 405 raise it.
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(
            status_code=exc.status_code,
            content={"error": _ERRORS.get(exc.status_code, "error"), "detail": exc.detail},
            headers=exc.headers,
        )

    # A server tokenquota depends on is unreachable: 503; a session no event named: 404.
    @app.exception_handler(IntegrationError)
    async def unavailable(request: Request, exc: IntegrationError) -> JSONResponse:
        return JSONResponse(status_code=503, content={"error": "unavailable", "detail": str(exc)})

    # A read the calendar or PostgreSQL cannot take (a date near year 9999, a NUL): 422.
    @app.exception_handler(QueryValueError)
    async def unreadable(request: Request, exc: QueryValueError) -> JSONResponse:
        errors = [{"path": "query", "reason": str(exc)}]
        return JSONResponse(status_code=422, content={"error": "invalid", "errors": errors})

    @app.exception_handler(UnknownSessionError)
    async def unknown_session(request: Request, exc: UnknownSessionError) -> JSONResponse:
        return JSONResponse(status_code=404, content={"error": "not_found", "detail": str(exc)})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "path": ".".join(str(p) for p in e["loc"]),
                "reason": pattern_reason(e) if e["type"] == "string_pattern_mismatch" else e["msg"],
            }
            for e in exc.errors()
        ]
        return JSONResponse(status_code=422, content={"error": "invalid", "errors": errors})

    return app


_ERRORS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    422: "invalid",
    429: "rate_limited",
    503: "unavailable",
}
