"""How long the embedded broker takes to hand over a new message as a partition's batches pile up.

The embedded Tansu broker (0.6.0, memory storage) lists every batch object a partition
holds on each fetch of that partition, and stops listing when the fetch's wait runs out:
whatever it has not listed by then it does not return. This probe fills one partition
with small batches (one message each, from several producers at once) and, at each
milestone, sends a marker message and times how long a plain consumer positioned on it
takes to receive it, with the fetch wait the worker uses and with a longer one. A marker
not received within `--give-up` seconds is a miss: the fetch never got as far as it.

Run: .venv/bin/python -m benchmarks.broker_listing [--milestones N,N,...] [--producers P]
     [--waits MS,MS] [--probes K] [--give-up S]
Starts an embedded broker unless KAFKA_BOOTSTRAP_SERVERS is set.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from rich.console import Console
from rich.table import Table

from benchmarks.cpu import children_running
from benchmarks.report import machine, percentile_ms
from benchmarks.servers import kafka_servers
from tokenquota.config import KafkaSettings
from tokenquota.topics import ensure_topics

__all__ = ["main"]

TOPIC = "broker-listing.usage"
_TP = TopicPartition(TOPIC, 0)


async def _fill(producers: list[AIOKafkaProducer], batches: int) -> None:
    """`batches` batches of one 100-byte message, the producers sending one each at a time."""
    n = len(producers)
    share = [batches // n + (i < batches % n) for i in range(n)]

    async def one(producer: AIOKafkaProducer, count: int) -> None:
        for _ in range(count):
            await producer.send_and_wait(TOPIC, b"x" * 100, partition=0)

    await asyncio.gather(*(one(p, n) for p, n in zip(producers, share, strict=True)))


async def _probe(
    servers: str, producer: AIOKafkaProducer, wait_ms: int, give_up: float
) -> float | None:
    """Seconds from a marker's acknowledgement to a consumer on its offset receiving it;
    None when it did not within `give_up` s."""
    marker = await producer.send_and_wait(TOPIC, b"marker", partition=0)
    consumer = AIOKafkaConsumer(bootstrap_servers=servers, fetch_max_wait_ms=wait_ms)
    await consumer.start()
    try:
        consumer.assign([_TP])
        consumer.seek(_TP, marker.offset)
        acked = time.monotonic()
        while time.monotonic() - acked < give_up:
            if (await consumer.getmany(_TP, timeout_ms=100)).get(_TP):
                return time.monotonic() - acked
        return None
    finally:
        await consumer.stop()


async def run(args: argparse.Namespace) -> None:
    milestones = sorted(int(m) for m in args.milestones.split(","))
    waits = [int(w) for w in args.waits.split(",")]
    table = Table(title="a new message's way out of one partition as its batches pile up")
    table.add_column("batches in the partition", justify="right")
    table.add_column("fill rate (batches/s)", justify="right")
    for wait in waits:
        for column in ("p50 ms", "max ms", "misses"):
            table.add_column(f"wait {wait} ms: {column}", justify="right")
    with kafka_servers() as (servers, description):
        kafka = KafkaSettings(
            bootstrap_servers=servers, usage_topic=TOPIC, dlq_topic=f"{TOPIC}.dlq", partitions=1
        )
        await ensure_topics(kafka)
        producers = [
            AIOKafkaProducer(bootstrap_servers=servers, linger_ms=0, request_timeout_ms=60_000)
            for _ in range(args.producers)
        ]
        for producer in producers:
            await producer.start()
        try:
            filled = 0
            for milestone in milestones:
                began = time.monotonic()
                await _fill(producers, milestone - filled)
                rate = (milestone - filled) / (time.monotonic() - began)
                filled = milestone
                row = [f"{milestone:,}", f"{rate:,.0f}"]
                for wait in waits:
                    times = []
                    for _ in range(args.probes):
                        took = await _probe(servers, producers[0], wait, args.give_up)
                        filled += 1
                        if took is not None:
                            times.append(took)
                    misses = args.probes - len(times)
                    row += [
                        f"{percentile_ms(times, 0.5, empty=float('nan')):.1f}",
                        f"{max(times) * 1000:.1f}" if times else "-",
                        f"{misses} of {args.probes}",
                    ]
                table.add_row(*row)
                Console().print(f"{milestone:,} batches: {row[2:]}")
        finally:
            for producer in producers:
                await producer.stop()
        broker = next(iter(children_running("broker")), None)
        cpu = broker.cpu_times() if broker else None
    console = Console(width=200)
    console.print(table)
    console.print(
        f"conditions: one partition, filled by {args.producers} producers (linger 0, one "
        f"100-byte message per batch, acks=1); per milestone and wait {args.probes} probes: "
        "a marker sent, then a plain aiokafka consumer (no group) seeks to its offset and "
        f"fetches; a miss: not received within {args.give_up:g} s; broker CPU in all "
        f"{(cpu.user + cpu.system) if cpu else float('nan'):.0f} s; {description}; {machine()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--milestones", default="1000,10000,25000,50000,100000,150000")
    parser.add_argument("--producers", type=int, default=8)
    parser.add_argument("--waits", default="50,500", help="fetch waits in ms")
    parser.add_argument("--probes", type=int, default=5)
    parser.add_argument("--give-up", type=float, default=3.0, help="seconds")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
