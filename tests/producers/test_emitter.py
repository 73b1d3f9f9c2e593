"""The emitter against a real broker: acks, and nothing lost while the broker is away."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from tests.support import T0, consumer_from_start, fetch_value, settings_env, used, wait_until
from tokenquota.config import DatabaseSettings, EmitterSettings, KafkaSettings, Settings
from tokenquota.embedded import EmbeddedBroker, WorkerProcess
from tokenquota.errors import IntegrationError
from tokenquota.producers import Emitter
from tokenquota.schemas import decode
from tokenquota.topics import ensure_topics

pytestmark = pytest.mark.integration


async def read_topic(kafka: KafkaSettings, count: int) -> list[bytes]:
    consumer = await consumer_from_start(
        kafka.bootstrap_servers, [(kafka.usage_topic, kafka.partitions)]
    )
    try:
        values: list[bytes] = []
        while len(values) < count:
            batch = await consumer.getmany(timeout_ms=10_000)
            assert batch, f"only {len(values)} of {count} messages arrived"
            values += [m.value for messages in batch.values() for m in messages]
        return values
    finally:
        await consumer.stop()


async def test_emit_returns_after_the_broker_acknowledged(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    events = [used(f"s{i % 4}", i, T0 + timedelta(seconds=i)) for i in range(50)]
    async with Emitter(kafka_settings, EmitterSettings(), tmp_path) as emitter:
        assert await emitter.emit(events[0]) == "acked"
        assert await emitter.emit_many(events[1:]) == ["acked"] * 49
        await emitter.flush(timeout=10)
    values = await read_topic(kafka_settings, 50)
    assert sorted(decode(v).event_id for v in values) == sorted(e.event_id for e in events)


async def test_an_emitter_refuses_to_auto_create_a_missing_topic(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    missing = kafka_settings.model_copy(update={"usage_topic": "tq-never-created"})
    async with Emitter(missing, EmitterSettings(send_timeout=2), tmp_path) as emitter:
        assert await emitter.emit(used("s", 1)) == "spooled"
        with pytest.raises(IntegrationError, match="not delivered within"):
            await emitter.flush(timeout=1)


async def test_events_emitted_while_the_broker_is_down_are_spooled_then_delivered_in_order(
    migrated_database: DatabaseSettings, tmp_path: Path
) -> None:
    broker = EmbeddedBroker(log_path=tmp_path / "broker.log")
    kafka = KafkaSettings(
        bootstrap_servers=broker.start(),
        usage_topic="outage.usage",
        dlq_topic="outage.dlq",
        partitions=3,
    )
    try:
        await ensure_topics(kafka)
        options = EmitterSettings(send_timeout=2, retry_interval=0.2)
        sessions = ["a", "b", "c"]
        emitter = Emitter(kafka, options, tmp_path / "spool")
        await emitter.start()
        assert await emitter.emit(used("a", 1)) == "acked"
        broker.stop()
        outage = [used(sessions[i % 3], 10 + i, T0 + timedelta(seconds=i)) for i in range(60)]
        deliveries = [await emitter.emit(event) for event in outage[:30]]
        deliveries += await emitter.emit_many(outage[30:])
        assert set(deliveries) == {"spooled"}
        assert emitter.spooled_bytes > 0
        await emitter.close()  # the process "dies" with events in its spool

        EmbeddedBroker(log_path=tmp_path / "broker2.log", port=broker.port).start()
        fresh = broker  # same port: the new broker is found where the old one was
        await ensure_topics(kafka)
        async with Emitter(kafka, options, tmp_path / "spool") as successor:
            await successor.flush(timeout=30)
            assert successor.spooled_bytes == 0
        values = await read_topic(kafka, len(outage))
        arrived = [decode(v) for v in values]
        assert sorted(e.event_id for e in arrived) == sorted(e.event_id for e in outage)
        for session in sessions:  # per-session order survived spooling
            assert [e.event_id for e in arrived if e.session_id == session] == [
                e.event_id for e in outage if e.session_id == session
            ]

        settings = Settings(kafka=kafka, database=migrated_database)
        worker = WorkerProcess(log_path=tmp_path / "worker.log")
        worker.start(settings_env(settings))
        try:

            async def totals_exact() -> bool:
                total = await fetch_value(
                    migrated_database,
                    "SELECT COALESCE(sum(tokens_used_total), 0) FROM session_token_budgets",
                )
                return int(total) == sum(e.input_tokens for e in outage)

            await wait_until(totals_exact, 60, "the spooled events' totals", [worker])
        finally:
            worker.stop()
        del fresh
    finally:
        broker.stop()
