"""The only place the live projection's SQL runs: load touched state, fold, save, in one txn."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from tokenquota.schemas import Event

from .fold import FoldConfig, fold
from .state import (
    Decision,
    Folded,
    Limits,
    LogRow,
    ProjectionState,
    ReservationRecord,
    SessionBudget,
)

__all__ = [
    "PROJECTION_TABLES",
    "BatchResult",
    "LogRecord",
    "apply_batch",
    "decision_channel",
    "projection_lock_key",
    "reservation_from_row",
]

#: Every table the fold and the ledger write; replay rebuilds and swaps exactly these.
PROJECTION_TABLES = (
    "usage_events",
    "partition_checkpoints",
    "session_token_budgets",
    "reservations",
    "task_token_allocations",
    "external_api_tokens",
    "integration_logs",
    "session_usage_daily",
    "session_usage_monthly",
)


@dataclass(frozen=True, slots=True)
class LogRecord:
    """A decoded event with the raw bytes it came as and its place in the log."""

    event: Event
    payload: bytes
    topic: str
    partition: int
    offset: int


@dataclass(slots=True)
class BatchResult:
    """What one batch did: events applied, duplicates dropped, reservation decisions."""

    applied: int = 0
    duplicates: int = 0
    decisions: list[Decision] = field(default_factory=list)


def decision_channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel on which a schema's reservation decisions are announced."""
    return f"tokenquota_{schema}"[:63]


def projection_lock_key(schema: str) -> str:
    """Text whose hash keys the advisory lock between batches (shared) and replay's swap."""
    return f"tokenquota.projections:{schema}"


async def apply_batch(
    conn: asyncpg.Connection,
    records: Sequence[LogRecord],
    config: FoldConfig,
    *,
    schema: str,
    notify: bool = True,
    skipped: Sequence[tuple[str, int, int]] = (),
) -> BatchResult:
    """Apply a batch in one transaction: ledger first, fold only new events, checkpoint.

    A redelivered or re-sent event (same event_id) is already in the ledger and is not
    folded again. Decisions are announced with NOTIFY, delivered when the transaction
    commits.
    """
    try:
        return await _apply(conn, records, config, schema, notify, skipped, direct=True)
    except asyncpg.UniqueViolationError:
        # A redelivered event made the direct COPY fail (and roll back); go the way that
        # sorts duplicates out.
        return await _apply(conn, records, config, schema, notify, skipped, direct=False)


async def _apply(
    conn: asyncpg.Connection,
    records: Sequence[LogRecord],
    config: FoldConfig,
    schema: str,
    notify: bool,
    skipped: Sequence[tuple[str, int, int]],
    *,
    direct: bool,
) -> BatchResult:
    result = BatchResult()
    if not records and not skipped:
        return result
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock_shared(hashtextextended($1, 0))",
            projection_lock_key(schema),
        )
        if records:
            folded = await _ledger_and_fold(conn, records, config, direct=direct)
            result.applied = folded.applied
            result.duplicates = len(records) - folded.applied
            if folded.applied:
                for statement, rows in folded.writes:
                    await _insert(conn, statement, rows)
                result.decisions = folded.decisions
            if notify and result.decisions:
                await conn.execute(
                    "SELECT pg_notify($1, d) FROM unnest($2::text[]) AS d",
                    decision_channel(schema),
                    [f"{d.reservation_id} {d.status}" for d in result.decisions],
                )
        await _checkpoint(conn, [(r.topic, r.partition, r.offset) for r in records], skipped)
    return result


@dataclass(frozen=True, slots=True)
class _FoldedBatch:
    applied: int
    decisions: list[Decision]
    writes: list[tuple[str, list[tuple[Any, ...]]]]


def _fold_writes(state: ProjectionState, events: list[Event], config: FoldConfig) -> _FoldedBatch:
    folded = fold(state, events, config)
    return _FoldedBatch(len(events), folded.decisions, _writes(folded))


