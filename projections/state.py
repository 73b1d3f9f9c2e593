"""The values the fold reads and writes: session budgets, reservations, and row deltas."""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal, NamedTuple
from zoneinfo import ZoneInfo

from tokenquota.schemas import BudgetSet, DefaultsSet, Event

__all__ = [
    "BUILTIN_DEFAULTS",
    "AccountDelta",
    "AlertLevel",
    "AlertRow",
    "ApiDayDelta",
    "ApiDelta",
    "BudgetSource",
    "Decision",
    "FoldConfig",
    "Folded",
    "Limits",
    "LogRecord",
    "LogRow",
    "MinuteDelta",
    "ModelDayDelta",
    "NodeBudget",
    "PartitionKey",
    "PartitionState",
    "ProjectionState",
    "ReservationDayDelta",
    "ReservationRecord",
    "ReservationStatus",
    "SessionBudget",
    "TaskDelta",
    "UsageDelta",
    "UsdLimits",
    "log_time",
]

_THRESHOLD_SCALE = Decimal("0.0001")
_ZERO = Decimal(0)
_UTC = ZoneInfo("UTC")

#: A window's alert level, in the order it rises: a threshold reached, or (exhausted) a
#: reservation refused at the window's limit.
AlertLevel = Literal["none", "warning", "critical", "exhausted"]
BudgetSource = Literal["default", "event"]
ReservationStatus = Literal["pending", "accepted", "rejected", "settled", "released", "expired"]


@dataclass(frozen=True, slots=True)
class Limits:
    """A session's limits and thresholds, and whether they came from a BudgetSet."""

    daily_limit: int
    monthly_limit: int
    hard_limit: int
    warning_threshold: Decimal
    critical_threshold: Decimal
    source: BudgetSource = "default"

    def __post_init__(self) -> None:
        # The scale PostgreSQL stores (NUMERIC(5, 4)): a state folded in memory and one
        # loaded from the table must be equal, down to Decimal('0.8') vs Decimal('0.8000').
        for name in ("warning_threshold", "critical_threshold"):
            object.__setattr__(self, name, getattr(self, name).quantize(_THRESHOLD_SCALE))


@dataclass(frozen=True, slots=True)
class UsdLimits:
    """A session's or node's USD limits per window (None: no limit for that window)."""

    daily: Decimal | None
    monthly: Decimal | None
    total: Decimal | None

    @classmethod
    def of(cls, event: BudgetSet) -> UsdLimits | None:
        """The USD limits a BudgetSet sets (None: it sets none)."""
        daily, monthly, total = (
            event.daily_usd_limit,
            event.monthly_usd_limit,
            event.total_usd_limit,
        )
        if daily is None and monthly is None and total is None:
            return None
        return cls(daily, monthly, total)


@dataclass(frozen=True, slots=True)
class FoldConfig:
    """What decides besides the events of a session: the limits of sessions without a
    BudgetSet, the windows' time zone, and how far occurred_at may run ahead of the log
    clock. A partition takes them from its latest DefaultsSet; before any, the built-in
    ones below."""

    default_limits: Limits
    zone: ZoneInfo = _UTC
    max_clock_skew: timedelta = timedelta(minutes=5)

    @classmethod
    def of(cls, event: DefaultsSet) -> FoldConfig:
        """The defaults a DefaultsSet sets."""
        return cls(
            Limits(
                event.daily_limit,
                event.monthly_limit,
                event.hard_limit,
                event.warning_threshold,
                event.critical_threshold,
            ),
            ZoneInfo(event.timezone),
            timedelta(milliseconds=event.max_clock_skew_ms),
        )


#: The defaults of a partition whose log holds no DefaultsSet yet (the code's, never the
#: configuration's: a replay decides the same whatever it is configured with).
BUILTIN_DEFAULTS = FoldConfig(Limits(10_000, 300_000, 1_000_000, Decimal("0.8"), Decimal("0.95")))

#: (topic, partition)
PartitionKey = tuple[str, int]


