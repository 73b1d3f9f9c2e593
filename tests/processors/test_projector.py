"""The worker's projector against a real PostgreSQL: a failing database is retried, not skipped."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg
import pytest

from tests.support import fetch_value, log_records, used, wait_until
from tokenquota.config import DatabaseSettings, Settings, WorkerSettings
from tokenquota.processors import Projector
from tokenquota.processors import app as app_module
from tokenquota.processors.dlq import DeadLetter
from tokenquota.projections import LogRecord, apply_batch_isolating, apply_migrations, connect
from tokenquota.projections.store import LogGapError

pytestmark = pytest.mark.integration


async def test_a_failing_database_is_retried_until_the_batch_is_applied(
    database_settings: DatabaseSettings, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(database=database_settings, worker=WorkerSettings(retry_backoff_max=0.2))
    events = [used("retry", 10 + i) for i in range(5)]
    records = log_records(events, topic="t")
    projector = Projector(settings)
    caplog.set_level(logging.WARNING, logger="tokenquota.worker")

    async def no_poison(record: LogRecord, reason: str) -> None:
        raise AssertionError(f"a failing server must not make {record} poison: {reason}")

    # The schema has no tables yet: every attempt fails inside PostgreSQL.
    applying = asyncio.create_task(projector.apply(records, [], no_poison))

    async def failed_twice() -> bool:
        return sum("not applied" in r.getMessage() for r in caplog.records) >= 2

    await wait_until(failed_twice, 30, "two failed attempts")
    assert not applying.done()
    conn = await connect(database_settings.dsn(), database_settings.schema_name)
    try:
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{database_settings.schema_name}"')
        await apply_migrations(conn, database_settings.schema_name)
    finally:
        await conn.close()
    await asyncio.wait_for(applying, 30)
    await projector.close()
    total = await fetch_value(
        database_settings, "SELECT tokens_used_total FROM session_token_budgets"
    )
    assert total == sum(e.input_tokens for e in events)
    assert projector.applied == 5


async def test_a_batch_that_does_not_start_at_its_partitions_checkpoint_is_refused(
    migrated_database: DatabaseSettings,
) -> None:
    # Found by the fault campaign (seed 2): PostgreSQL stopped mid-batch, the agent
    # crashed and was restarted, and the next batch of the partition was applied over
    # the lost one, moving the checkpoint past events never applied. The 30-minute run
    # found one event skipped the same way across a rebalance (a fetch dropped while the
    # flow was suspended, the read position left past it).
    settings = Settings(database=migrated_database)
    first, lost, later = (
        log_records([used("gap", 1) for _ in range(3)], topic="t", first_offset=3 * i)
        for i in range(3)
    )
    projector = Projector(settings)

    async def no_poison(record: LogRecord, reason: str) -> None:
        raise AssertionError(f"nothing here is poison: {reason}")

    try:
        await projector.apply(first, [], no_poison)
        gap = r"partition t\[0\]: offsets 3 to 5 were never applied"
        with pytest.raises(LogGapError, match=gap):
            await projector.apply(later, [], no_poison)
        await projector.close()
        projector = Projector(settings)  # a restarted worker: the check is in PostgreSQL
        with pytest.raises(LogGapError, match=gap):
            await projector.apply(later, [], no_poison)
        await projector.apply(first[1:], [], no_poison)  # a redelivery is fine (no gap)
        await projector.apply(lost, [], no_poison)
        await projector.apply(later, [], no_poison)
    finally:
        await projector.close()
    assert await fetch_value(migrated_database, "SELECT count(*) FROM usage_events") == 9


async def test_a_batch_with_a_hole_inside_is_refused_though_it_starts_at_the_checkpoint(
    migrated_database: DatabaseSettings,
) -> None:
    # The sixth 30-minute campaign run lost two acked events this way: one message was
    # skipped between two fetches that were joined into one batch. The batch started at
    # its partition's checkpoint, which was all that was checked, and the checkpoint moved
    # past the message for good.
    settings = Settings(database=migrated_database)
    records = log_records([used("hole", 1) for _ in range(6)], topic="t")
    rest = records[:3] + records[4:]  # offset 3 skipped
    projector = Projector(settings)

    def letter(partition: int, offset: int) -> DeadLetter:
        return DeadLetter(None, b"{", "t", partition, offset, "not JSON")

    async def no_poison(record: LogRecord, reason: str) -> None:
        raise AssertionError(f"nothing here is poison: {reason}")

    try:
        await projector.apply(records[:1], [letter(1, 0)], no_poison)
        with pytest.raises(LogGapError, match=r"t\[0\]: offsets 3 to 3 are missing inside"):
            await projector.apply(rest, [], no_poison)
        # A partition with only a dead letter in a batch of events is checked as well.
        with pytest.raises(LogGapError, match=r"t\[1\]: offsets 1 to 1 were never applied"):
            await projector.apply(records[1:], [letter(1, 2)], no_poison)
        checkpoints = await fetch_value(
            migrated_database,
            "SELECT array_agg(next_offset ORDER BY kafka_partition) FROM partition_checkpoints",
        )
        assert checkpoints == [1, 1]  # the refused batches moved nothing
        await projector.apply(records, [letter(1, 1)], no_poison)
    finally:
        await projector.close()
    assert await fetch_value(migrated_database, "SELECT count(*) FROM usage_events") == 6


async def test_a_gap_is_refused_where_only_dead_letters_were_applied_or_arrive(
    migrated_database: DatabaseSettings,
) -> None:
    # Two holes in the check above (seen while building `checkpoints accept-gap`): a
    # partition whose checkpoint only dead letters had moved (no log clock yet) was not
    # checked, and a batch of dead letters alone was never checked.
    settings = Settings(database=migrated_database)

    def letters(*offsets: int, partition: int) -> list[DeadLetter]:
        return [DeadLetter(None, b"{", "t", partition, o, "not JSON") for o in offsets]

    async def no_poison(record: LogRecord, reason: str) -> None:
        raise AssertionError(f"nothing here is poison: {reason}")

    projector = Projector(settings)
    try:
        await projector.apply([], letters(0, 1, 2, partition=0), no_poison)
        later = log_records([used("gap", 1)], topic="t", partition=0, first_offset=6)
        with pytest.raises(LogGapError, match=r"partition t\[0\]: offsets 3 to 5"):
            await projector.apply(later, [], no_poison)
        await projector.apply(log_records([used("gap", 1)], topic="t", partition=1), [], no_poison)
        with pytest.raises(LogGapError, match=r"partition t\[1\]: offsets 1 to 3"):
            await projector.apply([], letters(4, partition=1), no_poison)
    finally:
        await projector.close()
    checkpoints = await fetch_value(
        migrated_database,
        "SELECT array_agg(next_offset ORDER BY kafka_partition) FROM partition_checkpoints",
    )
    assert checkpoints == [3, 1]  # neither moved past the gap


async def test_a_connection_left_mid_operation_is_retried_on_a_new_one(
    migrated_database: DatabaseSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Also from seed 2: a connection PostgreSQL dropped mid-transaction raised asyncpg's
    # InternalClientError at the next BEGIN, which the projector did not retry.
    settings = Settings(database=migrated_database, worker=WorkerSettings(retry_backoff_max=0.2))
    real = apply_batch_isolating
    calls = 0

    async def broken_once(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise asyncpg.InternalClientError(
                "cannot switch to state 15; another operation (2) is in progress"
            )
        return await real(*args, **kwargs)

    monkeypatch.setattr(app_module, "apply_batch_isolating", broken_once)
    projector = Projector(settings)

    async def no_poison(record: LogRecord, reason: str) -> None:
        raise AssertionError(reason)

    try:
        await asyncio.wait_for(
            projector.apply(log_records([used("client", 7)], topic="c"), [], no_poison), 30
        )
    finally:
        await projector.close()
    assert (calls, projector.applied) == (2, 1)
