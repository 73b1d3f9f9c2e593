"""The read side: what a reservation check, a dashboard or a caller asks of the projections.

Each function is one indexed query. Reservations past `expires_at` no longer hold tokens
at read time, and a window whose day or month has passed reads as empty.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import asyncpg

from tokenquota.schemas import ancestors

from .budget import Headroom, headroom, local_day, month_of
from .state import BUILTIN_DEFAULTS, AlertLevel, Limits, ReservationRecord, UsdLimits
from .store import defaults_from_row, reservation_from_row

__all__ = [
    "AccountMetrics",
    "SessionMetrics",
    "UsdMetrics",
    "account_metrics",
    "accounts_metrics",
    "available_tokens",
    "reservation",
    "session_metrics",
    "sessions_metrics",
]


@dataclass(frozen=True, slots=True)
class UsdMetrics:
    """Dollars of a session or node as of a read: its USD limits (None: none), the ApiCost
    in its current windows, what priced reservations hold, and what is left under the
    tightest limit (None without limits)."""

    limits: UsdLimits | None
    used_today: Decimal
    used_month: Decimal
    used_total: Decimal
    held: Decimal
    available: Decimal | None

    @classmethod
    def of(cls, row: asyncpg.Record, same_day: bool, same_month: bool) -> UsdMetrics:
        """The USD columns of a budget row (and its `usd_held`), read in today's windows."""
        zero = Decimal(0)
        known = row["usd_used_total"] is not None
        limits = None
        if known and not all(row[f"{w}_usd_limit"] is None for w in ("daily", "monthly", "total")):
            limits = UsdLimits(
                row["daily_usd_limit"], row["monthly_usd_limit"], row["total_usd_limit"]
            )
        today = row["usd_used_today"] if known and same_day else zero
        month = row["usd_used_month"] if known and same_month else zero
        total = row["usd_used_total"] if known else zero
        held = row["usd_held"]
        available = None
        if limits is not None:
            left = [
                limit - used - held
                for limit, used in (
                    (limits.daily, today),
                    (limits.monthly, month),
                    (limits.total, total),
                )
                if limit is not None
            ]
            available = max(min(left), zero)
        return cls(limits, today, month, total, held, available)

    def columns(self) -> dict[str, Decimal | None]:
        """As the columns the API and the CLI show: each limit, spend, held, available."""
        limits = self.limits
        return {
            "daily_usd_limit": limits.daily if limits else None,
            "monthly_usd_limit": limits.monthly if limits else None,
            "total_usd_limit": limits.total if limits else None,
            "usd_used_today": self.used_today,
            "usd_used_month": self.used_month,
            "usd_used_total": self.used_total,
            "usd_held": self.held,
            "available_usd": self.available,
        }

    def utilization(self) -> Decimal | None:
        """The highest ratio of spend to limit over the USD windows with a limit (None:
        no USD limit); held dollars do not count, as held tokens do not."""
        limits = self.limits
        if limits is None:
            return None
        windows = [
            (used, limit)
            for used, limit in (
                (self.used_today, limits.daily),
                (self.used_month, limits.monthly),
                (self.used_total, limits.total),
            )
            if limit is not None
        ]
        return _max_ratio(windows) if windows else None


@dataclass(frozen=True, slots=True)
class SessionMetrics:
    """A session's budget as of `as_of`: limits, usage per window, held and available tokens."""

    session_id: str
    known: bool
    limits: Limits
    tokens_used_today: int
    tokens_used_month: int
    tokens_used_total: int
    tokens_held: int
    available_tokens: int
    binding_limit: str
    utilization: Decimal
    daily_alert: AlertLevel
    monthly_alert: AlertLevel
    total_alert: AlertLevel
    reservations_accepted: int
    reservations_rejected: int
    overage_tokens: int
    updated_at: datetime | None
    as_of: datetime
    #: The budget tree node the session belongs to (None: none).
    account: str | None = None
    usd: UsdMetrics | None = None

    def headroom(self, priority: str = "normal") -> Headroom:
        """Tokens a reservation of `priority` could take now."""
        return headroom(
            self.limits,
            self.tokens_used_today,
            self.tokens_used_month,
            self.tokens_used_total,
            self.tokens_held,
            priority,
        )


