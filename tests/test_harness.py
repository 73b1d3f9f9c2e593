"""Proof that the harness is real: events through the broker, a query on PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest
from aiokafka import AIOKafkaProducer

from tests.support import consumer_from_start
from tokenquota.config import DatabaseSettings, KafkaSettings
from tokenquota.projections import connect
from tokenquota.schemas import Event, Source, TokenReserved, TokenUsed, decode, encode

pytestmark = pytest.mark.integration


def _events(count: int) -> list[Event]:
    start = datetime(2026, 11, 24, tzinfo=UTC)
    source = Source(component="cli", name="harness")
    events: list[Event] = []
    for i in range(count):
        session = f"session-{i % 5}"
        if i % 2:
            events.append(
                TokenReserved(
                    session_id=session,
                    source=source,
                    occurred_at=start + timedelta(seconds=i),
                    reservation_id=uuid4(),
                    tokens=100 + i,
                    expires_at=start + timedelta(seconds=i + 60),
                )
            )
        else:
            events.append(
                TokenUsed(
                    session_id=session,
                    source=source,
                    occurred_at=start + timedelta(seconds=i),
                    model="gpt-4o",
                    input_tokens=i,
                    output_tokens=2 * i,
                    operation="harness",
                    counted_by="estimate",
                )
            )
    return events


async def test_events_round_trip_through_the_real_broker_in_per_session_order(
    kafka_settings: KafkaSettings,
) -> None:
    sent = _events(60)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_settings.bootstrap_servers, acks="all", linger_ms=20
    )
    await producer.start()
    try:
        for event in sent:
            await producer.send(
                kafka_settings.usage_topic, encode(event), key=event.session_id.encode()
            )
        await producer.flush()
    finally:
        await producer.stop()

    consumer = await consumer_from_start(
        kafka_settings.bootstrap_servers,
        [(kafka_settings.usage_topic, kafka_settings.partitions)],
    )
    received: list[tuple[int, Event]] = []

    async def read_all() -> None:
        while len(received) < len(sent):
            batches = await consumer.getmany(timeout_ms=200)
            for partition, messages in batches.items():
                received.extend((partition.partition, decode(m.value or b"")) for m in messages)

    try:
        await asyncio.wait_for(read_all(), timeout=30)
    finally:
        await consumer.stop()

    assert sorted(e.event_id for _, e in received) == sorted(e.event_id for e in sent)
    by_id = {e.event_id: e for e in sent}
    assert all(by_id[e.event_id] == e for _, e in received)
    partitions_of_session: dict[str, set[int]] = {}
    for partition, event in received:
        partitions_of_session.setdefault(event.session_id, set()).add(partition)
    assert all(len(p) == 1 for p in partitions_of_session.values()), partitions_of_session
    for session in partitions_of_session:
        order = [e.event_id for _, e in received if e.session_id == session]
        assert order == [e.event_id for e in sent if e.session_id == session]


async def test_postgresql_answers_queries_in_the_tests_own_schema(
    migrated_database: DatabaseSettings,
) -> None:
    conn = await connect(migrated_database.dsn(), migrated_database.schema_name)
    try:
        version = await conn.fetchval("SHOW server_version_num")
        assert int(version) >= 120000
        assert await conn.fetchval("SELECT current_schema()") == migrated_database.schema_name
        assert await conn.fetchval("SELECT count(*) FROM usage_events") == 0
    finally:
        await conn.close()
