"""Reservations over HTTP: the same rules and errors as `TokenQuota.reserve()`."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from tokenquota.errors import (
    ReservationExpiredError,
    TokenBudgetExhaustedError,
    TokenQuotaExceededError,
)
from tokenquota.producers import Reservation
from tokenquota.schemas import Priority, Source, TokenReserved

from .auth import Caller
from .metrics import RESERVATIONS
from .state import admin, state_of

__all__ = ["router"]

router = APIRouter()
_SOURCE = Source(component="sdk", name="http-api")


class ReserveRequest(BaseModel):
    """What to reserve; mode and ttl default to the reservations settings."""

    session_id: str = Field(min_length=1, max_length=255)
    tokens: int = Field(gt=0)
    task_id: str | None = Field(default=None, min_length=1, max_length=255)
    priority: Priority = "normal"
    mode: Literal["strict", "optimistic"] | None = None
    ttl: float | None = Field(default=None, gt=0, description="seconds")


class ReservationOut(BaseModel):
    """A reservation and its state: accepted (strict) or pending (optimistic)."""

    reservation_id: uuid.UUID
    session_id: str
    task_id: str | None
    tokens: int
    priority: str
    status: str
    expires_at: datetime
    verified: bool


class SettleRequest(BaseModel):
    """What the call used (the rest of the reservation is released)."""

    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)
    model: str = Field(default="unknown", min_length=1, max_length=200)
    operation: str = Field(default="http_call", min_length=1, max_length=100)


class Settled(BaseModel):
    """A settlement or release sent: acked by the broker or spooled on this host."""

    reservation_id: uuid.UUID
    delivery: Literal["acked", "spooled"]


def _out(reservation: Reservation) -> ReservationOut:
    event = reservation.event
    return ReservationOut(
        reservation_id=event.reservation_id,
        session_id=event.session_id,
        task_id=event.task_id,
        tokens=event.tokens,
        priority=event.priority,
        status=reservation.status,
        expires_at=event.expires_at,
        verified=reservation.verified,
    )


def _refused(exc: TokenQuotaExceededError) -> JSONResponse:
    exhausted = isinstance(exc, TokenBudgetExhaustedError) or exc.window == "hard_limit"
    RESERVATIONS.labels("rejected", exc.window).inc()
    return JSONResponse(
        status_code=409 if exhausted else 429,
        content={
            "error": "budget_exhausted" if exhausted else "quota_exceeded",
            "detail": str(exc),
            "session_id": exc.session_id,
            "requested": exc.requested,
            "available": exc.available,
            "limit": exc.limit,
            "window": exc.window,
        },
    )


@router.post(
    "/v1/reservations",
    status_code=201,
    response_model=ReservationOut,
    responses={
        409: {"description": "refused at the hard limit (waiting does not help)"},
        429: {"description": "refused under a daily or monthly limit (or the critical cap)"},
        503: {"description": "the pipeline could not decide"},
    },
)
async def reserve(
    body: ReserveRequest, request: Request, caller: Caller = admin
) -> ReservationOut | JSONResponse:
    """Reserve tokens for a session. Strict (the default) answers once the worker has
    decided; optimistic answers at once with a pending reservation."""
    state = state_of(request)
    try:
        reservation = await state.quota.reserve(
            body.session_id,
            body.tokens,
            body.task_id,
            body.priority,
            body.ttl,
            body.mode,
            source=_SOURCE,
        )
    except TokenQuotaExceededError as exc:
        return _refused(exc)
    except ReservationExpiredError as exc:
        RESERVATIONS.labels("rejected", "expired").inc()
        return JSONResponse(status_code=409, content={"error": "expired", "detail": str(exc)})
    RESERVATIONS.labels(reservation.status, "").inc()
    state.keep(reservation)
    return _out(reservation)


async def _handle(request: Request, reservation_id: uuid.UUID) -> Reservation:
    state = state_of(request)
    if reservation_id in state.closed:
        raise HTTPException(
            409, f"reservation {reservation_id} is already {state.closed[reservation_id]}"
        )
    kept = state.reservations.pop(reservation_id, None)
    if kept is not None:
        return kept
    # Not granted by this process (or forgotten): rebuilt from the worker's record.
    record = await state.quota.reservation(reservation_id)
    if record is None:
        raise HTTPException(404, f"unknown reservation {reservation_id}")
    if record.status not in ("accepted", "pending", "expired"):
        raise HTTPException(409, f"reservation {reservation_id} is already {record.status}")
    event = TokenReserved(
        event_id=record.event_id,
        session_id=record.session_id,
        task_id=record.task_id,
        source=_SOURCE,
        occurred_at=record.requested_at,
        reservation_id=record.reservation_id,
        tokens=record.tokens,
        priority=record.priority,  # type: ignore[arg-type]  # checked by the table
        expires_at=record.expires_at,
    )
    return Reservation(state.quota, event, record.status, "acked")


@router.post("/v1/reservations/{reservation_id}/settle", response_model=Settled)
async def settle(
    reservation_id: uuid.UUID, body: SettleRequest, request: Request, caller: Caller = admin
) -> Settled:
    """Report what a reservation's call used; the unused rest is released."""
    reservation = await _handle(request, reservation_id)
    delivery = await reservation.settle(
        body.input_tokens, body.output_tokens, body.model, operation=body.operation
    )
    state_of(request).close(reservation_id, "settled")
    return Settled(reservation_id=reservation_id, delivery=delivery)


@router.post("/v1/reservations/{reservation_id}/release", response_model=Settled)
async def release(reservation_id: uuid.UUID, request: Request, caller: Caller = admin) -> Settled:
    """Give every reserved token back."""
    reservation = await _handle(request, reservation_id)
    delivery = await reservation.release()
    state_of(request).close(reservation_id, "released")
    return Settled(reservation_id=reservation_id, delivery=delivery)
