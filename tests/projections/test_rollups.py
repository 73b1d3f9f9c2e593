"""The read-model rollups: what the fold adds for each event (by the hour and day the event
is dated at, the day a reservation was requested, the minute of a record's log time), and
the tables the store builds, checked against SQL over the ledger and the reservations."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest

from tests.support import T0, live_workload, log_records, node_budget, reserved, used
from tokenquota.config import DatabaseSettings
from tokenquota.projections import (
    LogRecord,
    ProjectionState,
    apply_batch,
    apply_batch_isolating,
    connect,
    fold,
)
from tokenquota.projections.state import (
    ApiDayDelta,
    MinuteDelta,
    ModelDayDelta,
    ReservationDayDelta,
    UsageDelta,
)
from tokenquota.schemas import BIGINT_MAX, USAGE_TOKENS_MAX, ApiCost, DefaultsSet, Event, Source

SECOND = timedelta(seconds=1)


def _cost(
    session: str, at: datetime, cost: str, *, api: str = "openai", account: str | None = None
) -> ApiCost:
    return ApiCost(
        session_id=session,
        account=account,
        source=Source(component="external_api", name="tests"),
        occurred_at=at,
        api=api,
        model="gpt-4o",
        input_tokens=10,
        output_tokens=2,
        cache_read_tokens=3,
        cost_usd=Decimal(cost),
        price_source="test",
    )


def _in_zone(zone: str) -> ProjectionState:
    defaults = DefaultsSet(
        source=Source(component="cli", name="tests"),
        occurred_at=T0 - timedelta(days=1),
        daily_limit=1000,
        monthly_limit=10_000,
        hard_limit=100_000,
        warning_threshold=Decimal("0.8"),
        critical_threshold=Decimal("0.95"),
        timezone=zone,
        max_clock_skew_ms=300_000,
    )
    return fold(ProjectionState(), log_records([defaults])).state


def test_usage_and_cost_count_in_the_utc_hour_the_event_is_dated_at() -> None:
    events: list[Event] = [
        used("s", 10, T0 + timedelta(minutes=34), output=1),
        used("s", 20, T0 + timedelta(minutes=59, seconds=59)),
        _cost("s", T0 + timedelta(minutes=1), "0.25"),
        used("s", 5, T0 + timedelta(hours=1)),
        used("s", 7, T0 + timedelta(days=1)),  # ahead of the log clock: counted at 13:00
    ]
    folded = fold(_in_zone("UTC"), log_records(events, first_offset=1, at=_clock(events)))
    hour = T0.replace(minute=0)
    assert folded.hourly == {
        ("s", hour): UsageDelta(30, 1, 31, 2, Decimal("0.25")),
        ("s", hour + timedelta(hours=1)): UsageDelta(12, 0, 12, 2, Decimal(0)),
    }
    assert folded.model_daily == {(T0.date(), "sdk", "gpt-4o"): ModelDayDelta(4, 42, 1)}
    assert folded.api_daily == {
        (T0.date(), "openai", "gpt-4o"): ApiDayDelta(1, 10, 2, 3, 0, Decimal("0.25"))
    }


def _clock(events: list[Event]) -> Callable[[int, Event], datetime]:
    """Log times: each event's occurred_at, but never past 13:00 (a broker that is behind
    a producer's clock by a day)."""
    return lambda i, e: min(e.occurred_at, T0 + timedelta(hours=1))


def test_the_pipeline_minute_is_the_records_log_time_not_occurred_at() -> None:
    events: list[Event] = [used("s", 3, T0), _cost("s", T0, "1.5")]
    events.append(reserved("s", 10, T0, ttl=timedelta(minutes=30)))
    log_times = [T0 + timedelta(minutes=7, seconds=30), T0 + timedelta(minutes=7, seconds=59)]
    log_times.append(T0 + timedelta(minutes=8))
    folded = fold(_in_zone("UTC"), log_records(events, at=lambda i, e: log_times[i]))
    assert folded.minutely == {
        T0 + timedelta(minutes=7): MinuteDelta(2, 3, Decimal("1.5"), 0, 0),
        T0 + timedelta(minutes=8): MinuteDelta(1, 0, Decimal(0), 1, 0),
    }


