"""Creating the usage and dead-letter topics, idempotently."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from .config import KafkaSettings
from .errors import IntegrationError

__all__ = ["KEEP_EVERYTHING", "USAGE_TOPIC_CONFIGS", "TopicState", "ensure_topics"]

_TOPIC_ALREADY_EXISTS = 36

#: Retention of both topics: keep every event. Replay rebuilds balances from the usage
#: topic, so an event deleted by retention would be a balance replay cannot rebuild.
KEEP_EVERYTHING = {"retention.ms": "-1", "retention.bytes": "-1"}
#: The usage topic also asks the broker to stamp each record with its own clock: the log
#: clock that decides windows and expiry is then one no producer can push ahead.
USAGE_TOPIC_CONFIGS = {**KEEP_EVERYTHING, "message.timestamp.type": "LogAppendTime"}


@dataclass(frozen=True, slots=True)
class TopicState:
    """A topic after ensure_topics: partitions, the configs that matter, whether it was created."""

    name: str
    partitions: int
    created: bool
    wanted_partitions: int
    #: The topic's values of the configs tokenquota sets (a missing one: the broker's default).
    configs: dict[str, str]
    wanted_configs: dict[str, str]

    @property
    def mismatch(self) -> bool:
        """The topic exists with another partition count than configured (left unchanged)."""
        return self.partitions != self.wanted_partitions

    @property
    def differing_configs(self) -> dict[str, str | None]:
        """Configs whose value differs from what tokenquota creates the topic with."""
        return {
            name: self.configs.get(name)
            for name, value in self.wanted_configs.items()
            if self.configs.get(name, "-1" if name == "retention.bytes" else None) != value
        }


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
    configs = {kafka.usage_topic: USAGE_TOPIC_CONFIGS, kafka.dlq_topic: KEEP_EVERYTHING}
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
                        [
                            NewTopic(
                                name,
                                wanted[name],
                                kafka.replication_factor,
                                topic_configs=configs[name],
                            )
                            for name in missing
                        ]
                    )
                    for name, code, message in response.topic_errors:
                        if code not in (0, _TOPIC_ALREADY_EXISTS):
                            raise IntegrationError(
                                f"creating topic {name!r} failed: error {code} {message or ''}"
                            )
                described = await admin.describe_topics(list(wanted))
                found = await _topic_configs(admin, configs)
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
            configs=found.get(name, {}),
            wanted_configs=configs[name],
        )
        for name, count in wanted.items()
    ]


async def _topic_configs(
    admin: AIOKafkaAdminClient, wanted: dict[str, dict[str, str]]
) -> dict[str, dict[str, str]]:
    """Topic -> the values of the configs in `wanted` (missing: not reported by the broker)."""
    # All configs, filtered here: the embedded broker drops the connection when asked for
    # named ones.
    responses = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, name) for name in wanted]
    )
    found: dict[str, dict[str, str]] = {}
    for response in responses:
        for resource in response.resources:
            _, _, _, topic, entries = resource[:5]
            found[topic] = {
                entry[0]: entry[1]
                for entry in entries
                if entry[0] in wanted.get(topic, {}) and entry[1] is not None
            }
    return found
