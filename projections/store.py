"""The transaction that applies a batch: ledger, touched state, fold, writes, checkpoint.

The worker and replay both apply through `apply_batch`; the statements that save a fold
are in `projections/writes.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import asyncpg

from tokenquota.schemas import Event

from .fold import FoldConfig, fold
from .state import (
    Decision,
    Limits,
    ProjectionState,
    ReservationRecord,
    SessionBudget,
)
from .writes import CHECKPOINT, RESERVATION_FIELDS, Write, execute_write, fold_writes

__all__ = [
    "PROJECTION_TABLES",
    "BatchResult",
    "LogRecord",
    "apply_batch",
    "decision_channel",
    "projection_lock_key",
    "reservation_from_row",
]

_T = TypeVar("_T")

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
                for write in folded.writes:
                    await execute_write(conn, *write)
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
    writes: list[Write]


def _fold_writes(state: ProjectionState, events: list[Event], config: FoldConfig) -> _FoldedBatch:
    folded = fold(state, events, config)
    return _FoldedBatch(len(events), folded.decisions, fold_writes(folded))


async def _fold_while(
    statement: Awaitable[_T], state: ProjectionState, events: list[Event], config: FoldConfig
) -> tuple[_T, _FoldedBatch]:
    """Fold `events` while PostgreSQL runs `statement`; return both results."""
    running = asyncio.ensure_future(statement)
    try:
        await asyncio.sleep(0)  # the statement goes out before the fold takes the CPU
        guess = _fold_writes(state, events, config)
    except BaseException:
        with contextlib.suppress(Exception):
            await running  # the connection must be idle before the transaction rolls back
        raise
    return await running, guess


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
        # Raises UniqueViolationError on a redelivered event.
        _, guess = await _fold_while(
            conn.copy_records_to_table("usage_events", records=rows, columns=_LEDGER_COLUMNS),
            state,
            events,
            config,
        )
        return guess
    if len(rows) >= _COPY_FROM:
        await conn.execute(_CREATE_INCOMING)
        await conn.copy_records_to_table("incoming_events", records=rows, columns=_LEDGER_COLUMNS)
        inserting = conn.fetch(_LEDGER_FROM_INCOMING)
    else:
        columns = [list(column) for column in zip(*rows, strict=True)]
        inserting = conn.fetch(_LEDGER_BY_ARRAYS, *columns)
    inserted, guess = await _fold_while(inserting, state, events, config)
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


def reservation_from_row(row: asyncpg.Record) -> ReservationRecord:
    """A reservations row as a ReservationRecord."""
    return ReservationRecord(**{name: row[name] for name in RESERVATION_FIELDS})


async def _checkpoint(conn: asyncpg.Connection, *places: Sequence[tuple[str, int, int]]) -> None:
    positions: dict[tuple[str, int], int] = {}
    for topic, partition, offset in itertools.chain(*places):
        positions[(topic, partition)] = max(positions.get((topic, partition), 0), offset + 1)
    await execute_write(conn, CHECKPOINT, [(t, p, o) for (t, p), o in sorted(positions.items())])
