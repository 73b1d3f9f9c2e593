"""The values the fold reads and writes: session budgets, reservations, and row deltas."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal
from zoneinfo import ZoneInfo

from tokenquota.schemas import DefaultsSet, Event

__all__ = [
    "BUILTIN_DEFAULTS",
    "AlertLevel",
    "ApiDelta",
    "BudgetSource",
    "Decision",
    "FoldConfig",
    "Folded",
    "Limits",
    "LogRecord",
    "LogRow",
    "PartitionKey",
    "PartitionState",
    "ProjectionState",
    "ReservationRecord",
    "ReservationStatus",
    "SessionBudget",
    "TaskDelta",
    "UsageDelta",
    "log_time",
]

_THRESHOLD_SCALE = Decimal("0.0001")
_UTC = ZoneInfo("UTC")

AlertLevel = Literal["none", "warning", "critical"]
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


@dataclass(frozen=True, slots=True)
class LogRecord:
    """A decoded event, the raw bytes it came as, its place in the log, and the record's
    timestamp (the broker's append time, or the producing client's send time where the
    broker does not stamp records), in UTC."""

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


@dataclass(slots=True)
class ProjectionState:
    """What the fold needs of the sessions a batch touches.

    `reservations` holds every accepted reservation of those sessions plus every
    reservation the batch's events name; `partitions` the partitions of the batch.
    """

    sessions: dict[str, SessionBudget] = field(default_factory=dict)
    reservations: dict[uuid.UUID, ReservationRecord] = field(default_factory=dict)
    partitions: dict[PartitionKey, PartitionState] = field(default_factory=dict)


@dataclass(slots=True)
class UsageDelta:
    """What to add to one row of session_usage_daily or session_usage_monthly."""

    input_tokens: int = 0
    output_tokens: int = 0
    tokens_used: int = 0
    usage_events: int = 0
    cost_usd: Decimal = Decimal(0)


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


@dataclass(frozen=True, slots=True)
class LogRow:
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


@dataclass(frozen=True, slots=True)
class Decision:
    """The fold's verdict on one TokenReserved, announced to waiting callers."""

    reservation_id: uuid.UUID
    status: ReservationStatus


@dataclass(slots=True)
class Folded:
    """The fold's result: new state and every row to write."""

    state: ProjectionState
    changed_sessions: set[str] = field(default_factory=set)
    changed_reservations: set[uuid.UUID] = field(default_factory=set)
    daily: dict[tuple[str, date], UsageDelta] = field(default_factory=dict)
    monthly: dict[tuple[str, date], UsageDelta] = field(default_factory=dict)
    tasks: dict[tuple[str, str], TaskDelta] = field(default_factory=dict)
    apis: dict[tuple[str, str], ApiDelta] = field(default_factory=dict)
    logs: list[LogRow] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    changed_partitions: set[PartitionKey] = field(default_factory=set)
    changed_defaults: set[PartitionKey] = field(default_factory=set)
    #: Events whose occurred_at was too far ahead of the log clock: counted at the clock.
    clock_skewed: list[uuid.UUID] = field(default_factory=list)
