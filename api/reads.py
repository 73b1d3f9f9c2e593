"""The read models over HTTP, and the budget change (admin)."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from tokenquota.dashboard import AsyncTokenDashboard
from tokenquota.errors import UnknownSessionError
from tokenquota.producers.budgets import merged_usd, set_account_budget, set_budget
from tokenquota.projections import UsdLimits
from tokenquota.projections.read_models import (
    AccountTreeNode,
    AlertRow,
    AuditRow,
    CostRow,
    DailyReport,
    DecisionRow,
    IntegrationLogRow,
    SessionReport,
    SystemOverview,
    TopAccount,
    TopSession,
    Usd,
)
from tokenquota.schemas import AccountPath, Money
from tokenquota.schemas.envelope import ACCOUNT_MAX_DEPTH

from .auth import Caller
from .lean import body_schema, json_body
from .state import admin, reader, state_of

__all__ = ["known_session", "router"]

router = APIRouter(prefix="/v1")
_LIMIT = Query(default=100, ge=1, le=1000)
_DATE = Query(default=None, alias="date")
_TOP = Query(default=10, ge=1, le=1000)


@router.get("/sessions/{session_id}", response_model=SessionReport)
async def session(session_id: str, request: Request, caller: Caller = reader) -> SessionReport:
    """A session's limits, usage and remaining tokens per window, reservations and cost."""
    return await state_of(request).dashboard.get_session_metrics(session_id)


class BudgetRequest(BaseModel):
    """New limits. Thresholds and USD limits left out keep the current ones; a USD limit
    given as null is removed. USD amounts are decimal strings ("500.00") or integers."""

    daily_limit: int = Field(ge=0, strict=True)
    monthly_limit: int = Field(ge=0, strict=True)
    hard_limit: int = Field(ge=0, strict=True)
    warning_threshold: Decimal | None = Field(default=None, gt=0, le=1)
    critical_threshold: Decimal | None = Field(default=None, gt=0, le=1)
    daily_usd_limit: Money | None = None
    monthly_usd_limit: Money | None = None
    total_usd_limit: Money | None = None

    def usd_changes(self) -> dict[str, Decimal | None]:
        """The USD windows this request names (None: remove that limit)."""
        return {
            name.removesuffix("_usd_limit"): getattr(self, name)
            for name in ("daily_usd_limit", "monthly_usd_limit", "total_usd_limit")
            if name in self.model_fields_set
        }


@router.put(
    "/sessions/{session_id}/budget",
    response_model=SessionReport,
    openapi_extra=body_schema(BudgetRequest),
)
async def put_budget(session_id: str, request: Request, caller: Caller = admin) -> SessionReport:
    """Set a session's budget: a BudgetSet naming the token as its actor, answered once the
    worker has applied it."""
    body = await json_body(request, BudgetRequest)  # a key given twice is a 422
    state = state_of(request)
    try:
        current = (await state.quota.session_metrics(session_id)).usd
        await set_budget(
            state.quota,
            session_id,
            usd=merged_usd(current.limits if current else None, body.usd_changes()),
            daily_limit=body.daily_limit,
            monthly_limit=body.monthly_limit,
            hard_limit=body.hard_limit,
            warning_threshold=body.warning_threshold,
            critical_threshold=body.critical_threshold,
            actor=caller.actor,
        )
        return await state.dashboard.get_session_metrics(session_id)
    except ValidationError as exc:  # limits or thresholds out of order: nothing was sent
        raise RequestValidationError(_located(exc.errors())) from None


class AccountNode(BaseModel):
    """A budget tree node: its limits (none: it does not limit), the usage of every session
    under it per window, the tokens they hold, and what is left under its limits."""

    account: str
    known: bool
    daily_limit: int | None
    monthly_limit: int | None
    hard_limit: int | None
    tokens_used_today: int
    tokens_used_month: int
    tokens_used_total: int
    tokens_held: int
    available_tokens: int | None
    binding_limit: str | None
    utilization: Decimal | None
    reservations_accepted: int
    reservations_rejected: int
    updated_at: datetime | None
    daily_usd_limit: Usd | None = None
    monthly_usd_limit: Usd | None = None
    total_usd_limit: Usd | None = None
    usd_used_today: Usd = Decimal(0)
    usd_used_month: Usd = Decimal(0)
    usd_used_total: Usd = Decimal(0)
    #: Dollars priced reservations hold until their ApiCost; what is left under the
    #: tightest USD limit (None: no USD limit).
    usd_held: Usd = Decimal(0)
    available_usd: Usd | None = None


