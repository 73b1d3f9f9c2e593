"""Replay rebuilds every projection table row for row (from the topic or from the ledger),
catches up with a live worker, and refuses to lose balances."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from tests.support import fetch_value, live_workload, snapshot, used, wait_until
from tokenquota.config import KafkaSettings, Settings
from tokenquota.producers import Emitter
from tokenquota.projections import connect
from tokenquota.projections import replay as replay_module
from tokenquota.projections.ledger_replay import replay_from_ledger
from tokenquota.projections.replay import ReplayError, log_mismatch, replay_into
from tokenquota.projections.store import PROJECTION_VIEWS
from tokenquota.schemas import Event, encode
from tokenquota.topics import ensure_topics

pytestmark = pytest.mark.integration


async def with_views(settings: Settings) -> dict[str, list[tuple[Any, ...]]]:
    """Every projection table's rows and every projection view's, sorted."""
    tables = await snapshot(settings.database)
    conn = await connect(settings.database.dsn(), settings.database.schema_name)
    try:
        for view in PROJECTION_VIEWS:
            rows = await conn.fetch(f"SELECT * FROM {view}")  # noqa: S608 - constant names
            tables[view] = sorted((tuple(r.values()) for r in rows), key=repr)
    finally:
        await conn.close()
    return tables


async def applied_offsets(settings: Settings) -> int:
    value = await fetch_value(
        settings.database, "SELECT COALESCE(sum(next_offset), 0) FROM partition_checkpoints"
    )
    return int(value)


async def emit_and_wait(settings: Settings, events: Sequence[Event], worker: Any) -> None:
    """Emit `events` and wait until the worker has applied everything on the topic."""
    before = await applied_offsets(settings)
    async with Emitter.from_settings(settings) as emitter:
        await emitter.emit_many(events)

    async def applied() -> bool:
        return await applied_offsets(settings) >= before + len(events)

    await wait_until(applied, 90, f"{len(events)} events applied", [worker])


async def recreate_topics(kafka: KafkaSettings) -> None:
    """Delete and create the topics again: a new, empty log (as a restarted dev broker)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        await admin.delete_topics([kafka.usage_topic, kafka.dlq_topic])
    finally:
        await admin.close()
    await ensure_topics(kafka)


def replay(settings: Settings, **options: Any) -> Any:
    return replay_into(
        settings.kafka.bootstrap_servers or "",
        settings.kafka.usage_topic,
        settings.database.dsn(),
        settings.database.schema_name,
        **options,
    )


