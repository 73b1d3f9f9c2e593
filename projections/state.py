"""The values the fold reads and writes: session budgets, reservations, and row deltas."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal

__all__ = [
    "AlertLevel",
    "ApiDelta",
    "BudgetSource",
    "Decision",
    "Folded",
    "Limits",
    "LogRow",
    "ProjectionState",
    "ReservationRecord",
    "ReservationStatus",
    "SessionBudget",
    "TaskDelta",
    "UsageDelta",
]

_THRESHOLD_SCALE = Decimal("0.0001")

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
    reservation the batch's events name.
    """

    sessions: dict[str, SessionBudget] = field(default_factory=dict)
    reservations: dict[uuid.UUID, ReservationRecord] = field(default_factory=dict)


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
