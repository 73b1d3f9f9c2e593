"""Read models of what happened: reservation decisions, alerts, integration logs, the audit
trail of administrative changes, and a cursor over the ledger for following it live."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import asyncpg

from .read_models import (
    AlertRow,
    AuditRow,
    DecisionRow,
    IntegrationLogRow,
    LedgerEvent,
    LedgerPage,
    TailCursor,
)

__all__ = [
    "RESERVATION_STATES",
    "audit_trail",
    "events_after",
    "integration_log",
    "recent_alerts",
    "recent_decisions",
    "session_known",
    "tail_cursor",
]

#: What a reservation's status reads as; `expired` includes accepted ones past expires_at.
RESERVATION_STATES = ("accepted", "rejected", "settled", "released", "expired")

#: An accepted reservation whose expires_at has passed no longer holds tokens: it reads as
#: expired, as the fold marks it when its session's next event arrives.
_STATUS = "CASE WHEN status = 'accepted' AND expires_at <= $1 THEN 'expired' ELSE status END"


async def session_known(conn: asyncpg.Connection, session_id: str) -> bool:
    """Whether an applied event has named the session: the fold gives every such session a
    row in session_token_budgets (what `session_report` calls known), found by its key."""
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM session_token_budgets WHERE session_id = $1)",
            session_id,
        )
    )


async def recent_decisions(
    conn: asyncpg.Connection,
    session_id: str | None = None,
    status: str | None = None,
    limit: int = 50,
    *,
    now: datetime | None = None,
) -> list[DecisionRow]:
    """The latest reservation decisions, newest first, of one session or of all."""
    if status is not None and status not in RESERVATION_STATES:
        raise ValueError(f"unknown status {status!r}: use one of {', '.join(RESERVATION_STATES)}")
    now = now or datetime.now(UTC)
    where: list[str] = []
    args: list[Any] = [now]
    if session_id is not None:
        args.append(session_id)
        where.append(f"session_id = ${len(args)}")
    if status == "expired":
        where.append("(status = 'expired' OR (status = 'accepted' AND expires_at <= $1))")
    elif status == "accepted":
        where.append("status = 'accepted' AND expires_at > $1")
    elif status is not None:
        args.append(status)
        where.append(f"status = ${len(args)}")
    args.append(limit)
    sql = (
        f"SELECT reservation_id, session_id, task_id, tokens, priority, {_STATUS} AS status,"  # noqa: S608 - built from constants
        " reason, available_tokens, limit_tokens, requested_at, decided_at, expires_at,"
        " settled_tokens FROM reservations"
        + (" WHERE " + " AND ".join(where) if where else "")
        + f" ORDER BY decided_at DESC, reservation_id LIMIT ${len(args)}"
    )
    return [DecisionRow(**dict(r)) for r in await conn.fetch(sql, *args)]


async def recent_alerts(
    conn: asyncpg.Connection,
    since: datetime | None = None,
    session_id: str | None = None,
    limit: int = 100,
) -> list[AlertRow]:
    """Threshold crossings and refusals at a limit, newest first, with their webhook
    delivery state (None: not sent, no webhook configured or not yet tried)."""
    where: list[str] = []
    args: list[Any] = []
    if since is not None:
        args.append(since)
        where.append(f"o.created_at >= ${len(args)}")
    if session_id is not None:
        args.append(session_id)
        where.append(f"o.session_id = ${len(args)}")
    args.append(limit)
    sql = (
        "SELECT o.alert_id, o.event_id, o.action, o.session_id, o.window_name, o.level,"  # noqa: S608
        " o.used_tokens, o.limit_tokens, o.occurred_at, o.created_at, d.status AS delivery,"
        " o.account, o.unit, o.used_usd, o.limit_usd"
        " FROM alert_outbox o LEFT JOIN alert_deliveries d ON d.alert_id = o.alert_id"
        + (" WHERE " + " AND ".join(where) if where else "")
        + f" ORDER BY o.created_at DESC, o.alert_id LIMIT ${len(args)}"
    )
    return [AlertRow(**dict(r)) for r in await conn.fetch(sql, *args)]


async def integration_log(
    conn: asyncpg.Connection,
    session_id: str,
    since: datetime | None = None,
    limit: int = 100,
) -> list[IntegrationLogRow]:
    """A session's integration_logs rows, newest first: its applied events, reservation
    decisions and the fold's notices."""
    args: list[Any] = [session_id]
    where = "session_id = $1"
    if since is not None:
        args.append(since)
        where += " AND created_at >= $2"
    args.append(limit)
    rows = await conn.fetch(
        f"SELECT * FROM integration_logs WHERE {where}"  # noqa: S608 - constants
        f" ORDER BY created_at DESC, event_id, action LIMIT ${len(args)}",
        *args,
    )
    return [
        IntegrationLogRow(
            **{**dict(r), "metadata": _json(r["metadata"])},
        )
        for r in rows
    ]


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