def _checked(path: str, *where: str) -> str:
    """`path` if it is an account path; else a 422 locating it at `where`."""
    try:
        return _ACCOUNT.validate_python(path)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": (*where, *e["loc"])} for e in exc.errors()]
        ) from None


async def _nodes(request: Request, account: str) -> list[AccountNode]:
    checked = _checked(account, "path", "account")
    nodes = await state_of(request).quota.account_metrics(checked)
    return [
        AccountNode(
            account=n.account,
            known=n.known,
            daily_limit=n.limits.daily_limit if n.limits else None,
            monthly_limit=n.limits.monthly_limit if n.limits else None,
            hard_limit=n.limits.hard_limit if n.limits else None,
            tokens_used_today=n.tokens_used_today,
            tokens_used_month=n.tokens_used_month,
            tokens_used_total=n.tokens_used_total,
            tokens_held=n.tokens_held,
            available_tokens=n.available_tokens,
            binding_limit=n.binding_limit,
            utilization=n.utilization,
            reservations_accepted=n.reservations_accepted,
            reservations_rejected=n.reservations_rejected,
            updated_at=n.updated_at,
            **(n.usd.columns() if n.usd else {}),
        )
        for n in nodes
    ]


@router.get("/accounts", response_model=list[AccountTreeNode])
async def accounts(
    request: Request,
    root: str | None = Query(default=None, description="Only this node and the nodes below it."),
    caller: Caller = reader,
) -> list[AccountTreeNode]:
    """Every budget tree node (under `root` when given), a parent before its children:
    limits in tokens and USD, usage per window, held, available, utilization (the highest
    of its token and USD windows; null without limits), this month's tokens and cost."""
    checked = None if root is None else _checked(root, "query", "root")
    return await state_of(request).dashboard.account_tree(checked)


@router.get("/accounts/{account:path}", response_model=list[AccountNode])
async def account(account: str, request: Request, caller: Caller = reader) -> list[AccountNode]:
    """A budget tree node and the nodes above it (tenant first): limits, usage per window,
    held and available tokens."""
    return await _nodes(request, account)


@router.put(
    "/accounts/{account:path}/budget",
    response_model=list[AccountNode],
    openapi_extra=body_schema(BudgetRequest),
)
async def put_account_budget(
    account: str, request: Request, caller: Caller = admin
) -> list[AccountNode]:
    """Set a budget tree node's limits (every session under it must fit them too): a
    BudgetSet naming the token as its actor, answered once the worker has applied it."""
    body = await json_body(request, BudgetRequest)  # a key given twice is a 422
    node = (await _nodes(request, account))[-1]  # a valid path
    current = UsdLimits(node.daily_usd_limit, node.monthly_usd_limit, node.total_usd_limit)
    try:
        await set_account_budget(
            state_of(request).quota,
            account,
            usd=merged_usd(current, body.usd_changes()),
            daily_limit=body.daily_limit,
            monthly_limit=body.monthly_limit,
            hard_limit=body.hard_limit,
            warning_threshold=body.warning_threshold,
            critical_threshold=body.critical_threshold,
            actor=caller.actor,
        )
    except ValidationError as exc:
        raise RequestValidationError(_located(exc.errors())) from None
    return await _nodes(request, account)


_ACCOUNT: TypeAdapter[str] = TypeAdapter(AccountPath)


def _located(errors: list[ErrorDetails]) -> list[dict[str, Any]]:
    """A BudgetSet's errors located in the request: the path's session id, else the body
    (the ordering rules of the limits and thresholds name no single field)."""
    located = []
    for error in errors:
        part = "path" if error["loc"][:1] == ("session_id",) else "body"
        located.append({**error, "loc": (part, *error["loc"])})
    return located


@router.get("/overview", response_model=SystemOverview)
async def overview(request: Request, caller: Caller = reader) -> SystemOverview:
    """Today, this month, the last minute, lag per partition, DLQ and spool, top sessions."""
    return await state_of(request).dashboard.get_system_overview()


