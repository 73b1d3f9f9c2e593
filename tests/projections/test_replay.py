"""Replay rebuilds every projection table row for row, and refuses to lose balances."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaProducer

from tests.support import fetch_value, live_workload, snapshot, wait_until
from tokenquota.config import Settings, fold_config
from tokenquota.producers import Emitter
from tokenquota.projections import connect
from tokenquota.projections.replay import ReplayError, replay_into
from tokenquota.schemas import encode

pytestmark = pytest.mark.integration


async def test_replay_rebuilds_every_table_row_for_row(
    pipeline_settings: Settings, start_worker: object
) -> None:
    settings = pipeline_settings
    events = live_workload()
    worker = start_worker()  # type: ignore[operator]
    async with Emitter.from_settings(settings) as emitter:
        await emitter.emit_many(events)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
    await producer.start()
    try:  # a duplicate and a bad message in the middle of the log
        await producer.send_and_wait(settings.kafka.usage_topic, encode(events[5]), key=b"replay-0")
        await producer.send_and_wait(settings.kafka.usage_topic, b"not an event", key=b"x")
    finally:
        await producer.stop()

    async def applied() -> bool:
        positions = await fetch_value(
            settings.database, "SELECT COALESCE(sum(next_offset), 0) FROM partition_checkpoints"
        )
        return int(positions) == len(events) + 2

    await wait_until(applied, 90, "the live workload", [worker])
    before = await snapshot(settings.database)
    assert len(before["usage_events"]) == len(events)
    assert before["integration_logs"] and before["external_api_tokens"]
    assert before["session_usage_daily"] and before["task_token_allocations"]
    report = await replay_into(
        settings.kafka.bootstrap_servers or "",
        settings.kafka.usage_topic,
        settings.database.dsn(),
        settings.database.schema_name,
        fold_config(settings),
    )
    assert (report.events, report.skipped) == (len(events) + 2, 1)
    assert await snapshot(settings.database) == before


async def test_replay_refuses_when_the_topic_holds_less_than_was_applied(
    pipeline_settings: Settings,
) -> None:
    settings = pipeline_settings
    conn = await connect(settings.database.dsn(), settings.database.schema_name)
    try:  # as after a restart of an in-memory broker
        await conn.execute(
            "INSERT INTO partition_checkpoints VALUES ($1, 0, 500)", settings.kafka.usage_topic
        )
    finally:
        await conn.close()
    with pytest.raises(ReplayError, match="topic holds less than the projections have applied"):
        await replay_into(
            settings.kafka.bootstrap_servers or "",
            settings.kafka.usage_topic,
            settings.database.dsn(),
            settings.database.schema_name,
            fold_config(settings),
        )
    assert await fetch_value(settings.database, "SELECT count(*) FROM partition_checkpoints") == 1