_METRICS = """
    SELECT q.session_id AS asked_session_id, b.*,
           (SELECT COALESCE(sum(r.tokens), 0)::bigint FROM reservations r
             WHERE r.session_id = q.session_id AND r.status = 'accepted'
               AND r.expires_at > $2) AS tokens_held,
           (SELECT COALESCE(sum(r.usd_held), 0) FROM reservations r
             WHERE r.session_id = q.session_id AND r.usd_held IS NOT NULL
               AND r.expires_at > $2) AS usd_held,
           d.daily_limit AS default_daily_limit, d.monthly_limit AS default_monthly_limit,
           d.hard_limit AS default_hard_limit,
           d.warning_threshold AS default_warning_threshold,
           d.critical_threshold AS default_critical_threshold, d.timezone AS default_timezone,
           d.max_clock_skew_ms AS default_max_clock_skew_ms
      FROM unnest($1::varchar[]) AS q(session_id)
      LEFT JOIN session_token_budgets b ON b.session_id = q.session_id
      LEFT JOIN LATERAL (SELECT * FROM partition_defaults
                          ORDER BY set_at DESC, topic, kafka_partition LIMIT 1) d ON true
"""
_DEFAULT_FIELDS = (
    "daily_limit", "monthly_limit", "hard_limit", "warning_threshold", "critical_threshold",
    "timezone", "max_clock_skew_ms",
)  # fmt: skip


async def session_metrics(
    conn: asyncpg.Connection,
    session_id: str,
    *,
    now: datetime | None = None,
) -> SessionMetrics:
    """The session's metrics; a session with no events reads as unused, on default limits.

    The default limits and the windows' zone are those of the log's latest DefaultsSet,
    or the built-in ones when it holds none (as in the fold).
    """
    return (await sessions_metrics(conn, [session_id], now=now))[session_id]


async def sessions_metrics(
    conn: asyncpg.Connection,
    session_ids: Sequence[str],
    *,
    now: datetime | None = None,
) -> dict[str, SessionMetrics]:
    """`session_metrics` of each of `session_ids`, in one query (many callers' pre-checks)."""
    now = now or datetime.now(UTC)
    rows = await conn.fetch(_METRICS, list(session_ids), now)
    return {row["asked_session_id"]: _metrics(row, now) for row in rows}


def _metrics(row: asyncpg.Record, now: datetime) -> SessionMetrics:
    config = BUILTIN_DEFAULTS
    if row["default_timezone"] is not None:
        config = defaults_from_row({name: row[f"default_{name}"] for name in _DEFAULT_FIELDS})
    known = row["daily_limit"] is not None
    day = local_day(now, config.zone)
    if known:
        limits = Limits(
            row["daily_limit"],
            row["monthly_limit"],
            row["hard_limit"],
            row["warning_threshold"],
            row["critical_threshold"],
            row["budget_source"],
        )
        same_day = row["current_day"] >= day
        same_month = row["current_month"] >= month_of(day)
        today = row["tokens_used_today"] if same_day else 0
        month = row["tokens_used_month"] if same_month else 0
        total = row["tokens_used_total"]
    else:
        limits, today, month, total = config.default_limits, 0, 0, 0
        same_day = same_month = False
    held = row["tokens_held"]
    room = headroom(limits, today, month, total, held)
    return SessionMetrics(
        session_id=row["asked_session_id"],
        known=known,
        limits=limits,
        tokens_used_today=today,
        tokens_used_month=month,
        tokens_used_total=total,
        tokens_held=held,
        available_tokens=max(room.available, 0),
        binding_limit=room.window,
        utilization=_utilization(limits, today, month, total),
        daily_alert=row["daily_alert"] if same_day else "none",
        monthly_alert=row["monthly_alert"] if same_month else "none",
        total_alert=row["total_alert"] if known else "none",
        reservations_accepted=row["reservations_accepted"] if known else 0,
        reservations_rejected=row["reservations_rejected"] if known else 0,
        overage_tokens=row["overage_tokens"] if known else 0,
        updated_at=row["updated_at"],
        as_of=now,
        account=row["account"],
        usd=UsdMetrics.of(row, same_day, same_month),
    )


@dataclass(frozen=True, slots=True)
class AccountMetrics:
    """A budget tree node as of `as_of`: its limits (None: it does not limit), the usage
    of the sessions under it per window, the tokens they hold, what is left."""

    account: str
    known: bool
    limits: Limits | None
    tokens_used_today: int
    tokens_used_month: int
    tokens_used_total: int
    tokens_held: int
    #: None when the node has no limits.
    available_tokens: int | None
    binding_limit: str | None
    utilization: Decimal | None
    reservations_accepted: int
    reservations_rejected: int
    updated_at: datetime | None
    as_of: datetime
    usd: UsdMetrics | None = None


