"""Threshold alerts: each window's level, and the notice and outbox row of each rise.

A window (daily, monthly, total) rises through warning and critical as its usage
reaches the thresholds, and to exhausted when a reservation is first refused at its
limit. Each rise is recorded once per window: a notice (integration_notices, shown by
the integration_logs view) and an alert_outbox row in the batch's transaction, which
the notifier delivers. The level resets with the window (a new day or month); new limits
can lower it (a raised budget), and a later rise is recorded again. Never per event:
usage or refusals after a rise add nothing until the level is lowered.
"""

from __future__ import annotations

import uuid
from typing import Any

from tokenquota.schemas import Event

from .budget import alert_level
from .log_clock import Moment
from .state import AlertLevel, AlertRow, Folded, Limits, LogRow, ReservationRecord, SessionBudget

__all__ = ["ALERT_NAMESPACE", "alert_id", "refused_alert", "threshold_alerts"]

#: The namespace of alert ids: uuid5(ALERT_NAMESPACE, f"{event_id}:{action}"), the same
#: on every replay, so a receiver can drop an alert it has seen.
ALERT_NAMESPACE = uuid.UUID("6a1c3e0f-5d2b-5b8e-9f47-3c1d2a7b9e10")

_LEVELS: tuple[AlertLevel, ...] = ("none", "warning", "critical", "exhausted")
#: A rejection's reason -> the window whose limit refused it.
_REFUSING_WINDOW = {"daily_limit": "daily", "monthly_limit": "monthly", "hard_limit": "total"}


def alert_id(event_id: uuid.UUID, action: str) -> uuid.UUID:
    """The alert's id: derived from the event that caused it and the action."""
    return uuid.uuid5(ALERT_NAMESPACE, f"{event_id}:{action}")


def _windows(session: SessionBudget) -> tuple[tuple[str, int, int, AlertLevel], ...]:
    limits = session.limits
    return (
        ("daily", session.tokens_used_today, limits.daily_limit, session.daily_alert),
        ("monthly", session.tokens_used_month, limits.monthly_limit, session.monthly_alert),
        ("total", session.tokens_used_total, limits.hard_limit, session.total_alert),
    )


def _limit_of(limits: Limits, window: str) -> int:
    if window == "daily":
        return limits.daily_limit
    return limits.monthly_limit if window == "monthly" else limits.hard_limit


def threshold_alerts(
    out: Folded,
    session: SessionBudget,
    event: Event,
    moment: Moment,
    *,
    previous: Limits | None = None,
) -> None:
    """Record each threshold a window has reached, once per window.

    `previous` (the limits before a BudgetSet) means the limits changed: a level may then
    go down, without a row; an exhausted window stays exhausted unless its limit grew.
    """
    limits = session.limits
    for name, used, limit, before in _windows(session):
        if previous is None and before in ("critical", "exhausted"):
            continue
        if before == "exhausted" and previous and limit <= _limit_of(previous, name):
            continue
        after = alert_level(used, limit, limits)
        if after == before:
            continue
        setattr(session, f"{name}_alert", after)
        for level in _LEVELS[_LEVELS.index(before) + 1 : _LEVELS.index(after) + 1]:
            threshold = (
                limits.warning_threshold if level == "warning" else limits.critical_threshold
            )
            _record(
                out,
                event,
                moment,
                name,
                level,
                f"{name}_{level}_threshold",
                used,
                limit,
                f"{name} usage {used} of {limit} reached the {level} threshold",
                {"used": used, "limit": limit, "threshold": str(threshold)},
            )


def refused_alert(
    out: Folded, session: SessionBudget, event: Event, moment: Moment, record: ReservationRecord
) -> None:
    """A rejected reservation: the first one refused at a window's limit exhausts it."""
    name = _REFUSING_WINDOW.get(record.reason or "")
    if name is None or getattr(session, f"{name}_alert") == "exhausted":
        return
    setattr(session, f"{name}_alert", "exhausted")
    used = next(u for window, u, _, _ in _windows(session) if window == name)
    limit = record.limit_tokens
    _record(
        out,
        event,
        moment,
        name,
        "exhausted",
        f"{name}_limit_refused",
        used,
        limit,
        (
            f"{name} limit of {limit} refused a reservation of {record.tokens} tokens "
            f"({used} used, {record.available_tokens} available); further refusals in "
            "this window are not alerted"
        ),
        {
            "used": used,
            "limit": limit,
            "requested": record.tokens,
            "available": record.available_tokens,
            "reservation_id": str(record.reservation_id),
        },
    )


def _record(
    out: Folded,
    event: Event,
    moment: Moment,
    window: str,
    level: str,
    action: str,
    used: int,
    limit: int,
    message: str,
    metadata: dict[str, Any],
) -> None:
    out.logs.append(
        LogRow.of(event, moment.at, action, level, tokens=used, error=message, metadata=metadata)
    )
    out.alerts.append(
        AlertRow(
            alert_id=alert_id(event.event_id, action),
            event_id=event.event_id,
            action=action,
            session_id=event.session_id,
            window_name=window,
            level=level,
            used_tokens=used,
            limit_tokens=limit,
            occurred_at=moment.at,
            created_at=moment.clock,
        )
    )