async def _ledger_and_fold(
    conn: asyncpg.Connection, records: Sequence[LogRecord], config: FoldConfig, *, direct: bool
) -> _FoldedBatch:
    """Insert the ledger rows and fold the events that were new to it.

    While PostgreSQL inserts the ledger rows, the batch is folded on the guess that every
    event is new (the usual case); the fold is pure, so when the insert reports
    duplicates the guess is simply folded again without them.
    """
    first: dict[uuid.UUID, LogRecord] = {}
    for record in records:
        first.setdefault(record.event.event_id, record)
    unique = list(first.values())
    events = [r.event for r in unique]
    state = await _load_state(conn, events)
    rows = [
        (
            r.event.event_id,
            r.event.event_type,
            r.event.session_id,
            r.event.task_id,
            r.event.occurred_at,
            r.payload.decode(),
            r.topic,
            r.partition,
            r.offset,
        )
        for r in unique
    ]
    if len(rows) >= _COPY_FROM and direct:
        copying = asyncio.ensure_future(
            conn.copy_records_to_table("usage_events", records=rows, columns=_LEDGER_COLUMNS)
        )
        try:
            await asyncio.sleep(0)
            guess = _fold_writes(state, events, config)
        finally:
            await copying  # raises UniqueViolationError on a redelivered event
        return guess
    if len(rows) >= _COPY_FROM:
        await conn.execute(_CREATE_INCOMING)
        await conn.copy_records_to_table("incoming_events", records=rows, columns=_LEDGER_COLUMNS)
        inserting = asyncio.ensure_future(conn.fetch(_LEDGER_FROM_INCOMING))
    else:
        columns = [list(column) for column in zip(*rows, strict=True)]
        inserting = asyncio.ensure_future(conn.fetch(_LEDGER_BY_ARRAYS, *columns))
    try:
        await asyncio.sleep(0)  # the insert goes out before the fold takes the CPU
        guess = _fold_writes(state, events, config)
    except BaseException:
        with contextlib.suppress(Exception):
            await inserting  # the connection must be idle before the transaction rolls back
        raise
    inserted = await inserting
    if len(inserted) == len(unique):
        return guess
    new_ids = {row["event_id"] for row in inserted}
    return _fold_writes(state, [e for e in events if e.event_id in new_ids], config)


#: Batches at least this large go to the ledger by COPY, which PostgreSQL ingests faster
#: than array parameters: straight into the ledger, or (when that meets an event the
#: ledger already has) into a temporary table that is then inserted ON CONFLICT DO NOTHING.
_COPY_FROM = 500
_LEDGER_COLUMNS = (
    "event_id", "event_type", "session_id", "task_id", "occurred_at", "payload", "topic",
    "kafka_partition", "kafka_offset",
)  # fmt: skip
_LEDGER_BY_ARRAYS = """
    INSERT INTO usage_events (event_id, event_type, session_id, task_id, occurred_at,
                              payload, topic, kafka_partition, kafka_offset)
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::varchar[], $4::varchar[],
                         $5::timestamptz[], $6::jsonb[], $7::text[], $8::int[], $9::bigint[])
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id"""
# Emptied here too: a batch nested in a larger transaction (replay's catch-up) has no
# commit of its own to empty it.
_LEDGER_FROM_INCOMING = """
    WITH incoming AS (DELETE FROM incoming_events RETURNING *)
    INSERT INTO usage_events SELECT * FROM incoming
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id"""
#: For batches that may hold events the ledger already has; emptied by every commit.
_CREATE_INCOMING = """
    CREATE TEMP TABLE IF NOT EXISTS incoming_events (LIKE usage_events)
    ON COMMIT DELETE ROWS"""


async def _load_state(conn: asyncpg.Connection, events: Sequence[Event]) -> ProjectionState:
    sessions = sorted({e.session_id for e in events})
    # Only TokenReserved and TokenUsed name one (getattr: cheaper than isinstance on
    # pydantic models, which goes through ABCMeta, for every event).
    named = [rid for e in events if (rid := getattr(e, "reservation_id", None)) is not None]
    # Serialises folds of one session should two workers ever hold its partition at once
    # (a rebalance); the array is sorted, so locks are always taken in the same order.
    await conn.execute(
        "SELECT count(pg_advisory_xact_lock(hashtextextended(s, 1))) FROM unnest($1::text[]) s",
        sessions,
    )
    session_rows = await conn.fetch(
        "SELECT * FROM session_token_budgets WHERE session_id = ANY($1::varchar[])", sessions
    )
    reservation_rows = await conn.fetch(
        # Two index scans, not one OR: PostgreSQL plans `a OR b` over these as a scan of
        # the whole table, which grows with every reservation ever made.
        """SELECT * FROM reservations WHERE session_id = ANY($1::varchar[]) AND status = 'accepted'
           UNION ALL
           SELECT * FROM reservations WHERE reservation_id = ANY($2::uuid[])""",
        sessions,
        named,
    )
    return ProjectionState(
        sessions={row["session_id"]: _session(row) for row in session_rows},
        reservations={row["reservation_id"]: reservation_from_row(row) for row in reservation_rows},
    )


