"""A fast lane for the routes called once per LLM call: POST /v1/reservations and its
settle and release.

It hands those requests straight to their endpoint functions (the same ones FastAPI
routes and documents), skipping the router, the per-request exception and exit-stack
middleware and FastAPI's request wrapper: at 100 concurrent callers these cost about
as much CPU as the reservation itself (benchmarks/api.py). Errors go through the app's
own exception handlers, so the answers are the same either way; anything the lane does
not recognise (another method, a malformed id) goes on to FastAPI.
"""

from __future__ import annotations

import inspect
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from . import reservations

__all__ = ["ReservationLane"]

_Endpoint = Callable[..., Awaitable[Response]]

_RESERVE = "/v1/reservations"
_CLOSE = re.compile(r"/v1/reservations/([0-9a-fA-F-]{32,36})/(settle|release)")
_CLOSERS: dict[str, _Endpoint] = {"settle": reservations.settle, "release": reservations.release}


class ReservationLane:
    """ASGI middleware serving the reservation routes by calling their endpoints directly."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # Their routes, which the request metrics name requests by.
        self._routes = {
            route.endpoint: route
            for route in reservations.router.routes
            if isinstance(route, APIRoute)
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        matched = _match(scope) if scope["type"] == "http" else None
        if matched is None:
            await self.app(scope, receive, send)
            return
        endpoint, args = matched
        app: FastAPI = scope["app"]
        scope["route"] = self._routes[endpoint]
        request = Request(scope, receive)
        try:
            response = await endpoint(*args, request)
        except Exception as exc:
            handled = await _handled(app, request, exc)
            if handled is None:
                raise  # a 500, as FastAPI would answer it
            response = handled
        await response(scope, receive, send)


def _match(scope: Scope) -> tuple[_Endpoint, tuple[Any, ...]] | None:
    """The endpoint of a reservation route and its path arguments; None for anything else."""
    if scope["method"] != "POST":
        return None
    path: str = scope["path"]
    if path == _RESERVE:
        return reservations.reserve, ()
    found = _CLOSE.fullmatch(path)
    if found is None:
        return None
    try:
        reservation_id = uuid.UUID(found[1])
    except ValueError:
        return None  # FastAPI answers it (422)
    return _CLOSERS[found[2]], (reservation_id,)


async def _handled(app: FastAPI, request: Request, exc: Exception) -> Response | None:
    """The app's answer to `exc`, from the handler Starlette would pick (an HTTP error's
    status code first, then the nearest class); None when it has no handler for it."""
    handlers = app.exception_handlers
    handler = None
    if isinstance(exc, HTTPException):
        handler = handlers.get(exc.status_code)
    for kind in type(exc).__mro__:
        if handler is not None:
            break
        handler = handlers.get(kind)
    if handler is None:
        return None
    answer = handler(request, exc)
    return await answer if inspect.isawaitable(answer) else answer
