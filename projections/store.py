"""The transaction that applies a batch: ledger, touched state, fold, writes, checkpoint.

The worker and replay both apply through `apply_batch_isolating` (or `apply_batch`, one
transaction); the statements that save a fold are in `projections/writes.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import asyncpg

from tokenquota.schemas import BudgetSet, DefaultsSet, Event, account_root, ancestors

from .budget_rows import node_of, session_of
from .continuity import LogGapError, batch_offsets, check_continues
from .fold import Folding, PoisonEventError, fold
from .pg_arrays import array_literal
from .state import (
    Decision,
    FoldConfig,
    Folded,
    Limits,
    LogRecord,
    PartitionKey,
    PartitionState,
    ProjectionState,
    ReservationRecord,
)
from .writes import CHECKPOINT, RESERVATION_FIELDS, Write, execute_writes, fold_writes

__all__ = [
    "PROJECTION_TABLES",
    "PROJECTION_VIEWS",
    "BatchResult",
    "LogGapError",
    "LogRecord",
    "PoisonHandler",
    "apply_batch",
    "apply_batch_isolating",
    "decision_channel",
    "defaults_from_row",
    "is_permanent",
    "partition_lock_key",
    "projection_lock_key",
    "reservation_from_row",
]

_T = TypeVar("_T")

#: Every table the fold and the ledger write; replay rebuilds and swaps exactly these.
PROJECTION_TABLES = (
    "usage_events",
    "partition_checkpoints",
    "partition_defaults",
    "session_token_budgets",
    "account_budgets",
    "reservations",
    "task_token_allocations",
    "external_api_tokens",
    "integration_notices",
    "session_usage_daily",
    "session_usage_monthly",
    "alert_outbox",
    "session_usage_hourly",
    "api_usage_daily",
    "model_usage_daily",
    "session_reservations_daily",
    "system_usage_minutely",
    "account_usage_daily",
)

#: Views over those tables; replay moves its rebuilt ones in with the tables (a view
#: follows its tables wherever they move).
PROJECTION_VIEWS = ("integration_logs",)

#: Called with an event that can never be applied and the reason; it is skipped after.
PoisonHandler = Callable[[LogRecord, str], Awaitable[None]]

#: SQLSTATE classes that the same batch would meet again however often it is retried:
#: data exceptions, integrity constraint violations, program limits.
_PERMANENT_CLASSES = frozenset({"22", "23", "54"})


@dataclass(slots=True)
class BatchResult:
    """What one batch did: events applied, duplicates dropped, poison skipped, decisions."""

    applied: int = 0
    duplicates: int = 0
    poisoned: int = 0
    decisions: list[Decision] = field(default_factory=list)

    def add(self, other: BatchResult) -> BatchResult:
        """This result with `other`'s counts and decisions added (in place)."""
        self.applied += other.applied
        self.duplicates += other.duplicates
        self.poisoned += other.poisoned
        self.decisions += other.decisions
        return self


def decision_channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel on which a schema's reservation decisions are announced."""
    return f"tokenquota_{schema}"[:63]


def projection_lock_key(schema: str) -> str:
    """Text whose hash keys the advisory lock between batches (shared) and replay's swap."""
    return f"tokenquota.projections:{schema}"


def partition_lock_key(topic: str, partition: int) -> str:
    """Text whose hash (`hashtextextended(key, 1)`) keys a transaction's exclusive lock on
    a partition's state: a batch of the partition holds it, so does moving its checkpoint."""
    return f"partition {topic}/{partition}"


def is_permanent(exc: BaseException) -> bool:
    """True for a PostgreSQL error caused by the data (retrying the same batch cannot help),
    False for a failing server or connection."""
    return isinstance(exc, asyncpg.PostgresError) and (exc.sqlstate or "")[:2] in (
        _PERMANENT_CLASSES
    )


