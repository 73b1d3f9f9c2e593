"""The worker's checkpoints beside the log, and accepting a gap, against the real broker and
PostgreSQL.

The embedded Tansu broker can neither delete records (its DeleteRecords handler is not
implemented and panics) nor apply retention (a topic with retention.ms=500 keeps every
message), so no log here starts after offset 0. The tests that need a gap give the log's
bounds themselves (`bounds=`); the one that deletes records runs only on a real Kafka
(TOKENQUOTA_TEST_BACKEND=testcontainers, or KAFKA_BOOTSTRAP_SERVERS naming one).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.records_to_delete import RecordsToDelete

from tests.conftest import WorkerStarter
from tests.support import fetch_value, log_records, used, wait_until
from tokenquota.checkpoints import (
    GapRefusedError,
    accept_log_gap,
    find_log_gap,
    read_log_checkpoints,
)
from tokenquota.config import KafkaSettings, Settings
from tokenquota.kafka_probe import LogBounds, partition_bounds
from tokenquota.processors import Projector
from tokenquota.projections import LogRecord
from tokenquota.projections.log_gaps import LogGap
from tokenquota.schemas import Event, encode

pytestmark = pytest.mark.integration

Bounds = Callable[[KafkaSettings, str], Awaitable[dict[int, LogBounds]]]


def _log_bounds(**partitions: tuple[int, int]) -> Bounds:
    """Bounds as a broker that deleted records would report them: p0=(first, end), ..."""

    async def bounds(kafka: KafkaSettings, topic: str) -> dict[int, LogBounds]:
        return {int(p[1:]): LogBounds(first, end) for p, (first, end) in partitions.items()}

    return bounds


async def _set_checkpoints(settings: Settings, **offsets: int) -> None:
    for p, offset in offsets.items():
        await fetch_value(
            settings.database,
            "INSERT INTO partition_checkpoints (topic, kafka_partition, next_offset) "
            "VALUES ($1, $2, $3)",
            settings.kafka.usage_topic,
            int(p[1:]),
            offset,
        )


async def _produce(settings: Settings, partition: int, count: int) -> list[Event]:
    """`count` events sent to `partition`, at its next offsets."""
    events: list[Event] = [used(f"p{partition}", 10 + i) for i in range(count)]
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
    await producer.start()
    try:
        for event in events:
            await producer.send_and_wait(
                settings.kafka.usage_topic, encode(event), partition=partition
            )
    finally:
        await producer.stop()
    return events


async def test_show_puts_each_checkpoint_beside_the_logs_bounds(
    pipeline_settings: Settings,
) -> None:
    settings = pipeline_settings
    await _produce(settings, 0, 4)
    await _produce(settings, 1, 3)
    await _set_checkpoints(settings, p0=4, p1=1, p2=9)
    found = await read_log_checkpoints(settings)
    assert found.topic == settings.kafka.usage_topic
    assert found.accepted == []
    rows = [
        (p.partition, p.next_offset, p.log_first, p.log_end, p.status, p.note)
        for p in found.partitions
    ]
    assert rows == [
        (0, 4, 0, 4, "ok", "applied up to the log's end"),
        (1, 1, 0, 3, "ok", "2 to apply"),
        (
            2,
            9,
            0,
            0,
            "ahead",
            "the checkpoint is past the log's end: not the log the projections were built "
            "from (a recreated topic, a restarted in-memory broker)",
        ),
    ]
    with pytest.raises(GapRefusedError) as refused:
        await find_log_gap(settings, 1)
    assert str(refused.value) == (
        f"no gap to accept in {settings.kafka.usage_topic}[1]: its checkpoint 1 is not before "
        "the log's first offset (the log holds offsets 0 to 2), so every message not applied "
        "yet is still in the log. A worker stopped by LogGapError on it fetches them again "
        "from its group's committed offset when restarted; should that offset be past the "
        "checkpoint too (a database restored from a backup), reset the group's offset of the "
        "partition to 1 (kafka-consumer-groups.sh --reset-offsets)"
    )
    with pytest.raises(GapRefusedError, match=r"has no partition 3 \(it has partitions 0 to 2\)"):
        await find_log_gap(settings, 3)


async def test_a_gap_is_found_accepted_once_and_shown(pipeline_settings: Settings) -> None:
    settings = pipeline_settings
    topic = settings.kafka.usage_topic
    await _set_checkpoints(settings, p0=2, p1=7)
    bounds = _log_bounds(p0=(5, 9), p1=(0, 7), p2=(3, 3))
    shown = await read_log_checkpoints(settings, bounds=bounds)
    assert [(p.status, p.note) for p in shown.partitions] == [
        (
            "gap",
            "gap: offsets 2 to 4 are gone from the log and were never applied; after "
            "checking, `tokenquota checkpoints accept-gap --partition 0`",
        ),
        ("ok", "applied up to the log's end"),
        ("ok", "nothing applied yet"),  # the worker takes it from where the log starts
    ]
    with pytest.raises(GapRefusedError, match=r"\[2\]: nothing was applied from it yet"):
        await find_log_gap(settings, 2, bounds=bounds)

    gap = await find_log_gap(settings, 0, bounds=bounds)
    assert gap == LogGap(topic, 0, 2, 5)
    # The log moved on while the operator read the question: nothing is changed.
    with pytest.raises(GapRefusedError, match=r"starts at 6 now, not at 5 as read before"):
        await accept_log_gap(settings, gap, "os:tester", bounds=_log_bounds(p0=(6, 9)))
    accepted = await accept_log_gap(settings, gap, "os:tester", bounds=bounds)
    assert (accepted.partition, accepted.from_offset, accepted.to_offset) == (0, 2, 5)
    assert (accepted.skipped, accepted.actor) == (3, "os:tester")
    # Once is all: the checkpoint is the log's first offset now.
    with pytest.raises(GapRefusedError, match="its checkpoint 5 is not before"):
        await find_log_gap(settings, 0, bounds=bounds)
    with pytest.raises(GapRefusedError, match="is 5 now, not 2 as read before"):
        await accept_log_gap(settings, gap, "os:tester", bounds=bounds)
    shown = await read_log_checkpoints(settings, bounds=bounds)
    assert (shown.partitions[0].next_offset, shown.partitions[0].status) == (5, "ok")
    assert shown.accepted == [accepted]


async def test_a_worker_stopped_by_a_gap_goes_on_once_it_is_accepted(
    pipeline_settings: Settings, start_worker: WorkerStarter
) -> None:
    # A worker whose fetch starts after the checkpoint, as one reset to the log's start
    # after retention deleted offsets 2 and 3 would: its group's committed offset is 4.
    settings = pipeline_settings
    topic = settings.kafka.usage_topic
    events = await _produce(settings, 0, 6)
    projector = Projector(settings)

    async def no_poison(record: LogRecord, reason: str) -> None:
        raise AssertionError(reason)

    try:
        await projector.apply(log_records(events[:2], topic=topic), [], no_poison)  # checkpoint 2
    finally:
        await projector.close()
    group = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        group_id=settings.worker.group_id,
        enable_auto_commit=False,
    )
    await group.start()
    try:
        group.assign([TopicPartition(topic, 0)])
        await group.commit({TopicPartition(topic, 0): 4})
    finally:
        await group.stop()

    # (a short session: the stopped worker does not leave its group, which waits that long)
    quick = {"WORKER_SESSION_TIMEOUT": "2"}
    stopped = start_worker("stopped", quick)

    async def exited() -> bool:
        return stopped.exit_code() is not None

    await wait_until(exited, 60, "the worker stopping at the gap")
    assert stopped.exit_code() == 1
    told = stopped.log_path.read_text()
    assert "LogGapError" in told and "offsets 2 to 3 were never applied" in told
    assert "tokenquota checkpoints accept-gap --partition 0" in told

    bounds = _log_bounds(p0=(4, 6), p1=(0, 0), p2=(0, 0))
    gap = await find_log_gap(settings, 0, bounds=bounds)
    await accept_log_gap(settings, gap, "os:tester", bounds=bounds)
    restarted = start_worker("restarted", quick)

    async def caught_up() -> bool:
        applied: int = await fetch_value(
            settings.database,
            "SELECT next_offset FROM partition_checkpoints WHERE kafka_partition = 0",
        )
        return applied == len(events)

    await wait_until(caught_up, 60, "the restarted worker applying offsets 4 and 5", [restarted])
    offsets = await fetch_value(
        settings.database, "SELECT array_agg(kafka_offset ORDER BY kafka_offset) FROM usage_events"
    )
    assert offsets == [0, 1, 4, 5]


def _embedded_broker() -> bool:
    return os.environ.get("TOKENQUOTA_TEST_BACKEND") != "testcontainers" and not os.environ.get(
        "KAFKA_BOOTSTRAP_SERVERS"
    )


@pytest.mark.skipif(
    _embedded_broker(),
    reason="the embedded Tansu broker cannot delete records (its DeleteRecords handler panics)",
)
async def test_records_deleted_before_the_checkpoint_are_a_gap(pipeline_settings: Settings) -> None:
    settings = pipeline_settings
    topic = settings.kafka.usage_topic
    await _produce(settings, 0, 10)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    await admin.start()
    try:
        await admin.delete_records({TopicPartition(topic, 0): RecordsToDelete(before_offset=6)})
    finally:
        await admin.close()
    assert (await partition_bounds(settings.kafka, topic))[0] == LogBounds(first=6, end=10)
    await _set_checkpoints(settings, p0=3)
    gap = await find_log_gap(settings, 0)
    assert gap == LogGap(topic, 0, 3, 6)
    accepted = await accept_log_gap(settings, gap, "os:tester")
    assert (accepted.from_offset, accepted.to_offset) == (3, 6)