class LogRecord(NamedTuple):
    """A decoded event, the raw bytes it came as, its place in the log, and the record's
    timestamp (the broker's append time, or the producing client's send time where the
    broker does not stamp records), in UTC.

    (A named tuple: made for every event consumed, and a third the cost of a frozen
    dataclass to make.)"""

    event: Event
    payload: bytes
    topic: str
    partition: int
    offset: int
    timestamp: datetime


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def log_time(milliseconds: int) -> datetime:
    """A Kafka record timestamp (milliseconds since the epoch) as a UTC datetime, exactly."""
    return _EPOCH + timedelta(milliseconds=milliseconds)


@dataclass(slots=True)
class PartitionState:
    """One partition: its log clock and the defaults in force there.

    The log clock is the latest record timestamp among the events applied from the
    partition; it only moves forward, and it decides window roll-over and expiry.
    """

    clock: datetime | None = None
    defaults: FoldConfig = BUILTIN_DEFAULTS
    #: The DefaultsSet in force (None: the built-in defaults) and its log time.
    defaults_event: uuid.UUID | None = None
    defaults_set_at: datetime | None = None


@dataclass(slots=True)
class SessionBudget:
    """One row of session_token_budgets."""

    session_id: str
    limits: Limits
    current_day: date
    tokens_used_today: int
    current_month: date
    tokens_used_month: int
    tokens_used_total: int
    daily_alert: AlertLevel
    monthly_alert: AlertLevel
    total_alert: AlertLevel
    reservations_accepted: int
    reservations_rejected: int
    overage_tokens: int
    last_reset: datetime
    created_at: datetime
    updated_at: datetime
    #: The budget tree node the session belongs to (None: none; it never changes).
    account: str | None = None
    #: USD limits from its BudgetSet (None: none), and the ApiCost in its windows.
    usd: UsdLimits | None = None
    usd_used_today: Decimal = _ZERO
    usd_used_month: Decimal = _ZERO
    usd_used_total: Decimal = _ZERO
    #: The alert level of each USD window (none while it has no limit).
    daily_usd_alert: AlertLevel = "none"
    monthly_usd_alert: AlertLevel = "none"
    total_usd_alert: AlertLevel = "none"


@dataclass(slots=True)
class NodeBudget:
    """A node of a budget tree (an account path): its limits, if a BudgetSet gave it any,
    and the usage of every session under it in its windows. Its window fields are named
    as a session's, so the same roll-over and headroom apply."""

    account: str
    #: None: no BudgetSet for this node, so it does not limit.
    limits: Limits | None
    budget_event: uuid.UUID | None
    current_day: date
    tokens_used_today: int
    current_month: date
    tokens_used_month: int
    tokens_used_total: int
    created_at: datetime
    #: The log clock when its budget, usage, windows or an alert level last changed.
    updated_at: datetime
    usd: UsdLimits | None = None
    usd_used_today: Decimal = _ZERO
    usd_used_month: Decimal = _ZERO
    usd_used_total: Decimal = _ZERO
    #: The alert level of each token window, then of each USD window.
    daily_alert: AlertLevel = "none"
    monthly_alert: AlertLevel = "none"
    total_alert: AlertLevel = "none"
    daily_usd_alert: AlertLevel = "none"
    monthly_usd_alert: AlertLevel = "none"
    total_usd_alert: AlertLevel = "none"


