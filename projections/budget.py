"""Budget arithmetic shared by the fold and the read side: headroom and alert levels."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import ROUND_FLOOR, Decimal
from typing import Literal
from zoneinfo import ZoneInfo

from .state import AlertLevel, Limits, UsdLimits

__all__ = [
    "Headroom",
    "UsdRefusal",
    "UsdWindow",
    "Window",
    "alert_level",
    "alert_tokens",
    "headroom",
    "local_day",
    "month_of",
    "start_of_day",
    "usd_refusal",
]

Window = Literal["daily_limit", "monthly_limit", "hard_limit", "critical_threshold"]


@dataclass(frozen=True, slots=True)
class Headroom:
    """Tokens a reservation may still take, and which limit decides that.

    `available` is negative when usage already exceeds a limit (usage is never dropped).
    """

    available: int
    limit: int
    window: Window


def _floor(value: Decimal) -> int:
    return int(value.to_integral_value(rounding=ROUND_FLOOR))


def headroom(
    limits: Limits,
    used_today: int,
    used_month: int,
    used_total: int,
    held: int,
    priority: str = "normal",
) -> Headroom:
    """min(daily - today, monthly - month, hard - total) - held; low priority stops at critical.

    On a tie the wider window is named, so a session at its hard limit reads as exhausted.
    """
    windows: list[tuple[int, int, Window]] = [
        (limits.hard_limit, used_total, "hard_limit"),
        (limits.monthly_limit, used_month, "monthly_limit"),
        (limits.daily_limit, used_today, "daily_limit"),
    ]
    limit, used, window = min(windows, key=lambda w: w[0] - w[1])
    result = Headroom(limit - used - held, limit, window)
    if priority == "low":
        critical = limits.critical_threshold
        capped = min(_floor(Decimal(lim) * critical) - u for lim, u, _ in windows)
        if capped - held < result.available:
            cap_limit = min(windows, key=lambda w: _floor(Decimal(w[0]) * critical) - w[1])[0]
            return Headroom(
                capped - held, _floor(Decimal(cap_limit) * critical), "critical_threshold"
            )
    return result


UsdWindow = Literal["daily_usd_limit", "monthly_usd_limit", "total_usd_limit"]


@dataclass(frozen=True, slots=True)
class UsdRefusal:
    """The USD window that refuses a reservation: its limit (for low priority, the part
    up to the critical threshold), what the level has used in it, and what it holds."""

    window: UsdWindow
    limit: Decimal
    used: Decimal
    held: Decimal


def usd_refusal(
    usd: UsdLimits,
    used_today: Decimal,
    used_month: Decimal,
    used_total: Decimal,
    held: Decimal,
    requested: Decimal,
    priority: str = "normal",
    critical: Decimal = Decimal(1),
) -> UsdRefusal | None:
    """None if `requested` dollars fit every USD window that has a limit, else the
    tightest window (on a tie the wider one, as for tokens).

    A window without room left refuses even an unpriced (0 USD) reservation, so spend
    already at a limit stops new calls whose price is not known.
    """
    worst: tuple[Decimal, UsdRefusal] | None = None
    windows: tuple[tuple[Decimal | None, Decimal, UsdWindow], ...] = (
        (usd.total, used_total, "total_usd_limit"),
        (usd.monthly, used_month, "monthly_usd_limit"),
        (usd.daily, used_today, "daily_usd_limit"),
    )
    for limit, used, window in windows:
        if limit is None:
            continue
        if priority == "low":
            limit *= critical
        available = limit - used - held
        if worst is None or available < worst[0]:
            worst = (available, UsdRefusal(window, limit, used, held))
    if worst is None or (requested <= worst[0] and worst[0] > 0):
        return None
    return worst[1]


def alert_tokens(limit: int, limits: Limits) -> tuple[int, int]:
    """The tokens at which a window of `limit` reaches its warning and critical levels."""
    return _alert_tokens(limit, limits.warning_threshold, limits.critical_threshold)


def alert_level(used: int, limit: int, limits: Limits) -> AlertLevel:
    """The highest threshold `used` has reached in a window of `limit` tokens."""
    warning, critical = alert_tokens(limit, limits)
    if used >= critical:
        return "critical"
    if used >= warning:
        return "warning"
    return "none"


@functools.lru_cache(maxsize=4096)
def _alert_tokens(limit: int, warning: Decimal, critical: Decimal) -> tuple[int, int]:
    """The token counts at which a window of `limit` reaches each threshold.

    used >= limit * p/q  <=>  used >= ceil(limit * p / q), in exact integers; a window of
    0 tokens is critical from its first token. Cached: this runs for every usage event.
    """
    if limit == 0:
        return 1, 1
    (wp, wq), (cp, cq) = warning.as_integer_ratio(), critical.as_integer_ratio()
    return -(-limit * wp // wq), -(-limit * cp // cq)


_UTC_ZONE = ZoneInfo("UTC")


def local_day(at: datetime, zone: ZoneInfo) -> date:
    """The calendar day of `at` in the budget's time zone."""
    if zone is _UTC_ZONE and at.tzinfo is UTC:  # every decoded event; skips a conversion
        return at.date()
    return at.astimezone(zone).date()


def month_of(day: date) -> date:
    """The first day of the month holding `day`."""
    return day.replace(day=1)


def start_of_day(day: date, zone: ZoneInfo) -> datetime:
    """Midnight of `day` in the budget's zone, as a UTC timestamp."""
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)
