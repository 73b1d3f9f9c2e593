"""What the dashboard page reads beside the operator's read models: a page of sessions, the
tokens over time, a session's tasks and its external APIs.

Each is one or two indexed queries, or a scan of the one-row-per-session budget table
(10,000 sessions: a few milliseconds); none reads the ledger.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import asyncpg

from .analytics import windows_of, windows_zone
from .budget import local_day, month_of
from .read import sessions_metrics
from .read_models import SessionApiRow, SessionPage, SessionRow, TaskRow, Timeline, TimelinePoint

__all__ = ["SESSION_ORDERS", "session_apis", "session_page", "session_tasks", "timeline"]

SessionOrder = Literal["recent", "utilization", "name"]
#: How a page of sessions can be sorted.
SESSION_ORDERS: tuple[SessionOrder, ...] = ("recent", "utilization", "name")

# Utilization as session_metrics computes it (a window whose day or month has passed is
# empty; a limit of 0 is full once anything is used), so the sort agrees with the bars.
_UTILIZATION = """GREATEST(
    CASE WHEN current_day < {day} THEN 0
         WHEN daily_limit = 0 THEN (tokens_used_today > 0)::int
         ELSE tokens_used_today::numeric / daily_limit END,
    CASE WHEN current_month < {month} THEN 0
         WHEN monthly_limit = 0 THEN (tokens_used_month > 0)::int
         ELSE tokens_used_month::numeric / monthly_limit END,
    CASE WHEN hard_limit = 0 THEN (tokens_used_total > 0)::int
         ELSE tokens_used_total::numeric / hard_limit END)"""
_ORDER_BY: dict[SessionOrder, str] = {
    "recent": "updated_at DESC, session_id",
    "utilization": f"{_UTILIZATION} DESC, session_id",
    "name": "session_id",
}


def _like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


async def session_page(
    conn: asyncpg.Connection,
    *,
    offset: int = 0,
    limit: int = 25,
    order: SessionOrder = "recent",
    prefix: str | None = None,
    now: datetime | None = None,
) -> SessionPage:
    """Sessions `offset` .. `offset + limit` in `order` (most recently active, most
    utilized, or by id), only those whose id starts with `prefix` when given."""
    if order not in _ORDER_BY:
        raise ValueError(f"unknown order {order!r}: use one of {', '.join(SESSION_ORDERS)}")
    now = now or datetime.now(UTC)
    where, args = "", list[Any]()
    if prefix:
        args.append(_like_prefix(prefix))
        where = " WHERE session_id LIKE $1"
    total = await conn.fetchval(f"SELECT count(*) FROM session_token_budgets{where}", *args)  # noqa: S608
    order_by = _ORDER_BY[order]
    if order == "utilization":
        day = local_day(now, await windows_zone(conn))
        order_by = order_by.format(day=f"${len(args) + 1}", month=f"${len(args) + 2}")
        args += [day, month_of(day)]
    args += [limit, offset]
    ids = [
        row["session_id"]
        for row in await conn.fetch(
            f"SELECT session_id FROM session_token_budgets{where} ORDER BY {order_by}"  # noqa: S608
            f" LIMIT ${len(args) - 1} OFFSET ${len(args)}",
            *args,
        )
    ]
    metrics = await sessions_metrics(conn, ids, now=now)
    rows = []
    for session_id in ids:
        m = metrics[session_id]
        rows.append(
            SessionRow(
                session_id=session_id,
                windows=windows_of(m),
                warning_threshold=m.limits.warning_threshold,
                critical_threshold=m.limits.critical_threshold,
                utilization=m.utilization,
                tokens_held=m.tokens_held,
                last_activity=m.updated_at,
            )
        )
    return SessionPage(
        total=total,
        offset=offset,
        limit=limit,
        order=order,
        prefix=prefix or None,
        sessions=rows,
        as_of=now,
    )


_MINUTES = """
    SELECT minute AS at, events_applied, tokens_used, cost_usd, reservations_accepted,
           reservations_rejected
      FROM system_usage_minutely WHERE minute >= $1 AND minute < $2
"""
_HOURS = """
    SELECT date_trunc('hour', minute, 'UTC') AS at, sum(events_applied)::bigint AS events_applied,
           sum(tokens_used)::bigint AS tokens_used, sum(cost_usd) AS cost_usd,
           sum(reservations_accepted)::bigint AS reservations_accepted,
           sum(reservations_rejected)::bigint AS reservations_rejected
      FROM system_usage_minutely WHERE minute >= $1 AND minute < $2
     GROUP BY 1
"""


async def timeline(
    conn: asyncpg.Connection,
    scale: Literal["minute", "hour"] = "minute",
    *,
    hours: int = 48,
    now: datetime | None = None,
) -> Timeline:
    """Events, tokens, cost and decisions of the whole pipeline per minute of the last hour
    (`minute`) or per hour of the last `hours` (`hour`), by the log clock, every step
    present (zero where nothing happened)."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    if scale == "minute":
        step, count, sql = timedelta(minutes=1), 60, _MINUTES
        end = now.replace(second=0, microsecond=0) + step
    elif scale == "hour":
        if not 1 <= hours <= 24 * 31:
            raise ValueError(f"hours must be between 1 and {24 * 31}, not {hours}")
        step, count, sql = timedelta(hours=1), hours, _HOURS
        end = now.replace(minute=0, second=0, microsecond=0) + step
    else:
        raise ValueError(f"unknown scale {scale!r}: use minute or hour")
    start = end - count * step
    found = {row["at"]: row for row in await conn.fetch(sql, start, end)}
    points = []
    for i in range(count):
        at = start + i * step
        row = found.get(at)
        points.append(
            TimelinePoint(**dict(row))
            if row is not None
            else TimelinePoint(
                at=at,
                events_applied=0,
                tokens_used=0,
                cost_usd=0,
                reservations_accepted=0,
                reservations_rejected=0,
            )
        )
    return Timeline(scale=scale, start=start, end=end, points=points)


async def session_tasks(
    conn: asyncpg.Connection, session_id: str, limit: int = 100
) -> list[TaskRow]:
    """A session's tasks, most recently updated first."""
    rows = await conn.fetch(
        "SELECT task_id, allocated_tokens, tokens_used, status, created_at, completed_at,"
        " updated_at FROM task_token_allocations WHERE session_id = $1"
        " ORDER BY updated_at DESC, task_id LIMIT $2",
        session_id,
        limit,
    )
    return [TaskRow(**dict(row)) for row in rows]


async def session_apis(conn: asyncpg.Connection, session_id: str) -> list[SessionApiRow]:
    """A session's external APIs: tokens, cost and the provider's last rate-limit state,
    the most expensive first."""
    rows = await conn.fetch(
        "SELECT api_name, requests, input_tokens, output_tokens, cache_read_tokens,"
        " cache_write_tokens, tokens_used, cost_usd, last_used, rate_limit_remaining,"
        " rate_limit_reset FROM external_api_tokens WHERE session_id = $1"
        " ORDER BY cost_usd DESC, api_name",
        session_id,
    )
    return [SessionApiRow(**dict(row)) for row in rows]
