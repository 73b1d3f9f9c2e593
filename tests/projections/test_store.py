"""The store against a real PostgreSQL: batches of any size agree, poison is isolated, the
log clock and the defaults in force persist between batches."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal

import asyncpg
import pytest

from tests.support import T0, fetch_value, live_workload, log_records, snapshot, used
from tokenquota.config import DatabaseSettings
from tokenquota.projections import (
    BatchResult,
    LogRecord,
    apply_batch,
    apply_batch_isolating,
    apply_migrations,
    connect,
)
from tokenquota.schemas import USAGE_TOKENS_MAX, ApiCost, DefaultsSet, Source

pytestmark = pytest.mark.integration


@pytest.fixture
async def conn(migrated_database: DatabaseSettings) -> AsyncIterator[asyncpg.Connection]:
    connection = await connect(migrated_database.dsn(), migrated_database.schema_name)
    yield connection
    await connection.close()


async def test_large_and_small_batches_build_the_same_projections_once_each(
    migrated_database: DatabaseSettings,
) -> None:
    events = live_workload(sessions=24)
    records = [
        LogRecord(e, r.payload, "usage", i % 3, i, r.timestamp)
        for i, (e, r) in enumerate(zip(events, log_records(events), strict=True))
    ]
    schema = migrated_database.schema_name
    small = migrated_database.model_copy(update={"schema_name": f"test_{uuid.uuid4().hex[:12]}"})
    large = await connect(migrated_database.dsn(), schema)
    by_arrays = await connect(small.dsn(), small.schema_name)
    try:
        await by_arrays.execute(f'CREATE SCHEMA "{small.schema_name}"')
        await apply_migrations(by_arrays, small.schema_name)
        for start in range(0, len(records), 7):
            batch = records[start : start + 7]
            await apply_batch(by_arrays, batch, schema=small.schema_name)

        # Two large batches inside one transaction (as replay's catch-up runs them), the
        # second overlapping the first; then a redelivery of the first 700.
        async with large.transaction():
            first = await apply_batch(large, records[:600], schema=schema)
            second = await apply_batch(large, records[550:] + records[550:560], schema=schema)
        again = await apply_batch(large, records[:700], schema=schema)

        assert (first.applied, first.duplicates) == (600, 0)
        assert (second.applied, second.duplicates) == (len(records) - 600, 60)
        assert (again.applied, again.duplicates) == (0, 700)
        assert await snapshot(migrated_database) == await snapshot(small)
    finally:
        await by_arrays.execute(f'DROP SCHEMA IF EXISTS "{small.schema_name}" CASCADE')
        await by_arrays.close()
        await large.close()


def _huge_cost(session: str) -> ApiCost:
    # Valid on its own; two of them overflow external_api_tokens.tokens_used (a BIGINT).
    return ApiCost(
        session_id=session,
        source=Source(component="external_api", name="tests"),
        occurred_at=T0,
        api="openai",
        model="gpt-4o",
        input_tokens=USAGE_TOKENS_MAX,
        output_tokens=USAGE_TOKENS_MAX,
        cost_usd=Decimal("1"),
        price_source="test",
    )


async def test_an_event_postgresql_refuses_is_isolated_and_everything_else_applied(
    conn: asyncpg.Connection, migrated_database: DatabaseSettings
) -> None:
    first, second = _huge_cost("rich"), _huge_cost("rich")
    events = [used(f"s{i}", 10) for i in range(6)] + [first, second]
    events += [used(f"s{i}", 1) for i in range(5)]
    records = log_records(events)
    poisoned: list[tuple[LogRecord, str]] = []

    async def on_poison(record: LogRecord, reason: str) -> None:
        poisoned.append((record, reason))

    schema = migrated_database.schema_name
    with pytest.raises(asyncpg.DataError):  # one transaction cannot take it
        await apply_batch(conn, records, schema=schema)
    result = await apply_batch_isolating(conn, records, schema=schema, on_poison=on_poison)

    assert [r.event.event_id for r, _ in poisoned] == [second.event_id]
    assert "PostgreSQL refused it (22" in poisoned[0][1]
    assert (result.applied, result.poisoned) == (len(events) - 1, 1)
    assert await fetch_value(migrated_database, "SELECT count(*) FROM usage_events") == (
        len(events) - 1
    )
    total = await fetch_value(
        migrated_database, "SELECT sum(tokens_used_total) FROM session_token_budgets"
    )
    assert total == 6 * 10 + 5 * 1
    assert await fetch_value(
        migrated_database, "SELECT next_offset FROM partition_checkpoints"
    ) == len(events)


async def _apply_as_the_worker(
    conn: asyncpg.Connection,
    database: DatabaseSettings,
    records: list[LogRecord],
    letters: list[tuple[str, int, int]],
) -> tuple[BatchResult, list[LogRecord]]:
    """apply_batch_isolating as the worker calls it (dead letters, offsets checked); the
    result and the records handed over as poison."""
    poisoned: list[LogRecord] = []

    async def on_poison(record: LogRecord, reason: str) -> None:
        poisoned.append(record)

    result = await apply_batch_isolating(
        conn,
        records,
        schema=database.schema_name,
        on_poison=on_poison,
        skipped=letters,
        contiguous=True,
    )
    return result, poisoned


async def test_dead_letters_go_with_the_part_they_fall_in_when_a_batch_is_bisected(
    conn: asyncpg.Connection, migrated_database: DatabaseSettings
) -> None:
    # A worker's batch is checked for holes (contiguous=True). Bisected around an event
    # PostgreSQL refuses, each part must take the dead letters among its own offsets:
    # given all of them, the first part would jump past the second part's events.
    events = [used(f"s{i}", 10) for i in range(6)] + [_huge_cost("rich"), _huge_cost("rich")]
    events += [used(f"s{i}", 1) for i in range(5)]
    offsets = [o for o in range(len(events) + 3) if o not in (3, 10, 13)]
    records = [
        LogRecord(r.event, r.payload, "usage", 0, o, r.timestamp)
        for r, o in zip(log_records(events), offsets, strict=False)
    ]
    letters = [("usage", 0, 3), ("usage", 0, 10), ("usage", 0, 13)]
    result, poisoned = await _apply_as_the_worker(conn, migrated_database, records, letters)
    assert (result.applied, result.poisoned) == (len(events) - 1, 1)
    assert [r.event.event_id for r in poisoned] == [events[7].event_id]
    assert (
        await fetch_value(migrated_database, "SELECT next_offset FROM partition_checkpoints")
        == len(events) + 3
    )


async def test_a_refetched_partition_keeps_its_dead_letters_with_the_part_that_needs_them(
    conn: asyncpg.Connection, migrated_database: DatabaseSettings
) -> None:
    # A batch can hold a partition's offsets twice: fetches queued before a seek back,
    # then their refetch. Split around poison, the earlier part ends at offset 3 and the
    # later one starts again at 0; the dead letter at 1 must go with the earlier part.
    # (And `big`, already applied when the later part comes, is a redelivery there, not
    # poison: the fold run beside the ledger insert refused it before it knew.)
    big = used("big", USAGE_TOKENS_MAX, output=USAGE_TOKENS_MAX)
    overflow = used("big", USAGE_TOKENS_MAX, output=USAGE_TOKENS_MAX)
    a, b, c = used("a", 3), used("b", 4), used("c", 5)
    fetch = [(a, 0), (b, 2), (big, 3), (overflow, 4)]
    records = [
        LogRecord(e, r.payload, "usage", 0, o, r.timestamp)
        for (e, o), r in zip(
            [*fetch, *fetch, (c, 5)],
            log_records([e for e, _ in [*fetch, *fetch, (c, 5)]]),
            strict=True,
        )
    ]
    letters = [("usage", 0, 1), ("usage", 0, 1)]
    result, poisoned = await _apply_as_the_worker(conn, migrated_database, records, letters)
    assert result.applied == 4
    assert {r.event.event_id for r in poisoned} == {overflow.event_id}
    assert (
        await fetch_value(migrated_database, "SELECT next_offset FROM partition_checkpoints") == 6
    )


async def test_an_event_the_fold_refuses_is_split_off_without_bisecting(
    conn: asyncpg.Connection, migrated_database: DatabaseSettings
) -> None:
    big = used("big", USAGE_TOKENS_MAX, output=USAGE_TOKENS_MAX)
    overflow = used("big", USAGE_TOKENS_MAX, output=USAGE_TOKENS_MAX)
    records = log_records([used("a", 3), big, used("b", 4), overflow, used("c", 5)])
    poisoned: list[tuple[LogRecord, str]] = []

    async def on_poison(record: LogRecord, reason: str) -> None:
        poisoned.append((record, reason))

    schema = migrated_database.schema_name
    result = await apply_batch_isolating(conn, records, schema=schema, on_poison=on_poison)
    assert [r.event.event_id for r, _ in poisoned] == [overflow.event_id]
    assert "largest total a BIGINT holds" in poisoned[0][1]
    assert (result.applied, result.poisoned) == (4, 1)
    rows = await conn.fetch("SELECT session_id, tokens_used_total FROM session_token_budgets")
    totals = {row["session_id"]: row["tokens_used_total"] for row in rows}
    assert totals == {"a": 3, "b": 4, "c": 5, "big": 2 * USAGE_TOKENS_MAX}


async def test_an_event_counted_at_the_log_clock_is_flagged_in_the_ledger(
    conn: asyncpg.Connection, migrated_database: DatabaseSettings
) -> None:
    honest, skewed = used("s", 5), used("s", 7, T0 + timedelta(days=1))
    records = log_records([honest, skewed], at=lambda i, e: T0)
    await apply_batch_isolating(
        conn, records, schema=migrated_database.schema_name, on_poison=_never
    )
    rows = await conn.fetch("SELECT event_id, clock_skewed FROM usage_events")
    flags = {row["event_id"]: row["clock_skewed"] for row in rows}
    assert flags == {honest.event_id: False, skewed.event_id: True}
    log = await conn.fetchrow("SELECT * FROM integration_logs WHERE action = 'clock_skew'")
    assert log is not None and log["event_id"] == skewed.event_id
    assert (log["integration_type"], log["component_name"]) == ("sdk", "tests")
    assert await conn.fetchval("SELECT log_clock FROM partition_checkpoints") == T0


async def test_the_log_clock_and_the_defaults_in_force_carry_over_to_the_next_batch(
    conn: asyncpg.Connection, migrated_database: DatabaseSettings
) -> None:
    schema = migrated_database.schema_name
    defaults = DefaultsSet(
        source=Source(component="cli", name="tests"),
        occurred_at=T0,
        daily_limit=42,
        monthly_limit=420,
        hard_limit=4200,
        warning_threshold=Decimal("0.5"),
        critical_threshold=Decimal("0.9"),
        timezone="Europe/Paris",
        max_clock_skew_ms=1000,
    )
    later = T0 + timedelta(hours=1)
    await apply_batch(conn, log_records([defaults], at=lambda i, e: later), schema=schema)
    # A second batch, on a state loaded from the tables: the new session gets the
    # partition's defaults; an event dated before the log clock cannot move it back.
    await apply_batch(
        conn, log_records([used("new", 1)], at=lambda i, e: T0, first_offset=1), schema=schema
    )
    session = await conn.fetchrow("SELECT * FROM session_token_budgets")
    assert session is not None
    assert (session["daily_limit"], session["warning_threshold"]) == (42, Decimal("0.5000"))
    assert await conn.fetchval("SELECT log_clock FROM partition_checkpoints") == later
    row = await conn.fetchrow("SELECT * FROM partition_defaults")
    assert row is not None
    assert (row["event_id"], row["timezone"], row["max_clock_skew_ms"]) == (
        defaults.event_id,
        "Europe/Paris",
        1000,
    )


async def _never(record: LogRecord, reason: str) -> None:
    raise AssertionError(f"{record.event.event_id} is not poison: {reason}")
