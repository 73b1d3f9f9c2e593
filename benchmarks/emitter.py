"""`Emitter.emit_many` against bare aiokafka `send_batch`, same events, same broker, same run.

Run: .venv/bin/python -m benchmarks.emitter [--events N] [--chunk C] [--partitions P]
Starts an embedded broker unless KAFKA_BOOTSTRAP_SERVERS is set.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import tempfile
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder
from rich.console import Console
from rich.table import Table

from benchmarks.servers import kafka_servers
from tokenquota.config import EmitterSettings, KafkaSettings
from tokenquota.producers import Emitter
from tokenquota.schemas import Event, Source, TokenUsed, encode
from tokenquota.topics import ensure_topics


def _events(count: int, sessions: int) -> list[Event]:
    source = Source(component="sdk", name="bench")
    return [
        TokenUsed(
            session_id=f"session-{i % sessions}",
            source=source,
            model="gpt-4o",
            input_tokens=i % 4000,
            output_tokens=i % 700,
            operation="chat",
            counted_by="provider",
        )
        for i in range(count)
    ]


async def _emitter_run(
    servers: str, topic: str, chunks: list[list[Event]], options: EmitterSettings, spool: Path
) -> float:
    kafka = KafkaSettings(bootstrap_servers=servers, usage_topic=topic, dlq_topic=f"{topic}.dlq")
    async with Emitter(kafka, options, spool) as emitter:
        await emitter.emit_many(chunks[0][:10])  # connected and warm
        start = time.perf_counter()
        for chunk in chunks:
            deliveries = await emitter.emit_many(chunk)
            assert deliveries[-1] == "acked", deliveries[-1]
        return time.perf_counter() - start


async def _bare_run(
    servers: str, topic: str, chunks: list[list[Event]], options: EmitterSettings
) -> float:
    producer = AIOKafkaProducer(
        bootstrap_servers=servers,
        acks="all",
        linger_ms=options.linger_ms,
        max_batch_size=options.max_batch_bytes,
    )
    await producer.start()
    try:
        partitions = sorted(await producer.partitions_for(topic))
        choose = DefaultPartitioner()
        start = time.perf_counter()
        for chunk in chunks:
            batches: dict[int, BatchBuilder] = {}
            sends = []
            for event in chunk:
                key = event.session_id.encode()
                partition = choose(key, partitions, partitions)
                batch = batches.get(partition) or producer.create_batch()
                batches[partition] = batch
                if batch.append(key=key, value=encode(event), timestamp=None) is None:
                    sends.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = batches[partition] = producer.create_batch()
                    batch.append(key=key, value=encode(event), timestamp=None)
            for partition, batch in batches.items():
                sends.append(await producer.send_batch(batch, topic, partition=partition))
            await asyncio.gather(*sends)
        return time.perf_counter() - start
    finally:
        await producer.stop()


async def run(args: argparse.Namespace) -> None:
    events = _events(args.events, args.sessions)
    chunks = [events[i : i + args.chunk] for i in range(0, len(events), args.chunk)]
    options = EmitterSettings()
    with kafka_servers() as (servers, broker), tempfile.TemporaryDirectory() as spool:
        ours, bare = float("inf"), float("inf")
        for round_ in range(args.rounds):
            topic = f"bench-emitter-{uuid.uuid4().hex[:8]}-{round_}"
            kafka = KafkaSettings(
                bootstrap_servers=servers, usage_topic=topic, dlq_topic=f"{topic}.dlq",
                partitions=args.partitions,
            )  # fmt: skip
            await ensure_topics(kafka)
            bare = min(bare, await _bare_run(servers, topic, chunks, options))
            ours = min(ours, await _emitter_run(servers, topic, chunks, options, Path(spool)))
    table = Table(
        title="emitting: Emitter.emit_many vs bare aiokafka send_batch (events/s, best of rounds)"
    )
    for column in ("path", "events/s", "ratio"):
        table.add_column(column, justify="left" if column == "path" else "right")
    table.add_row("Emitter.emit_many", f"{args.events / ours:,.0f}", f"{bare / ours:.2f}")
    table.add_row("bare send_batch", f"{args.events / bare:,.0f}", "1.00")
    console = Console()
    console.print(table)
    console.print(
        f"conditions: {args.events:,} TokenUsed events over {args.sessions:,} sessions, "
        f"{args.partitions} partitions, calls of {args.chunk:,} events, both sides encode with "
        f"tokenquota's encode() and wait for acks=all, linger {options.linger_ms} ms, "
        f"batches up to {options.max_batch_bytes:,} bytes, {args.rounds} rounds, {broker}, "
        f"python {platform.python_version()}, {os.cpu_count()} cores"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--sessions", type=int, default=1_000)
    parser.add_argument("--chunk", type=int, default=10_000)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
