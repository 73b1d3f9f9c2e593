"""Accepting a log gap: the pure decision, and the transaction against a real PostgreSQL,
with the worker's projector before and after it."""

from __future__ import annotations

import asyncio

import pytest

from tests.support import fetch_value, log_records, used, wait_until
from tokenquota.config import DatabaseSettings, Settings
from tokenquota.processors import Projector
from tokenquota.projections import LogRecord, connect
from tokenquota.projections.log_gaps import (
    GapRefusedError,
    LogGap,
    accept_gap,
    accepted_gaps,
    gap_of,
    read_checkpoints,
)
from tokenquota.projections.store import LogGapError, partition_lock_key


def test_a_gap_is_a_checkpoint_before_the_logs_first_offset() -> None:
    assert gap_of("t", 2, 5, 9) == LogGap("t", 2, 5, 9)
    assert str(LogGap("t", 2, 5, 9)) == "offsets 5 to 8"
    assert LogGap("t", 2, 5, 9).size == 4
    assert gap_of("t", 2, 9, 9) is None  # the checkpoint is the log's first offset
    assert gap_of("t", 2, 12, 9) is None  # within the log (or past its end)
    # Nothing applied from the partition: the worker takes it from wherever the log starts.
    assert gap_of("t", 2, None, 9) is None


async def _no_poison(record: LogRecord, reason: str) -> None:
    raise AssertionError(f"nothing here is poison: {reason}")


@pytest.mark.integration
async def test_the_worker_stops_at_a_gap_and_goes_on_once_it_is_accepted(
    migrated_database: DatabaseSettings,
) -> None:
    settings = Settings(database=migrated_database)
    events = [used("gap", 1 + i) for i in range(8)]
    applied, lost, after = log_records(events, topic="t")[:3], events[3:5], events[5:]
    later = log_records(after, topic="t", first_offset=5)  # offsets 3 and 4 are gone
    projector = Projector(settings)
    conn = await connect(migrated_database.dsn(), migrated_database.schema_name)
    try:
        await projector.apply(applied, [], _no_poison)
        with pytest.raises(LogGapError) as stopped:
            await projector.apply(later, [], _no_poison)
        message = str(stopped.value)
        assert message.startswith("partition t[0]: offsets 3 to 4 were never applied")
        assert "If the log no longer holds these offsets" in message
        assert "`tokenquota checkpoints accept-gap --partition 0`" in message

        accepted = await accept_gap(
            conn, migrated_database.schema_name, LogGap("t", 0, 3, 5), "os:tester"
        )
        assert (accepted.topic, accepted.partition) == ("t", 0)
        assert (accepted.from_offset, accepted.to_offset, accepted.actor) == (3, 5, "os:tester")
        assert await read_checkpoints(conn, "t") == {0: 5}
        assert await accepted_gaps(conn, "t") == [accepted]

        await projector.apply(later, [], _no_poison)  # starts at the checkpoint now
        assert await read_checkpoints(conn, "t") == {0: 8}
    finally:
        await projector.close()
        await conn.close()
    total = await fetch_value(
        migrated_database, "SELECT tokens_used_total FROM session_token_budgets"
    )
    assert total == sum(e.input_tokens for e in events) - sum(e.input_tokens for e in lost)


@pytest.mark.integration
async def test_a_checkpoint_that_moved_since_it_was_read_is_left_alone(
    migrated_database: DatabaseSettings,
) -> None:
    schema = migrated_database.schema_name
    conn = await connect(migrated_database.dsn(), schema)
    try:
        with pytest.raises(GapRefusedError, match=r"t\[1\] has no checkpoint"):
            await accept_gap(conn, schema, LogGap("t", 1, 0, 4), "os:tester")
        await conn.execute(
            "INSERT INTO partition_checkpoints (topic, kafka_partition, next_offset) "
            "VALUES ('t', 1, 7)"
        )
        with pytest.raises(GapRefusedError, match=r"checkpoint of t\[1\] is 7 now, not 2"):
            await accept_gap(conn, schema, LogGap("t", 1, 2, 9), "os:tester")
        with pytest.raises(ValueError, match="not a gap"):
            await accept_gap(conn, schema, LogGap("t", 1, 7, 7), "os:tester")
        assert await read_checkpoints(conn, "t") == {1: 7}
        assert await accepted_gaps(conn, "t") == []
    finally:
        await conn.close()


@pytest.mark.integration
async def test_accepting_waits_for_a_batch_of_the_partition_that_holds_its_lock(
    migrated_database: DatabaseSettings,
) -> None:
    schema = migrated_database.schema_name
    batch = await connect(migrated_database.dsn(), schema)
    operator = await connect(migrated_database.dsn(), schema)
    try:
        await batch.execute(
            "INSERT INTO partition_checkpoints (topic, kafka_partition, next_offset) "
            "VALUES ('t', 0, 3)"
        )
        holding = batch.transaction()
        await holding.start()
        # What a batch of t[0] takes first (projections/store.py, _load_state).
        await batch.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 1))", partition_lock_key("t", 0)
        )
        accepting = asyncio.create_task(
            accept_gap(operator, schema, LogGap("t", 0, 3, 6), "os:tester")
        )

        async def waiting() -> bool:
            return bool(
                await batch.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                )
            )

        await wait_until(waiting, 10, "the acceptance waiting for the partition's lock")
        assert not accepting.done()
        await batch.execute("UPDATE partition_checkpoints SET next_offset = 4")
        await holding.commit()
        with pytest.raises(GapRefusedError, match="is 4 now, not 3"):
            await asyncio.wait_for(accepting, 10)
    finally:
        await batch.close()
        await operator.close()
