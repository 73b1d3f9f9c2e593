"""What the broker says about a topic: the end (highwater) of each partition, and where
each starts (the first message retention or delete-records left).

Some Kafka-protocol brokers (the embedded Tansu among them) answer ListOffsets, and so
`end_offsets()`, wrongly; the highwater a fetch response carries is right, so the probe
fetches a little from each partition and reads it from there. The start is found as the
worker finds it: a fetch from offset 0, which the broker answers out of range when
retention has deleted it, and the consumer's `auto_offset_reset="earliest"` then moves
to the log's start; the first record the fetch returns is the first the worker can get.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from .config import KafkaSettings
from .errors import IntegrationError

__all__ = [
    "HighwaterProbe",
    "LogBounds",
    "partition_bounds",
    "partition_highwaters",
    "seek_to_start",
]

#: A fetch returns at least one batch whatever this says; small keeps the probe cheap.
_PROBE_FETCH_BYTES = 1024
#: How long the broker may hold a fetch of a partition with nothing new (aiokafka's
#: default is 500 ms): the probe wants the highwater, not records. (0 never answers.)
_PROBE_FETCH_WAIT_MS = 1


@dataclass(frozen=True, slots=True)
class LogBounds:
    """Where a partition's log starts and ends."""

    #: The offset of the first message still in the log (what a consumer reading from
    #: the beginning gets first); `end` when the log holds none.
    first: int
    #: The highwater: the offset of the next message the broker will append.
    end: int


class HighwaterProbe:
    """A consumer kept open to read highwaters again and again (a dashboard's, whose
    every overview asks): starting a consumer per question costs a connection and
    metadata each time. Not for concurrent use by several tasks at once: it serializes
    them. Close it when done; after a broker error it reconnects on the next question."""

    def __init__(self, kafka: KafkaSettings, *, timeout: float = 5) -> None:
        self.kafka = kafka
        self.timeout = timeout
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()
        #: The highwaters of the last question: the next one fetches from there, so that
        #: it reads only what was appended since (from offset 0 it would read each
        #: partition's first batch, up to a megabyte, every time).
        self._known: dict[TopicPartition, int] = {}

    async def highwaters(self, *topics: str) -> dict[str, dict[int, int]]:
        """Topic -> partition -> offset of the next message the broker will append.

        Raises IntegrationError when the broker cannot be reached, a topic does not exist
        or the broker does not report every partition within the probe's timeout.
        """
        async with self._lock:
            deadline = time.monotonic() + self.timeout
            try:
                consumer = await self._started(deadline)
                return await _read(consumer, topics, deadline, self.timeout, self._known)
            except BaseException:
                await self.close()
                raise

    async def bounds(self, topic: str) -> dict[int, LogBounds]:
        """Partition -> where its log starts and ends (see LogBounds).

        Reads each partition's first batch (up to a megabyte on some brokers): for an
        operator's question, not a dashboard's. Raises IntegrationError as `highwaters`.
        """
        async with self._lock:
            deadline = time.monotonic() + self.timeout
            try:
                consumer = await self._started(deadline)
                bounds = await _read_bounds(consumer, topic, deadline, self.timeout)
            except BaseException:
                await self.close()
                raise
            for partition, found in bounds.items():
                self._known[TopicPartition(topic, partition)] = found.end
            return bounds

    async def close(self) -> None:
        """Close the consumer (the next question opens a new one)."""
        consumer, self._consumer = self._consumer, None
        self._known.clear()
        if consumer is not None:
            await consumer.stop()

    async def _started(self, deadline: float) -> AIOKafkaConsumer:
        if self._consumer is not None:
            return self._consumer
        kafka = self.kafka
        if kafka.bootstrap_servers is None:
            raise IntegrationError("kafka.bootstrap_servers is not set (KAFKA_BOOTSTRAP_SERVERS)")
        consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka.bootstrap_servers,
            enable_auto_commit=False,
            # A partition shorter than last seen (a topic made anew) is read from its start.
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=_PROBE_FETCH_BYTES,
            fetch_max_wait_ms=_PROBE_FETCH_WAIT_MS,
            request_timeout_ms=max(int(self.timeout * 1000), 1000),
            metadata_max_age_ms=max(int(self.timeout * 1000), 1000),
            connections_max_idle_ms=60_000,
        )
        try:
            await asyncio.wait_for(consumer.start(), max(deadline - time.monotonic(), 0.1))
        except (KafkaError, OSError, TimeoutError) as exc:
            await consumer.stop()
            raise IntegrationError(
                f"Kafka at {kafka.bootstrap_servers} is unreachable: {exc or type(exc).__name__}"
            ) from None
        self._consumer = consumer
        return consumer


def seek_to_start(consumer: AIOKafkaConsumer, partitions: Iterable[TopicPartition]) -> None:
    """Seek each of `partitions` (assigned to `consumer`) to offset 0.

    Not `seek_to_beginning`: that asks ListOffsets(earliest), and the embedded Tansu
    broker answers with the batch it stored first in time, which is not offset 0 when two
    producers' first batches were stored out of order. Where retention shortened the log,
    the fetch from 0 is answered out of range and a consumer whose auto_offset_reset is
    "earliest" moves to the log's start.
    """
    for tp in partitions:
        consumer.seek(tp, 0)


