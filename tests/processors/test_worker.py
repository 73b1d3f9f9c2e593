"""The worker as a separate process against the real broker and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from datetime import timedelta
from decimal import Decimal

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from tests.conftest import WorkerStarter
from tests.support import T0, consumer_from_start, fetch_value, used, wait_until
from tokenquota.config import Settings
from tokenquota.processors import parse_dead_letter_headers
from tokenquota.producers import Emitter
from tokenquota.schemas import USAGE_TOKENS_MAX, ApiCost, Event, Source, encode

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


async def consumed(settings: Settings) -> int:
    """Messages the projections have read (applied, dropped as duplicates, or dead letters)."""
    value = await fetch_value(
        settings.database, "SELECT COALESCE(sum(next_offset), 0) FROM partition_checkpoints"
    )
    return int(value)


async def dead_letters(settings: Settings, count: int) -> list[ConsumerRecord[bytes, bytes]]:
    """The first `count` messages of the DLQ topic."""
    kafka = settings.kafka
    consumer = await consumer_from_start(
        kafka.bootstrap_servers, [(kafka.dlq_topic, kafka.dlq_partitions)]
    )
    try:
        letters: list[ConsumerRecord[bytes, bytes]] = []
        while len(letters) < count:
            batch = await consumer.getmany(timeout_ms=10_000)
            assert batch, "the DLQ stayed empty"
            letters += [m for messages in batch.values() for m in messages]
    finally:
        await consumer.stop()
    return letters


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
    # The victim never commits its offsets (commit interval of an hour), so the restarted
    # worker is given again every event the victim applied: a redelivery, for certain.
    worker = start_worker("victim", {"WORKER_COMMIT_INTERVAL": "3600"})  # type: ignore[operator]
    async with Emitter.from_settings(pipeline_settings) as emitter:
        await emitter.emit_many(events[:10_000])

        async def some_applied() -> bool:
            return await ledger_rows(pipeline_settings) > 0

        await wait_until(some_applied, 60, "the first batches", [worker])
        os.kill(worker.pid, signal.SIGKILL)
        await emitter.emit_many(events[10_000:])
    applied_when_killed = await ledger_rows(pipeline_settings)
    assert 0 < applied_when_killed < len(events)
    restarted = start_worker("restarted")  # type: ignore[operator]

    async def all_applied() -> bool:
        return await ledger_rows(pipeline_settings) == len(events)

    await wait_until(all_applied, 90, "every event after the restart", [restarted])
    assert await total_used(pipeline_settings) == len(events)
    starts = re.findall(r"projecting \S+\[\d+\] from offset (\d+)", restarted.log_path.read_text())
    assert starts and set(starts) == {"0"}, starts  # it read again what the victim applied


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

    async def all_three_read() -> bool:
        return await consumed(pipeline_settings) == 3

    await wait_until(all_three_read, 60, "the three messages", [worker])
    # The worker read the second copy (its offset is applied) and did not count it.
    assert await ledger_rows(pipeline_settings) == 2
    assert await total_used(pipeline_settings) == 124


async def test_invalid_messages_go_to_the_dlq_and_later_events_are_applied(
    pipeline_settings: Settings, start_worker: object
) -> None:
    kafka = pipeline_settings.kafka
    worker = start_worker()  # type: ignore[operator]
    nul = encode(used("bad", 5)).replace(b'"model":"gpt-4o"', b'"model":"gpt\\u0000"')
    garbage = [b"\xff\xfe not json", b'{"event_type": "TokenUsed", "session_id": "x"}', nul]
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
    letters = await dead_letters(pipeline_settings, 3)
    assert sorted(m.value for m in letters) == sorted(garbage)
    headers = [parse_dead_letter_headers(m.headers) for m in letters]
    assert {h["topic"] for h in headers} == {kafka.usage_topic}
    assert {int(h["offset"]) for h in headers} == {0, 1, 2}
    assert any("JSON" in h["reason"] or "json" in h["reason"] for h in headers)
    assert any("source: Field required" in h["reason"] for h in headers)
    assert any("model: must not contain control characters" in h["reason"] for h in headers)


async def test_an_event_postgresql_refuses_goes_to_the_dlq_and_its_partition_goes_on(
    pipeline_settings: Settings, start_worker: object
) -> None:
    """A valid event can still be one the tables cannot hold (here a sum beyond BIGINT); it
    used to be retried forever, stalling its partition for good."""
    huge = [
        ApiCost(
            session_id="rich",
            source=Source(component="external_api", name="tests"),
            api="openai",
            model="gpt-4o",
            input_tokens=USAGE_TOKENS_MAX,
            output_tokens=USAGE_TOKENS_MAX,
            cost_usd=Decimal("1"),
            price_source="test",
        )
        for _ in range(2)
    ]
    events: list[Event] = [used("rich", 1), *huge, used("rich", 2)]
    worker = start_worker()  # type: ignore[operator]
    async with Emitter.from_settings(pipeline_settings) as emitter:
        assert set(await emitter.emit_many(events)) == {"acked"}

    async def after_it_applied() -> bool:
        return await total_used(pipeline_settings) == 3

    await wait_until(after_it_applied, 60, "the event after the poison", [worker])
    [letter] = await dead_letters(pipeline_settings, 1)
    assert letter.value == encode(huge[1])
    assert letter.key == b"rich"
    reason = parse_dead_letter_headers(letter.headers)["reason"]
    assert "PostgreSQL refused it (22" in reason, reason
    assert await ledger_rows(pipeline_settings) == 3
    assert await consumed(pipeline_settings) == 4
    assert worker.exit_code() is None


async def test_a_worker_far_behind_catches_up_though_fetches_run_out_of_wait(
    pipeline_settings: Settings, start_worker: WorkerStarter
) -> None:
    # The embedded broker lists every batch of a partition within the fetch's wait and
    # answers nothing for it when the wait runs out first (benchmarks/broker_listing.py:
    # with 50 ms, from about 50,000 batches on). A 1 ms wait meets that with a few
    # thousand; the worker must raise its wait while behind, or it never reads them.
    settings = pipeline_settings
    kafka = settings.kafka
    events = workload(12_000)
    producers = [
        AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, linger_ms=0) for _ in range(8)
    ]
    for producer in producers:
        await producer.start()
    try:

        async def one_per_batch(producer: AIOKafkaProducer, share: list[Event]) -> None:
            for event in share:  # one send at a time: each event a batch of its own
                key = event.session_id.encode()
                await producer.send_and_wait(kafka.usage_topic, encode(event), key=key)

        await asyncio.gather(
            *(one_per_batch(p, events[i :: len(producers)]) for i, p in enumerate(producers))
        )
    finally:
        for producer in producers:
            await producer.stop()
    worker = start_worker(env={"WORKER_FETCH_MAX_WAIT": "0.001"})

    async def all_applied() -> bool:
        return await total_used(settings) == 3 * len(events)

    await wait_until(all_applied, 90, "every event applied", [worker])
    assert "waiting up to" in worker.log_path.read_text()  # it did raise its wait
