"""Threshold alerts: each window's level, and the notice and outbox row of each rise.

A window (daily, monthly, total; of tokens, or of dollars where a USD limit is set) of a
session or of a budget tree node rises through warning and critical as its usage reaches
the thresholds, and to exhausted when a reservation is first refused at its limit. Each
rise is recorded once per window: an alert_outbox row in the batch's transaction, which
the notifier delivers, and for a session's own window a notice (integration_notices,
shown by the integration_logs view). The level resets with the window (a new day or
month); new limits can lower it (a raised budget), and a later rise is recorded again.
Never per event: usage or refusals after a rise add nothing until the level is lowered.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any, Literal

from tokenquota.schemas import BIGINT_MAX, Event, format_usd

from .budget import alert_level, alert_tokens
from .log_clock import Moment
from .state import (
    AlertLevel,
    AlertRow,
    Folded,
    Limits,
    LogRow,
    NodeBudget,
    ReservationRecord,
    SessionBudget,
    UsdLimits,
)

__all__ = [
    "ALERT_NAMESPACE",
    "alert_id",
    "refused_alert",
    "threshold_alerts",
    "tokens_to_alert",
    "usd_alert_level",
    "usd_threshold_alerts",
]

#: The namespace of alert ids: uuid5(ALERT_NAMESPACE, f"{event_id}:{action}") for a
#: session's window, f"{event_id}:{account}:{action}" for a node's: the same on every
#: replay, so a receiver can drop an alert it has seen.
ALERT_NAMESPACE = uuid.UUID("6a1c3e0f-5d2b-5b8e-9f47-3c1d2a7b9e10")

Owner = SessionBudget | NodeBudget
Unit = Literal["tokens", "usd"]

_LEVELS: tuple[AlertLevel, ...] = ("none", "warning", "critical", "exhausted")
#: A rejection's reason -> the window whose limit refused it, and its unit.
_REFUSING_WINDOW: dict[str, tuple[str, Unit]] = {
    "daily_limit": ("daily", "tokens"),
    "monthly_limit": ("monthly", "tokens"),
    "hard_limit": ("total", "tokens"),
    "daily_usd_limit": ("daily", "usd"),
    "monthly_usd_limit": ("monthly", "usd"),
    "total_usd_limit": ("total", "usd"),
}


def alert_id(event_id: uuid.UUID, action: str, account: str | None = None) -> uuid.UUID:
    """The alert's id: derived from the event that caused it, the node (if a node's
    window) and the action."""
    key = f"{event_id}:{action}" if account is None else f"{event_id}:{account}:{action}"
    return uuid.uuid5(ALERT_NAMESPACE, key)


def usd_alert_level(used: Decimal, limit: Decimal, limits: Limits) -> AlertLevel:
    """The highest threshold `used` dollars have reached in a window of `limit` dollars
    (a window of 0 is critical from its first cent)."""
    if used >= limit * limits.critical_threshold and used > 0:
        return "critical"
    if used >= limit * limits.warning_threshold and used > 0:
        return "warning"
    return "none"


def tokens_to_alert(owner: Owner) -> int:
    """How many more tokens `owner` may use (in all its token windows at once) before one
    of them reaches its next alert level; BIGINT_MAX when none can rise."""
    limits = owner.limits
    left = BIGINT_MAX
    if limits is None:
        return left
    for name, used, limit in _token_windows(owner, limits):
        level = getattr(owner, _level_field(name, "tokens"))
        if level in ("critical", "exhausted"):
            continue
        warning, critical = alert_tokens(limit, limits)
        left = min(left, (warning if level == "none" else critical) - used)
    return left


def _token_windows(owner: Owner, limits: Limits) -> tuple[tuple[str, int, int], ...]:
    return (
        ("daily", owner.tokens_used_today, limits.daily_limit),
        ("monthly", owner.tokens_used_month, limits.monthly_limit),
        ("total", owner.tokens_used_total, limits.hard_limit),
    )


def _usd_windows(owner: Owner, usd: UsdLimits) -> tuple[tuple[str, Decimal, Decimal | None], ...]:
    return (
        ("daily", owner.usd_used_today, usd.daily),
        ("monthly", owner.usd_used_month, usd.monthly),
        ("total", owner.usd_used_total, usd.total),
    )


def _level_field(name: str, unit: Unit) -> str:
    return f"{name}_alert" if unit == "tokens" else f"{name}_usd_alert"


def threshold_alerts(
    out: Folded,
    owner: Owner,
    event: Event,
    moment: Moment,
    *,
    previous: Limits | None = None,
    changed: bool = False,
) -> None:
    """Record each threshold a token window of `owner` has reached, once per window.

    `changed` (or `previous`, the limits before a BudgetSet) means the limits changed: a
    level may then go down, without a row; an exhausted window stays exhausted unless its
    limit grew. A node without limits has no windows.
    """
    limits = owner.limits
    if limits is None:
        return
    changed = changed or previous is not None
    for name, used, limit in _token_windows(owner, limits):
        field = _level_field(name, "tokens")
        before: AlertLevel = getattr(owner, field)
        if not changed and before in ("critical", "exhausted"):
            continue
        if before == "exhausted" and previous and limit <= _token_limit(previous, name):
            continue
        after = alert_level(used, limit, limits)
        if after != before:
            setattr(owner, field, after)
            _rises(out, owner, event, moment, name, "tokens", before, after, limits, used, limit)


def usd_threshold_alerts(
    out: Folded,
    owner: Owner,
    event: Event,
    moment: Moment,
    *,
    previous: UsdLimits | None = None,
    changed: bool = False,
) -> None:
    """Record each threshold a USD window of `owner` has reached, once per window (the
    thresholds are its token limits' ones). `changed`: a BudgetSet, which may lower a
    level (to none where a limit was removed); `previous` its USD limits before."""
    usd, limits = owner.usd, owner.limits
    if usd is None or limits is None:
        if changed:
            owner.daily_usd_alert = owner.monthly_usd_alert = owner.total_usd_alert = "none"
        return
    for name, used, limit in _usd_windows(owner, usd):
        field = _level_field(name, "usd")
        before: AlertLevel = getattr(owner, field)
        if limit is None:
            setattr(owner, field, "none")
            continue
        if not changed and before in ("critical", "exhausted"):
            continue
        if before == "exhausted" and changed:
            was = _usd_limit(previous, name)
            if was is not None and limit <= was:
                continue
        after = usd_alert_level(used, limit, limits)
        if after != before:
            setattr(owner, field, after)
            _rises(out, owner, event, moment, name, "usd", before, after, limits, used, limit)


def _rises(
    out: Folded,
    owner: Owner,
    event: Event,
    moment: Moment,
    name: str,
    unit: Unit,
    before: AlertLevel,
    after: AlertLevel,
    limits: Limits,
    used: int | Decimal,
    limit: int | Decimal,
) -> None:
    """One row per level passed on the way up from `before` to `after`."""
    what = f"{name} usage" if unit == "tokens" else f"{name} USD spend"
    shown = (
        (used, limit)
        if unit == "tokens"
        else (format_usd(Decimal(used)), format_usd(Decimal(limit)))
    )
    for level in _LEVELS[_LEVELS.index(before) + 1 : _LEVELS.index(after) + 1]:
        threshold = limits.warning_threshold if level == "warning" else limits.critical_threshold
        action = (
            f"{name}_{level}_threshold" if unit == "tokens" else f"{name}_usd_{level}_threshold"
        )
        _record(
            out,
            owner,
            event,
            moment,
            name,
            level,
            action,
            unit,
            used,
            limit,
            f"{what} {shown[0]} of {shown[1]} reached the {level} threshold",
            {"used": _plain(used), "limit": _plain(limit), "threshold": str(threshold)},
        )


def refused_alert(
    out: Folded, owner: Owner, event: Event, moment: Moment, record: ReservationRecord
) -> None:
    """A rejected reservation: the first one refused at a window's limit (tokens or
    dollars, of the session or of the node that refused it) exhausts that window."""
    refusing = _REFUSING_WINDOW.get(record.reason or "")
    if refusing is None:
        return
    name, unit = refusing
    field = _level_field(name, unit)
    if getattr(owner, field) == "exhausted":
        return
    setattr(owner, field, "exhausted")
    metadata: dict[str, Any] = {"reservation_id": str(record.reservation_id)}
    used: int | Decimal
    limit: int | Decimal
    if unit == "tokens":
        used = next(u for window, u, _ in _token_windows(owner, _limits(owner)) if window == name)
        limit = record.limit_tokens
        message = (
            f"{name} limit of {limit} refused a reservation of {record.tokens} tokens "
            f"({used} used, {record.available_tokens} available)"
        )
        metadata |= {
            "used": used,
            "limit": limit,
            "requested": record.tokens,
            "available": record.available_tokens,
        }
    else:
        used, limit = record.used_usd or Decimal(0), record.limit_usd or Decimal(0)
        held, requested = record.held_usd or Decimal(0), record.reserved_usd or Decimal(0)
        message = (
            f"{name} USD limit of {format_usd(limit)} refused a reservation of "
            f"{format_usd(requested)} (used {format_usd(used)}, held {format_usd(held)})"
        )
        metadata |= {
            "used": _plain(used),
            "limit": _plain(limit),
            "held": _plain(held),
            "requested": _plain(requested),
        }
    _record(
        out,
        owner,
        event,
        moment,
        name,
        "exhausted",
        f"{name}_limit_refused" if unit == "tokens" else f"{name}_usd_limit_refused",
        unit,
        used,
        limit,
        message + "; further refusals in this window are not alerted",
        metadata,
    )


def _record(
    out: Folded,
    owner: Owner,
    event: Event,
    moment: Moment,
    window: str,
    level: str,
    action: str,
    unit: Unit,
    used: int | Decimal,
    limit: int | Decimal,
    message: str,
    metadata: dict[str, Any],
) -> None:
    node = owner.account if isinstance(owner, NodeBudget) else None
    if node is None:
        tokens = used if isinstance(used, int) else 0
        out.logs.append(
            LogRow.of(
                event, moment.at, action, level, tokens=tokens, error=message, metadata=metadata
            )
        )
    tokens_unit = unit == "tokens"
    out.alerts.append(
        AlertRow(
            alert_id=alert_id(event.event_id, action, node),
            event_id=event.event_id,
            action=action,
            session_id=event.session_id,
            window_name=window,
            level=level,
            used_tokens=int(used) if tokens_unit else None,
            limit_tokens=int(limit) if tokens_unit else None,
            occurred_at=moment.at,
            created_at=moment.clock,
            account=node,
            unit=unit,
            used_usd=None if tokens_unit else Decimal(used),
            limit_usd=None if tokens_unit else Decimal(limit),
        )
    )


def _limits(owner: Owner) -> Limits:
    assert owner.limits is not None  # a window refused, so the owner has limits
    return owner.limits


def _token_limit(limits: Limits, window: str) -> int:
    if window == "daily":
        return limits.daily_limit
    return limits.monthly_limit if window == "monthly" else limits.hard_limit


def _usd_limit(usd: UsdLimits | None, window: str) -> Decimal | None:
    if usd is None:
        return None
    return usd.daily if window == "daily" else usd.monthly if window == "monthly" else usd.total


def _plain(value: int | Decimal) -> int | str:
    """Tokens as they are; dollars as plain digits without trailing zeros, so an amount
    read back from NUMERIC(…, 10) and one just added up read the same (replay)."""
    return value if isinstance(value, int) else format(value.normalize(), "f")