async def apply_batch_isolating(
    conn: asyncpg.Connection,
    records: Sequence[LogRecord],
    *,
    schema: str,
    on_poison: PoisonHandler,
    notify: bool = True,
    skipped: Sequence[tuple[str, int, int]] = (),
    contiguous: bool = False,
) -> BatchResult:
    """`apply_batch`, except that an event which can never be applied does not stop the rest.

    When the fold refuses an event (PoisonEventError) it is split off directly; when
    PostgreSQL refuses the batch permanently (`is_permanent`), the batch is bisected until
    the event is found. The event is handed to `on_poison` with the reason and skipped
    (its offset still counts as applied); everything around it is applied in log order,
    each part in a transaction of its own. Any other error propagates.
    """

    async def part(
        batch: Sequence[LogRecord], skip: Sequence[tuple[str, int, int]] = ()
    ) -> BatchResult:
        return await apply_batch_isolating(
            conn, batch, schema=schema, on_poison=on_poison, notify=notify, skipped=skip,
            contiguous=contiguous,
        )  # fmt: skip

    try:
        return await apply_batch(
            conn, records, schema=schema, notify=notify, skipped=skipped, contiguous=contiguous
        )
    except PoisonEventError as exc:
        index = next(i for i, r in enumerate(records) if r.event.event_id == exc.event_id)
        reason = exc.reason
    except asyncpg.PostgresError as exc:
        if not is_permanent(exc) or not records:
            raise
        if len(records) > 1:
            half = len(records) // 2
            before, after = _split_skipped(skipped, records[:half], records[half:])
            return (await part(records[:half], before)).add(await part(records[half:], after))
        index = 0
        reason = f"PostgreSQL refused it ({exc.sqlstate}): {exc}"
    before, after = _split_skipped(skipped, records[:index], records[index:])
    result = await part(records[:index], before) if index else BatchResult()
    poison = records[index]
    await on_poison(poison, reason)
    result.poisoned += 1
    position = (poison.topic, poison.partition, poison.offset)
    return result.add(
        await part(records[index + 1 :], [*after, position] if index else [*skipped, position])
    )


def _split_skipped(
    skipped: Sequence[tuple[str, int, int]],
    earlier: Sequence[LogRecord],
    later: Sequence[LogRecord],
) -> tuple[list[tuple[str, int, int]], list[tuple[str, int, int]]]:
    """`skipped` split between a batch's `earlier` and `later` records, applied in that
    order: a position goes with the earlier part when one of its records of the same
    partition comes after it (the earlier part needs it to run on without a hole, see
    `continuity`), or when the later part has none of that partition; otherwise with
    the later part. (A batch may hold a partition's offsets twice, a refetch after a
    seek back: the earlier part's highest offset is what counts.)"""
    highest: dict[PartitionKey, int] = {}
    for r in earlier:
        key = (r.topic, r.partition)
        highest[key] = max(highest.get(key, r.offset), r.offset)
    later_keys = {(r.topic, r.partition) for r in later}
    before: list[tuple[str, int, int]] = []
    after: list[tuple[str, int, int]] = []
    for position in skipped:
        key = (position[0], position[1])
        top = highest.get(key)
        needed = top is not None and position[2] < top
        (before if needed or key not in later_keys else after).append(position)
    return before, after


async def apply_batch(
    conn: asyncpg.Connection,
    records: Sequence[LogRecord],
    *,
    schema: str,
    notify: bool = True,
    skipped: Sequence[tuple[str, int, int]] = (),
    contiguous: bool = False,
) -> BatchResult:
    """Apply a batch in one transaction: ledger first, fold only new events, checkpoint.

    A redelivered or re-sent event (same event_id) is already in the ledger and is not
    folded again. Decisions are announced with NOTIFY, delivered when the transaction
    commits. `skipped` are the positions of messages that are not applied (dead letters):
    they only advance the checkpoints.
    """
    try:
        return await _apply(conn, records, schema, notify, skipped, contiguous, direct=True)
    except asyncpg.UniqueViolationError:
        # A redelivered event made the direct COPY fail (and roll back); go the way that
        # sorts duplicates out.
        return await _apply(conn, records, schema, notify, skipped, contiguous, direct=False)


