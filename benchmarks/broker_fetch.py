"""The embedded broker alone: its CPU and its delivery lag as a steady load accumulates.

The emitter sends the usage mix at a steady rate (the lag benchmark's 10 ms ticks) into a
fresh topic, and a bare aiokafka consumer (no group, no worker, no PostgreSQL) reads it;
every `--window` seconds it prints the broker's CPU use and how long after occurred_at
the consumer had each event. The embedded Tansu broker's memory storage lists every
batch a partition holds on each fetch that has something new for it, so its cost grows
with the run's length, not only with the rate: this shows by how much, and what the
number of partitions and the fetch wait change.

Run: .venv/bin/python -m benchmarks.broker_fetch [--rate R] [--seconds S]
     [--partitions P] [--fetch-wait MS] [--window S]
Starts an embedded broker unless KAFKA_BOOTSTRAP_SERVERS is set.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from datetime import datetime
from pathlib import Path

import psutil
from aiokafka import AIOKafkaConsumer, TopicPartition
from rich.console import Console
from rich.table import Table

from benchmarks.cpu import children_running
from benchmarks.report import machine, percentile_ms
from benchmarks.servers import kafka_servers
from benchmarks.workload import MIX, usage
from tokenquota.config import EmitterSettings, KafkaSettings
from tokenquota.producers import Emitter
from tokenquota.topics import ensure_topics

__all__ = ["main"]

TICK = 0.01
TOPIC = "broker-fetch.usage"


def _cpu(process: psutil.Process | None) -> float:
    if process is None:
        return 0.0
    times = process.cpu_times()
    return float(times.user + times.system)


async def _consume(
    servers: str, partitions: int, wait_ms: int, arrivals: list[tuple[float, float]],
    stop: asyncio.Event,
) -> None:  # fmt: skip
    consumer = AIOKafkaConsumer(
        bootstrap_servers=servers, enable_auto_commit=False,
        auto_offset_reset="earliest", fetch_max_wait_ms=wait_ms,
    )  # fmt: skip
    await consumer.start()
    try:
        consumer.assign([TopicPartition(TOPIC, p) for p in range(partitions)])
        while not stop.is_set():
            fetched = await consumer.getmany(timeout_ms=200)
            now = time.time()
            for messages in fetched.values():
                for m in messages:
                    at = datetime.fromisoformat(json.loads(m.value or b"{}")["occurred_at"])
                    arrivals.append((now, now - at.timestamp()))
    finally:
        await consumer.stop()


async def run(args: argparse.Namespace) -> None:
    table = Table(title="the embedded broker alone: CPU and delivery lag as the log grows")
    for column in ("seconds", "events", "broker CPU (cores)", "lag p50 (ms)", "lag p99 (ms)"):
        table.add_column(column, justify="right")
    with kafka_servers() as (servers, description), tempfile.TemporaryDirectory() as folder:
        broker = next(iter(children_running("broker")), None)  # if this run started one
        kafka = KafkaSettings(
            bootstrap_servers=servers, usage_topic=TOPIC, dlq_topic=f"{TOPIC}.dlq",
            partitions=args.partitions,
        )  # fmt: skip
        await ensure_topics(kafka)
        options = EmitterSettings()
        arrivals: list[tuple[float, float]] = []
        stop = asyncio.Event()
        reader = asyncio.create_task(
            _consume(servers, args.partitions, args.fetch_wait, arrivals, stop)
        )
        async with Emitter(kafka, options, Path(folder)) as emitter:
            loop = asyncio.get_running_loop()
            start, began = loop.time(), time.time()
            sends: set[asyncio.Task[object]] = set()
            tick, sent = 0, 0
            window_start, cpu_start = began, _cpu(broker)
            while loop.time() - start < args.seconds:
                await asyncio.sleep(max(0.0, start + tick * TICK - loop.time()))
                count = int((tick + 1) * args.rate * TICK) - int(tick * args.rate * TICK)
                task = asyncio.create_task(emitter.emit_many(list(usage(count, 1_000, sent))))
                sends.add(task)
                task.add_done_callback(sends.discard)
                sent, tick = sent + count, tick + 1
                now = time.time()
                if now - window_start >= args.window:
                    cpu = _cpu(broker)
                    lags = [lag for at, lag in arrivals if window_start <= at < now]
                    table.add_row(
                        f"{now - began:.0f}", f"{len(lags):,}",
                        f"{(cpu - cpu_start) / (now - window_start):.2f}",
                        f"{percentile_ms(lags, 0.5, empty=0.0):.1f}",
                        f"{percentile_ms(lags, 0.99, empty=0.0):.1f}",
                    )  # fmt: skip
                    window_start, cpu_start = now, cpu
            await asyncio.gather(*sends)
        stop.set()
        await reader
    console = Console(width=200)
    console.print(table)
    console.print(
        f"conditions: {args.rate:,.0f} events/s in {TICK * 1000:.0f} ms ticks ({MIX}), "
        f"1,000 sessions, {args.partitions} partitions; emitter linger {options.linger_ms} ms; "
        f"one bare aiokafka consumer, fetch wait {args.fetch_wait} ms; lag: occurred_at to "
        f"the consumer's fetch; broker CPU: user + system over each window; {description}; "
        f"{machine()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=3_000, help="events per second")
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--fetch-wait", type=int, default=50, help="milliseconds")
    parser.add_argument("--window", type=float, default=10, help="seconds per row")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
