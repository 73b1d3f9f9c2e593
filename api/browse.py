"""The reads the dashboard page makes beside the operator's: a page of sessions, tokens
over time, a session's tasks and APIs, and who the caller is."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from tokenquota.projections.read_models import SessionApiRow, SessionPage, TaskRow, Timeline

from .auth import Caller
from .reads import known_session
from .state import reader, state_of

__all__ = ["router"]

router = APIRouter(prefix="/v1")


@router.get("/sessions", response_model=SessionPage)
async def sessions(
    request: Request,
    offset: int = Query(default=0, ge=0),
    limit: int = Query(default=25, ge=1, le=500),
    order: Literal["recent", "utilization", "name"] = "recent",
    prefix: str | None = Query(default=None, max_length=255),
    caller: Caller = reader,
) -> SessionPage:
    """A page of sessions with their daily, monthly and total windows: most recently active
    first (`recent`), most utilized first, or by id; `prefix` filters by id."""
    return await state_of(request).dashboard.sessions(
        offset=offset, limit=limit, order=order, prefix=prefix
    )


@router.get("/timeline", response_model=Timeline)
async def timeline(
    request: Request,
    scale: Literal["minute", "hour"] = "minute",
    hours: int = Query(default=48, ge=1, le=24 * 31),
    caller: Caller = reader,
) -> Timeline:
    """Events, tokens, cost and decisions per minute of the last hour (`minute`) or per
    hour of the last `hours` (`hour`), by the log clock."""
    return await state_of(request).dashboard.timeline(scale, hours=hours)


@router.get("/sessions/{session_id}/tasks", response_model=list[TaskRow])
async def tasks(
    session_id: str,
    request: Request,
    limit: int = Query(default=100, ge=1, le=1000),
    caller: Caller = reader,
) -> list[TaskRow]:
    """A session's tasks, latest first (404 for a session no event named)."""
    dashboard = await known_session(request, session_id)
    return await dashboard.session_tasks(session_id, limit)


@router.get("/sessions/{session_id}/apis", response_model=list[SessionApiRow])
async def apis(session_id: str, request: Request, caller: Caller = reader) -> list[SessionApiRow]:
    """A session's external APIs: tokens, cost, rate-limit state (404 for an unknown one)."""
    dashboard = await known_session(request, session_id)
    return await dashboard.session_apis(session_id)


class Whoami(BaseModel):
    """The caller as the API sees it."""

    name: str
    role: str
    tokens_required: bool


@router.get("/whoami", response_model=Whoami)
async def whoami(request: Request, caller: Caller = reader) -> Whoami:
    """Who the token is and its role (the page shows the budget form to admins only)."""
    required = bool(state_of(request).settings.api.tokens)
    return Whoami(name=caller.name, role=caller.role, tokens_required=required)
