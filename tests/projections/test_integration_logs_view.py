"""The integration_logs view against a real PostgreSQL: one row per applied event, one per
reservation decision, plus the fold's notices; read through indexes per session; rebuilt
by replay row for row; and what the migration does to a database written before it."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from tests.support import SOURCE, T0, budget, live_workload, log_records, reserved, used
from tokenquota.config import DatabaseSettings
from tokenquota.projections import (
    LogRecord,
    apply_batch,
    apply_migrations,
    connect,
    load_migrations,
    schema_drift,
)
from tokenquota.projections.ledger_replay import replay_from_ledger
from tokenquota.projections.staging import staging_schemas
from tokenquota.schemas import ApiCost, DefaultsSet, Event, Source

pytestmark = pytest.mark.integration

_COLUMNS = (
    "event_id, action, integration_type, component_name, session_id, task_id, tokens_used, "
    "status, error_message, metadata, created_at"
)
#: Every row of the view, in a stable order.
_ALL_ROWS = f"SELECT {_COLUMNS} FROM integration_logs ORDER BY event_id, action"  # noqa: S608
_LATEST = """SELECT * FROM integration_logs WHERE session_id = $1
              ORDER BY created_at DESC LIMIT 100"""


@pytest.fixture
async def conn(migrated_database: DatabaseSettings) -> AsyncIterator[asyncpg.Connection]:
    connection = await connect(migrated_database.dsn(), migrated_database.schema_name)
    yield connection
    await connection.close()


def _cost(session: str, at: Any = T0) -> ApiCost:
    return ApiCost(
        session_id=session,
        source=Source(component="external_api", name="openai-client"),
        occurred_at=at,
        api="openai",
        model="gpt-4o",
        input_tokens=30,
        output_tokens=12,
        cost_usd=Decimal("0.00042"),
        price_source="test",
    )


def _defaults() -> DefaultsSet:
    return DefaultsSet(
        source=Source(component="cli", name="init"),
        occurred_at=T0 - timedelta(hours=1),
        daily_limit=5000,
        monthly_limit=50_000,
        hard_limit=500_000,
        warning_threshold=Decimal("0.8"),
        critical_threshold=Decimal("0.95"),
        timezone="UTC",
        max_clock_skew_ms=300_000,
    )


def _workload() -> tuple[list[Event], dict[str, Any]]:
    """Every kind of row: events of each type, accepted and rejected reservations, an
    overage, a threshold crossing, a refusal at the daily limit, a skewed clock."""
    second = timedelta(seconds=1)
    hold = reserved("s", 100, T0 + 2 * second, task="t1")
    refused = reserved("s", 900, T0 + 3 * second)
    events: list[Event] = [
        _defaults(),
        budget("s", T0, daily=1000, monthly=10_000, hard=100_000),
        used("s", 850, T0 + second),  # the warning threshold (800)
        hold,
        refused,  # 50 available: refused at the daily limit, which is exhausted
        used("s", 200, T0 + 4 * second, rid=hold.reservation_id, task="t1"),  # overage
        _cost("s", T0 + 5 * second),
        used("other", 5, T0 + timedelta(days=2)),  # ahead of the log clock: flagged
    ]
    return events, {"hold": hold, "refused": refused}


async def _apply(conn: asyncpg.Connection, schema: str, events: list[Event]) -> None:
    await apply_batch(
        conn, log_records(events, at=lambda i, e: T0 + timedelta(seconds=i)), schema=schema
    )


async def test_the_view_shows_each_event_each_decision_and_the_notices_once(
    conn: asyncpg.Connection, migrated_database: DatabaseSettings
) -> None:
    events, named = _workload()
    await _apply(conn, migrated_database.schema_name, events)
    rows = await conn.fetch(_ALL_ROWS)
    by_key = {(row["event_id"], row["action"]): row for row in rows}
    assert len(by_key) == len(rows)  # no (event, action) twice

    applied = [row for row in rows if row["status"] == "applied"]
    assert sorted(row["event_id"] for row in applied) == sorted(e.event_id for e in events)
    actions = {row["event_id"]: row["action"] for row in applied}
    assert [actions[e.event_id] for e in events] == [
        "defaults_set", "budget_set", "token_used", "token_reserved", "token_reserved",
        "token_used", "api_cost", "token_used",
    ]  # fmt: skip
    for event in events:
        row = by_key[(event.event_id, actions[event.event_id])]
        assert (row["integration_type"], row["component_name"]) == (
            event.source.component,
            event.source.name,
        )
        assert (row["session_id"], row["task_id"], row["created_at"]) == (
            event.session_id,
            event.task_id,
            event.occurred_at,
        )
        assert row["error_message"] is None
        assert json.loads(row["metadata"])["offset"] == events.index(event)
    assert [by_key[(e.event_id, actions[e.event_id])]["tokens_used"] for e in events] == [
        0, 0, 850, 100, 900, 200, 42, 5,
    ]  # fmt: skip
    budget_row = json.loads(by_key[(events[1].event_id, "budget_set")]["metadata"])
    assert (budget_row["daily_limit"], budget_row["warning_threshold"]) == (1000, "0.8")
    assert "source" not in budget_row and "event_id" not in budget_row

    hold, refused = named["hold"], named["refused"]
    accepted = by_key[(hold.event_id, "reservation_accepted")]
    assert (accepted["status"], accepted["tokens_used"], accepted["task_id"]) == (
        "accepted",
        100,
        "t1",
    )
    assert accepted["error_message"] is None
    assert accepted["created_at"] == T0 + timedelta(seconds=3)  # decided at the log clock
    rejected = by_key[(refused.event_id, "reservation_rejected")]
    assert rejected["status"] == "rejected"
    assert rejected["error_message"] == (
        "requested 900 tokens, 50 available under the daily limit of 1000"
    )
    metadata = json.loads(rejected["metadata"])
    assert metadata == {
        "reservation_id": str(refused.reservation_id),
        "requested": 900,
        "available": 50,
        "limit": 1000,
        "reason": "daily_limit",
        "priority": "normal",
        "expires_at": refused.expires_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    }

    notices = sorted(row["action"] for row in rows if row["status"] not in (
        "applied", "accepted", "rejected"))  # fmt: skip
    assert notices == [
        "clock_skew", "daily_limit_refused", "daily_warning_threshold", "overage",
    ]  # fmt: skip
    # Nothing in the notices that the view derives.
    stored = {r["action"] for r in await conn.fetch("SELECT action FROM integration_notices")}
    assert not stored & {"budget_set", "defaults_set", "reservation_rejected"}
    drift = await schema_drift(conn, migrated_database.schema_name)
    assert [p for p in drift if "integration_" in p] == []
    # The same rows for a reader in another time zone and date style.
    await conn.execute("SET TimeZone TO 'Asia/Tokyo'; SET DateStyle TO 'German, DMY'")
    assert await conn.fetch(_ALL_ROWS) == rows


async def test_a_sessions_latest_rows_are_read_through_indexes(
    conn: asyncpg.Connection, migrated_database: DatabaseSettings
) -> None:
    schema = migrated_database.schema_name
    events = live_workload(sessions=150)
    for i in range(3000):  # one busy session: more rows than the page asks for
        at = T0 + timedelta(seconds=i)
        events.append(reserved("busy", 1, at) if i % 3 == 0 else used("busy", 1, at))
    records = [
        LogRecord(e, r.payload, "usage", i % 3, i, r.timestamp)
        for i, (e, r) in enumerate(zip(events, log_records(events), strict=True))
    ]
    for start in range(0, len(records), 2000):
        await apply_batch(conn, records[start : start + 2000], schema=schema)
    await conn.execute("ANALYZE")
    plans = {}
    for session in ("replay-7", "busy"):
        plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {_LATEST}", session)
        plans[session] = list(_plan_nodes(json.loads(plan)[0]["Plan"]))
        kinds = [n["Node Type"] for n in plans[session]]
        assert "Seq Scan" not in kinds, kinds
        latest = await conn.fetch(_LATEST, session)
        count = await conn.fetchval(
            "SELECT count(*) FROM integration_logs WHERE session_id = $1", session
        )
        assert len(latest) == min(count, 100) and count > 0
        assert {r["session_id"] for r in latest} == {session}
        times = [r["created_at"] for r in latest]
        assert times == sorted(times, reverse=True)
    # Each branch through the session's index: the ledger's, the reservations', the
    # notices' (a session of a few rows reads them all and sorts them).
    assert {
        "usage_events_session_time_idx",
        "reservations_session_decided_idx",
        "integration_notices_session_idx",
    } <= {n.get("Index Name") for n in plans["replay-7"]}
    # A busy session's page is merged from index scans read backwards, nothing sorted.
    busy = {n["Node Type"] for n in plans["busy"]}
    assert "Merge Append" in busy and "Sort" not in busy, busy
    # Ties broken by (event_id, action), as a page does: still merged, sorted in steps.
    plan = await conn.fetchval(
        f"EXPLAIN (FORMAT JSON) {_LATEST.replace('DESC', 'DESC, event_id, action')}", "busy"
    )
    tied = {n["Node Type"] for n in _plan_nodes(json.loads(plan)[0]["Plan"])}
    assert "Merge Append" in tied and not tied & {"Sort", "Seq Scan"}, tied


def _plan_nodes(node: dict[str, Any]) -> Any:
    yield node
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)


async def test_a_replay_leaves_a_working_view_with_the_same_rows(
    conn: asyncpg.Connection, migrated_database: DatabaseSettings
) -> None:
    schema = migrated_database.schema_name
    events, _ = _workload()
    await _apply(conn, schema, events)
    before = await conn.fetch(_ALL_ROWS)
    # What a replay before this view kept: integration_logs as a table.
    _, previous = staging_schemas(schema)
    await conn.execute(f'CREATE SCHEMA "{previous}"')
    await conn.execute(f'CREATE TABLE "{previous}".integration_logs (event_id uuid)')
    try:
        for _ in range(2):  # the second replay replaces what the first moved aside
            await replay_from_ledger(migrated_database.dsn(), schema)
            assert await conn.fetch(_ALL_ROWS) == before
        kind = await conn.fetchval(
            """SELECT c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = $1 AND c.relname = 'integration_logs'""",
            schema,
        )
        assert kind == "v"
        # It reads the live tables: a new batch shows up in it.
        more = used("s", 1, T0 + timedelta(minutes=1))
        await apply_batch(conn, log_records([more], first_offset=100), schema=schema)
        rows = await conn.fetch(
            "SELECT action FROM integration_logs WHERE event_id = $1", more.event_id
        )
        assert [r["action"] for r in rows] == ["token_used"]
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{previous}" CASCADE')


async def test_the_migration_turns_the_table_into_notices_and_drops_what_the_view_derives(
    database_settings: DatabaseSettings,
) -> None:
    schema = database_settings.schema_name
    conn = await connect(database_settings.dsn(), schema)
    try:
        before_view = [m for m in load_migrations() if m.version < 7]
        await apply_migrations(conn, schema, before_view)
        kept, dropped = uuid.uuid4(), uuid.uuid4()
        for event_id, action in [
            (kept, "daily_warning_threshold"),
            (dropped, "budget_set"),
            (dropped, "defaults_set"),
            (dropped, "reservation_rejected"),
        ]:
            await conn.execute(
                """INSERT INTO integration_logs (event_id, action, integration_type,
                       component_name, session_id, tokens_used, status, created_at)
                   VALUES ($1, $2, $3, $4, 's', 0, 'ok', $5)""",
                event_id,
                action,
                SOURCE.component,
                SOURCE.name,
                T0,
            )
        await apply_migrations(conn, schema)
        rows = await conn.fetch("SELECT event_id, action FROM integration_logs")
        assert [(r["event_id"], r["action"]) for r in rows] == [(kept, "daily_warning_threshold")]
        assert await conn.fetchval("SELECT count(*) FROM integration_notices") == 1
    finally:
        await conn.close()
