"""Topic creation against the real broker of the session."""

from __future__ import annotations

import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tokenquota.config import KafkaSettings
from tokenquota.embedded import free_port
from tokenquota.errors import IntegrationError
from tokenquota.topics import ensure_topics

pytestmark = pytest.mark.integration


async def test_topics_are_created_once_with_the_configured_partitions(
    bootstrap_servers: str,
) -> None:
    name = f"tq-topics-{uuid.uuid4().hex[:8]}"
    kafka = KafkaSettings(
        bootstrap_servers=bootstrap_servers,
        usage_topic=f"{name}.usage",
        dlq_topic=f"{name}.dlq",
        partitions=7,
        dlq_partitions=2,
    )
    first = await ensure_topics(kafka)
    assert [(t.name, t.partitions, t.created) for t in first] == [
        (f"{name}.usage", 7, True),
        (f"{name}.dlq", 2, True),
    ]
    second = await ensure_topics(kafka)
    assert [(t.name, t.partitions, t.created) for t in second] == [
        (f"{name}.usage", 7, False),
        (f"{name}.dlq", 2, False),
    ]
    resized = await ensure_topics(kafka.model_copy(update={"partitions": 9}))
    assert resized[0].partitions == 7 and resized[0].mismatch


async def test_topics_keep_every_event_and_ask_the_broker_to_stamp_records(
    bootstrap_servers: str,
) -> None:
    name = f"tq-topics-{uuid.uuid4().hex[:8]}"
    kafka = KafkaSettings(
        bootstrap_servers=bootstrap_servers, usage_topic=f"{name}.usage", dlq_topic=f"{name}.dlq"
    )
    usage, dlq = await ensure_topics(kafka)
    assert usage.configs == {
        "retention.ms": "-1",
        "retention.bytes": "-1",
        "message.timestamp.type": "LogAppendTime",
    }
    assert dlq.configs == {"retention.ms": "-1", "retention.bytes": "-1"}
    assert not usage.differing_configs and not dlq.differing_configs


async def test_an_existing_topic_that_deletes_events_is_reported(bootstrap_servers: str) -> None:
    name = f"tq-topics-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:  # as Apache Kafka creates a topic by default: seven days of retention
        await admin.create_topics(
            [NewTopic(f"{name}.usage", 3, 1, topic_configs={"retention.ms": "604800000"})]
        )
    finally:
        await admin.close()
    kafka = KafkaSettings(
        bootstrap_servers=bootstrap_servers, usage_topic=f"{name}.usage", dlq_topic=f"{name}.dlq"
    )
    usage, _ = await ensure_topics(kafka)
    assert not usage.created
    assert usage.differing_configs == {
        "retention.ms": "604800000",
        "message.timestamp.type": None,
    }


async def test_an_unreachable_broker_is_a_clear_error() -> None:
    kafka = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}")
    with pytest.raises(IntegrationError, match=r"Kafka at 127\.0\.0\.1:\d+"):
        await ensure_topics(kafka, timeout=3)


async def test_no_broker_configured_says_how_to_get_one() -> None:
    with pytest.raises(IntegrationError, match="KAFKA_BOOTSTRAP_SERVERS"):
        await ensure_topics(KafkaSettings())
