"""Lag at a steady rate: how long after an event occurs is it committed in PostgreSQL?

Emits the mix at a steady rate (every 10 ms, rate/100 events, each stamped with
`occurred_at` as it is built) to a running `tokenquota worker`, while a poller reads
`partition_checkpoints` every 5 ms. Afterwards the topic is read back: an event's lag is
the first poll that saw its partition's checkpoint pass its offset, minus its occurred_at.
Polling adds up to 5 ms to each lag.

Run: .venv/bin/python -m benchmarks.lag [--rate R] [--seconds S] [--partitions P]
Starts an embedded broker, PostgreSQL and a worker unless KAFKA_BOOTSTRAP_SERVERS /
DATABASE_URL are set (a worker is started in any case).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime

from aiokafka import AIOKafkaConsumer, TopicPartition
from rich.console import Console
from rich.table import Table

from benchmarks.servers import pipeline
from benchmarks.workload import MIX, budgets, usage, wait_applied
from tokenquota.config import Settings
from tokenquota.producers import Emitter
from tokenquota.projections import connect, quote_schema

TICK = 0.01
POLL = 0.005


@dataclass
class Timeline:
    """Per partition: poll times and the checkpoint each saw (both ascending)."""

    times: dict[int, list[float]] = field(default_factory=dict)
    offsets: dict[int, list[int]] = field(default_factory=dict)

    def record(self, at: float, partition: int, next_offset: int) -> None:
        seen = self.offsets.setdefault(partition, [])
        if not seen or next_offset > seen[-1]:
            seen.append(next_offset)
            self.times.setdefault(partition, []).append(at)

    def committed_at(self, partition: int, offset: int) -> float:
        """When the first poll saw `offset` of `partition` committed."""
        index = bisect.bisect_right(self.offsets[partition], offset)
        return self.times[partition][index]


async def _poll(settings: Settings, timeline: Timeline, stop: asyncio.Event) -> None:
    db = settings.database
    conn = await connect(db.dsn())
    query = (
        "SELECT kafka_partition, next_offset FROM "  # noqa: S608 - a checked identifier
        f"{quote_schema(db.schema_name)}.partition_checkpoints WHERE topic = $1"
    )
    try:
        while not stop.is_set():
            rows = await conn.fetch(query, settings.kafka.usage_topic)
            now = time.time()
            for row in rows:
                timeline.record(now, row["kafka_partition"], row["next_offset"])
            await asyncio.sleep(POLL)
    finally:
        await conn.close()


async def _produce(emitter: Emitter, rate: int, seconds: float, sessions: int) -> float:
    """Emit at `rate` events/s for `seconds`; return how late the last tick started."""
    per_tick = rate * TICK
    ticks = int(seconds / TICK)
    loop = asyncio.get_running_loop()
    start = loop.time()
    sends: set[asyncio.Task[object]] = set()
    late = 0.0
    for tick in range(ticks):
        due = start + tick * TICK
        await asyncio.sleep(max(0.0, due - loop.time()))
        late = max(late, loop.time() - due)
        first = int(tick * per_tick)
        chunk = list(usage(int((tick + 1) * per_tick) - first, sessions, first))
        task = asyncio.create_task(emitter.emit_many(chunk))
        sends.add(task)
        task.add_done_callback(sends.discard)
    await asyncio.gather(*sends)
    return late


async def _occurred(servers: str, topic: str, partitions: int) -> list[tuple[int, int, float]]:
    """(partition, offset, occurred_at) of every usage event in the topic."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=servers, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        events: list[tuple[int, int, float]] = []
        read = dict.fromkeys(range(partitions), 0)
        ends: dict[int, int] = {}
        while len(ends) < partitions or any(read[p] < end for p, end in ends.items()):
            for tp, messages in (await consumer.getmany(timeout_ms=200)).items():
                for m in messages:
                    read[tp.partition] = m.offset + 1
                    fields = json.loads(m.value or b"{}")
                    # The load only: not the warm-up's BudgetSets, nor the DefaultsSets
                    # provisioning wrote before the worker started.
                    if fields["event_type"] not in ("BudgetSet", "DefaultsSet"):
                        at = datetime.fromisoformat(fields["occurred_at"]).timestamp()
                        events.append((tp.partition, m.offset, at))
            for tp in tps:
                highwater = consumer.highwater(tp)
                if highwater is not None:
                    ends[tp.partition] = highwater
        return events
    finally:
        await consumer.stop()


def _ms(ordered: list[float], q: float) -> str:
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.1f}"


async def run(args: argparse.Namespace) -> None:
    timeline = Timeline()
    async with pipeline(partitions=args.partitions) as (settings, servers):
        kafka, topic = settings.kafka, settings.kafka.usage_topic
        schema = settings.database.schema_name
        assert kafka.bootstrap_servers is not None
        conn = await connect(settings.database.dsn())
        stop = asyncio.Event()
        try:
            async with Emitter(kafka, settings.emitter, settings.data_dir / "spool") as emitter:
                warm = budgets(args.sessions)
                await emitter.emit_many(warm)
                await wait_applied(conn, schema, topic, len(warm), 120, "worker warm-up")
                poller = asyncio.create_task(_poll(settings, timeline, stop))
                late = await _produce(emitter, args.rate, args.seconds, args.sessions)
            total = len(warm) + int(args.rate * args.seconds)
            await wait_applied(conn, schema, topic, total, 120, "worker")
            await asyncio.sleep(2 * POLL)
        finally:
            stop.set()
            await conn.close()
        await poller
        events = await _occurred(kafka.bootstrap_servers, topic, args.partitions)
    lags = sorted(timeline.committed_at(p, o) - at for p, o, at in events)
    table = Table(title="lag: occurred_at -> committed in PostgreSQL, at a steady rate (ms)")
    for column in ("rate", "events", "p50", "p99", "max"):
        table.add_column(column, justify="right")
    table.add_row(
        f"{args.rate:,}/s", f"{len(lags):,}", _ms(lags, 0.5), _ms(lags, 0.99), _ms(lags, 1.0)
    )
    console = Console()
    console.print(table)
    options = settings.worker
    console.print(
        f"conditions: {args.seconds:.0f} s at {args.rate:,} events/s, {args.rate * TICK:.0f} "
        f"events every {TICK * 1000:.0f} ms ({MIX}); {args.sessions:,} sessions; "
        f"{args.partitions} partitions; emitter linger {settings.emitter.linger_ms} ms; "
        f"worker batches of what has arrived (up to {options.batch_size:,}, batch_within "
        f"{options.batch_within} s), fetch wait {options.fetch_max_wait} s; checkpoints "
        f"polled every {POLL * 1000:.0f} ms; the emitting loop ran at most "
        f"{late * 1000:.0f} ms late; {servers}; python {platform.python_version()}, "
        f"{os.cpu_count()} cores"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=int, default=5_000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--sessions", type=int, default=1_000)
    parser.add_argument("--partitions", type=int, default=12)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
