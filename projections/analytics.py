"""Read models over the rollups: a session's report, the system overview, the daily report,
costs and top sessions. Each is a few indexed queries; none scans the ledger.

"Today" and "this month" are the windows' calendar day and month in the time zone of the
log's latest DefaultsSet (UTC before any), as the fold counts them.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Literal
from zoneinfo import ZoneInfo

import asyncpg

from .budget import local_day, month_of, start_of_day
from .read import SessionMetrics, session_metrics
from .read_models import (
    CostRow,
    DailyApiRow,
    DailyModelRow,
    DailyReport,
    DailySessionRow,
    PartitionLag,
    SessionLimits,
    SessionReport,
    SystemOverview,
    TopSession,
    WindowName,
    WindowUsage,
)

__all__ = [
    "costs",
    "daily_report",
    "session_report",
    "system_overview",
    "top_sessions",
    "windows_of",
    "windows_zone",
]

_RATIO = Decimal("0.0001")
_ZERO = Decimal(0)


async def windows_zone(conn: asyncpg.Connection) -> ZoneInfo:
    """The time zone of the daily and monthly windows (the latest DefaultsSet's, or UTC)."""
    zone = await conn.fetchval(
        "SELECT timezone FROM partition_defaults ORDER BY set_at DESC, topic, kafka_partition"
        " LIMIT 1"
    )
    return ZoneInfo(zone or "UTC")


def _ratio(used: int, limit: int) -> Decimal:
    if not limit:
        return Decimal(1 if used else 0).quantize(_RATIO)
    return (Decimal(used) / Decimal(limit)).quantize(_RATIO)


def windows_of(metrics: SessionMetrics) -> dict[WindowName, WindowUsage]:
    """The daily, monthly and total (hard limit) windows of a session's metrics."""
    limits = metrics.limits
    return {
        "daily": _window(metrics.tokens_used_today, limits.daily_limit, metrics.daily_alert),
        "monthly": _window(metrics.tokens_used_month, limits.monthly_limit, metrics.monthly_alert),
        "total": _window(metrics.tokens_used_total, limits.hard_limit, metrics.total_alert),
    }


def _window(used: int, limit: int, alert: str) -> WindowUsage:
    return WindowUsage(
        used=used,
        limit=limit,
        remaining=max(limit - used, 0),
        utilization=_ratio(used, limit),
        alert=alert,
    )


_SESSION_EXTRAS = """
    SELECT (SELECT count(*) FROM reservations r
             WHERE r.session_id = $1 AND r.status = 'accepted' AND r.expires_at > $2)
               AS outstanding,
           (SELECT cost_usd FROM session_usage_daily WHERE session_id = $1 AND day = $3)
               AS cost_today,
           (SELECT cost_usd FROM session_usage_monthly WHERE session_id = $1 AND month = $4)
               AS cost_month,
           (SELECT sum(cost_usd) FROM external_api_tokens WHERE session_id = $1) AS cost_total
"""


async def session_report(
    conn: asyncpg.Connection, session_id: str, *, now: datetime | None = None
) -> SessionReport | None:
    """The session's budget, usage per window, reservations and cost; None when no event
    has named it."""
    now = now or datetime.now(UTC)
    metrics = await session_metrics(conn, session_id, now=now)
    if not metrics.known:
        return None
    day = local_day(now, await windows_zone(conn))
    extras = await conn.fetchrow(_SESSION_EXTRAS, session_id, now, day, month_of(day))
    assert extras is not None
    limits, usd = metrics.limits, metrics.usd
    return SessionReport(
        session_id=session_id,
        limits=SessionLimits(
            daily_limit=limits.daily_limit,
            monthly_limit=limits.monthly_limit,
            hard_limit=limits.hard_limit,
            warning_threshold=limits.warning_threshold,
            critical_threshold=limits.critical_threshold,
            budget_source=limits.source,
            daily_usd_limit=usd.limits.daily if usd and usd.limits else None,
            monthly_usd_limit=usd.limits.monthly if usd and usd.limits else None,
            total_usd_limit=usd.limits.total if usd and usd.limits else None,
        ),
        windows=windows_of(metrics),
        utilization=metrics.utilization,
        binding_limit=metrics.binding_limit,
        available_tokens=metrics.available_tokens,
        tokens_held=metrics.tokens_held,
        outstanding_reservations=extras["outstanding"],
        reservations_accepted=metrics.reservations_accepted,
        reservations_rejected=metrics.reservations_rejected,
        overage_tokens=metrics.overage_tokens,
        cost_usd_today=extras["cost_today"] or _ZERO,
        cost_usd_month=extras["cost_month"] or _ZERO,
        cost_usd=extras["cost_total"] or _ZERO,
        last_activity=metrics.updated_at,
        as_of=now,
        account=metrics.account,
        usd_held=usd.held if usd else _ZERO,
        available_usd=usd.available if usd else None,
    )


async def top_sessions(
    conn: asyncpg.Connection,
    by: Literal["tokens", "cost"] = "tokens",
    limit: int = 10,
    day: date | None = None,
    *,
    now: datetime | None = None,
) -> list[TopSession]:
    """The sessions that used the most tokens (or cost the most) on `day` (default today)."""
    if day is None:
        day = local_day(now or datetime.now(UTC), await windows_zone(conn))
    order = "tokens_used" if by == "tokens" else "cost_usd"
    rows = await conn.fetch(
        f"SELECT session_id, tokens_used, cost_usd FROM session_usage_daily WHERE day = $1"  # noqa: S608 - a constant
        f" ORDER BY {order} DESC, session_id LIMIT $2",
        day,
        limit,
    )
    return [TopSession(**dict(row)) for row in rows]


_OVERVIEW = """
    SELECT (SELECT count(*) FROM session_usage_daily WHERE day = $1) AS sessions_today,
           (SELECT coalesce(sum(tokens_used), 0)::bigint FROM session_usage_daily
             WHERE day = $1) AS tokens_today,
           (SELECT coalesce(sum(cost_usd), 0) FROM session_usage_daily WHERE day = $1)
               AS cost_today,
           (SELECT coalesce(sum(tokens_used), 0)::bigint FROM session_usage_monthly
             WHERE month = $2) AS tokens_month,
           (SELECT coalesce(sum(cost_usd), 0) FROM session_usage_monthly WHERE month = $2)
               AS cost_month,
           (SELECT coalesce(sum(events_applied), 0)::bigint FROM system_usage_minutely
             WHERE minute >= $3) AS events_last_minute
"""


async def system_overview(
    conn: asyncpg.Connection,
    *,
    topic: str,
    highwaters: Mapping[int, int] | None,
    broker_error: str | None = None,
    dlq_depth: int | None = None,
    spool_bytes: int | None = None,
    top: int = 5,
    now: datetime | None = None,
) -> SystemOverview:
    """The pipeline as of `now`. The broker's side (highwaters of `topic`, DLQ depth) is
    given by the caller, None where the broker could not be asked (`broker_error` says why).
    """
    now = now or datetime.now(UTC)
    day = local_day(now, await windows_zone(conn))
    month = month_of(day)
    minute = now.replace(second=0, microsecond=0) - timedelta(minutes=1)
    row = await conn.fetchrow(_OVERVIEW, day, month, minute)
    assert row is not None
    checkpoints = {
        r["kafka_partition"]: (r["next_offset"], r["log_clock"])
        for r in await conn.fetch(
            "SELECT kafka_partition, next_offset, log_clock FROM partition_checkpoints"
            " WHERE topic = $1",
            topic,
        )
    }
    partitions = sorted(set(checkpoints) | set(highwaters or {}))
    lag = []
    for partition in partitions:
        next_offset, clock = checkpoints.get(partition, (0, None))
        end = None if highwaters is None else highwaters.get(partition)
        lag.append(
            PartitionLag(
                topic=topic,
                partition=partition,
                next_offset=next_offset,
                highwater=end,
                lag=None if end is None else max(end - next_offset, 0),
                log_clock=clock,
            )
        )
    known = [p.lag for p in lag if p.lag is not None]
    return SystemOverview(
        as_of=now,
        day=day,
        month=month,
        sessions_active_today=row["sessions_today"],
        tokens_today=row["tokens_today"],
        cost_usd_today=row["cost_today"],
        tokens_month=row["tokens_month"],
        cost_usd_month=row["cost_month"],
        events_last_minute=row["events_last_minute"],
        lag=lag,
        total_lag=sum(known) if highwaters is not None else None,
        broker_error=broker_error,
        dlq_depth=dlq_depth,
        spool_bytes=spool_bytes,
        top_by_tokens=await top_sessions(conn, "tokens", top, day),
        top_by_cost=await top_sessions(conn, "cost", top, day),
    )


_DAILY_SESSIONS = """
    SELECT coalesce(u.session_id, r.session_id) AS session_id,
           coalesce(u.input_tokens, 0) AS input_tokens,
           coalesce(u.output_tokens, 0) AS output_tokens,
           coalesce(u.tokens_used, 0) AS tokens_used,
           coalesce(u.usage_events, 0) AS usage_events,
           coalesce(u.cost_usd, 0) AS cost_usd,
           coalesce(r.accepted, 0) AS accepted, coalesce(r.rejected, 0) AS rejected,
           coalesce(r.settled, 0) AS settled, coalesce(r.released, 0) AS released,
           coalesce(r.expired, 0) AS expired,
           coalesce(r.reserved_tokens, 0) AS reserved_tokens,
           coalesce(r.settled_tokens, 0) AS settled_tokens
      FROM (SELECT * FROM session_usage_daily WHERE day = $1) u
      FULL JOIN (SELECT * FROM session_reservations_daily WHERE day = $1) r
        ON r.session_id = u.session_id
     ORDER BY tokens_used DESC, session_id
"""
#: Reservations of the day still accepted although their expires_at has passed: expired
#: at read time (the fold marks them when their session's next event arrives).
_LAPSED = """
    SELECT session_id, count(*) AS lapsed FROM reservations
     WHERE status = 'accepted' AND expires_at <= $3
       AND requested_at >= $1 AND requested_at < $2
     GROUP BY session_id
"""


async def daily_report(
    conn: asyncpg.Connection, day: date | None = None, *, now: datetime | None = None
) -> DailyReport:
    """Usage, cost and reservation outcomes of `day` (default today), per session, per API
    and model (ApiCost) and per integration and model (TokenUsed)."""
    now = now or datetime.now(UTC)
    zone = await windows_zone(conn)
    day = day or local_day(now, zone)
    start, end = start_of_day(day, zone), start_of_day(day + timedelta(days=1), zone)
    lapsed = {r["session_id"]: r["lapsed"] for r in await conn.fetch(_LAPSED, start, end, now)}
    sessions = []
    for row in await conn.fetch(_DAILY_SESSIONS, day):
        values = dict(row)
        late = lapsed.get(values["session_id"], 0)
        values["expired"] += late
        reserved = values["reserved_tokens"]
        values["efficiency"] = (
            (Decimal(values["settled_tokens"]) / Decimal(reserved)).quantize(_RATIO)
            if reserved
            else None
        )
        sessions.append(DailySessionRow(**values))
    apis = [
        DailyApiRow(**dict(r))
        for r in await conn.fetch(
            "SELECT api_name, model, requests, input_tokens, output_tokens, cache_read_tokens,"
            " cache_write_tokens, cost_usd FROM api_usage_daily WHERE day = $1"
            " ORDER BY cost_usd DESC, api_name, model",
            day,
        )
    ]
    models = [
        DailyModelRow(**dict(r))
        for r in await conn.fetch(
            "SELECT component, model, usage_events, input_tokens, output_tokens"
            " FROM model_usage_daily WHERE day = $1"
            " ORDER BY input_tokens + output_tokens DESC, component, model",
            day,
        )
    ]
    reserved = sum(s.reserved_tokens for s in sessions)
    settled = sum(s.settled_tokens for s in sessions)
    return DailyReport(
        date=day,
        sessions=sessions,
        apis=apis,
        models=models,
        tokens_used=sum(s.tokens_used for s in sessions),
        cost_usd=sum((s.cost_usd for s in sessions), _ZERO),
        reservations_accepted=sum(s.accepted for s in sessions),
        reservations_rejected=sum(s.rejected for s in sessions),
        efficiency=(Decimal(settled) / Decimal(reserved)).quantize(_RATIO) if reserved else None,
    )


_COST_KEYS = {"api": "api_name", "model": "model", "day": "day"}


async def costs(
    conn: asyncpg.Connection,
    by: Literal["api", "model", "day"] = "api",
    since: date | None = None,
    until: date | None = None,
) -> list[CostRow]:
    """ApiCost totals per API, model or day between `since` and `until` (inclusive; by
    default the last 30 days up to today, days in the windows' time zone as the rollup
    keeps them), most expensive first (by day: in order)."""
    if by not in _COST_KEYS:
        raise ValueError(f"costs by {by!r}: use one of {', '.join(_COST_KEYS)}")
    until = until or local_day(datetime.now(UTC), await windows_zone(conn))
    since = since or until - timedelta(days=29)
    if since > until:
        raise ValueError(f"since {since} is after until {until}")
    key = _COST_KEYS[by]
    order = "day" if by == "day" else "cost_usd DESC, key"
    rows = await conn.fetch(
        f"SELECT {key} AS key, sum(requests)::bigint AS requests,"  # noqa: S608 - constants
        " sum(input_tokens)::bigint AS input_tokens, sum(output_tokens)::bigint AS output_tokens,"
        f" sum(cost_usd) AS cost_usd FROM api_usage_daily WHERE day BETWEEN $1 AND $2"
        f" GROUP BY {key} ORDER BY {order.replace('day', 'key') if by == 'day' else order}",
        since,
        until,
    )
    return [
        CostRow(
            **{key: r["key"]},
            requests=r["requests"],
            input_tokens=r["input_tokens"],
            output_tokens=r["output_tokens"],
            cost_usd=r["cost_usd"],
        )
        for r in rows
    ]
