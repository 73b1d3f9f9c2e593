"""Does the broker answer a fetch past a batch it has not stored yet? A probe.

The embedded Tansu broker (0.6.0, memory storage) counts a produced batch in the
partition's end (its high watermark) before it stores the batch, and answers a fetch with
the batches stored below that end. A batch appended just after another can be stored
first, and a fetch in between gets the later batch without the earlier one: a consumer
that simply reads on skips those offsets for good. The worker's consumer fetches the hole
again (see processors/batch_consumer.py); this probe shows how often a plain consumer
meets it.

`--producers` producers (one connection each) send small messages to one partition as
fast as they are acknowledged, while a bare aiokafka consumer (no group) reads on. At the
end the partition is read again from the start: every offset the live reader skipped is
there by then. Prints the conditions, the messages, the fetch answers with a hole, the
offsets the live reader skipped, and those missing from the second read.

Run: .venv/bin/python -m benchmarks.broker_holes [--seconds S] [--producers P]
Starts an embedded broker unless KAFKA_BOOTSTRAP_SERVERS is set.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from rich.console import Console
from rich.table import Table

from benchmarks.report import machine
from benchmarks.servers import kafka_servers
from tokenquota.config import KafkaSettings
from tokenquota.topics import ensure_topics

__all__ = ["main"]

TOPIC = "broker-holes.usage"


async def _produce(servers: str, until: float, linger_ms: int) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=servers, linger_ms=linger_ms)
    await producer.start()
    sent = 0
    try:
        while time.monotonic() < until:
            batch = [await producer.send(TOPIC, b"x" * 100, partition=0) for _ in range(3)]
            await asyncio.gather(*batch)
            sent += len(batch)
    finally:
        await producer.stop()
    return sent


async def _read_live(servers: str, stop: asyncio.Event) -> tuple[int, int, set[int]]:
    """Read on as a plain consumer does; (fetch answers, answers with a hole, offsets seen)."""
    tp = TopicPartition(TOPIC, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=servers, fetch_max_wait_ms=5)
    await consumer.start()
    answers, holes, seen, last = 0, 0, set[int](), -1
    try:
        consumer.assign([tp])
        consumer.seek(tp, 0)
        while not stop.is_set():
            records = (await consumer.getmany(tp, timeout_ms=100)).get(tp, [])
            if not records:
                continue
            answers += 1
            offsets = [r.offset for r in records]
            if offsets[0] > last + 1 or any(b - a > 1 for a, b in itertools.pairwise(offsets)):
                holes += 1
            seen.update(offsets)
            last = offsets[-1]
    finally:
        await consumer.stop()
    return answers, holes, seen


async def _read_all(servers: str) -> set[int]:
    tp = TopicPartition(TOPIC, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=servers, fetch_max_wait_ms=5)
    await consumer.start()
    seen: set[int] = set()
    try:
        consumer.assign([tp])
        consumer.seek(tp, 0)
        while True:
            records = (await consumer.getmany(tp, timeout_ms=1_000)).get(tp, [])
            if not records:
                return seen
            seen.update(r.offset for r in records)
    finally:
        await consumer.stop()


async def run(args: argparse.Namespace) -> None:
    with kafka_servers() as (servers, description):
        kafka = KafkaSettings(
            bootstrap_servers=servers, usage_topic=TOPIC, dlq_topic=f"{TOPIC}.dlq", partitions=1
        )
        await ensure_topics(kafka)
        stop = asyncio.Event()
        reader = asyncio.create_task(_read_live(servers, stop))
        until = time.monotonic() + args.seconds
        sent = sum(
            await asyncio.gather(
                *(_produce(servers, until, args.linger_ms) for _ in range(args.producers))
            )
        )
        await asyncio.sleep(1)  # the reader reaches the end
        stop.set()
        answers, holes, live = await reader
        stored = await _read_all(servers)
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
        f"100 bytes per round) to one partition for {args.seconds:g} s; a plain aiokafka "
        f"consumer with a 5 ms fetch wait; broker: {description}; {machine()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--producers", type=int, default=4)
    parser.add_argument("--linger-ms", type=int, default=0)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
