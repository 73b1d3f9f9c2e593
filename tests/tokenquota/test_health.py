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
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(kafka.usage_topic, b"not an event", key=b"x")
    finally:
        await producer.stop()

    async def dead_lettered() -> bool:
        health = await check_integration_health_async(pipeline_settings)
        return health.dlq.status == "degraded"

    await wait_until(dead_lettered, 60, "the DLQ message seen")
    health = await check_integration_health_async(pipeline_settings)
    assert health.dlq.details["depth"] == 1 and "1 messages" in health.dlq.reason
    spool = pipeline_settings.spool_dir
    spool.mkdir(parents=True, exist_ok=True)
    (spool / "usage.spool").write_bytes(b"\x00" * 100)
    health = await check_integration_health_async(pipeline_settings)
    assert health.spool.status == "degraded" and health.spool.details["bytes"] == 100
    assert await fetch_value(pipeline_settings.database, "SELECT count(*) FROM worker_status")
