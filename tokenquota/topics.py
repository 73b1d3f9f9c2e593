"""Creating the usage and dead-letter topics, idempotently."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from .config import KafkaSettings
from .errors import IntegrationError

__all__ = ["TopicState", "ensure_topics"]

_TOPIC_ALREADY_EXISTS = 36


@dataclass(frozen=True, slots=True)
class TopicState:
    """A topic after ensure_topics: its partition count and whether this run created it."""

    name: str
    partitions: int
    created: bool
    wanted_partitions: int

    @property
    def mismatch(self) -> bool:
        """The topic exists with another partition count than configured (left unchanged)."""
        return self.partitions != self.wanted_partitions


async def ensure_topics(kafka: KafkaSettings, timeout: float = 30.0) -> list[TopicState]:
    """Create the usage and DLQ topics when missing; existing topics are left as they are.

    Topics are created explicitly because some brokers auto-create a missing topic on
    first use with their own partition count, which would scatter sessions differently.
    """
    if kafka.bootstrap_servers is None:
        raise IntegrationError(
            "kafka.bootstrap_servers is not set: set KAFKA_BOOTSTRAP_SERVERS, "
            "or run `tokenquota dev` for the embedded broker"
        )
    wanted = {kafka.usage_topic: kafka.partitions, kafka.dlq_topic: kafka.dlq_partitions}
    admin = AIOKafkaAdminClient(
        bootstrap_servers=kafka.bootstrap_servers,
        client_id="tokenquota-init",
        request_timeout_ms=int(timeout * 1000),
    )
    try:
        async with asyncio.timeout(timeout):
            await admin.start()
            try:
                existing = set(await admin.list_topics())
                missing = [name for name in wanted if name not in existing]
                if missing:
                    response = await admin.create_topics(
                        [NewTopic(name, wanted[name], kafka.replication_factor) for name in missing]
                    )
                    for name, code, message in response.topic_errors:
                        if code not in (0, _TOPIC_ALREADY_EXISTS):
                            raise IntegrationError(
                                f"creating topic {name!r} failed: error {code} {message or ''}"
                            )
                described = await admin.describe_topics(list(wanted))
            finally:
                await admin.close()
    except TimeoutError:
        raise IntegrationError(
            f"Kafka at {kafka.bootstrap_servers} did not answer within {timeout} s"
        ) from None
    except KafkaError as exc:
        raise IntegrationError(f"Kafka at {kafka.bootstrap_servers}: {exc}") from None
    partitions = {topic["topic"]: len(topic["partitions"]) for topic in described}
    return [
        TopicState(
            name=name,
            partitions=partitions.get(name, 0),
            created=name in missing,
            wanted_partitions=count,
        )
        for name, count in wanted.items()
    ]
