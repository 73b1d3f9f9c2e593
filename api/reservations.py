"""Reservations over HTTP: the same rules and errors as `TokenQuota.reserve()`."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any, Literal, Self

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, TypeAdapter, ValidationError, model_validator

from tokenquota.errors import (
    ReservationExpiredError,
    TokenBudgetExhaustedError,
    TokenQuotaExceededError,
    UsdBudgetExceededError,
)
from tokenquota.producers import Reservation
from tokenquota.producers.defaults import account_rule
from tokenquota.producers.integrations.pricing import price_reservation
from tokenquota.schemas import (
    BIGINT_MAX,
    USAGE_TOKENS_MAX,
    AccountPath,
    Money,
    Priority,
    Source,
    TokenReserved,
)

from .auth import Caller
from .lean import body_schema, json_body, json_response
from .metrics import RESERVATIONS
from .state import authorize, state_of

__all__ = ["router"]

router = APIRouter()

#: The header naming the session's account when the body names none.
ACCOUNT_HEADER = "X-Tokenquota-Account"
_ACCOUNT: TypeAdapter[str] = TypeAdapter(AccountPath)


@lru_cache(maxsize=1024)
def _source(name: str) -> Source:
    """The source of the events a caller's requests emit: `http-api:<token name>` (or
    `http-api:local` without tokens), so the log names who reserved, settled, released."""
    return Source(component="sdk", name=f"http-api:{name}"[:100])


class ReserveRequest(BaseModel):
    """What to reserve; mode and ttl default to the reservations settings."""

    session_id: str = Field(min_length=1, max_length=255)
    #: Strict, as the events' counts: `true` or "10" is no token count (pydantic's lax
    #: mode read `true` as 1).
    tokens: int = Field(gt=0, le=BIGINT_MAX, strict=True)
    task_id: str | None = Field(default=None, min_length=1, max_length=255)
    priority: Priority = "normal"
    mode: Literal["strict", "optimistic"] | None = None
    ttl: float | None = Field(default=None, gt=0, description="seconds")
    account: AccountPath | None = Field(
        default=None,
        description="The session's budget tree node (tenant/team/user): every node above "
        "it with limits must have room too",
    )
    model: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="The model the call will use: the reservation is then priced by "
        "genai-prices and held against USD limits until an ApiCost names it",
    )
    provider: str | None = Field(
        default=None, min_length=1, max_length=100, description="e.g. openai, anthropic"
    )
    output_tokens: int | None = Field(
        default=None,
        ge=0,
        le=BIGINT_MAX,
        strict=True,
        description="How many of `tokens` are output (priced at the output price; the rest "
        "at the input price). Default: all of them, the dearer bound",
    )

    @model_validator(mode="after")
    def _output_within_tokens(self) -> Self:
        if self.output_tokens is not None and self.output_tokens > self.tokens:
            raise ValueError(
                f"output_tokens ({self.output_tokens}) is more than tokens ({self.tokens})"
            )
        return self


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

    input_tokens: int = Field(ge=0, le=USAGE_TOKENS_MAX, strict=True)
    output_tokens: int = Field(ge=0, le=USAGE_TOKENS_MAX, strict=True)
    model: str = Field(default="unknown", min_length=1, max_length=200)
    operation: str = Field(default="http_call", min_length=1, max_length=100)
    cost_usd: Money | None = Field(
        default=None,
        description="What the call cost; with it (or a model genai-prices knows) an ApiCost "
        "naming the reservation is sent, which lets go of the dollars its price held",
    )
    provider: str | None = Field(default=None, min_length=1, max_length=100)


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


#: Windows that never reopen by themselves: waiting does not help (409, not 429).
_FOR_GOOD = frozenset({"hard_limit", "total_usd_limit"})


def _refused(exc: TokenQuotaExceededError) -> JSONResponse:
    exhausted = isinstance(exc, TokenBudgetExhaustedError) or exc.window in _FOR_GOOD
    RESERVATIONS.labels("rejected", exc.window).inc()
    dollars: dict[str, str] = {}
    if isinstance(exc, UsdBudgetExceededError):
        dollars = {
            "limit_usd": str(exc.limit_usd),
            "used_usd": str(exc.used_usd),
            "held_usd": str(exc.held_usd),
            "requested_usd": str(exc.requested_usd),
        }
    return JSONResponse(
        status_code=409 if exhausted else 429,
        content={
            **dollars,
            "error": "budget_exhausted" if exhausted else "quota_exceeded",
            "detail": str(exc),
            "session_id": exc.session_id,
            "requested": exc.requested,
            "available": exc.available,
            "limit": exc.limit,
            "window": exc.window,
            "refused_by": exc.refused_by,
        },
    )


def _account(body: ReserveRequest, request: Request) -> str | None:
    """The body's `account`, else the `X-Tokenquota-Account` header's; a 422 at
    header.X-Tokenquota-Account for a header that is not an account path, or that names
    another account than the body."""
    named = request.headers.get(ACCOUNT_HEADER, "").strip()
    if not named:
        return body.account
    try:
        header = _ACCOUNT.validate_python(named)
    except ValidationError:
        reason = f"{named!r} is not an account path: {account_rule()}"
        header = None
    else:
        if body.account is None or body.account == header:
            return header
        reason = (
            f"the header names account {header!r}, the body {body.account!r}: name the "
            "session's account once, or the same in both"
        )
    error = {"loc": ("header", ACCOUNT_HEADER), "msg": reason, "type": "value_error"}
    raise RequestValidationError([error])


_ACCOUNT_PARAMETER = {
    "name": ACCOUNT_HEADER,
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "The session's budget tree node when the body names no `account` "
    "(naming another than the body's is a 422)",
}


@router.post(
    "/v1/reservations",
    status_code=201,
    response_model=None,
    openapi_extra={**body_schema(ReserveRequest), "parameters": [_ACCOUNT_PARAMETER]},
    responses={
        201: {"model": ReservationOut, "description": "granted (strict) or pending (optimistic)"},
        409: {"description": "refused at the hard or total USD limit (waiting does not help)"},
        422: {
            "description": "the body is not a valid reservation request, its model has no "
            "price, or the X-Tokenquota-Account header is not an account path or differs "
            "from the body's account"
        },
        429: {
            "description": "refused under a daily or monthly limit, tokens or USD (or the "
            "critical cap)"
        },
        503: {"description": "the pipeline could not decide"},
    },
)
async def reserve(request: Request) -> Response:
    """Reserve tokens for a session (admin). Strict (the default) answers once the worker
    has decided; optimistic answers at once with a pending reservation. The session's
    account is the body's, else the X-Tokenquota-Account header's."""
    caller = authorize(request, "admin")
    body = await json_body(request, ReserveRequest)
    account = _account(body, request)
    state = state_of(request)
    price = None
    if body.model is not None:
        output = body.tokens if body.output_tokens is None else body.output_tokens
        price = price_reservation(body.model, body.tokens - output, output, body.provider)
        if price is None:
            return JSONResponse(
                status_code=422,
                content={
                    "error": "unknown_model",
                    "detail": f"genai-prices has no price for model {body.model!r}"
                    + (f" of provider {body.provider!r}" if body.provider else "")
                    + ": name a priced model, or leave model out to reserve unpriced",
                },
            )
    try:
        reservation = await state.quota.reserve(
            body.session_id,
            body.tokens,
            body.task_id,
            body.priority,
            body.ttl,
            body.mode,
            source=_source(caller.name),
            account=account,
            reserved_usd=price.usd if price else None,
            price_source=price.source if price else None,
        )
    except TokenQuotaExceededError as exc:
        return _refused(exc)
    except ReservationExpiredError as exc:
        RESERVATIONS.labels("rejected", "expired").inc()
        return JSONResponse(status_code=409, content={"error": "expired", "detail": str(exc)})
    RESERVATIONS.labels(reservation.status, "").inc()
    state.keep(reservation)
    return json_response(_out(reservation), 201)


async def _handle(request: Request, reservation_id: uuid.UUID, caller: Caller) -> Reservation:
    """The reservation to settle or release, its events sourced from `caller`."""
    state = state_of(request)
    source = _source(caller.name)
    if reservation_id in state.closed:
        raise HTTPException(
            409, f"reservation {reservation_id} is already {state.closed[reservation_id]}"
        )
    kept = state.reservations.pop(reservation_id, None)
    if kept is not None:  # its settle or release names who closes it, not who reserved
        event = kept.event.model_copy(update={"source": source})
        return Reservation(state.quota, event, kept.status, kept.delivery, kept.verified)
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
        source=source,
        account=record.account,
        occurred_at=record.requested_at,
        reservation_id=record.reservation_id,
        tokens=record.tokens,
        priority=record.priority,  # type: ignore[arg-type]  # checked by the table
        expires_at=record.expires_at,
    )
    return Reservation(state.quota, event, record.status, "acked")


_CLOSED: dict[int | str, dict[str, Any]] = {
    200: {"model": Settled, "description": "sent: acked by the broker or spooled on this host"},
    404: {"description": "no such reservation"},
    409: {"description": "the reservation is already settled or released"},
}


@router.post(
    "/v1/reservations/{reservation_id}/settle",
    response_model=None,
    openapi_extra=body_schema(SettleRequest),
    responses={**_CLOSED, 422: {"description": "the body is not a valid settlement"}},
)
async def settle(reservation_id: uuid.UUID, request: Request) -> Response:
    """Report what a reservation's call used (admin); the unused rest is released."""
    caller = authorize(request, "admin")
    body = await json_body(request, SettleRequest)
    reservation = await _handle(request, reservation_id, caller)
    delivery = await reservation.settle(
        body.input_tokens, body.output_tokens, body.model, operation=body.operation
    )
    cost: tuple[Decimal, str] | None = None
    if body.cost_usd is not None:
        cost = (body.cost_usd, f"reported:{_source(caller.name).name}")
    elif body.model != "unknown":
        price = price_reservation(body.model, body.input_tokens, body.output_tokens, body.provider)
        cost = (price.usd, price.source) if price is not None else None
    if cost is not None:
        await reservation.cost(
            cost[0],
            cost[1],
            api=body.provider or "http-api",
            model=body.model,
            input_tokens=body.input_tokens,
            output_tokens=body.output_tokens,
        )
    state_of(request).close(reservation_id, "settled")
    return json_response(Settled(reservation_id=reservation_id, delivery=delivery))


@router.post("/v1/reservations/{reservation_id}/release", response_model=None, responses=_CLOSED)
async def release(reservation_id: uuid.UUID, request: Request) -> Response:
    """Give every reserved token back (admin)."""
    caller = authorize(request, "admin")
    reservation = await _handle(request, reservation_id, caller)
    delivery = await reservation.release()
    state_of(request).close(reservation_id, "released")
    return json_response(Settled(reservation_id=reservation_id, delivery=delivery))