_AUDIT_FIELDS = ("daily_limit", "monthly_limit", "hard_limit")


def _change(payload: dict[str, Any]) -> str:
    limits = " / ".join(f"{int(payload[f]):,}" for f in _AUDIT_FIELDS if f in payload)
    thresholds = f"{payload.get('warning_threshold')} / {payload.get('critical_threshold')}"
    text = f"limits {limits} (daily / monthly / hard), thresholds {thresholds}"
    if payload.get("event_type") == "DefaultsSet":
        text = f"defaults: {text}, zone {payload.get('timezone')}"
    return text


async def audit_trail(
    conn: asyncpg.Connection, session_id: str | None = None, limit: int = 100
) -> list[AuditRow]:
    """Every BudgetSet (of one session, or all) and DefaultsSet, newest first, with its
    actor: the log itself is the audit trail."""
    args: list[Any] = []
    where = "event_type IN ('BudgetSet', 'DefaultsSet')"
    if session_id is not None:
        args.append(session_id)
        where = "event_type = 'BudgetSet' AND session_id = $1"
    args.append(limit)
    rows = await conn.fetch(
        "SELECT event_id, event_type, session_id, occurred_at, log_time, payload"  # noqa: S608
        f" FROM usage_events WHERE {where}"
        f" ORDER BY occurred_at DESC, event_id LIMIT ${len(args)}",
        *args,
    )
    out = []
    for row in rows:
        payload = _json(row["payload"])
        out.append(
            AuditRow(
                event_id=row["event_id"],
                event_type=row["event_type"],
                session_id=row["session_id"],
                actor=payload.get("actor"),
                occurred_at=row["occurred_at"],
                log_time=row["log_time"],
                change=_change(payload),
                payload=payload,
            )
        )
    return out


async def tail_cursor(
    conn: asyncpg.Connection, topic: str, since: datetime | None = None, *, partitions: int = 1
) -> TailCursor:
    """A cursor at the end of the ledger (`since` None), or at the first event of each
    partition whose record time is at or after `since`; partitions 0 .. `partitions` - 1
    that nothing was applied from yet start at offset 0."""
    start = dict.fromkeys(range(partitions), 0)
    if since is None:
        rows = await conn.fetch(
            "SELECT kafka_partition, next_offset FROM partition_checkpoints WHERE topic = $1",
            topic,
        )
        return TailCursor(topic=topic, next_offsets=start | {r[0]: r[1] for r in rows})
    rows = await conn.fetch(
        "SELECT p.kafka_partition, coalesce(("
        "   SELECT min(e.kafka_offset) FROM usage_events e"
        "    WHERE e.topic = p.topic AND e.kafka_partition = p.kafka_partition"
        "      AND e.log_time >= $2), p.next_offset) AS next_offset"
        " FROM partition_checkpoints p WHERE p.topic = $1",
        topic,
        since,
    )
    return TailCursor(topic=topic, next_offsets=start | {r[0]: r[1] for r in rows})


async def events_after(
    conn: asyncpg.Connection,
    cursor: TailCursor,
    limit: int = 500,
    session_id: str | None = None,
) -> LedgerPage:
    """Events the ledger holds at or after the cursor (at most `limit` per partition), in
    log order per partition, and the cursor after them."""
    partitions = sorted(cursor.next_offsets)
    rows = await conn.fetch(
        "SELECT e.* FROM unnest($2::int[], $3::bigint[]) AS c(p, o) CROSS JOIN LATERAL ("
        "  SELECT topic, kafka_partition, kafka_offset, event_id, event_type, session_id,"
        "         task_id, occurred_at, log_time, payload FROM usage_events"
        "   WHERE topic = $1 AND kafka_partition = c.p AND kafka_offset >= c.o"
        "   ORDER BY kafka_offset LIMIT $4) e"
        " ORDER BY e.kafka_partition, e.kafka_offset",
        cursor.topic,
        partitions,
        [cursor.next_offsets[p] for p in partitions],
        limit,
    )
    offsets = dict(cursor.next_offsets)
    events = []
    for row in rows:
        offsets[row["kafka_partition"]] = row["kafka_offset"] + 1
        if session_id is not None and row["session_id"] != session_id:
            continue
        events.append(
            LedgerEvent(
                topic=row["topic"],
                partition=row["kafka_partition"],
                offset=row["kafka_offset"],
                event_id=row["event_id"],
                event_type=row["event_type"],
                session_id=row["session_id"],
                task_id=row["task_id"],
                occurred_at=row["occurred_at"],
                log_time=row["log_time"],
                payload=_json(row["payload"]),
            )
        )
    return LedgerPage(events=events, cursor=TailCursor(topic=cursor.topic, next_offsets=offsets))