async def _apply(
    conn: asyncpg.Connection,
    records: Sequence[LogRecord],
    schema: str,
    notify: bool,
    skipped: Sequence[tuple[str, int, int]],
    contiguous: bool,
    *,
    direct: bool,
) -> BatchResult:
    result = BatchResult()
    if not records and not skipped:
        return result
    clocks: dict[PartitionKey, datetime] = {}
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock_shared(hashtextextended($1, 0))",
            projection_lock_key(schema),
        )
        writes: list[Write] = []
        offsets: dict[PartitionKey, set[int]] | None = None
        if contiguous:
            offsets = batch_offsets(
                itertools.chain(((r.topic, r.partition, r.offset) for r in records), skipped)
            )
        if records:
            folded = await _ledger_and_fold(conn, records, direct=direct, offsets=offsets)
            result.applied = folded.applied
            result.duplicates = len(records) - folded.applied
            if folded.applied:
                writes = folded.writes
                result.decisions = folded.decisions
                clocks = folded.clocks
        elif offsets is not None:  # dead letters alone: their partitions are checked too
            await _lock_partitions(conn, sorted(offsets))
            _check_continues(await _partition_rows(conn, sorted(offsets)), offsets)
        writes.append(
            _checkpoint([(r.topic, r.partition, r.offset) for r in records], skipped, clocks)
        )
        announced = (
            (
                decision_channel(schema),
                [f"{d.reservation_id} {d.status}" for d in result.decisions],
            )
            if notify and result.decisions
            else None
        )
        await execute_writes(conn, writes, notify=announced)
    return result


@dataclass(frozen=True, slots=True)
class _FoldedBatch:
    applied: int
    decisions: list[Decision]
    writes: list[Write]
    clocks: dict[PartitionKey, datetime]


def _fold_writes(state: ProjectionState, records: list[LogRecord]) -> _FoldedBatch:
    return _batch_of(fold(state, records, owned=True), len(records))  # loaded for it alone


def _batch_of(folded: Folded, applied: int) -> _FoldedBatch:
    partitions = folded.state.partitions
    clocks = {key: clock for key in folded.changed_partitions if (clock := partitions[key].clock)}
    return _FoldedBatch(applied, folded.decisions, fold_writes(folded), clocks)


#: Events folded between two turns of the event loop while a statement runs (see
#: `_fold_while`): a few milliseconds of fold.
_FOLD_SLICE = 500


async def _fold_while(
    statement: Awaitable[_T], state: ProjectionState, records: list[LogRecord]
) -> tuple[_T, _FoldedBatch | None]:
    """Fold `records` while PostgreSQL runs `statement`; return both results (no fold
    when it refused an event: whether that event is poison depends on whether it is new
    to the ledger, which the statement tells).

    The fold gives the event loop a turn every `_FOLD_SLICE` events: a COPY's rows are
    sent as the loop lets it, and folded in one piece, a large batch's rows went out
    only after its fold, with PostgreSQL idle meanwhile.
    """
    running = asyncio.ensure_future(statement)
    try:
        await asyncio.sleep(0)  # the statement goes out before the fold takes the CPU
        folding = Folding(state, owned=True)  # loaded for this fold alone
        for start in range(0, len(records), _FOLD_SLICE):
            folding.add(records[start : start + _FOLD_SLICE])
            if not running.done():
                await asyncio.sleep(0)
        guess: _FoldedBatch | None = _batch_of(folding.done(), len(records))
    except PoisonEventError:
        guess = None
    except BaseException:
        with contextlib.suppress(Exception):
            await running  # the connection must be idle before the transaction rolls back
        raise
    return await running, guess


async def _ledger_and_fold(
    conn: asyncpg.Connection,
    records: Sequence[LogRecord],
    *,
    direct: bool,
    offsets: dict[PartitionKey, set[int]] | None = None,
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
    state = await _load_state(conn, unique, offsets)
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
            r.timestamp,
        )
        for r in unique
    ]
    if len(rows) >= _COPY_FROM and direct:
        # Raises UniqueViolationError on a redelivered event.
        _, guess = await _fold_while(
            conn.copy_records_to_table("usage_events", records=rows, columns=_LEDGER_COLUMNS),
            state,
            unique,
        )
        if guess is None:  # every event was new (the COPY took them all): fold on a fresh
            # state (the refused fold changed the one loaded), to refuse the poison again
            return _fold_writes(await _load_state(conn, unique), unique)
        return guess
    if len(rows) >= _COPY_FROM:
        await conn.execute(_CREATE_INCOMING)
        await conn.copy_records_to_table("incoming_events", records=rows, columns=_LEDGER_COLUMNS)
        inserting = conn.fetch(_LEDGER_FROM_INCOMING)
    else:
        columns = map(array_literal, zip(*rows, strict=True))
        inserting = conn.fetch(_LEDGER_BY_ARRAYS, *columns)
    inserted, guess = await _fold_while(inserting, state, unique)
    if len(inserted) == len(unique) and guess is not None:
        return guess
    new_ids = {row["event_id"] for row in inserted}
    # The guess folded into the loaded state: load it again for the new events alone.
    new = [r for r in unique if r.event.event_id in new_ids]
    return _fold_writes(await _load_state(conn, new), new)


