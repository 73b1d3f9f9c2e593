"""The worker's seek back to the committed offsets, against a real broker."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from tokenquota.config import KafkaSettings
from tokenquota.processors.consumer_thread import seek_to_committed_or_start

pytestmark = pytest.mark.integration


async def test_a_partition_without_a_committed_offset_goes_back_to_the_start(
    kafka_settings: KafkaSettings,
) -> None:
    # After a dropped fetch the worker seeks back to the committed offsets. aiokafka
    # leaves a partition with none (or with 0) where it is, past the records the fetch
    # held: they would be skipped.
    topic = kafka_settings.usage_topic
    tps = [TopicPartition(topic, p) for p in range(3)]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_settings.bootstrap_servers)
    await producer.start()
    try:
        for tp in tps:
            for i in range(5):
                await producer.send_and_wait(topic, b"%d" % i, partition=tp.partition)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_settings.bootstrap_servers,
        group_id=f"seek-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.commit({tps[1]: OffsetAndMetadata(3, ""), tps[2]: OffsetAndMetadata(0, "")})

        async def read_all() -> None:
            for tp in tps:
                await consumer.seek_to_beginning(tp)
            taken = 0
            while taken < 15:
                batches = await consumer.getmany(timeout_ms=5_000)
                assert batches, "the broker gave nothing in 5 s"
                taken += sum(len(records) for records in batches.values())
            assert [await consumer.position(tp) for tp in tps] == [5, 5, 5]

        await read_all()
        await consumer.seek_to_committed()  # aiokafka's own: two partitions stay past
        assert [await consumer.position(tp) for tp in tps] == [5, 3, 5]
        await read_all()
        committed, starts = await seek_to_committed_or_start(consumer)
        assert committed == {tps[0]: None, tps[1]: 3, tps[2]: 0}
        assert starts == {tps[0]: 0, tps[2]: 0}  # what the worker then expects first
        assert [await consumer.position(tp) for tp in tps] == [0, 3, 0]
    finally:
        await consumer.stop()
