"""Replay: rebuild every projection from the start of the topic, then swap it in atomically.

The log is read into fresh tables in a staging schema with the same fold the worker
uses; `projections/staging.py` swaps them in. Before reading, replay checks that the
topic is the log the projections were built from and that it still holds all of it:
the ledger's first and last event of each partition must be in the log at the offsets
they were applied from. When retention (or a restarted in-memory broker) has lost part
of the log, replay refuses and changes nothing; `replay_from_ledger` rebuilds from the
ledger instead, which keeps every event.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from tokenquota.gc_settings import BATCH_THRESHOLDS, bulk_gc
from tokenquota.kafka_probe import seek_to_start
from tokenquota.schemas import EventDecodeError, decode

from .database import connect, quote_schema
from .migrator import apply_migrations
from .staging import (
    BeforeSwap,
    ReplayError,
    ReplayReport,
    prefetched,
    prepare_staging,
    skip_poison,
    staging_schemas,
    swap_in,
)
from .state import LogRecord, log_time
from .store import apply_batch_isolating

__all__ = [
    "BATCH_SIZE",
    "ReplayError",
    "ReplayReport",
    "log_mismatch",
    "replay_into",
    "staging_schemas",
]

Progress = Callable[[int, int], None]

#: Events per batch while replaying (a transaction each; larger batches amortise the
#: per-batch statements, smaller ones hold less in memory).
BATCH_SIZE = 10_000
#: How long the catch-up before the swap waits for offsets the worker has applied.
_CATCH_UP_STALL = 5.0


async def replay_into(
    bootstrap_servers: str,
    topic: str,
    dsn: str,
    schema: str,
    *,
    batch_size: int = BATCH_SIZE,
    force: bool = False,
    on_progress: Progress | None = None,
    before_swap: BeforeSwap | None = None,
) -> ReplayReport:
    """Rebuild `schema`'s projections from `topic` and swap them in; return what was read.

    `force` rebuilds from what the topic holds even when it does not hold everything the
    projections were built from. `before_swap` is awaited between the read and the swap.
    """
    with bulk_gc(BATCH_THRESHOLDS):
        return await _replay(
            bootstrap_servers, topic, dsn, schema, batch_size, force, on_progress, before_swap
        )


async def _replay(
    bootstrap_servers: str,
    topic: str,
    dsn: str,
    schema: str,
    batch_size: int,
    force: bool,
    on_progress: Progress | None,
    before_swap: BeforeSwap | None,
) -> ReplayReport:
    conn = await connect(dsn, schema)
    try:
        await apply_migrations(conn, schema)  # the swap moves every table of the code's schema
        staging = await prepare_staging(conn, schema)
        # The live checkpoints before anything of the log: a live worker only applies what
        # the log holds, so read first they can only be short of the ends read after (a
        # consumer may fetch ahead as soon as it is assigned).
        applied = await _checkpoints(conn, schema, topic)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id="tokenquota-replay",
        )
        await consumer.start()
        try:
            partitions = sorted(consumer.partitions_for_topic(topic) or ())
            if not partitions:
                raise ReplayError(f"topic {topic!r} does not exist or has no partitions")
            tps = [TopicPartition(topic, p) for p in partitions]
            consumer.assign(tps)
            report = ReplayReport()
            ends = await _end_offsets(consumer, tps)
            report.end_offsets = {tp.partition: end for tp, end in ends.items()}
            if not force:
                _check_log_covers(applied, report.end_offsets)
                await _check_log_is_the_ledgers(conn, consumer, schema, topic, ends)
            seek_to_start(consumer, tps)
            total = sum(ends.values())
            await _read(
                consumer,
                conn,
                staging,
                ends,
                batch_size,
                report,
                lambda: on_progress(report.events, total) if on_progress else None,
            )
            if before_swap is not None:
                await before_swap()

            async def catch_up() -> None:
                await _catch_up(conn, consumer, schema, staging, topic, report, force)

            await swap_in(conn, schema, catch_up)
        finally:
            await consumer.stop()
        return report
    finally:
        await conn.close()


async def _end_offsets(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition]
) -> dict[TopicPartition, int]:
    # Some Kafka-protocol brokers answer ListOffsets wrongly; the fetch highwater is right.
    # Reading the first batch learns it (those records are read again afterwards).
    seek_to_start(consumer, tps)
    ends: dict[TopicPartition, int] = {}
    for _ in range(50):
        await consumer.getmany(*[tp for tp in tps if tp not in ends], timeout_ms=200)
        for tp in tps:
            highwater = consumer.highwater(tp)
            if highwater is not None:
                ends[tp] = highwater
        if len(ends) == len(tps):
            return ends
    raise ReplayError("the broker did not report the end of every partition")


async def _checkpoints(conn: asyncpg.Connection, schema: str, topic: str) -> dict[int, int]:
    """Partition -> next offset the live projections of `schema` will apply."""
    rows = await conn.fetch(
        f"SELECT kafka_partition, next_offset FROM {quote_schema(schema)}.partition_checkpoints "  # noqa: S608
        "WHERE topic = $1",
        topic,
    )
    return {r["kafka_partition"]: r["next_offset"] for r in rows}


_REFUSED = " Nothing was changed."
_REMEDIES = (
    " `tokenquota replay --from-ledger` rebuilds from the ledger, which keeps every event;"
    " `--force` rebuilds from what the topic holds, without what it lost."
)


def _check_log_covers(checkpoints: dict[int, int], ends: dict[int, int]) -> None:
    short = [
        f"partition {partition}: applied up to {applied}, log ends at {ends.get(partition, 0)}"
        for partition, applied in checkpoints.items()
        if applied > ends.get(partition, 0)
    ]
    if short:
        raise ReplayError(
            "the topic holds less than the projections have applied (a restarted in-memory "
            "broker?), so a replay would lose balances: "
            + "; ".join(short)
            + "."
            + _REFUSED
            + _REMEDIES
        )


_LEDGER_BOUNDS = """
    SELECT p.kafka_partition, f.kafka_offset AS first_offset, f.event_id AS first_event,
           l.kafka_offset AS last_offset, l.event_id AS last_event
      FROM unnest($2::int[]) AS p(kafka_partition)
      CROSS JOIN LATERAL (SELECT kafka_offset, event_id FROM {ledger} u
                           WHERE u.topic = $1 AND u.kafka_partition = p.kafka_partition
                           ORDER BY kafka_offset LIMIT 1) f
      CROSS JOIN LATERAL (SELECT kafka_offset, event_id FROM {ledger} u
                           WHERE u.topic = $1 AND u.kafka_partition = p.kafka_partition
                           ORDER BY kafka_offset DESC LIMIT 1) l"""


async def _check_log_is_the_ledgers(
    conn: asyncpg.Connection,
    consumer: AIOKafkaConsumer,
    schema: str,
    topic: str,
    ends: dict[TopicPartition, int],
) -> None:
    """Refuse unless each partition's first and last ledger event are in the log where they
    were applied from: the log must still start at the first applied offset (retention)
    and be the same log (a recreated topic starts over with other events)."""
    ledger = f"{quote_schema(schema)}.usage_events"
    rows = await conn.fetch(
        _LEDGER_BOUNDS.format(ledger=ledger), topic, sorted(tp.partition for tp in ends)
    )
    problems: list[str] = []
    for row in rows:
        tp = TopicPartition(topic, row["kafka_partition"])
        for offset, expected in (
            (row["first_offset"], row["first_event"]),
            (row["last_offset"], row["last_event"]),
        ):
            if offset >= ends[tp]:
                continue  # past the log's end: _check_log_covers has said so
            found = await _event_at(consumer, tp, offset)
            problem = log_mismatch(tp.partition, offset, str(expected), *found)
            if problem is not None:
                problems.append(problem)
                break
    if problems:
        raise ReplayError(
            "the topic does not hold the log the projections were built from: "
            + "; ".join(problems)
            + "."
            + _REFUSED
            + _REMEDIES
        )


def log_mismatch(
    partition: int,
    offset: int,
    expected: str,
    found_offset: int | None,
    found_event: str | None,
) -> str | None:
    """Why the log's record at `offset` is not the ledger's event `expected` there (None when
    it is): the log starts later (retention deleted it) or holds another event."""
    if found_offset != offset:
        starts = "is empty there" if found_offset is None else f"now starts at {found_offset}"
        return (
            f"partition {partition}: the log no longer holds offset {offset}, where the "
            f"ledger's event {expected} was applied from (it {starts}: retention deleted "
            "usage the projections count)"
        )
    if found_event != expected:
        return (
            f"partition {partition}: offset {offset} holds event {found_event} in the log but "
            f"{expected} in the ledger (this topic is not the log the projections were built "
            "from: a recreated topic or a restarted in-memory broker)"
        )
    return None


async def _event_at(
    consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int
) -> tuple[int | None, str | None]:
    """The offset of the first record the log holds at or after `offset`, and its event_id."""
    consumer.seek(tp, offset)
    for _ in range(25):
        batch = await consumer.getmany(tp, timeout_ms=200, max_records=1)
        for message in batch.get(tp, []):
            return message.offset, _event_id(message.value)
    return None, None


def _event_id(value: bytes | None) -> str | None:
    try:
        data: Any = json.loads(value or b"")
    except ValueError:
        return None
    return str(data.get("event_id")) if isinstance(data, dict) else None


async def _read(
    consumer: AIOKafkaConsumer,
    conn: asyncpg.Connection,
    staging: str,
    ends: dict[TopicPartition, int],
    batch_size: int,
    report: ReplayReport,
    progress: Callable[[], None],
    starts: dict[TopicPartition, int] | None = None,
    stall: float | None = None,
) -> dict[TopicPartition, int]:
    """Apply [start, end) of each partition; return the positions reached.

    With `stall`, give up on the partitions that yield nothing for that many seconds.
    """
    positions = {tp: (starts or {}).get(tp, 0) for tp in ends}
    loop = asyncio.get_running_loop()

    async def next_batch() -> tuple[list[LogRecord], list[tuple[str, int, int]]] | None:
        """The next fetched and decoded batch; None when every partition is read."""
        idle_since = loop.time()
        while any(positions[tp] < ends[tp] for tp in ends):
            wanted = [tp for tp in ends if positions[tp] < ends[tp]]
            batches = await consumer.getmany(*wanted, timeout_ms=500, max_records=batch_size)
            records: list[LogRecord] = []
            skipped: list[tuple[str, int, int]] = []
            for tp, messages in batches.items():
                for message in messages:
                    if message.offset >= ends[tp]:
                        break
                    positions[tp] = message.offset + 1
                    _collect(message, records, skipped)
            if records or skipped:
                return records, skipped
            if stall is not None and loop.time() - idle_since > stall:
                return None
        return None

    progress()
    on_poison = skip_poison(report)
    async for records, skipped in prefetched(next_batch):
        result = await apply_batch_isolating(
            conn, records, schema=staging, notify=False, skipped=skipped, on_poison=on_poison
        )
        report.events += len(records) + len(skipped)
        report.skipped += len(skipped)
        report.applied += result.applied
        progress()
    return positions


def _collect(
    message: object, records: list[LogRecord], skipped: list[tuple[str, int, int]]
) -> None:
    topic: str = message.topic  # type: ignore[attr-defined]
    partition: int = message.partition  # type: ignore[attr-defined]
    offset: int = message.offset  # type: ignore[attr-defined]
    value: bytes = message.value or b""  # type: ignore[attr-defined]
    timestamp: int = message.timestamp  # type: ignore[attr-defined]
    try:
        event = decode(value)
    except EventDecodeError:
        skipped.append((topic, partition, offset))  # the live worker sent it to the DLQ
        return
    records.append(LogRecord(event, value, topic, partition, offset, log_time(timestamp)))


async def _catch_up(
    conn: asyncpg.Connection,
    consumer: AIOKafkaConsumer,
    schema: str,
    staging: str,
    topic: str,
    report: ReplayReport,
    force: bool,
) -> None:
    """Under the swap's lock: apply what the live worker applied while replay was reading.

    The targets are the live checkpoints; offsets that do not exist (checkpoints of a log
    the broker has lost) cannot be read: without `force` that refuses the swap.
    """
    behind = {
        TopicPartition(topic, partition): applied
        for partition, applied in (await _checkpoints(conn, schema, topic)).items()
        if applied > report.end_offsets.get(partition, applied)
    }
    if not behind:
        return
    starts = {tp: report.end_offsets[tp.partition] for tp in behind}
    for tp, start in starts.items():
        consumer.seek(tp, start)
    reached = await _read(
        consumer,
        conn,
        staging,
        behind,
        10_000,
        report,
        lambda: None,
        starts,
        stall=_CATCH_UP_STALL,
    )
    short = [
        f"partition {tp.partition}: applied up to {target}, log ends at {reached[tp]}"
        for tp, target in behind.items()
        if reached[tp] < target
    ]
    if short and not force:
        raise ReplayError(
            "while replaying, the live projections applied offsets the topic does not hold "
            "(the broker lost events?): " + "; ".join(short) + "." + _REFUSED
        )
