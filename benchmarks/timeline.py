"""When each event in a topic was committed in PostgreSQL: a poller of the worker's
checkpoints, and the topic read back, for the lag and reservation benchmarks.

An event's lag is the first poll that saw its partition's checkpoint pass its offset,
minus its occurred_at (polling adds up to `POLL`).
"""

from __future__ import annotations

import asyncio
import bisect
import json
import time
from dataclasses import dataclass, field
from datetime import datetime

from aiokafka import AIOKafkaConsumer, TopicPartition

from tokenquota.config import Settings
from tokenquota.kafka_probe import partition_highwaters, seek_to_start
from tokenquota.projections import connect, quote_schema

__all__ = ["POLL", "Read", "Timeline", "poll_checkpoints", "read_events", "wait_committed"]

#: Seconds between two polls of the checkpoints.
POLL = 0.005


@dataclass
class Timeline:
    """Per partition: poll times and the checkpoint each saw (both ascending)."""

    times: dict[int, list[float]] = field(default_factory=dict)
    offsets: dict[int, list[int]] = field(default_factory=dict)

    def record(self, at: float, partition: int, next_offset: int) -> None:
        """A poll at `at` saw `partition`'s checkpoint at `next_offset`."""
        seen = self.offsets.setdefault(partition, [])
        if not seen or next_offset > seen[-1]:
            seen.append(next_offset)
            self.times.setdefault(partition, []).append(at)

    def committed_at(self, partition: int, offset: int) -> float:
        """When the first poll saw `offset` of `partition` committed."""
        index = bisect.bisect_right(self.offsets[partition], offset)
        return self.times[partition][index]

    def committed_by(self, at: float) -> int:
        """Events committed in all partitions as of the last poll at or before `at`."""
        total = 0
        for partition, times in self.times.items():
            index = bisect.bisect_right(times, at)
            if index:
                total += self.offsets[partition][index - 1]
        return total


async def wait_committed(timeline: Timeline, settings: Settings, timeout: float = 60) -> None:
    """Wait until the poller has seen every message now in the usage topic committed."""
    topic = settings.kafka.usage_topic
    total = sum((await partition_highwaters(settings.kafka, topic)).values())
    deadline = time.monotonic() + timeout
    while timeline.committed_by(time.time()) < total:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the worker did not commit all {total:,} messages of {topic}")
        await asyncio.sleep(POLL)


async def poll_checkpoints(settings: Settings, timeline: Timeline, stop: asyncio.Event) -> None:
    """Record every `POLL` seconds in `timeline` each partition's checkpoint of the usage
    topic, until `stop` is set."""
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


#: (partition, offset, occurred_at, the record's timestamp) of an event in the topic.
Read = tuple[int, int, float, float]


async def read_events(servers: str, topic: str, partitions: int) -> list[Read]:
    """(partition, offset, occurred_at, record timestamp) of every usage event in the
    topic; the record's timestamp is when the emitter built its batch."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=servers, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        seek_to_start(consumer, tps)
        events: list[Read] = []
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
                        events.append((tp.partition, m.offset, at, m.timestamp / 1000))
            for tp in tps:
                highwater = consumer.highwater(tp)
                if highwater is not None:
                    ends[tp.partition] = highwater
        return events
    finally:
        await consumer.stop()