@router.get("/reports/daily", response_model=DailyReport)
async def daily(request: Request, day: date | None = _DATE, caller: Caller = reader) -> Response:
    """One day's report (default today): per session, per API and model."""
    report = await state_of(request).dashboard.generate_daily_report(day)
    # Serialized as it is: FastAPI would validate a report of 10,000 sessions again.
    return Response(report.model_dump_json(), media_type="application/json")


@router.get("/reports/top-accounts", response_model=list[TopAccount])
async def top_accounts(
    request: Request,
    by: Literal["tokens", "cost"] = "tokens",
    limit: int = _TOP,
    depth: int | None = Query(default=None, ge=1, le=ACCOUNT_MAX_DEPTH),
    under: str | None = None,
    day: date | None = _DATE,
    caller: Caller = reader,
) -> list[TopAccount]:
    """The day's budget tree nodes (default today) ranked by the tokens or cost of the
    sessions under them, with their reservations accepted, rejected and refused by the
    node's own limit; only nodes `depth` deep (1: tenants), only `under` and below."""
    checked = None if under is None else _checked(under, "query", "under")
    return await state_of(request).dashboard.top_accounts(by, limit, day, depth, checked)


@router.get("/costs", response_model=list[CostRow])
async def costs(
    request: Request,
    by: Literal["api", "model", "day"] = "api",
    since: date | None = None,
    until: date | None = None,
    caller: Caller = reader,
) -> list[CostRow]:
    """API cost per API, model or day (default the last 30 days)."""
    try:
        return await state_of(request).dashboard.costs(by, since, until)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None


@router.get("/top", response_model=list[TopSession])
async def top(
    request: Request,
    by: Literal["tokens", "cost"] = "tokens",
    limit: int = _TOP,
    day: date | None = _DATE,
    caller: Caller = reader,
) -> list[TopSession]:
    """The day's top sessions by tokens or cost."""
    return await state_of(request).dashboard.top_sessions(by, limit, day)


@router.get("/decisions", response_model=list[DecisionRow])
async def decisions(
    request: Request,
    session_id: str | None = None,
    status: Literal["accepted", "rejected", "settled", "released", "expired"] | None = None,
    limit: int = _LIMIT,
    caller: Caller = reader,
) -> list[DecisionRow]:
    """Recent reservation decisions, newest first (404 for a session no event named)."""
    dashboard = await known_session(request, session_id)
    return await dashboard.recent_decisions(session_id, status, limit)


@router.get("/alerts", response_model=list[AlertRow])
async def alerts(
    request: Request,
    since: datetime | None = None,
    session_id: str | None = None,
    limit: int = _LIMIT,
    caller: Caller = reader,
) -> list[AlertRow]:
    """Threshold crossings and refusals at a limit, newest first, with webhook delivery
    (404 for a session no event named)."""
    dashboard = await known_session(request, session_id)
    return await dashboard.recent_alerts(since, session_id, limit)


@router.get("/sessions/{session_id}/integration-logs", response_model=list[IntegrationLogRow])
async def integration_logs(
    session_id: str,
    request: Request,
    since: datetime | None = None,
    limit: int = _LIMIT,
    caller: Caller = reader,
) -> list[IntegrationLogRow]:
    """A session's integration_logs: applied events, decisions and notices, newest first
    (404 for a session no event named)."""
    dashboard = await known_session(request, session_id)
    return await dashboard.integration_logs(session_id, since, limit)


@router.get("/audit", response_model=list[AuditRow])
async def audit(
    request: Request, session_id: str | None = None, limit: int = _LIMIT, caller: Caller = reader
) -> list[AuditRow]:
    """Budget and defaults changes and who made them (the log is the audit trail; 404 for a
    session no event named)."""
    dashboard = await known_session(request, session_id)
    return await dashboard.audit(session_id, limit)


async def known_session(request: Request, session_id: str | None) -> AsyncTokenDashboard:
    """The dashboard, once `session_id` (when given) is known: UnknownSessionError (a 404)
    for a session no applied event named, as the CLI refuses it."""
    dashboard = state_of(request).dashboard
    if session_id is not None and not await dashboard.session_known(session_id):
        raise UnknownSessionError(session_id)
    return dashboard