async def test_replay_rebuilds_every_table_row_for_row(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    settings = pipeline_settings
    events = live_workload()
    worker = start_worker()
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
        return await applied_offsets(settings) == len(events) + 2

    await wait_until(applied, 90, "the live workload", [worker])
    before = await with_views(settings)
    assert len(before["usage_events"]) == len(events)
    assert before["integration_notices"] and before["external_api_tokens"]
    assert before["session_usage_daily"] and before["task_token_allocations"]
    for rollup in ("session_usage_hourly", "api_usage_daily", "model_usage_daily",
                   "session_reservations_daily", "system_usage_minutely"):  # fmt: skip
        assert before[rollup], rollup
    # One row per event, one per decision, plus the notices.
    reservations = len(before["reservations"])
    assert len(before["integration_logs"]) == (
        len(events) + reservations + len(before["integration_notices"])
    )
    report = await replay(settings)
    assert (report.events, report.skipped) == (len(events) + 2, 1)
    assert await with_views(settings) == before

    # The ledger alone rebuilds the same, even once the topic is gone.
    worker.stop()
    await recreate_topics(settings.kafka)
    from_ledger = await replay_from_ledger(settings.database.dsn(), settings.database.schema_name)
    assert (from_ledger.events, from_ledger.applied) == (len(events), len(events))
    assert await with_views(settings) == before


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
        await replay(settings)
    assert await fetch_value(settings.database, "SELECT count(*) FROM partition_checkpoints") == 1


async def test_replay_refuses_a_log_that_no_longer_holds_what_was_applied_from_it(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    """The start of the log is gone (retention) and more has been written since: the end
    offsets alone cannot tell, the ledger's first events can."""
    settings = pipeline_settings
    worker = start_worker()
    await emit_and_wait(settings, [used(f"lost-{i}", 10) for i in range(30)], worker)
    worker.stop()
    before = await snapshot(settings.database)
    await recreate_topics(settings.kafka)
    async with Emitter.from_settings(settings) as emitter:
        await emitter.emit_many([used(f"other-{i}", 1) for i in range(60)])
    with pytest.raises(ReplayError, match="not the log the projections were built from"):
        await replay(settings)
    assert await snapshot(settings.database) == before  # nothing was changed


async def test_replay_force_rebuilds_from_a_shorter_log_without_hanging(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    """A restarted in-memory broker: the live checkpoints point past the new log's end.
    --force must rebuild from what the topic holds (it used to wait forever for offsets that
    no longer exist, holding the lock every worker batch needs)."""
    settings = pipeline_settings
    worker = start_worker()
    await emit_and_wait(settings, [used(f"old-{i}", 10) for i in range(40)], worker)
    worker.stop()
    await recreate_topics(settings.kafka)
    async with Emitter.from_settings(settings) as emitter:
        await emitter.emit_many([used("new", 1) for _ in range(3)])
    with pytest.raises(ReplayError, match="holds less"):
        await replay(settings)
    report = await asyncio.wait_for(replay(settings, force=True), 60)
    assert report.events == 3
    assert (
        await fetch_value(
            settings.database, "SELECT sum(tokens_used_total) FROM session_token_budgets"
        )
        == 3
    )
    assert await applied_offsets(settings) == 3  # the checkpoints are the new log's


async def test_replay_catches_up_with_what_a_live_worker_applied_during_the_read(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    settings = pipeline_settings
    worker = start_worker()
    await emit_and_wait(settings, live_workload(sessions=4), worker)
    late = [used(f"late-{i}", 7) for i in range(25)]

    async def worker_applies_more() -> None:
        # Between the read and the swap: events the replay did not read, which the live
        # worker applies; the swap must not lose them.
        await emit_and_wait(settings, late, worker)

    report = await replay(settings, before_swap=worker_applies_more)
    assert sum(report.end_offsets.values()) + len(late) == await applied_offsets(settings)
    late_total = await fetch_value(
        settings.database,
        "SELECT sum(tokens_used_total) FROM session_token_budgets WHERE session_id LIKE 'late-%'",
    )
    assert late_total == 7 * len(late)
    caught_up = await with_views(settings)
    worker.stop()
    await replay(settings)  # nothing happening meanwhile: the same tables
    assert await with_views(settings) == caught_up


async def test_replay_reads_the_live_checkpoints_before_the_log_ends(
    pipeline_settings: Settings, start_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by the fault campaign (a replay under live load): the replay read the log's
    # ends, then the live checkpoints; a worker that applied more in between had moved
    # them past those ends, and the replay refused the live log as one that "holds less
    # than the projections have applied". Here the worker applies more exactly then.
    settings = pipeline_settings
    worker = start_worker()
    await emit_and_wait(settings, live_workload(sessions=4), worker)
    late = [used(f"late-{i}", 5) for i in range(20)]
    real_end_offsets = replay_module._end_offsets

    async def ends_then_the_worker_applies_more(consumer: Any, tps: Any) -> Any:
        ends = await real_end_offsets(consumer, tps)
        await emit_and_wait(settings, late, worker)
        return ends

    monkeypatch.setattr(replay_module, "_end_offsets", ends_then_the_worker_applies_more)
    report = await replay(settings)
    assert sum(report.end_offsets.values()) + len(late) == await applied_offsets(settings)
    late_total = await fetch_value(
        settings.database,
        "SELECT sum(tokens_used_total) FROM session_token_budgets WHERE session_id LIKE 'late-%'",
    )
    assert late_total == 5 * len(late)  # read by the catch-up, not lost


async def test_replay_from_the_ledger_catches_up_with_a_live_worker(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    settings = pipeline_settings
    worker = start_worker()
    await emit_and_wait(settings, live_workload(sessions=3), worker)
    late = [used(f"late-{i}", 3) for i in range(10)]

    async def worker_applies_more() -> None:
        await emit_and_wait(settings, late, worker)

    await replay_from_ledger(
        settings.database.dsn(), settings.database.schema_name, before_swap=worker_applies_more
    )
    late_total = await fetch_value(
        settings.database,
        "SELECT sum(tokens_used_total) FROM session_token_budgets WHERE session_id LIKE 'late-%'",
    )
    assert late_total == 3 * len(late)
    caught_up = await with_views(settings)
    worker.stop()
    await replay(settings)
    assert await with_views(settings) == caught_up


def test_a_log_that_starts_after_the_ledgers_first_offset_is_named_as_retention() -> None:
    # The embedded broker cannot delete records (no DeleteRecords, no retention), so this
    # branch is shown on the comparison itself; the recreated-topic test above runs the
    # whole check against a real log.
    assert log_mismatch(2, 40, "e-40", 40, "e-40") is None
    retained = log_mismatch(2, 40, "e-40", 1000, "e-1000")
    assert retained is not None
    assert "partition 2: the log no longer holds offset 40" in retained
    assert "now starts at 1000: retention deleted usage the projections count" in retained
    emptied = log_mismatch(2, 40, "e-40", None, None)
    assert emptied is not None and "is empty there" in emptied
    other = log_mismatch(2, 40, "e-40", 40, "e-x")
    assert other is not None and "not the log the projections were built from" in other