def test_reservations_count_on_the_local_day_they_were_requested() -> None:
    # 16:00 UTC is 01:00 the next day in Tokyo.
    state = _in_zone("Asia/Tokyo")
    hours = timedelta(hours=4)
    early = reserved("s", 300, T0, ttl=timedelta(days=2))
    late = reserved("s", 600, T0 + hours, ttl=timedelta(days=2))
    again = reserved("s", 800, T0 + hours + SECOND)
    first = fold(state, log_records([early, late, again], first_offset=1))
    tokyo_24, tokyo_25 = date(2026, 11, 24), date(2026, 11, 25)
    assert first.reservations_daily == {
        ("s", tokyo_24): ReservationDayDelta(accepted=1, reserved_tokens=300),
        # A new day in Tokyo: 600 fit the new daily window (300 held); 800 more do not.
        ("s", tokyo_25): ReservationDayDelta(accepted=1, rejected=1, reserved_tokens=600),
    }
    # Settled on a later day, the outcome still counts on the day it was requested.
    settle = used("s", 250, T0 + timedelta(days=1), rid=early.reservation_id)
    second = fold(first.state, log_records([settle], first_offset=9))
    assert second.reservations_daily == {
        ("s", tokyo_24): ReservationDayDelta(settled=1, settled_tokens=250),
    }


def test_an_expired_reservation_settled_late_moves_from_expired_to_settled() -> None:
    state = _in_zone("UTC")
    hold = reserved("s", 100, T0, ttl=timedelta(seconds=30))
    free = reserved("s", 1, T0 + timedelta(seconds=10), ttl=timedelta(seconds=5))
    first = fold(state, log_records([hold, free, used("s", 1, T0 + timedelta(minutes=1))]))
    assert first.reservations_daily == {
        ("s", T0.date()): ReservationDayDelta(accepted=2, expired=2, reserved_tokens=101),
    }
    late = used("s", 0, T0 + timedelta(minutes=2), rid=hold.reservation_id)
    second = fold(first.state, log_records([late], first_offset=5))
    assert second.state.reservations[hold.reservation_id].status == "released"
    assert second.reservations_daily == {
        ("s", T0.date()): ReservationDayDelta(released=1, expired=-1),
    }


# -- the tables, against SQL over the ledger and the reservations ------------------------


@pytest.fixture
async def conn(migrated_database: DatabaseSettings) -> AsyncIterator[asyncpg.Connection]:
    connection = await connect(migrated_database.dsn(), migrated_database.schema_name)
    yield connection
    await connection.close()


def _workload() -> list[Event]:
    """Holds that expire (one settled late, one released, one never settled) and one
    refused; then the live workload, and API costs over a second API."""
    events: list[Event] = []
    for s in range(3):
        session = f"expiring-{s}"
        holds = [reserved(session, 50, T0 + i * SECOND, ttl=5 * SECOND) for i in range(3)]
        events += holds
        events.append(reserved(session, 50_000, T0 + 4 * SECOND))  # over the daily limit
        events.append(used(session, 1, T0 + timedelta(minutes=1)))  # expires all three
        events.append(used(session, 70, T0 + timedelta(minutes=2), rid=holds[0].reservation_id))
        events.append(used(session, 0, T0 + timedelta(minutes=3), rid=holds[1].reservation_id))
    events += live_workload(sessions=10)
    for i in range(10):
        at = T0 + timedelta(days=2, minutes=i)
        events.append(_cost(f"replay-{i}", at, "0.001", api="anthropic"))
    return events + _tree_workload()


def _tree_workload() -> list[Event]:
    """Sessions of a budget tree over two days and a month's end: usage, costs, and
    reservations accepted, refused by their team, refused by their session."""
    events: list[Event] = [node_budget("acme/research", daily=500, monthly=10_000, hard=50_000)]
    leaves = ("acme/research/alice", "acme/research/bob", "acme/ops", "globex")
    for day in (0, 1, 6):  # 2026-11-24, 25 and 30 (a month's last day) then 12-01
        for n, account in enumerate(leaves):
            at = T0 + timedelta(days=day, minutes=n)
            session = f"tree-{n}"
            events.append(reserved(session, 250, at, account=account))
            events.append(used(session, 40 + n, at + SECOND, output=n, account=account))
            events.append(_cost(session, at + 2 * SECOND, f"0.0{n + 1}", account=account))
            events.append(reserved(session, 20_000, at + 3 * SECOND, account=account))
    events.append(used("tree-0", 5, T0 + timedelta(days=7), account=leaves[0]))
    return events