#: Batches at least this large go to the ledger by COPY, which PostgreSQL ingests faster
#: than array parameters: straight into the ledger, or (when that meets an event the
#: ledger already has) into a temporary table that is then inserted ON CONFLICT DO NOTHING.
_COPY_FROM = 500
_LEDGER_COLUMNS = (
    "event_id", "event_type", "session_id", "task_id", "occurred_at", "payload", "topic",
    "kafka_partition", "kafka_offset", "log_time",
)  # fmt: skip
_LEDGER_BY_ARRAYS = """
    INSERT INTO usage_events (event_id, event_type, session_id, task_id, occurred_at,
                              payload, topic, kafka_partition, kafka_offset, log_time)
    SELECT * FROM unnest($1::text::uuid[], $2::text::text[], $3::text::varchar[],
                         $4::text::varchar[], $5::text::timestamptz[], $6::text::jsonb[],
                         $7::text::text[], $8::text::int[], $9::text::bigint[],
                         $10::text::timestamptz[])
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
    CREATE TEMP TABLE IF NOT EXISTS incoming_events (LIKE usage_events INCLUDING DEFAULTS)
    ON COMMIT DELETE ROWS"""


async def _load_state(
    conn: asyncpg.Connection,
    records: Sequence[LogRecord],
    offsets: dict[PartitionKey, set[int]] | None = None,
) -> ProjectionState:
    events: list[Event] = [r.event for r in records]
    # (a partition with only dead letters in the batch is locked and checked too)
    partitions = sorted({(r.topic, r.partition) for r in records}.union(offsets or ()))
    # A DefaultsSet, and a BudgetSet of a tree node, name no session ("*").
    sessions = sorted(
        {
            e.session_id
            for e in events
            if type(e) is not DefaultsSet and not (type(e) is BudgetSet and e.target == "account")
        }
    )
    accounts = {a for e in events if (a := e.account) is not None}
    tenants = sorted({account_root(a) for a in accounts})
    # Only TokenReserved and TokenUsed name one (getattr: cheaper than isinstance on
    # pydantic models, which goes through ABCMeta, for every event).
    named = [rid for e in events if (rid := getattr(e, "reservation_id", None)) is not None]
    # Serialises folds of one partition (and of one session) should two workers ever hold
    # it at once (a rebalance): the second loads the state the first committed. Partition
    # locks come first and each kind is sorted, so locks are always taken in one order.
    await _lock_partitions(
        conn, partitions, [f"tree {t}" for t in tenants] + [f"session {s}" for s in sessions]
    )
    partition_rows = await _partition_rows(conn, partitions)
    if offsets is not None:  # the batch's offsets (dead letters too) in each partition
        _check_continues(partition_rows, offsets)
    session_rows = await conn.fetch(
        "SELECT * FROM session_token_budgets WHERE session_id = ANY($1::varchar[])", sessions
    )
    # The holds of the batch's sessions (a tree's: of its whole tenant) and the
    # reservations its events name, each row once (an open hold is often all of these).
    reservation_rows = await conn.fetch(
        _RESERVATIONS_OF_TREES if tenants else _RESERVATIONS,
        sessions,
        named,
        *([tenants] if tenants else []),
    )
    node_rows: list[asyncpg.Record] = []
    if tenants:  # a tree decides with every hold in it and the nodes above its sessions
        paths = sorted({path for a in accounts for path in ancestors(a)})
        node_rows = await conn.fetch(
            "SELECT * FROM account_budgets WHERE account = ANY($1::varchar[])", paths
        )
    return ProjectionState(
        sessions={row["session_id"]: session_of(row) for row in session_rows},
        reservations={row["reservation_id"]: reservation_from_row(row) for row in reservation_rows},
        partitions={
            (row["topic"], row["kafka_partition"]): _partition(row) for row in partition_rows
        },
        nodes={row["account"]: node_of(row) for row in node_rows},
    )


# Index scans by branch, not one OR: PostgreSQL plans `a OR b` over these as a scan of the
# whole table, which grows with every reservation ever made. UNION over the ids alone keeps
# each row once before the rows are read.
_HELD_IDS = """
    SELECT reservation_id FROM reservations
     WHERE session_id = ANY($1::varchar[]) AND status = 'accepted'
    UNION SELECT reservation_id FROM reservations
     WHERE session_id = ANY($1::varchar[]) AND usd_held IS NOT NULL
    UNION SELECT unnest($2::uuid[])"""
