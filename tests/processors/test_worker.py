"""The worker as a separate process against the real broker and PostgreSQL."""

from __future__ import annotations

import os
import re
import signal
from datetime import timedelta

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from tests.support import T0, fetch_value, used, wait_until
from tokenquota.config import Settings
from tokenquota.processors import parse_dead_letter_headers
from tokenquota.producers import Emitter
from tokenquota.schemas import Event, encode

pytestmark = pytest.mark.integration

SESSIONS = [f"session-{i}" for i in range(20)]


def workload(count: int, tokens: int = 3) -> list[Event]:
    return [
        used(SESSIONS[i % len(SESSIONS)], tokens, T0 + timedelta(milliseconds=i))
        for i in range(count)
    ]


async def total_used(settings: Settings) -> int:
    value = await fetch_value(
        settings.database, "SELECT COALESCE(sum(tokens_used_total), 0) FROM session_token_budgets"
    )
    return int(value)


async def ledger_rows(settings: Settings) -> int:
    return int(await fetch_value(settings.database, "SELECT count(*) FROM usage_events"))


async def test_two_workers_share_the_partitions_and_apply_every_event_once(
    pipeline_settings: Settings, start_worker: object
) -> None:
    events = workload(3000)
    first, second = start_worker("a"), start_worker("b")  # type: ignore[operator]

    async def both_ready() -> bool:
        return all("Worker]: Ready" in w.log_path.read_text() for w in (first, second))

    await wait_until(both_ready, 60, "both workers in the group", [first, second])
    async with Emitter.from_settings(pipeline_settings) as emitter:
        assert set(await emitter.emit_many(events)) == {"acked"}

    async def all_applied() -> bool:
        return await ledger_rows(pipeline_settings) == len(events)

    await wait_until(all_applied, 60, "3000 events in the ledger", [first, second])
    assert await total_used(pipeline_settings) == 3 * len(events)
    assert first.exit_code() is None and second.exit_code() is None
    # Both workers did part of the work: each projected partitions of its own.
    owned = [
        set(re.findall(r"projecting \S+\[(\d+)\]", w.log_path.read_text())) for w in (first, second)
    ]
    assert owned[0] and owned[1], owned
    assert owned[0] | owned[1] == {str(p) for p in range(pipeline_settings.kafka.partitions)}


async def test_a_worker_killed_mid_run_and_restarted_ends_with_exact_totals(
    pipeline_settings: Settings, start_worker: object
) -> None:
    events = workload(20_000, tokens=1)
    worker = start_worker("victim")  # type: ignore[operator]
    async with Emitter.from_settings(pipeline_settings) as emitter:
        await emitter.emit_many(events[:10_000])

        async def some_applied() -> bool:
            return await ledger_rows(pipeline_settings) > 0

        await wait_until(some_applied, 60, "the first batches", [worker])
        os.kill(worker.pid, signal.SIGKILL)
        await emitter.emit_many(events[10_000:])
    applied_when_killed = await ledger_rows(pipeline_settings)
    assert applied_when_killed < len(events)
    restarted = start_worker("restarted")  # type: ignore[operator]

    async def all_applied() -> bool:
        return await ledger_rows(pipeline_settings) == len(events)

    await wait_until(all_applied, 90, "every event after the restart", [restarted])
    assert await total_used(pipeline_settings) == len(events)


async def test_a_stopped_worker_has_committed_the_offsets_of_everything_it_applied(
    pipeline_settings: Settings, start_worker: object
) -> None:
    events = workload(3000)
    worker = start_worker()  # type: ignore[operator]
    async with Emitter.from_settings(pipeline_settings) as emitter:
        assert set(await emitter.emit_many(events)) == {"acked"}

    async def all_applied() -> bool:
        return await ledger_rows(pipeline_settings) == len(events)

    await wait_until(all_applied, 60, "3000 events in the ledger", [worker])
    worker.stop()  # SIGTERM: faust commits what was acknowledged on the way out
    kafka = pipeline_settings.kafka
    group = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers, group_id=pipeline_settings.worker.group_id
    )
    await group.start()
    try:
        committed = [
            await group.committed(TopicPartition(kafka.usage_topic, p))
            for p in range(kafka.partitions)
        ]
    finally:
        await group.stop()
    # The offsets are acknowledged batch by batch after the batch is applied; a restarted
    # worker starts from them instead of reading the topic again.
    assert sum(offset or 0 for offset in committed) == len(events), committed


async def test_the_same_event_sent_twice_counts_once(
    pipeline_settings: Settings, start_worker: object
) -> None:
    event = used("twice", 123)
    producer = AIOKafkaProducer(bootstrap_servers=pipeline_settings.kafka.bootstrap_servers)
    await producer.start()
    try:
        for _ in range(2):
            await producer.send_and_wait(
                pipeline_settings.kafka.usage_topic, encode(event), key=b"twice"
            )
        marker = used("twice", 1, T0 + timedelta(seconds=1))
        await producer.send_and_wait(
            pipeline_settings.kafka.usage_topic, encode(marker), key=b"twice"
        )
    finally:
        await producer.stop()
    worker = start_worker()  # type: ignore[operator]

    async def marker_applied() -> bool:
        return await ledger_rows(pipeline_settings) == 2

    await wait_until(marker_applied, 60, "the marker event", [worker])
    assert await total_used(pipeline_settings) == 124


async def test_invalid_messages_go_to_the_dlq_and_later_events_are_applied(
    pipeline_settings: Settings, start_worker: object
) -> None:
    kafka = pipeline_settings.kafka
    worker = start_worker()  # type: ignore[operator]
    garbage = [b"\xff\xfe not json", b'{"event_type": "TokenUsed", "session_id": "x"}']
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers)
    await producer.start()
    try:
        for value in garbage:
            await producer.send_and_wait(kafka.usage_topic, value, key=b"bad")
        await producer.send_and_wait(kafka.usage_topic, encode(used("bad", 42)), key=b"bad")
    finally:
        await producer.stop()

    async def valid_applied() -> bool:
        return await total_used(pipeline_settings) == 42

    await wait_until(valid_applied, 60, "the valid event after the garbage", [worker])
    assert worker.exit_code() is None
    consumer = AIOKafkaConsumer(
        kafka.dlq_topic, bootstrap_servers=kafka.bootstrap_servers, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        letters: list[ConsumerRecord[bytes, bytes]] = []
        while len(letters) < 2:
            batch = await consumer.getmany(timeout_ms=10_000)
            assert batch, "the DLQ stayed empty"
            letters += [m for messages in batch.values() for m in messages]
    finally:
        await consumer.stop()
    assert sorted(m.value for m in letters) == sorted(garbage)
    headers = [parse_dead_letter_headers(m.headers) for m in letters]
    assert {h["topic"] for h in headers} == {kafka.usage_topic}
    assert {int(h["offset"]) for h in headers} == {0, 1}
    assert any("JSON" in h["reason"] or "json" in h["reason"] for h in headers)
    assert any("source: Field required" in h["reason"] for h in headers)