_EXPECTED = {
    "session_usage_hourly": """
        SELECT session_id, date_trunc('hour', occurred_at, 'UTC') AS hour,
               sum(COALESCE((payload->>'input_tokens')::bigint, 0))
                   FILTER (WHERE event_type = 'TokenUsed') AS input_tokens,
               sum(COALESCE((payload->>'output_tokens')::bigint, 0))
                   FILTER (WHERE event_type = 'TokenUsed') AS output_tokens,
               sum((payload->>'input_tokens')::bigint + (payload->>'output_tokens')::bigint)
                   FILTER (WHERE event_type = 'TokenUsed') AS tokens_used,
               count(*) FILTER (WHERE event_type = 'TokenUsed') AS usage_events,
               sum((payload->>'cost_usd')::numeric) FILTER (WHERE event_type = 'ApiCost')
                   AS cost_usd
          FROM usage_events WHERE event_type IN ('TokenUsed', 'ApiCost')
         GROUP BY 1, 2""",
    "api_usage_daily": """
        SELECT (occurred_at AT TIME ZONE 'UTC')::date, payload->>'api', payload->>'model',
               count(*), sum((payload->>'input_tokens')::bigint),
               sum((payload->>'output_tokens')::bigint),
               sum((payload->>'cache_read_tokens')::bigint),
               sum((payload->>'cache_write_tokens')::bigint),
               sum((payload->>'cost_usd')::numeric)
          FROM usage_events WHERE event_type = 'ApiCost' GROUP BY 1, 2, 3""",
    "model_usage_daily": """
        SELECT (occurred_at AT TIME ZONE 'UTC')::date, payload->'source'->>'component',
               payload->>'model', count(*), sum((payload->>'input_tokens')::bigint),
               sum((payload->>'output_tokens')::bigint)
          FROM usage_events WHERE event_type = 'TokenUsed' GROUP BY 1, 2, 3""",
    "session_reservations_daily": """
        SELECT session_id, (requested_at AT TIME ZONE 'UTC')::date,
               count(*) FILTER (WHERE status <> 'rejected'),
               count(*) FILTER (WHERE status = 'rejected'),
               count(*) FILTER (WHERE status = 'settled'),
               count(*) FILTER (WHERE status = 'released'),
               count(*) FILTER (WHERE status = 'expired'),
               COALESCE(sum(tokens) FILTER (WHERE status <> 'rejected'), 0),
               COALESCE(sum(settled_tokens), 0)
          FROM reservations GROUP BY 1, 2""",
    # Every node of an event's account, from the tenant down, counts it.
    "account_usage_daily": """
        SELECT n.account, (e.occurred_at AT TIME ZONE 'UTC')::date,
               sum(COALESCE((e.payload->>'input_tokens')::bigint, 0))
                   FILTER (WHERE e.event_type = 'TokenUsed'),
               sum(COALESCE((e.payload->>'output_tokens')::bigint, 0))
                   FILTER (WHERE e.event_type = 'TokenUsed'),
               sum((e.payload->>'input_tokens')::bigint + (e.payload->>'output_tokens')::bigint)
                   FILTER (WHERE e.event_type = 'TokenUsed'),
               count(*) FILTER (WHERE e.event_type = 'TokenUsed'),
               sum((e.payload->>'cost_usd')::numeric) FILTER (WHERE e.event_type = 'ApiCost'),
               count(*) FILTER (WHERE r.status <> 'rejected'),
               count(*) FILTER (WHERE r.status = 'rejected'),
               count(*) FILTER (WHERE r.status = 'rejected' AND r.refused_by = n.account)
          FROM usage_events e
          JOIN LATERAL (
                SELECT array_to_string((string_to_array(e.payload->>'account', '/'))[1:k], '/')
                  FROM generate_series(
                       1, cardinality(string_to_array(e.payload->>'account', '/'))) AS k
               ) AS n(account) ON true
          LEFT JOIN reservations r ON r.event_id = e.event_id
         WHERE e.payload ? 'account' AND e.event_type IN ('TokenUsed', 'ApiCost', 'TokenReserved')
         GROUP BY 1, 2""",
    "system_usage_minutely": """
        SELECT date_trunc('minute', e.log_time, 'UTC'), count(*),
               COALESCE(sum((e.payload->>'input_tokens')::bigint
                            + (e.payload->>'output_tokens')::bigint)
                        FILTER (WHERE e.event_type = 'TokenUsed'), 0),
               COALESCE(sum((e.payload->>'cost_usd')::numeric)
                        FILTER (WHERE e.event_type = 'ApiCost'), 0),
               count(*) FILTER (WHERE r.status <> 'rejected'),
               count(*) FILTER (WHERE r.status = 'rejected')
          FROM usage_events e LEFT JOIN reservations r ON r.event_id = e.event_id
         GROUP BY 1""",
}


