"""What the read models answer: typed, JSON-serializable results (money as decimal strings,
times in UTC ISO 8601 with `model_dump(mode="json")`)."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, PlainSerializer

__all__ = [
    "AccountTreeNode",
    "AlertRow",
    "AuditRow",
    "CostRow",
    "DailyApiRow",
    "DailyModelRow",
    "DailyReport",
    "DailySessionRow",
    "DecisionRow",
    "IntegrationLogRow",
    "LedgerEvent",
    "LedgerPage",
    "PartitionLag",
    "SessionApiRow",
    "SessionLimits",
    "SessionPage",
    "SessionReport",
    "SessionRow",
    "SystemOverview",
    "TailCursor",
    "TaskRow",
    "Timeline",
    "TimelinePoint",
    "TopAccount",
    "TopSession",
    "WindowName",
    "WindowUsage",
]

WindowName = Literal["daily", "monthly", "total"]


def _plain(value: Decimal) -> str:
    """A decimal as plain digits, exact, without exponent or trailing zeros
    (PostgreSQL's sums keep the column's scale: 0E-10 is "0", 1.2500000000 is "1.25")."""
    return format(value.normalize(), "f")


#: USD in JSON: a string of plain digits (never a float, never "0E-10").
Usd = Annotated[Decimal, PlainSerializer(_plain, return_type=str, when_used="json")]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class SessionLimits(_Model):
    """A session's limits and thresholds; budget_source 'default' until its first BudgetSet."""

    daily_limit: int
    monthly_limit: int
    hard_limit: int
    warning_threshold: Decimal
    critical_threshold: Decimal
    budget_source: str
    #: USD limits (None: no limit for the window).
    daily_usd_limit: Usd | None = None
    monthly_usd_limit: Usd | None = None
    total_usd_limit: Usd | None = None


class WindowUsage(_Model):
    """One window of a session: tokens used, what is left, utilization and alert level."""

    used: int
    limit: int
    remaining: int
    utilization: Decimal
    alert: str


class SessionReport(_Model):
    """Everything about one session's budget as of `as_of`."""

    session_id: str
    limits: SessionLimits
    windows: dict[WindowName, WindowUsage]
    utilization: Decimal
    binding_limit: str
    available_tokens: int
    tokens_held: int
    outstanding_reservations: int
    reservations_accepted: int
    reservations_rejected: int
    overage_tokens: int
    cost_usd_today: Usd
    cost_usd_month: Decimal
    cost_usd: Usd
    last_activity: datetime | None
    as_of: datetime
    #: The budget tree node the session belongs to (None: none).
    account: str | None = None
    #: Dollars held by priced reservations until their ApiCost, and what is left under
    #: the tightest USD limit (None: no USD limit).
    usd_held: Usd = Decimal(0)
    available_usd: Usd | None = None


class PartitionLag(_Model):
    """How far the projections are behind one partition (None where the broker is unknown)."""

    topic: str
    partition: int
    next_offset: int
    highwater: int | None
    lag: int | None
    log_clock: datetime | None


class TopSession(_Model):
    """A session ranked by tokens or cost on a day."""

    session_id: str
    tokens_used: int
    cost_usd: Usd


class TopAccount(_Model):
    """A budget tree node ranked by the tokens or cost of the sessions under it on a day
    (`account_usage_daily`), with how their reservations were decided."""

    account: str
    #: 1 for a tenant, 2 for a team under it, ...
    depth: int
    tokens_used: int
    cost_usd: Usd
    reservations_accepted: int
    reservations_rejected: int
    #: Rejections this node's own limit made (of `reservations_rejected`).
    reservations_refused: int


class AccountTreeNode(_Model):
    """A node of the budget tree as of `as_of`: its limits (None: it does not limit; a
    node without a BudgetSet has none), the usage of every session under it per window in
    tokens and USD, what their reservations hold, what is left, and this month's tokens
    and cost from the monthly rollup."""

    account: str
    depth: int
    #: The node above it (None for a tenant).
    parent: str | None
    daily_limit: int | None
    monthly_limit: int | None
    hard_limit: int | None
    warning_threshold: Decimal | None
    critical_threshold: Decimal | None
    daily_usd_limit: Usd | None
    monthly_usd_limit: Usd | None
    total_usd_limit: Usd | None
    tokens_used_today: int
    tokens_used_month: int
    tokens_used_total: int
    usd_used_today: Usd
    usd_used_month: Usd
    usd_used_total: Usd
    tokens_held: int
    usd_held: Usd
    #: What is left under the tightest limit (None: no limit of that kind).
    available_tokens: int | None
    available_usd: Usd | None
    #: The highest used / limit over its token and USD windows (None: no limits).
    utilization: Decimal | None
    reservations_accepted: int
    reservations_rejected: int
    #: This month (in the windows' zone), from its days in `account_usage_daily`.
    tokens_month: int
    cost_usd_month: Usd
    reservations_refused_month: int
    updated_at: datetime | None
    as_of: datetime


class SystemOverview(_Model):
    """The whole pipeline: today, this month, the last minute, lag, DLQ and spool."""

    as_of: datetime
    day: date
    month: date
    sessions_active_today: int
    tokens_today: int
    cost_usd_today: Usd
    tokens_month: int
    cost_usd_month: Usd
    events_last_minute: int
    lag: list[PartitionLag]
    total_lag: int | None
    broker_error: str | None
    #: Dead letters that arrived after the last review (`tokenquota dlq ack`).
    dlq_depth: int | None
    spool_bytes: int | None
    top_by_tokens: list[TopSession]
    top_by_cost: list[TopSession]