async def partition_highwaters(
    kafka: KafkaSettings, topic: str, *, timeout: float = 5
) -> dict[int, int]:
    """Partition -> offset of the next message the broker will append to `topic`, from a
    consumer opened for this one question (HighwaterProbe keeps one open).

    Raises IntegrationError when the broker cannot be reached, the topic does not exist
    or the broker does not report every partition within `timeout` seconds.
    """
    probe = HighwaterProbe(kafka, timeout=timeout)
    try:
        return (await probe.highwaters(topic))[topic]
    finally:
        await probe.close()


async def partition_bounds(
    kafka: KafkaSettings, topic: str, *, timeout: float = 5
) -> dict[int, LogBounds]:
    """Partition -> where `topic`'s log starts and ends, from a consumer opened for this
    one question.

    Raises IntegrationError when the broker cannot be reached, the topic does not exist
    or the broker does not answer for every partition within `timeout` seconds.
    """
    probe = HighwaterProbe(kafka, timeout=timeout)
    try:
        return await probe.bounds(topic)
    finally:
        await probe.close()


async def _read_bounds(
    consumer: AIOKafkaConsumer, topic: str, deadline: float, timeout: float
) -> dict[int, LogBounds]:
    partitions = (await _partitions(consumer, (topic,), deadline))[topic]
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    # Out of range when retention deleted it: the consumer then resets to the log's start
    # ("earliest"), as the worker's does from a committed offset that is gone.
    seek_to_start(consumer, tps)
    found: dict[int, LogBounds] = {}

    async def settle(tp: TopicPartition, records: list[ConsumerRecord[Any, Any]]) -> bool:
        end = consumer.highwater(tp)  # set only by a fetch the broker answered
        if end is None:
            return False
        if records:
            found[tp.partition] = LogBounds(first=records[0].offset, end=end)
        elif await consumer.position(tp) >= end:
            found[tp.partition] = LogBounds(first=end, end=end)
        return tp.partition in found

    await _fetch_until(consumer, tps, deadline, timeout, "the start and end", 0.2, settle)
    return found


async def _read(
    consumer: AIOKafkaConsumer,
    topics: tuple[str, ...],
    deadline: float,
    timeout: float,
    known: dict[TopicPartition, int],
) -> dict[str, dict[int, int]]:
    partitions = await _partitions(consumer, topics, deadline)
    tps = [TopicPartition(topic, p) for topic in topics for p in sorted(partitions[topic])]
    # A fresh assignment forgets the highwaters the last question saw.
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, known.get(tp, 0))
    ends: dict[str, dict[int, int]] = {topic: {} for topic in topics}

    async def settle(tp: TopicPartition, records: list[ConsumerRecord[Any, Any]]) -> bool:
        highwater = consumer.highwater(tp)
        if highwater is None:
            return False
        ends[tp.topic][tp.partition] = known[tp] = highwater
        return True

    await _fetch_until(consumer, tps, deadline, timeout, "the end", 0.002, settle)
    return ends


async def _fetch_until(
    consumer: AIOKafkaConsumer,
    tps: list[TopicPartition],
    deadline: float,
    timeout: float,
    what: str,
    poll: float,
    settle: Callable[[TopicPartition, list[ConsumerRecord[Any, Any]]], Awaitable[bool]],
) -> None:
    """Fetch `tps` (each fetch waiting at most `poll` seconds) until `settle`, given a
    partition and the records a fetch returned for it, says it is answered; then pause
    them, as nothing more is fetched until the next question. IntegrationError naming
    `what` when the deadline passes first."""
    pending = tps
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            missing = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in pending)
            raise IntegrationError(
                f"Kafka did not report {what} of partitions {missing} within {timeout:g} s"
            )
        try:
            fetched = await consumer.getmany(*pending, timeout_ms=int(min(left, poll) * 1000))
        except (KafkaError, OSError) as exc:
            raise IntegrationError(f"Kafka fetch failed: {exc or type(exc).__name__}") from None
        pending = [tp for tp in pending if not await settle(tp, fetched.get(tp, []))]
    consumer.pause(*tps)


async def _partitions(
    consumer: AIOKafkaConsumer, topics: tuple[str, ...], deadline: float
) -> dict[str, set[int]]:
    # Metadata of every topic, once: asking for one by name would create it on brokers
    # that auto-create topics.
    try:
        known = await asyncio.wait_for(consumer.topics(), max(deadline - time.monotonic(), 0.1))
    except (KafkaError, OSError, TimeoutError) as exc:
        raise IntegrationError(f"Kafka metadata unavailable: {exc or type(exc).__name__}") from None
    out: dict[str, set[int]] = {}
    for topic in topics:
        partitions = consumer.partitions_for_topic(topic) if topic in known else None
        if not partitions:
            raise IntegrationError(f"topic {topic} does not exist (run `tokenquota init`)")
        out[topic] = set(partitions)
    return out