@dataclass(slots=True)
class ReservationRecord:
    """One row of reservations."""

    reservation_id: uuid.UUID
    event_id: uuid.UUID
    session_id: str
    task_id: str | None
    tokens: int
    priority: str
    status: ReservationStatus
    reason: str | None
    available_tokens: int
    limit_tokens: int
    requested_at: datetime
    decided_at: datetime
    expires_at: datetime
    settled_at: datetime | None = None
    settled_tokens: int | None = None
    overage_tokens: int = 0
    #: The session's account; holds count at each node from its tenant down to it.
    account: str | None = None
    #: The node whose limit refused it (None: accepted, or refused by the session's own).
    refused_by: str | None = None
    #: The producer's price of it, and where that came from (None: unpriced).
    reserved_usd: Decimal | None = None
    price_source: str | None = None
    #: reserved_usd while it is held against USD limits: from acceptance until its
    #: ApiCost, its release, or its expiry (a TokenUsed settles tokens, not dollars).
    usd_held: Decimal | None = None
    #: What its ApiCosts cost.
    settled_usd: Decimal | None = None
    #: A refusal by a USD limit: that window's limit (for low priority, the part of it
    #: up to the critical threshold), what the level had used, and what it held.
    limit_usd: Decimal | None = None
    used_usd: Decimal | None = None
    held_usd: Decimal | None = None


@dataclass(slots=True)
class ProjectionState:
    """What the fold needs of the sessions a batch touches.

    `reservations` holds every accepted reservation of those sessions (and of the budget
    trees the batch's events name an account of) plus every reservation the batch's
    events name; `partitions` the partitions of the batch; `nodes` the tree nodes of the
    batch's accounts and their ancestors (those that have a row).
    """

    sessions: dict[str, SessionBudget] = field(default_factory=dict)
    reservations: dict[uuid.UUID, ReservationRecord] = field(default_factory=dict)
    partitions: dict[PartitionKey, PartitionState] = field(default_factory=dict)
    nodes: dict[str, NodeBudget] = field(default_factory=dict)


@dataclass(slots=True)
class UsageDelta:
    """What to add to one row of session_usage_daily or session_usage_monthly."""

    input_tokens: int = 0
    output_tokens: int = 0
    tokens_used: int = 0
    usage_events: int = 0
    cost_usd: Decimal = Decimal(0)


@dataclass(slots=True)
class AccountDelta:
    """What to add to one row of account_usage_daily."""

    input_tokens: int = 0
    output_tokens: int = 0
    tokens_used: int = 0
    usage_events: int = 0
    cost_usd: Decimal = Decimal(0)
    reservations_accepted: int = 0
    reservations_rejected: int = 0
    #: Refused by this node's own limit.
    reservations_refused: int = 0


@dataclass(slots=True)
class TaskDelta:
    """What to add to one row of task_token_allocations."""

    allocated_tokens: int
    tokens_used: int
    first_at: datetime
    last_at: datetime


@dataclass(slots=True)
class ApiDelta:
    """What to add to one row of external_api_tokens (rate-limit fields: latest wins)."""

    requests: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_usd: Decimal
    last_used: datetime
    rate_limit_remaining: int | None
    rate_limit_reset: datetime | None


@dataclass(slots=True)
class ApiDayDelta:
    """What to add to one row of api_usage_daily."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: Decimal = Decimal(0)


@dataclass(slots=True)
class ModelDayDelta:
    """What to add to one row of model_usage_daily."""

    usage_events: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(slots=True)
class ReservationDayDelta:
    """What to add to one row of session_reservations_daily (a count may go down: an
    expired reservation settled late moves from `expired` to `settled`)."""

    accepted: int = 0
    rejected: int = 0
    settled: int = 0
    released: int = 0
    expired: int = 0
    reserved_tokens: int = 0
    settled_tokens: int = 0


@dataclass(slots=True)
class MinuteDelta:
    """What to add to one row of system_usage_minutely."""

    events_applied: int = 0
    tokens_used: int = 0
    cost_usd: Decimal = Decimal(0)
    reservations_accepted: int = 0
    reservations_rejected: int = 0


@dataclass(frozen=True, slots=True)
class AlertRow:
    """One row of alert_outbox: a threshold crossed, or a window's limit refusing."""

    alert_id: uuid.UUID
    event_id: uuid.UUID
    action: str
    session_id: str
    window_name: str
    level: str
    #: The window's tokens (None for a USD window).
    used_tokens: int | None
    limit_tokens: int | None
    #: When the crossing event is dated (its occurred_at, or the log clock when that ran
    #: too far ahead), and the log clock when it was applied.
    occurred_at: datetime
    created_at: datetime
    #: The node whose window it is (None: the session's own).
    account: str | None = None
    unit: Literal["tokens", "usd"] = "tokens"
    #: The window's dollars (a USD window only).
    used_usd: Decimal | None = None
    limit_usd: Decimal | None = None


