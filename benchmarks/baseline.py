"""The raw baseline: a bare aiokafka consumer writing the ledger rows with COPY, idempotently.

No fold, no faust, no validation beyond `json.loads`: per batch it COPYs the rows into a
temporary table, inserts them into `usage_events` with ON CONFLICT DO NOTHING and
advances `partition_checkpoints`, all in one transaction, as any exactly-once sink must.

Run by the pipeline benchmark as a child process (so it owns a process, as the worker
does): python -m benchmarks.baseline SERVERS TOPIC DSN SCHEMA EVENTS
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from datetime import datetime
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from tokenquota.kafka_probe import seek_to_start
from tokenquota.projections import apply_migrations, connect
from tokenquota.projections.state import log_time

__all__ = ["copy_consume", "prepare"]

_COLUMNS = (
    "event_id", "event_type", "session_id", "task_id", "occurred_at", "payload", "topic",
    "kafka_partition", "kafka_offset", "log_time",
)  # fmt: skip


async def prepare(dsn: str, schema: str) -> None:
    """Create `schema` with the same ledger and checkpoint tables the worker writes."""
    conn = await connect(dsn)
    try:
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(f'SET search_path TO "{schema}"')
        await apply_migrations(conn, schema)
    finally:
        await conn.close()


def _row(message: Any) -> tuple[Any, ...]:
    fields = json.loads(message.value)
    return (
        uuid.UUID(fields["event_id"]),
        fields["event_type"],
        fields["session_id"],
        fields.get("task_id"),
        datetime.fromisoformat(fields["occurred_at"]),
        message.value.decode(),
        message.topic,
        message.partition,
        message.offset,
        log_time(message.timestamp),  # the ledger keeps each record's timestamp
    )


async def _write(conn: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> None:
    ends: dict[tuple[str, int], int] = {}
    for row in rows:
        ends[(row[6], row[7])] = max(ends.get((row[6], row[7]), 0), row[8] + 1)
    async with conn.transaction():
        await conn.copy_records_to_table("incoming", records=rows, columns=_COLUMNS)
        await conn.execute(
            "INSERT INTO usage_events SELECT * FROM incoming ON CONFLICT (event_id) DO NOTHING"
        )
        await conn.executemany(
            """INSERT INTO partition_checkpoints AS c (topic, kafka_partition, next_offset)
               VALUES ($1, $2, $3)
               ON CONFLICT (topic, kafka_partition)
               DO UPDATE SET next_offset = GREATEST(c.next_offset, EXCLUDED.next_offset)""",
            [(t, p, o) for (t, p), o in ends.items()],
        )


async def copy_consume(
    servers: str,
    topic: str,
    dsn: str,
    schema: str,
    events: int,
    *,
    batch: int = 5000,
    ready: bool = False,
) -> None:
    """Consume `events` messages of `topic` from the start into `schema`, in batches of up
    to `batch`; then return."""
    conn = await connect(dsn, schema)
    await conn.execute(
        "CREATE TEMP TABLE incoming (LIKE usage_events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    )
    consumer = AIOKafkaConsumer(
        bootstrap_servers=servers, enable_auto_commit=False, auto_offset_reset="earliest",
        fetch_max_wait_ms=50, max_partition_fetch_bytes=4 * 1024 * 1024,
    )  # fmt: skip
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        seek_to_start(consumer, tps)
        if ready:
            print("ready", flush=True)
        done = 0
        while done < events:
            batches = await consumer.getmany(timeout_ms=100, max_records=batch)
            rows = [_row(m) for messages in batches.values() for m in messages]
            if rows:
                await _write(conn, rows)
                done += len(rows)
    finally:
        await consumer.stop()
        await conn.close()


def main() -> None:
    servers, topic, dsn, schema, events = sys.argv[1:6]
    asyncio.run(copy_consume(servers, topic, dsn, schema, int(events), ready=True))


if __name__ == "__main__":
    main()