class DailySessionRow(_Model):
    """One session on one day: usage, cost and how its reservations went."""

    session_id: str
    input_tokens: int
    output_tokens: int
    tokens_used: int
    usage_events: int
    cost_usd: Usd
    accepted: int
    rejected: int
    settled: int
    released: int
    expired: int
    reserved_tokens: int
    settled_tokens: int
    #: settled tokens / reserved tokens (None when nothing was reserved)
    efficiency: Decimal | None


class DailyApiRow(_Model):
    """Requests, tokens and cost of one API and model on one day (ApiCost events)."""

    api_name: str
    model: str
    requests: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_usd: Usd


class DailyModelRow(_Model):
    """Tokens one integration counted for one model on one day (TokenUsed events)."""

    component: str
    model: str
    usage_events: int
    input_tokens: int
    output_tokens: int


class DailyReport(_Model):
    """A day (in the windows' time zone): per session, per API/model, per integration."""

    date: date
    sessions: list[DailySessionRow]
    apis: list[DailyApiRow]
    models: list[DailyModelRow]
    tokens_used: int
    cost_usd: Usd
    reservations_accepted: int
    reservations_rejected: int
    efficiency: Decimal | None


class CostRow(_Model):
    """Cost of one API, model or day over a period (only the key `by` names is set)."""

    api_name: str | None = None
    model: str | None = None
    day: date | None = None
    requests: int
    input_tokens: int
    output_tokens: int
    cost_usd: Usd


class DecisionRow(_Model):
    """One reservation and what the worker decided about it."""

    reservation_id: uuid.UUID
    session_id: str
    task_id: str | None
    tokens: int
    priority: str
    status: str
    reason: str | None
    available_tokens: int
    limit_tokens: int
    requested_at: datetime
    decided_at: datetime
    expires_at: datetime
    settled_tokens: int | None


class AlertRow(_Model):
    """A threshold crossing or a refusal at a limit, and its webhook delivery if any."""

    alert_id: uuid.UUID
    event_id: uuid.UUID
    action: str
    session_id: str
    window_name: str
    level: str
    #: A token window's tokens (None for a USD window).
    used_tokens: int | None
    limit_tokens: int | None
    occurred_at: datetime
    created_at: datetime
    delivery: str | None
    #: The budget tree node whose window it is (None: the session's own).
    account: str | None = None
    unit: Literal["tokens", "usd"] = "tokens"
    #: A USD window's dollars.
    used_usd: Decimal | None = None
    limit_usd: Decimal | None = None


class IntegrationLogRow(_Model):
    """One row of integration_logs."""

    event_id: uuid.UUID
    action: str
    integration_type: str
    component_name: str
    session_id: str | None
    task_id: str | None
    tokens_used: int
    status: str
    error_message: str | None
    metadata: dict[str, Any] | None
    created_at: datetime


class AuditRow(_Model):
    """An administrative change (BudgetSet, DefaultsSet) and who made it."""

    event_id: uuid.UUID
    event_type: str
    session_id: str
    actor: str | None
    occurred_at: datetime
    log_time: datetime
    change: str
    payload: dict[str, Any]


class LedgerEvent(_Model):
    """An applied event as the ledger holds it."""

    topic: str
    partition: int
    offset: int
    event_id: uuid.UUID
    event_type: str
    session_id: str
    task_id: str | None
    occurred_at: datetime
    log_time: datetime
    payload: dict[str, Any]


class TailCursor(_Model):
    """Where a tail of the ledger stands: the next offset to show per (topic, partition)."""

    topic: str
    next_offsets: dict[int, int]


class LedgerPage(_Model):
    """Events applied after a cursor, and the cursor after them."""

    events: list[LedgerEvent]
    cursor: TailCursor


class SessionRow(_Model):
    """A session in a page of sessions: its windows and thresholds."""

    session_id: str
    windows: dict[WindowName, WindowUsage]
    warning_threshold: Decimal
    critical_threshold: Decimal
    utilization: Decimal
    tokens_held: int
    last_activity: datetime | None


class SessionPage(_Model):
    """One page of the sessions, in `order`, and how many there are in all."""

    total: int
    offset: int
    limit: int
    order: Literal["recent", "utilization", "name"]
    prefix: str | None
    sessions: list[SessionRow]
    as_of: datetime


class TimelinePoint(_Model):
    """The pipeline in one minute or hour of the log clock."""

    at: datetime
    events_applied: int
    tokens_used: int
    cost_usd: Usd
    reservations_accepted: int
    reservations_rejected: int


class Timeline(_Model):
    """Tokens over time: per minute for the last hour, or per hour for the last days."""

    scale: Literal["minute", "hour"]
    start: datetime
    end: datetime
    points: list[TimelinePoint]


class TaskRow(_Model):
    """A task of a session (task_token_allocations)."""

    task_id: str
    allocated_tokens: int
    tokens_used: int
    status: str
    created_at: datetime
    completed_at: datetime | None
    updated_at: datetime


class SessionApiRow(_Model):
    """A session's use of one external API and the provider's last rate-limit state."""

    api_name: str
    requests: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    tokens_used: int
    cost_usd: Usd
    last_used: datetime
    rate_limit_remaining: int | None
    rate_limit_reset: datetime | None
