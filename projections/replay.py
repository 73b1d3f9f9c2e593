"""Replay: rebuild every projection from the start of the topic, then swap it in atomically.

The log is read into fresh tables in a staging schema with the same fold the worker
uses. The swap takes the projection lock exclusively (a running worker holds it shared
for each batch), catches up with whatever the worker applied meanwhile, and moves the
live tables to `<schema>__previous` and the rebuilt ones into place in one transaction:
readers see the old state or the new one, never a half-built one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from tokenquota.gc_settings import bulk_gc
from tokenquota.schemas import EventDecodeError, decode

from .database import connect, quote_schema
from .fold import FoldConfig
from .migrator import apply_migrations
from .store import PROJECTION_TABLES, LogRecord, apply_batch, projection_lock_key

__all__ = ["BATCH_SIZE", "ReplayError", "ReplayReport", "replay_into", "staging_schemas"]

Progress = Callable[[int, int], None]

#: Events per batch while replaying (a transaction each; larger batches amortise the
#: per-batch statements, smaller ones hold less in memory).
BATCH_SIZE = 10_000


class ReplayError(Exception):
    """Replay cannot rebuild the projections faithfully (and changed nothing)."""


@dataclass(slots=True)
class ReplayReport:
    """What a replay read and rebuilt."""

    events: int = 0
    skipped: int = 0
    applied: int = 0
    end_offsets: dict[int, int] = field(default_factory=dict)


def staging_schemas(schema: str) -> tuple[str, str]:
    """The schema replay builds in, and the one the replaced tables are kept in."""
    return f"{schema[:50]}__replay", f"{schema[:50]}__previous"


async def replay_into(
    bootstrap_servers: str,
    topic: str,
    dsn: str,
    schema: str,
    config: FoldConfig,
    *,
    batch_size: int = BATCH_SIZE,
    force: bool = False,
    on_progress: Progress | None = None,
) -> ReplayReport:
    """Rebuild `schema`'s projections from `topic` and swap them in; return what was read."""
    with bulk_gc():
        return await _replay(
            bootstrap_servers, topic, dsn, schema, config, batch_size, force, on_progress
        )


async def _replay(
    bootstrap_servers: str,
    topic: str,
    dsn: str,
    schema: str,
    config: FoldConfig,
    batch_size: int,
    force: bool,
    on_progress: Progress | None,
) -> ReplayReport:
    staging, previous = staging_schemas(schema)
    conn = await connect(dsn, schema)
    try:
        # The staging tables are thrown away if the server crashes mid-replay, so their
        # batches need not wait for the WAL flush; the swap below does wait for it.
        await conn.execute("SET synchronous_commit TO off")
        await conn.execute(f"DROP SCHEMA IF EXISTS {quote_schema(staging)} CASCADE")
        await conn.execute(f"CREATE SCHEMA {quote_schema(staging)}")
        await conn.execute(f"SET search_path TO {quote_schema(staging)}")
        await apply_migrations(conn, staging)
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
            await consumer.seek_to_beginning(*tps)
            report = ReplayReport()
            ends = await _end_offsets(consumer, tps)
            report.end_offsets = {tp.partition: end for tp, end in ends.items()}
            await _check_log_covers(conn, schema, topic, report.end_offsets, force)
            total = sum(ends.values())
            await _read(
                consumer,
                conn,
                staging,
                config,
                ends,
                batch_size,
                report,
                lambda: on_progress(report.events, total) if on_progress else None,
            )
            await _swap(conn, consumer, schema, staging, previous, topic, config, report)
        finally:
            await consumer.stop()
        await conn.execute(f"DROP SCHEMA IF EXISTS {quote_schema(staging)} CASCADE")
        return report
    finally:
        await conn.close()


async def _end_offsets(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition]
) -> dict[TopicPartition, int]:
    # Some Kafka-protocol brokers answer ListOffsets wrongly; the fetch highwater is right.
    # Reading the first batch learns it (and those records are read again below).
    ends: dict[TopicPartition, int] = {}
    for _ in range(50):
        await consumer.getmany(*[tp for tp in tps if tp not in ends], timeout_ms=200)
        for tp in tps:
            highwater = consumer.highwater(tp)
            if highwater is not None:
                ends[tp] = highwater
        if len(ends) == len(tps):
            break
    else:
        raise ReplayError("the broker did not report the end of every partition")
    await consumer.seek_to_beginning(*tps)
    return ends