_ACCOUNT = """
    SELECT q.account AS asked_account, b.*,
           (SELECT COALESCE(sum(r.tokens), 0)::bigint FROM reservations r
             WHERE split_part(r.account, '/', 1) = split_part(q.account, '/', 1)
               AND r.account IS NOT NULL AND r.status = 'accepted'
               AND (r.account = q.account OR starts_with(r.account, q.account || '/'))
               AND r.expires_at > $2) AS tokens_held,
           (SELECT COALESCE(sum(r.usd_held), 0) FROM reservations r
             WHERE split_part(r.account, '/', 1) = split_part(q.account, '/', 1)
               AND r.account IS NOT NULL AND r.usd_held IS NOT NULL
               AND (r.account = q.account OR starts_with(r.account, q.account || '/'))
               AND r.expires_at > $2) AS usd_held,
           (SELECT timezone FROM partition_defaults
             ORDER BY set_at DESC, topic, kafka_partition LIMIT 1) AS default_timezone,
           (SELECT COALESCE(sum(u.reservations_accepted), 0)::bigint FROM account_usage_daily u
             WHERE u.account = q.account) AS reservations_accepted,
           (SELECT COALESCE(sum(u.reservations_refused), 0)::bigint FROM account_usage_daily u
             WHERE u.account = q.account) AS reservations_rejected
      FROM unnest($1::varchar[]) AS q(account)
      LEFT JOIN account_budgets b ON b.account = q.account
"""


async def account_metrics(
    conn: asyncpg.Connection, account: str, *, now: datetime | None = None
) -> list[AccountMetrics]:
    """The nodes from `account`'s tenant down to it, tenant first; a node no event has
    reached reads as unused and unlimited."""
    now = now or datetime.now(UTC)
    by_account = await accounts_metrics(conn, ancestors(account), now=now)
    return [by_account[path] for path in ancestors(account)]


async def accounts_metrics(
    conn: asyncpg.Connection, accounts: Sequence[str], *, now: datetime | None = None
) -> dict[str, AccountMetrics]:
    """The metrics of each node of `accounts`, in one query (a tree's nodes)."""
    now = now or datetime.now(UTC)
    rows = await conn.fetch(_ACCOUNT, list(accounts), now)
    return {row["asked_account"]: _account(row, now) for row in rows}


def _account(row: asyncpg.Record, now: datetime) -> AccountMetrics:
    known = row["current_day"] is not None
    zone = ZoneInfo(row["default_timezone"] or "UTC")
    day = local_day(now, zone)
    same_day = known and row["current_day"] >= day
    same_month = known and row["current_month"] >= month_of(day)
    today = row["tokens_used_today"] if same_day else 0
    month = row["tokens_used_month"] if same_month else 0
    total = row["tokens_used_total"] if known else 0
    limits = None
    if known and row["budget_event"] is not None:
        limits = Limits(
            row["daily_limit"],
            row["monthly_limit"],
            row["hard_limit"],
            row["warning_threshold"],
            row["critical_threshold"],
            "event",
        )
    held = row["tokens_held"]
    room = headroom(limits, today, month, total, held) if limits is not None else None
    return AccountMetrics(
        account=row["asked_account"],
        known=known,
        limits=limits,
        tokens_used_today=today,
        tokens_used_month=month,
        tokens_used_total=total,
        tokens_held=held,
        available_tokens=max(room.available, 0) if room is not None else None,
        binding_limit=room.window if room is not None else None,
        utilization=_utilization(limits, today, month, total) if limits is not None else None,
        reservations_accepted=row["reservations_accepted"] if known else 0,
        reservations_rejected=row["reservations_rejected"] if known else 0,
        updated_at=row["updated_at"],
        as_of=now,
        usd=UsdMetrics.of(row, same_day, same_month),
    )


def _utilization(limits: Limits, today: int, month: int, total: int) -> Decimal:
    return _max_ratio(
        ((today, limits.daily_limit), (month, limits.monthly_limit), (total, limits.hard_limit))
    )


def _max_ratio(windows: Iterable[tuple[int | Decimal, int | Decimal]]) -> Decimal:
    """The highest used / limit of `windows` (a limit of 0 reads 100 % once used), to
    four places."""
    ratios = [
        Decimal(used) / Decimal(limit) if limit else Decimal(1 if used else 0)
        for used, limit in windows
    ]
    return max(ratios).quantize(Decimal("0.0001"))


async def available_tokens(
    conn: asyncpg.Connection,
    session_id: str,
    *,
    priority: str = "normal",
    now: datetime | None = None,
) -> int:
    """Tokens a new reservation of `priority` could take now (never negative)."""
    metrics = await session_metrics(conn, session_id, now=now)
    return max(metrics.headroom(priority).available, 0)


async def reservation(
    conn: asyncpg.Connection, reservation_id: uuid.UUID
) -> ReservationRecord | None:
    """The reservation as the worker decided it; None until its TokenReserved is applied."""
    row = await conn.fetchrow(
        "SELECT * FROM reservations WHERE reservation_id = $1", reservation_id
    )
    return None if row is None else reservation_from_row(row)
