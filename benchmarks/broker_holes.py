"""Does the broker answer a fetch past a batch it has not stored yet? A probe.

The embedded Tansu broker (0.6.0, memory storage) counts a produced batch in the
partition's end (its high watermark) before it stores the batch, and answers a fetch with
the batches stored below that end. A batch appended just after another can be stored
first, and a fetch in between gets the later batch without the earlier one: a consumer
that simply reads on skips those offsets for good. The worker's consumer fetches the hole
again (see processors/batch_consumer.py); this probe shows how often a plain consumer
meets it.

`--producers` producers (one connection each) send rounds of small messages to one
partition, while a bare aiokafka consumer (no group) reads on; the embedded broker is
stopped (SIGSTOP) for a moment every few seconds, as the fault campaign does, so that
produce requests pile up and race when it resumes. At the end the partition is read
again from the start: every offset the live reader skipped is there by then. Prints the
conditions, the messages, the fetch answers with a hole, the offsets the live reader
skipped, and those missing from the second read.

Run: .venv/bin/python -m benchmarks.broker_holes [--seconds S] [--producers P]
     [--interval S] [--pause-every S] [--pause S]
Starts an embedded broker unless KAFKA_BOOTSTRAP_SERVERS is set.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import signal
import time
from collections.abc import AsyncIterator

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from rich.console import Console
from rich.table import Table

from benchmarks.cpu import children_running
from benchmarks.report import machine
from benchmarks.servers import kafka_servers
from tokenquota.config import KafkaSettings
from tokenquota.topics import ensure_topics

__all__ = ["main"]

TOPIC = "broker-holes.usage"
_TP = TopicPartition(TOPIC, 0)


async def _produce(servers: str, until: float, linger_ms: int, every: float) -> int:
    producer = AIOKafkaProducer(
        bootstrap_servers=servers, linger_ms=linger_ms, request_timeout_ms=60_000
    )
    await producer.start()
    sent = 0
    try:
        while time.monotonic() < until:
            batch = [await producer.send(TOPIC, b"x" * 100, partition=0) for _ in range(3)]
            await asyncio.gather(*batch)
            sent += len(batch)
            await asyncio.sleep(every)
    finally:
        await producer.stop()
    return sent


async def _pause_broker(until: float, every: float, pause: float) -> int:
    """SIGSTOP the embedded broker for `pause` s every `every` s (produce requests pile up
    meanwhile, and race when it resumes, as in the fault campaign); the pauses made."""
    brokers = children_running("broker")
    pauses = 0
    while brokers and time.monotonic() + every < until:
        await asyncio.sleep(every)
        os.kill(brokers[0].pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(pause)
        finally:
            os.kill(brokers[0].pid, signal.SIGCONT)
        pauses += 1
    return pauses


@contextlib.asynccontextmanager
async def _reader(servers: str) -> AsyncIterator[AIOKafkaConsumer]:
    """A plain consumer (no group) of the partition, from its start."""
    consumer = AIOKafkaConsumer(bootstrap_servers=servers, fetch_max_wait_ms=5)
    await consumer.start()
    try:
        consumer.assign([_TP])
        consumer.seek(_TP, 0)
        yield consumer
    finally:
        await consumer.stop()


async def _read_live(servers: str, end: asyncio.Future[int]) -> tuple[int, int, set[int]]:
    """Read on as a plain consumer does, up to `end` once known; (fetch answers, answers
    with a hole, offsets seen)."""
    answers, holes, seen, last = 0, 0, set[int](), -1
    async with _reader(servers) as consumer:
        while not (end.done() and last >= end.result() - 1):
            records = (await consumer.getmany(_TP, timeout_ms=100)).get(_TP, [])
            if not records:
                continue
            answers += 1
            offsets = [r.offset for r in records]
            if offsets[0] > last + 1 or any(b - a > 1 for a, b in itertools.pairwise(offsets)):
                holes += 1
            seen.update(offsets)
            last = offsets[-1]
    return answers, holes, seen


async def _read_all(servers: str, end: int) -> set[int]:
    """Every offset below `end` the partition holds now, read from the start."""
    seen: set[int] = set()
    async with _reader(servers) as consumer:
        while await consumer.position(_TP) < end:
            records = (await consumer.getmany(_TP, timeout_ms=1_000)).get(_TP, [])
            seen.update(r.offset for r in records)
    return seen


async def run(args: argparse.Namespace) -> None:
    with kafka_servers() as (servers, description):
        kafka = KafkaSettings(
            bootstrap_servers=servers, usage_topic=TOPIC, dlq_topic=f"{TOPIC}.dlq", partitions=1
        )
        await ensure_topics(kafka)
        end: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        reader = asyncio.create_task(_read_live(servers, end))
        until = time.monotonic() + args.seconds
        pausing = asyncio.create_task(_pause_broker(until, args.pause_every, args.pause))
        sent = sum(
            await asyncio.gather(
                *(
                    _produce(servers, until, args.linger_ms, args.interval)
                    for _ in range(args.producers)
                )
            )
        )
        pauses = await pausing
        end.set_result(sent)  # the reader reads on to the end
        answers, holes, live = await reader
        stored = await _read_all(servers, sent)
    skipped = sorted(set(range(sent)) - live)
    table = Table(title="fetch answers past a batch the broker had not stored yet")
    for column in ("messages", "fetch answers", "with a hole", "skipped live", "missing later"):
        table.add_column(column, justify="right")
    table.add_row(
        f"{sent:,}", f"{answers:,}", f"{holes:,}", f"{len(skipped):,}",
        f"{len(set(range(sent)) - stored):,}",
    )  # fmt: skip
    console = Console(width=200)
    console.print(table)
    if skipped:
        console.print(f"first offsets skipped by the live reader: {skipped[:10]}")
    console.print(
        f"conditions: {args.producers} producers (linger {args.linger_ms} ms, 3 messages of "
        f"100 bytes per round, {args.interval * 1000:g} ms between rounds) to one partition "
        f"for {args.seconds:g} s; the broker stopped {pauses} times for {args.pause:g} s; a "
        f"plain aiokafka consumer with a 5 ms fetch wait; broker: {description}; {machine()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--producers", type=int, default=4)
    parser.add_argument("--linger-ms", type=int, default=0)
    parser.add_argument("--interval", type=float, default=0.02, help="s between rounds")
    parser.add_argument("--pause-every", type=float, default=2.0, help="s (embedded broker)")
    parser.add_argument("--pause", type=float, default=0.5, help="s the broker is stopped")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