@pytest.mark.integration
async def test_the_rollup_tables_equal_sql_over_the_ledger_and_the_reservations(
    conn: asyncpg.Connection, migrated_database: DatabaseSettings
) -> None:
    events = _workload()
    records = [
        LogRecord(e, r.payload, "usage", i % 3, i, r.timestamp)
        for i, (e, r) in enumerate(zip(events, log_records(events), strict=True))
    ]
    for start in range(0, len(records), 37):
        await apply_batch(conn, records[start : start + 37], schema=migrated_database.schema_name)
    statuses = {r["status"] for r in await conn.fetch("SELECT status FROM reservations")}
    assert {"settled", "released", "expired", "rejected"} <= statuses
    refusers = await conn.fetch(
        "SELECT DISTINCT COALESCE(refused_by, '') AS by FROM reservations"
        " WHERE account IS NOT NULL AND status = 'rejected'"
    )
    assert {r["by"] for r in refusers} == {"", "acme/research"}  # a session's and the team's
    months = await conn.fetch(
        "SELECT DISTINCT date_trunc('month', day)::date AS month FROM account_usage_daily"
        " ORDER BY 1"
    )
    assert [r["month"] for r in months] == [date(2026, 11, 1), date(2026, 12, 1)]
    for table, expected in _EXPECTED.items():
        rows = sorted(tuple(r.values()) for r in await conn.fetch(f"SELECT * FROM {table}"))  # noqa: S608
        want = [
            tuple(Decimal(0) if v is None else v for v in row)
            for row in sorted(tuple(r.values()) for r in await conn.fetch(expected))
        ]
        assert rows and rows == want, table
    # The hours add up to the days.
    mismatch = await conn.fetch(
        """SELECT d.session_id, d.day FROM session_usage_daily d
             LEFT JOIN (SELECT session_id, (hour AT TIME ZONE 'UTC')::date AS day,
                               sum(tokens_used) AS tokens, sum(cost_usd) AS cost
                          FROM session_usage_hourly GROUP BY 1, 2) h USING (session_id, day)
            WHERE h.tokens IS DISTINCT FROM d.tokens_used OR h.cost IS DISTINCT FROM d.cost_usd"""
    )
    assert mismatch == []
    minute = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    row = await conn.fetchrow("SELECT * FROM system_usage_minutely WHERE minute = $1", minute)
    assert row is not None and row["events_applied"] > 0


@pytest.mark.integration
async def test_rollups_of_all_sessions_stop_at_the_largest_bigint_instead_of_refusing(
    conn: asyncpg.Connection, migrated_database: DatabaseSettings
) -> None:
    """Two sessions' valid usage overflows a BIGINT only when summed across sessions: no
    event is refused for it (which one would depend on how partitions interleave)."""
    huge = [used(f"s{i}", USAGE_TOKENS_MAX, output=USAGE_TOKENS_MAX) for i in range(3)]
    schema = migrated_database.schema_name

    async def never(record: LogRecord, reason: str) -> None:
        raise AssertionError(f"refused: {reason}")

    records = log_records(huge)
    await apply_batch_isolating(conn, records[:2], schema=schema, on_poison=never)
    await apply_batch_isolating(conn, records[2:], schema=schema, on_poison=never)
    assert await conn.fetchval("SELECT tokens_used FROM system_usage_minutely") == BIGINT_MAX
    row = await conn.fetchrow("SELECT * FROM model_usage_daily")
    assert row is not None
    assert (row["usage_events"], row["input_tokens"], row["output_tokens"]) == (
        3,
        BIGINT_MAX,
        BIGINT_MAX,
    )
    assert await conn.fetchval("SELECT count(*) FROM session_token_budgets") == 3