def _session(row: asyncpg.Record) -> SessionBudget:
    return SessionBudget(
        session_id=row["session_id"],
        limits=Limits(
            daily_limit=row["daily_limit"],
            monthly_limit=row["monthly_limit"],
            hard_limit=row["hard_limit"],
            warning_threshold=row["warning_threshold"],
            critical_threshold=row["critical_threshold"],
            source=row["budget_source"],
        ),
        current_day=row["current_day"],
        tokens_used_today=row["tokens_used_today"],
        current_month=row["current_month"],
        tokens_used_month=row["tokens_used_month"],
        tokens_used_total=row["tokens_used_total"],
        daily_alert=row["daily_alert"],
        monthly_alert=row["monthly_alert"],
        total_alert=row["total_alert"],
        reservations_accepted=row["reservations_accepted"],
        reservations_rejected=row["reservations_rejected"],
        overage_tokens=row["overage_tokens"],
        last_reset=row["last_reset"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


_RESERVATION_FIELDS = tuple(f.name for f in dataclasses.fields(ReservationRecord))


def reservation_from_row(row: asyncpg.Record) -> ReservationRecord:
    """A reservations row as a ReservationRecord."""
    return ReservationRecord(**{name: row[name] for name in _RESERVATION_FIELDS})


_SESSION_COLUMNS = (
    ("session_id", "varchar"), ("daily_limit", "bigint"), ("monthly_limit", "bigint"),
    ("hard_limit", "bigint"), ("warning_threshold", "numeric"),
    ("critical_threshold", "numeric"), ("budget_source", "text"), ("current_day", "date"),
    ("tokens_used_today", "bigint"), ("current_month", "date"),
    ("tokens_used_month", "bigint"), ("tokens_used_total", "bigint"),
    ("daily_alert", "text"), ("monthly_alert", "text"), ("total_alert", "text"),
    ("reservations_accepted", "bigint"), ("reservations_rejected", "bigint"),
    ("overage_tokens", "bigint"), ("last_reset", "timestamptz"),
    ("created_at", "timestamptz"), ("updated_at", "timestamptz"),
)  # fmt: skip
_RESERVATION_TYPES = {
    "reservation_id": "uuid", "event_id": "uuid", "session_id": "varchar",
    "task_id": "varchar", "tokens": "bigint", "priority": "text", "status": "text",
    "reason": "text", "available_tokens": "bigint", "limit_tokens": "bigint",
    "requested_at": "timestamptz", "decided_at": "timestamptz", "expires_at": "timestamptz",
    "settled_at": "timestamptz", "settled_tokens": "bigint", "overage_tokens": "bigint",
}  # fmt: skip
_RESERVATION_COLUMNS = tuple((name, _RESERVATION_TYPES[name]) for name in _RESERVATION_FIELDS)
_USAGE_COLUMNS = (
    ("input_tokens", "bigint"), ("output_tokens", "bigint"), ("tokens_used", "bigint"),
    ("usage_events", "bigint"), ("cost_usd", "numeric"),
)  # fmt: skip
_ADDED_USAGE = """DO UPDATE SET
        input_tokens = t.input_tokens + EXCLUDED.input_tokens,
        output_tokens = t.output_tokens + EXCLUDED.output_tokens,
        tokens_used = t.tokens_used + EXCLUDED.tokens_used,
        usage_events = t.usage_events + EXCLUDED.usage_events,
        cost_usd = t.cost_usd + EXCLUDED.cost_usd"""


def _bulk(table: str, columns: Sequence[tuple[str, str]], key: str, conflict: str) -> str:
    """One INSERT of a whole batch: each column is an array parameter, rows by unnest.

    One set-based statement per table instead of a statement per row: PostgreSQL plans
    and runs it once, which is most of what a batch costs.
    """
    names = ", ".join(name for name, _ in columns)
    arrays = ", ".join(f"${i}::{kind}[]" for i, (_, kind) in enumerate(columns, 1))
    return (
        f"INSERT INTO {table} AS t ({names}) SELECT * FROM unnest({arrays}) "  # noqa: S608 - constants only
        f"ON CONFLICT ({key}) {conflict}"
    )


def _replace(columns: Sequence[tuple[str, str]], key: str) -> str:
    return "DO UPDATE SET " + ", ".join(
        f"{name} = EXCLUDED.{name}" for name, _ in columns if name != key
    )


_UPSERT_SESSIONS = _bulk(
    "session_token_budgets",
    _SESSION_COLUMNS,
    "session_id",
    _replace(_SESSION_COLUMNS, "session_id"),
)
_UPSERT_RESERVATIONS = _bulk(
    "reservations",
    _RESERVATION_COLUMNS,
    "reservation_id",
    _replace(_RESERVATION_COLUMNS, "reservation_id"),
)
_ADD_DAILY = _bulk(
    "session_usage_daily",
    (("session_id", "varchar"), ("day", "date"), *_USAGE_COLUMNS),
    "session_id, day",
    _ADDED_USAGE,
)
_ADD_MONTHLY = _bulk(
    "session_usage_monthly",
    (("session_id", "varchar"), ("month", "date"), *_USAGE_COLUMNS),
    "session_id, month",
    _ADDED_USAGE,
)
_ADD_TASKS = _bulk(
    "task_token_allocations",
    (
        ("session_id", "varchar"),
        ("task_id", "varchar"),
        ("allocated_tokens", "bigint"),
        ("tokens_used", "bigint"),
        ("created_at", "timestamptz"),
        ("updated_at", "timestamptz"),
    ),
    "session_id, task_id",
    """DO UPDATE SET
        allocated_tokens = t.allocated_tokens + EXCLUDED.allocated_tokens,
        tokens_used = t.tokens_used + EXCLUDED.tokens_used,
        created_at = LEAST(t.created_at, EXCLUDED.created_at),
        updated_at = GREATEST(t.updated_at, EXCLUDED.updated_at)""",
)
_ADD_APIS = _bulk(
    "external_api_tokens",
    (
        ("session_id", "varchar"),
        ("api_name", "varchar"),
        ("requests", "bigint"),
        ("input_tokens", "bigint"),
        ("output_tokens", "bigint"),
        ("cache_read_tokens", "bigint"),
        ("cache_write_tokens", "bigint"),
        ("tokens_used", "bigint"),
        ("cost_usd", "numeric"),
        ("last_used", "timestamptz"),
        ("rate_limit_remaining", "bigint"),
        ("rate_limit_reset", "timestamptz"),
    ),
    "session_id, api_name",
    """DO UPDATE SET
        requests = t.requests + EXCLUDED.requests,
        input_tokens = t.input_tokens + EXCLUDED.input_tokens,
        output_tokens = t.output_tokens + EXCLUDED.output_tokens,
        cache_read_tokens = t.cache_read_tokens + EXCLUDED.cache_read_tokens,
        cache_write_tokens = t.cache_write_tokens + EXCLUDED.cache_write_tokens,
        tokens_used = t.tokens_used + EXCLUDED.tokens_used,
        cost_usd = t.cost_usd + EXCLUDED.cost_usd,
        last_used = GREATEST(t.last_used, EXCLUDED.last_used),
        rate_limit_remaining = COALESCE(EXCLUDED.rate_limit_remaining, t.rate_limit_remaining),
        rate_limit_reset = COALESCE(EXCLUDED.rate_limit_reset, t.rate_limit_reset)""",
)
_INSERT_LOGS = _bulk(
    "integration_logs",
    (
        ("event_id", "uuid"),
        ("action", "varchar"),
        ("integration_type", "varchar"),
        ("component_name", "varchar"),
        ("session_id", "varchar"),
        ("task_id", "varchar"),
        ("tokens_used", "bigint"),
        ("status", "varchar"),
        ("error_message", "text"),
        ("metadata", "jsonb"),
        ("created_at", "timestamptz"),
    ),
    "event_id, action",
    "DO NOTHING",
)


async def _insert(
    conn: asyncpg.Connection, statement: str, rows: Sequence[tuple[Any, ...]]
) -> None:
    """Run a `_bulk` statement for `rows` (sent column by column); nothing when empty."""
    if rows:
        await conn.execute(statement, *(list(column) for column in zip(*rows, strict=True)))


def _writes(folded: Folded) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """The statements that save a fold, each with its rows (no statement without rows).

    Rows go in key order, so two transactions never lock the same rows in opposite order.
    """
    state = folded.state
    writes: list[tuple[str, list[tuple[Any, ...]]]] = [
        (
            _UPSERT_SESSIONS,
            [_session_args(state.sessions[s]) for s in sorted(folded.changed_sessions)],
        ),
        (
            _UPSERT_RESERVATIONS,
            [
                tuple(getattr(state.reservations[rid], name) for name in _RESERVATION_FIELDS)
                for rid in sorted(folded.changed_reservations)
            ],
        ),
    ]
    for statement, table in ((_ADD_DAILY, folded.daily), (_ADD_MONTHLY, folded.monthly)):
        writes.append(
            (
                statement,
                [
                    (s, w, d.input_tokens, d.output_tokens, d.tokens_used, d.usage_events,
                     d.cost_usd)
                    for (s, w), d in sorted(table.items())
                ],
            )
        )  # fmt: skip
    writes.append(
        (
            _ADD_TASKS,
            [
                (s, t, d.allocated_tokens, d.tokens_used, d.first_at, d.last_at)
                for (s, t), d in sorted(folded.tasks.items())
            ],
        )
    )
    writes.append(
        (
            _ADD_APIS,
            [
                (
                    s, api, d.requests, d.input_tokens, d.output_tokens, d.cache_read_tokens,
                    d.cache_write_tokens, d.input_tokens + d.output_tokens, d.cost_usd,
                    d.last_used, d.rate_limit_remaining, d.rate_limit_reset,
                )
                for (s, api), d in sorted(folded.apis.items())
            ],
        )
    )  # fmt: skip
    writes.append((_INSERT_LOGS, [_log_args(row) for row in folded.logs]))
    return [(statement, rows) for statement, rows in writes if rows]


def _session_args(s: SessionBudget) -> tuple[Any, ...]:
    limits = s.limits
    return (
        s.session_id,
        limits.daily_limit,
        limits.monthly_limit,
        limits.hard_limit,
        limits.warning_threshold,
        limits.critical_threshold,
        limits.source,
        s.current_day,
        s.tokens_used_today,
        s.current_month,
        s.tokens_used_month,
        s.tokens_used_total,
        s.daily_alert,
        s.monthly_alert,
        s.total_alert,
        s.reservations_accepted,
        s.reservations_rejected,
        s.overage_tokens,
        s.last_reset,
        s.created_at,
        s.updated_at,
    )


def _log_args(row: LogRow) -> tuple[Any, ...]:
    return (
        row.event_id,
        row.action,
        row.integration_type,
        row.component_name,
        row.session_id,
        row.task_id,
        row.tokens_used,
        row.status,
        row.error_message,
        None if row.metadata is None else json.dumps(row.metadata, sort_keys=True),
        row.created_at,
    )


async def _checkpoint(conn: asyncpg.Connection, *places: Sequence[tuple[str, int, int]]) -> None:
    positions: dict[tuple[str, int], int] = {}
    for topic, partition, offset in itertools.chain(*places):
        positions[(topic, partition)] = max(positions.get((topic, partition), 0), offset + 1)
    await _insert(conn, _CHECKPOINT, [(t, p, o) for (t, p), o in sorted(positions.items())])


_CHECKPOINT = _bulk(
    "partition_checkpoints",
    (("topic", "text"), ("kafka_partition", "int"), ("next_offset", "bigint")),
    "topic, kafka_partition",
    "DO UPDATE SET next_offset = GREATEST(t.next_offset, EXCLUDED.next_offset)",
)
