"""check_integration_health against the real broker, PostgreSQL and worker."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from tests.support import fetch_value, used, wait_until
from tokenquota import check_integration_health, check_integration_health_async
from tokenquota.config import DatabaseSettings, KafkaSettings, Settings
from tokenquota.dashboard import AsyncTokenDashboard
from tokenquota.dead_letters import acknowledge, read_dead_letters
from tokenquota.health import IntegrationHealth
from tokenquota.producers import Emitter
from tokenquota.schemas import utc_now

pytestmark = pytest.mark.integration


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def emit(settings: Settings, count: int) -> None:
    async with Emitter(settings.kafka, settings.emitter, settings.spool_dir) as emitter:
        await emitter.emit_many([used(f"h{i % 3}", 1, utc_now()) for i in range(count)])


async def send_poison(settings: Settings, value: bytes) -> None:
    """A message that is no event, on one partition (so the DLQ keeps their order)."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(settings.kafka.usage_topic, value, key=b"x", partition=0)
    finally:
        await producer.stop()


async def test_a_running_worker_that_keeps_up_is_healthy(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    start_worker()
    await emit(pipeline_settings, 30)

    async def healthy() -> bool:
        return (await check_integration_health_async(pipeline_settings)).status == "ok"

    await wait_until(healthy, 60, "a healthy pipeline")
    health = await check_integration_health_async(pipeline_settings)
    assert health.worker.details["events_waiting"] == 0
    assert health.worker.details["members"]
    assert health.broker.details["partitions"] == pipeline_settings.kafka.partitions
    # The synchronous form, from a thread without an event loop.
    same = await asyncio.to_thread(check_integration_health, pipeline_settings)
    assert isinstance(same, IntegrationHealth) and same.status == "ok"
    with pytest.raises(RuntimeError, match="check_integration_health_async"):
        check_integration_health(pipeline_settings)


async def test_without_a_worker_waiting_events_make_it_down(pipeline_settings: Settings) -> None:
    await emit(pipeline_settings, 12)
    health = await check_integration_health_async(pipeline_settings)
    assert health.status == "down"
    assert health.worker.status == "down"
    assert "12 events waiting" in health.worker.reason
    assert health.broker.status == "ok" and health.database.status == "ok"


async def test_an_unreachable_broker_or_database_is_down_within_seconds(
    pipeline_settings: Settings,
) -> None:
    no_broker = pipeline_settings.model_copy(
        update={"kafka": KafkaSettings(bootstrap_servers=f"127.0.0.1:{closed_port()}")}
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    health = await check_integration_health_async(no_broker)
    assert loop.time() - started < 10
    assert health.broker.status == "down" and "unreachable" in health.broker.reason
    assert health.status == "down"
    no_database = pipeline_settings.model_copy(
        update={"database": DatabaseSettings(host="127.0.0.1", port=closed_port())}
    )
    health = await check_integration_health_async(no_database)
    assert health.database.status == "down" and "PostgreSQL unreachable" in health.database.reason


async def test_dead_letters_and_an_unsent_spool_make_it_degraded(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    start_worker()
    kafka = pipeline_settings.kafka
    await send_poison(pipeline_settings, b"not an event")

    async def dead_lettered() -> bool:
        health = await check_integration_health_async(pipeline_settings)
        return health.dlq.status == "degraded"

    await wait_until(dead_lettered, 60, "the DLQ message seen")
    health = await check_integration_health_async(pipeline_settings)
    assert health.dlq.details == {"depth": 1, "total": 1}
    assert "1 unreviewed messages" in health.dlq.reason and "dlq show" in health.dlq.reason
    letters = await read_dead_letters(pipeline_settings)
    (letter,) = letters.letters
    assert (letters.unreviewed, letters.total) == (1, 1)
    assert letter.value == "not an event" and letter.key == "x" and not letter.reviewed
    assert letter.source_topic == kafka.usage_topic and letter.source_offset is not None
    assert letter.reason.startswith("invalid event: <event>: Invalid JSON"), letter
    # Reviewed: no longer degraded, and the overview counts none.
    await acknowledge(pipeline_settings, "os:tester")
    health = await check_integration_health_async(pipeline_settings)
    assert health.dlq.status == "ok" and health.dlq.details == {"depth": 0, "total": 1}
    async with AsyncTokenDashboard(pipeline_settings) as dashboard:
        assert (await dashboard.get_system_overview()).dlq_depth == 0
    assert (await read_dead_letters(pipeline_settings)).letters == []
    # A new one is degraded again, and only it waits for review.
    await send_poison(pipeline_settings, b"{}")
    await wait_until(dead_lettered, 60, "the second DLQ message seen")
    assert (await check_integration_health_async(pipeline_settings)).dlq.details["depth"] == 1
    every = await read_dead_letters(pipeline_settings, everything=True)
    assert [(x.value, x.reviewed) for x in every.letters] == [("not an event", True), ("{}", False)]
    spool = pipeline_settings.spool_dir
    spool.mkdir(parents=True, exist_ok=True)
    (spool / "usage.spool").write_bytes(b"\x00" * 100)
    health = await check_integration_health_async(pipeline_settings)
    assert health.spool.status == "degraded" and health.spool.details["bytes"] == 100
    assert await fetch_value(pipeline_settings.database, "SELECT count(*) FROM worker_status")