# (= ANY(ARRAY(…)): the ids are found first, then read by the primary key, never by a
# join the planner could turn into a scan of the table.)
_RESERVATIONS = f"""
    SELECT * FROM reservations WHERE reservation_id = ANY(ARRAY({_HELD_IDS}))"""  # noqa: S608 - constants
_RESERVATIONS_OF_TREES = f"""
    SELECT * FROM reservations WHERE reservation_id = ANY(ARRAY({_HELD_IDS}
    UNION SELECT reservation_id FROM reservations
     WHERE split_part(account, '/', 1) = ANY($3::text[]) AND account IS NOT NULL
       AND status = 'accepted'
    UNION SELECT reservation_id FROM reservations
     WHERE split_part(account, '/', 1) = ANY($3::text[]) AND account IS NOT NULL
       AND usd_held IS NOT NULL))"""  # noqa: S608 - constants


_PARTITION_STATE = """
    SELECT p.topic, p.kafka_partition, c.log_clock, c.next_offset, d.event_id, d.daily_limit,
           d.monthly_limit,
           d.hard_limit, d.warning_threshold, d.critical_threshold, d.timezone,
           d.max_clock_skew_ms, d.set_at
      FROM unnest($1::text[], $2::int[]) AS p(topic, kafka_partition)
      LEFT JOIN partition_checkpoints c USING (topic, kafka_partition)
      LEFT JOIN partition_defaults d USING (topic, kafka_partition)
     WHERE c.next_offset IS NOT NULL OR d.event_id IS NOT NULL"""


async def _lock_partitions(
    conn: asyncpg.Connection, partitions: Sequence[PartitionKey], more: Sequence[str] = ()
) -> None:
    """Take the partitions' transaction locks, then `more` (always in this order)."""
    await conn.execute(
        "SELECT count(pg_advisory_xact_lock(hashtextextended(k, 1))) FROM unnest($1::text[]) k",
        [partition_lock_key(t, p) for t, p in partitions] + list(more),
    )


async def _partition_rows(
    conn: asyncpg.Connection, partitions: Sequence[PartitionKey]
) -> list[asyncpg.Record]:
    """Each partition's checkpoint, log clock and defaults (none: not applied yet)."""
    return list(
        await conn.fetch(_PARTITION_STATE, [t for t, _ in partitions], [p for _, p in partitions])
    )


def _check_continues(rows: Sequence[asyncpg.Record], offsets: dict[PartitionKey, set[int]]) -> None:
    check_continues({(r["topic"], r["kafka_partition"]): r["next_offset"] for r in rows}, offsets)


def _partition(row: asyncpg.Record) -> PartitionState:
    state = PartitionState(clock=row["log_clock"])
    if row["event_id"] is not None:
        state.defaults = defaults_from_row(row)
        state.defaults_event = row["event_id"]
        state.defaults_set_at = row["set_at"]
    return state


def defaults_from_row(row: Mapping[str, Any] | asyncpg.Record) -> FoldConfig:
    """A partition_defaults row as the FoldConfig it sets."""
    return FoldConfig(
        Limits(
            row["daily_limit"],
            row["monthly_limit"],
            row["hard_limit"],
            row["warning_threshold"],
            row["critical_threshold"],
        ),
        ZoneInfo(row["timezone"]),
        timedelta(milliseconds=row["max_clock_skew_ms"]),
    )


def reservation_from_row(row: asyncpg.Record) -> ReservationRecord:
    """A reservations row as a ReservationRecord."""
    return ReservationRecord(**{name: row[name] for name in RESERVATION_FIELDS})


def _checkpoint(
    applied: Sequence[tuple[str, int, int]],
    skipped: Sequence[tuple[str, int, int]],
    clocks: dict[PartitionKey, datetime],
) -> Write:
    positions: dict[PartitionKey, int] = {}
    for topic, partition, offset in itertools.chain(applied, skipped):
        positions[(topic, partition)] = max(positions.get((topic, partition), 0), offset + 1)
    return (
        CHECKPOINT,
        [(t, p, o, clocks.get((t, p))) for (t, p), o in sorted(positions.items())],
    )
