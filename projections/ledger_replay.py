"""Replay from the ledger: rebuild every projection from `usage_events`, in log order.

The ledger keeps every applied event with its payload, its place in the log and its
record timestamp, so the fold decides exactly as the live worker did, even after the
topic's retention has deleted the events (or a broker has lost them). Each partition is
read in offset order; partitions are independent (a session's events are all in one),
so the order between them does not matter. The rebuilt tables are swapped in as by a
replay from the topic (`projections/staging.py`).
"""

from __future__ import annotations

from collections.abc import Callable

import asyncpg

from tokenquota.gc_settings import BATCH_THRESHOLDS, bulk_gc
from tokenquota.schemas import EventDecodeError, decode

from .database import connect, quote_schema
from .migrator import apply_migrations
from .staging import (
    BeforeSwap,
    ReplayReport,
    prefetched,
    prepare_staging,
    skip_poison,
    swap_in,
)
from .state import LogRecord
from .store import apply_batch_isolating

__all__ = ["replay_from_ledger"]

Progress = Callable[[int, int], None]
#: (topic, partition, offset) of the last ledger row read.
_Position = tuple[str, int, int]

_BATCH_SIZE = 10_000
_PAGE = """
    SELECT payload::text AS payload, topic, kafka_partition, kafka_offset, log_time
      FROM {ledger}
     WHERE (topic, kafka_partition, kafka_offset) > ($1, $2, $3)
     ORDER BY topic, kafka_partition, kafka_offset
     LIMIT $4"""
# Partitions the live projections read past their last ledger row (dead letters) keep
# their checkpoints; the log clock is the ledger's, and is the same.
_KEEP_CHECKPOINTS = """
    INSERT INTO partition_checkpoints (topic, kafka_partition, next_offset, log_clock)
    SELECT topic, kafka_partition, next_offset, log_clock FROM {live}.partition_checkpoints
    ON CONFLICT (topic, kafka_partition) DO UPDATE
       SET next_offset = GREATEST(partition_checkpoints.next_offset, EXCLUDED.next_offset),
           log_clock = GREATEST(partition_checkpoints.log_clock, EXCLUDED.log_clock)"""


async def replay_from_ledger(
    dsn: str,
    schema: str,
    *,
    batch_size: int = _BATCH_SIZE,
    on_progress: Progress | None = None,
    before_swap: BeforeSwap | None = None,
) -> ReplayReport:
    """Rebuild `schema`'s projections from its ledger and swap them in; return what was read."""
    with bulk_gc(BATCH_THRESHOLDS):
        return await _replay(dsn, schema, batch_size, on_progress, before_swap)


async def _replay(
    dsn: str,
    schema: str,
    batch_size: int,
    on_progress: Progress | None,
    before_swap: BeforeSwap | None,
) -> ReplayReport:
    conn = await connect(dsn, schema)
    reader = await connect(dsn, schema)
    try:
        await apply_migrations(conn, schema)
        live = quote_schema(schema)
        ledger = f"{live}.usage_events"
        total = int(await reader.fetchval(f"SELECT count(*) FROM {ledger}"))  # noqa: S608
        staging = await prepare_staging(conn, schema)
        report = ReplayReport()

        def progress() -> None:
            if on_progress is not None:
                on_progress(report.events, total)

        page = _PAGE.format(ledger=ledger)
        position = await _read(
            reader, conn, page, staging, ("", -1, -1), batch_size, report, progress
        )
        if before_swap is not None:
            await before_swap()

        async def catch_up() -> None:
            await _read(reader, conn, page, staging, position, batch_size, report, lambda: None)
            await conn.execute(_KEEP_CHECKPOINTS.format(live=live))

        await swap_in(conn, schema, catch_up)
        return report
    finally:
        await reader.close()
        await conn.close()


async def _read(
    reader: asyncpg.Connection,
    conn: asyncpg.Connection,
    page: str,
    staging: str,
    after: _Position,
    batch_size: int,
    report: ReplayReport,
    progress: Callable[[], None],
) -> _Position:
    """Apply every ledger row after `after`, in log order; return the last position read."""
    position = after

    async def next_page() -> list[LogRecord] | None:
        nonlocal position
        rows = await reader.fetch(page, *position, batch_size)
        if not rows:
            return None
        records: list[LogRecord] = []
        for row in rows:
            payload = row["payload"].encode()
            try:
                event = decode(payload)
            except EventDecodeError:
                report.skipped += 1  # valid when applied; refused by today's validation
                continue
            records.append(
                LogRecord(
                    event,
                    payload,
                    row["topic"],
                    row["kafka_partition"],
                    row["kafka_offset"],
                    row["log_time"],
                )
            )
        last = rows[-1]
        position = (last["topic"], last["kafka_partition"], last["kafka_offset"])
        report.events += len(rows)
        return records

    progress()
    on_poison = skip_poison(report)
    # The next page is read (on its own connection) while this one is applied.
    async for records in prefetched(next_page):
        result = await apply_batch_isolating(
            conn, records, schema=staging, notify=False, on_poison=on_poison
        )
        report.applied += result.applied
        progress()
    return position
