"""What the broker says about a topic: the end (highwater) of each partition.

Some Kafka-protocol brokers (the embedded Tansu among them) answer ListOffsets, and so
`end_offsets()`, wrongly; the highwater a fetch response carries is right, so the probe
fetches a little from each partition and reads it from there.
"""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from .config import KafkaSettings
from .errors import IntegrationError

__all__ = ["partition_highwaters"]

#: A fetch returns at least one batch whatever this says; small keeps the probe cheap.
_PROBE_FETCH_BYTES = 1024


async def partition_highwaters(
    kafka: KafkaSettings, topic: str, *, timeout: float = 5
) -> dict[int, int]:
    """Partition -> offset of the next message the broker will append to `topic`.

    Raises IntegrationError when the broker cannot be reached, the topic does not exist
    or the broker does not report every partition within `timeout` seconds.
    """
    if kafka.bootstrap_servers is None:
        raise IntegrationError("kafka.bootstrap_servers is not set (KAFKA_BOOTSTRAP_SERVERS)")
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers,
        enable_auto_commit=False,
        max_partition_fetch_bytes=_PROBE_FETCH_BYTES,
        request_timeout_ms=max(int(timeout * 1000), 1000),
        metadata_max_age_ms=max(int(timeout * 1000), 1000),
        connections_max_idle_ms=60_000,
    )
    deadline = time.monotonic() + timeout
    try:
        try:
            await asyncio.wait_for(consumer.start(), timeout)
        except (KafkaError, OSError, TimeoutError) as exc:
            raise IntegrationError(
                f"Kafka at {kafka.bootstrap_servers} is unreachable: {exc or type(exc).__name__}"
            ) from None
        partitions = await _partitions(consumer, topic, deadline)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        ends: dict[int, int] = {}
        while len(ends) < len(tps):
            left = deadline - time.monotonic()
            if left <= 0:
                missing = sorted(tp.partition for tp in tps if tp.partition not in ends)
                raise IntegrationError(
                    f"Kafka did not report the end of {topic} partitions {missing} "
                    f"within {timeout:g} s"
                )
            pending = [tp for tp in tps if tp.partition not in ends]
            await consumer.getmany(*pending, timeout_ms=int(min(left, 0.2) * 1000))
            for tp in pending:
                highwater = consumer.highwater(tp)
                if highwater is not None:
                    ends[tp.partition] = highwater
        return ends
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str, deadline: float) -> set[int]:
    # Metadata of every topic: asking for one by name would create it on brokers that
    # auto-create topics.
    try:
        topics = await asyncio.wait_for(consumer.topics(), max(deadline - time.monotonic(), 0.1))
    except (KafkaError, OSError, TimeoutError) as exc:
        raise IntegrationError(f"Kafka metadata unavailable: {exc or type(exc).__name__}") from None
    partitions = consumer.partitions_for_topic(topic) if topic in topics else None
    if not partitions:
        raise IntegrationError(f"topic {topic} does not exist (run `tokenquota init`)")
    return set(partitions)