@dataclass(frozen=True, slots=True)
class LogRow:
    """One row of integration_notices (the integration_logs view shows them with the
    applied events and the reservation decisions)."""

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

    @classmethod
    def of(
        cls,
        event: Event,
        at: datetime,
        action: str,
        status: str,
        *,
        tokens: int = 0,
        error: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> LogRow:
        """A notice about `event`, by the component that emitted it, dated `at`."""
        return cls(
            event_id=event.event_id,
            action=action,
            integration_type=event.source.component,
            component_name=event.source.name,
            session_id=event.session_id,
            task_id=event.task_id,
            tokens_used=tokens,
            status=status,
            error_message=error,
            metadata=metadata,
            created_at=at,
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """The fold's verdict on one TokenReserved, announced to waiting callers."""

    reservation_id: uuid.UUID
    status: ReservationStatus
    #: Why it was rejected (daily_limit, monthly_limit, hard_limit, expired); None when
    #: accepted.
    reason: str | None
    session_id: str
    #: The budget tree node that refused it (None: accepted, or the session refused it).
    refused_by: str | None = None


@dataclass(slots=True)
class Folded:
    """The fold's result: new state and every row to write."""

    state: ProjectionState
    changed_sessions: set[str] = field(default_factory=set)
    changed_reservations: set[uuid.UUID] = field(default_factory=set)
    changed_nodes: set[str] = field(default_factory=set)
    #: The rollups, keyed as their tables are; a missing key reads as a zero delta.
    daily: defaultdict[tuple[str, date], UsageDelta] = field(
        default_factory=lambda: defaultdict(UsageDelta)
    )
    monthly: defaultdict[tuple[str, date], UsageDelta] = field(
        default_factory=lambda: defaultdict(UsageDelta)
    )
    tasks: dict[tuple[str, str], TaskDelta] = field(default_factory=dict)
    apis: dict[tuple[str, str], ApiDelta] = field(default_factory=dict)
    logs: list[LogRow] = field(default_factory=list)
    alerts: list[AlertRow] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    #: The read models' rollups (0005).
    hourly: defaultdict[tuple[str, datetime], UsageDelta] = field(
        default_factory=lambda: defaultdict(UsageDelta)
    )
    api_daily: defaultdict[tuple[date, str, str], ApiDayDelta] = field(
        default_factory=lambda: defaultdict(ApiDayDelta)
    )
    model_daily: defaultdict[tuple[date, str, str], ModelDayDelta] = field(
        default_factory=lambda: defaultdict(ModelDayDelta)
    )
    reservations_daily: defaultdict[tuple[str, date], ReservationDayDelta] = field(
        default_factory=lambda: defaultdict(ReservationDayDelta)
    )
    minutely: defaultdict[datetime, MinuteDelta] = field(
        default_factory=lambda: defaultdict(MinuteDelta)
    )
    #: The budget tree's rollup (0012), per node and day.
    account_daily: defaultdict[tuple[str, date], AccountDelta] = field(
        default_factory=lambda: defaultdict(AccountDelta)
    )
    #: What events added per account they named and day, until the fold spreads it.
    leaf_daily: defaultdict[tuple[str, date], AccountDelta] = field(
        default_factory=lambda: defaultdict(AccountDelta)
    )
    changed_partitions: set[PartitionKey] = field(default_factory=set)
    changed_defaults: set[PartitionKey] = field(default_factory=set)
    #: Events whose occurred_at was too far ahead of the log clock: counted at the clock.
    clock_skewed: list[uuid.UUID] = field(default_factory=list)