async def _checkpoints(conn: asyncpg.Connection, schema: str, topic: str) -> dict[int, int]:
    """Partition -> next offset the live projections of `schema` will apply."""
    rows = await conn.fetch(
        f"SELECT kafka_partition, next_offset FROM {quote_schema(schema)}.partition_checkpoints "  # noqa: S608
        "WHERE topic = $1",
        topic,
    )
    return {r["kafka_partition"]: r["next_offset"] for r in rows}


async def _check_log_covers(
    conn: asyncpg.Connection, schema: str, topic: str, ends: dict[int, int], force: bool
) -> None:
    short = [
        f"partition {partition}: applied up to {applied}, log ends at {ends.get(partition, 0)}"
        for partition, applied in (await _checkpoints(conn, schema, topic)).items()
        if applied > ends.get(partition, 0)
    ]
    if short and not force:
        raise ReplayError(
            "the topic holds less than the projections have applied (a restarted in-memory "
            "broker?), so a replay would lose balances: "
            + "; ".join(short)
            + ". Nothing was changed; use --force to rebuild from what the topic holds."
        )


async def _read(
    consumer: AIOKafkaConsumer,
    conn: asyncpg.Connection,
    staging: str,
    config: FoldConfig,
    ends: dict[TopicPartition, int],
    batch_size: int,
    report: ReplayReport,
    progress: Callable[[], None],
    starts: dict[TopicPartition, int] | None = None,
) -> None:
    positions = {tp: (starts or {}).get(tp, 0) for tp in ends}

    async def next_batch() -> tuple[list[LogRecord], list[tuple[str, int, int]]] | None:
        """The next fetched and decoded batch; None when every partition is read."""
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
        return None

    progress()
    # The next batch is fetched and decoded while this one is applied (PostgreSQL
    # works on its own core meanwhile); the fold itself stays strictly in log order.
    upcoming = asyncio.ensure_future(next_batch())
    try:
        while (batch := await upcoming) is not None:
            upcoming = asyncio.ensure_future(next_batch())
            records, skipped = batch
            result = await apply_batch(
                conn, records, config, schema=staging, notify=False, skipped=skipped
            )
            report.events += len(records) + len(skipped)
            report.skipped += len(skipped)
            report.applied += result.applied
            progress()
    finally:
        upcoming.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await upcoming


def _collect(
    message: object, records: list[LogRecord], skipped: list[tuple[str, int, int]]
) -> None:
    topic: str = message.topic  # type: ignore[attr-defined]
    partition: int = message.partition  # type: ignore[attr-defined]
    offset: int = message.offset  # type: ignore[attr-defined]
    value: bytes = message.value or b""  # type: ignore[attr-defined]
    try:
        records.append(LogRecord(decode(value), value, topic, partition, offset))
    except EventDecodeError:
        skipped.append((topic, partition, offset))  # the live worker sent it to the DLQ


async def _swap(
    conn: asyncpg.Connection,
    consumer: AIOKafkaConsumer,
    schema: str,
    staging: str,
    previous: str,
    topic: str,
    config: FoldConfig,
    report: ReplayReport,
) -> None:
    live, stage, old = quote_schema(schema), quote_schema(staging), quote_schema(previous)
    async with conn.transaction():
        await conn.execute("SET LOCAL synchronous_commit TO on")
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", projection_lock_key(schema)
        )
        # Catch up with what the live worker applied while we were reading.
        behind = {
            TopicPartition(topic, partition): applied
            for partition, applied in (await _checkpoints(conn, schema, topic)).items()
            if applied > report.end_offsets.get(partition, 0)
        }
        if behind:
            starts = {tp: report.end_offsets.get(tp.partition, 0) for tp in behind}
            for tp, start in starts.items():
                consumer.seek(tp, start)
            await _read(
                consumer, conn, staging, config, behind, BATCH_SIZE, report, lambda: None, starts
            )
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {old}")
        for table in PROJECTION_TABLES:
            await conn.execute(f"DROP TABLE IF EXISTS {old}.{table}")
            await conn.execute(f"ALTER TABLE {live}.{table} SET SCHEMA {old}")
            await conn.execute(f"ALTER TABLE {stage}.{table} SET SCHEMA {live}")
