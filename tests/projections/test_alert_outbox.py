"""Threshold alerts: an outbox row and a notice per rise of a window's level, once per
window and never per event; the level resets with the window and is lowered by a raised
budget; the store writes the outbox in the batch's transaction and replay rebuilds it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from decimal import Decimal

import asyncpg
import pytest

from tests.support import T0, budget, log_records, reserved, used
from tokenquota.config import DatabaseSettings
from tokenquota.projections import Limits, ProjectionState, apply_batch, connect, fold
from tokenquota.projections.alerts import ALERT_NAMESPACE, alert_id
from tokenquota.projections.ledger_replay import replay_from_ledger
from tokenquota.projections.state import AlertRow, Folded
from tokenquota.schemas import DefaultsSet, Event, Source

LIMITS = Limits(1000, 10_000, 100_000, Decimal("0.8"), Decimal("0.95"))
SECOND = timedelta(seconds=1)


def _defaults() -> DefaultsSet:
    return DefaultsSet(
        source=Source(component="cli", name="tests"),
        occurred_at=T0 - timedelta(days=40),
        daily_limit=LIMITS.daily_limit,
        monthly_limit=LIMITS.monthly_limit,
        hard_limit=LIMITS.hard_limit,
        warning_threshold=LIMITS.warning_threshold,
        critical_threshold=LIMITS.critical_threshold,
        timezone="UTC",
        max_clock_skew_ms=300_000,
    )


BASE = fold(ProjectionState(), log_records([_defaults()])).state


def run(events: Sequence[Event], state: ProjectionState = BASE, first_offset: int = 1) -> Folded:
    return fold(state, log_records(events, first_offset=first_offset))


def actions(folded: Folded) -> list[str]:
    return [alert.action for alert in folded.alerts]


def test_each_threshold_crossed_is_one_outbox_row_with_a_derived_id() -> None:
    crossing = used("s", 960, T0 + SECOND)
    folded = run([used("s", 100), crossing, used("s", 10, T0 + 2 * SECOND)])
    assert folded.alerts == [
        AlertRow(
            alert_id=uuid.uuid5(ALERT_NAMESPACE, f"{crossing.event_id}:{action}"),
            event_id=crossing.event_id,
            action=action,
            session_id="s",
            window_name="daily",
            level=level,
            used_tokens=1060,
            limit_tokens=1000,
            occurred_at=crossing.occurred_at,
            created_at=T0 + SECOND,  # the log clock
        )
        for level, action in (
            ("warning", "daily_warning_threshold"),
            ("critical", "daily_critical_threshold"),
        )
    ]
    # Each alert has its notice (same event and action), shown by integration_logs.
    notices = [(n.event_id, n.action, n.status) for n in folded.logs]
    assert notices == [(a.event_id, a.action, a.level) for a in folded.alerts]
    assert alert_id(crossing.event_id, "daily_warning_threshold") == folded.alerts[0].alert_id


def test_many_small_usages_in_one_batch_alert_at_the_event_that_crosses_each_level() -> None:
    # The fold skips the threshold check while a session is far from its next level
    # (its headroom, kept per batch): the check must still catch the exact event, also
    # after a budget that lowers the level and on the next day, as one event per batch does.
    events: list[Event] = [used("s", 30, T0 + i * SECOND) for i in range(40)]
    events.append(budget("s", T0 + 41 * SECOND, daily=3000, warning="0.5", critical="0.6"))
    events += [used("s", 30, T0 + (42 + i) * SECOND) for i in range(20)]
    events += [used("s", 100, T0 + timedelta(days=1) + i * SECOND) for i in range(20)]
    whole = run(events)
    state = BASE
    alerts: list[AlertRow] = []
    for offset, event in enumerate(events, start=1):
        one = run([event], state, first_offset=offset)
        state, alerts = one.state, alerts + one.alerts
    assert whole.alerts == alerts
    assert whole.state == state
    index = {e.event_id: i for i, e in enumerate(events)}
    assert [(index[a.event_id], a.action) for a in whole.alerts] == [
        (26, "daily_warning_threshold"),  # 27 x 30 = 810 >= 800 of 1000
        (31, "daily_critical_threshold"),  # 960 >= 950
        # The budget of 3000 (1500 warns, 1800 is critical) lowers the level to none.
        (50, "daily_warning_threshold"),  # 1200 + 10 x 30 = 1500
        (60, "daily_critical_threshold"),  # 1800
        (75, "daily_warning_threshold"),  # the next day: 15 x 100 = 1500
        (78, "daily_critical_threshold"),  # 1800
    ]


def test_a_thousand_refusals_after_the_limit_alert_once_and_the_next_day_again() -> None:
    events: list[Event] = [used("s", 900)]
    events += [reserved("s", 200, T0 + i * SECOND) for i in range(1, 1001)]
    folded = run(events)
    statuses = [d.status for d in folded.decisions]
    assert statuses == ["rejected"] * 1000
    assert actions(folded) == ["daily_warning_threshold", "daily_limit_refused"]
    exhausted = folded.alerts[1]
    assert (exhausted.event_id, exhausted.window_name, exhausted.level) == (
        events[1].event_id,
        "daily",
        "exhausted",
    )
    assert (exhausted.used_tokens, exhausted.limit_tokens) == (900, 1000)
    assert folded.state.sessions["s"].daily_alert == "exhausted"
    assert [n.action for n in folded.logs] == actions(folded)

    # Split into batches anywhere: the same single alert.
    first = run(events[:400])
    second = run(events[400:], first.state, first_offset=401)
    assert first.alerts + second.alerts == folded.alerts

    # The next day is a new window: refused again, alerted again (once).
    tomorrow = T0 + timedelta(days=1)
    next_day: list[Event] = [used("s", 950, tomorrow)]
    next_day += [reserved("s", 100, tomorrow + i * SECOND) for i in range(1, 101)]
    again = run(next_day, folded.state, first_offset=2000)
    assert actions(again) == [
        "daily_warning_threshold",
        "daily_critical_threshold",
        "daily_limit_refused",
    ]
    assert again.alerts[-1].event_id == next_day[1].event_id


def test_refusals_at_the_monthly_and_hard_limits_exhaust_those_windows() -> None:
    small: list[Event] = [budget("s", T0, daily=1000, monthly=1500, hard=100_000)]
    small += [used("s", 800, T0 + SECOND), used("s", 600, T0 + timedelta(days=1))]
    small += [reserved("s", 200, T0 + timedelta(days=1, seconds=i)) for i in range(1, 4)]
    monthly = run(small)
    assert monthly.alerts[-1].action == "monthly_limit_refused"
    assert monthly.alerts[-1].window_name == "monthly"
    assert (monthly.alerts[-1].used_tokens, monthly.alerts[-1].limit_tokens) == (1400, 1500)
    assert actions(monthly).count("monthly_limit_refused") == 1

    hard: list[Event] = [budget("h", T0, daily=500, monthly=500, hard=500)]
    hard.append(used("h", 500, T0 + SECOND))
    hard += [reserved("h", 1, T0 + timedelta(days=i)) for i in range(1, 4)]
    total = run(hard)
    refused = [a for a in total.alerts if a.level == "exhausted"]
    # The total window never rolls over: one alert however many days follow.
    assert [(a.action, a.window_name) for a in refused] == [("total_limit_refused", "total")]
    assert total.state.sessions["h"].total_alert == "exhausted"


def test_only_refusals_at_a_limit_exhaust_a_window() -> None:
    late = reserved("s", 10, T0 - timedelta(minutes=10), ttl=timedelta(minutes=5))
    low = reserved("s", 990, T0 + SECOND, priority="low")  # stops at the critical threshold
    folded = fold(BASE, log_records([late, low], at=lambda i, e: T0 + i * SECOND))
    assert [d.reason for d in folded.decisions] == ["expired", "critical_threshold"]
    assert folded.alerts == [] and folded.logs == []


def test_a_raised_budget_lowers_an_exhausted_window_and_a_later_refusal_alerts_again() -> None:
    full = run([used("s", 1000), reserved("s", 1, T0 + SECOND)])
    assert full.state.sessions["s"].daily_alert == "exhausted"
    # The same limits set again: still exhausted, no new alert.
    same = run(
        [budget("s", T0 + 2 * SECOND, daily=1000), reserved("s", 1, T0 + 3 * SECOND)],
        full.state,
        first_offset=5,
    )
    assert same.alerts == []
    assert same.state.sessions["s"].daily_alert == "exhausted"
    # A raised daily limit: the level goes down to what the usage reaches, silently ...
    raised = run([budget("s", T0 + 4 * SECOND, daily=1100)], same.state, first_offset=9)
    assert raised.alerts == []
    assert raised.state.sessions["s"].daily_alert == "warning"  # 1000 >= 0.8 * 1100
    # ... and the next refusal at it is alerted again; so is the critical threshold.
    later: list[Event] = [used("s", 50, T0 + 5 * SECOND), reserved("s", 100, T0 + 6 * SECOND)]
    again = run(later, raised.state, first_offset=12)
    assert actions(again) == ["daily_critical_threshold", "daily_limit_refused"]


# -- the store: the outbox in the batch's transaction -----------------------------------


@pytest.fixture
async def conn(migrated_database: DatabaseSettings) -> AsyncIterator[asyncpg.Connection]:
    connection = await connect(migrated_database.dsn(), migrated_database.schema_name)
    yield connection
    await connection.close()


@pytest.mark.integration
async def test_the_store_writes_one_alert_for_a_thousand_refusals_and_replay_the_same(
    conn: asyncpg.Connection, migrated_database: DatabaseSettings
) -> None:
    schema = migrated_database.schema_name
    events: list[Event] = [_defaults(), used("s", 900, T0)]
    events += [reserved("s", 200, T0 + i * SECOND) for i in range(1, 1001)]
    tomorrow = T0 + timedelta(days=1)
    events += [reserved("s", 2000, tomorrow + i * SECOND) for i in range(5)]
    records = log_records(events)
    for start in range(0, len(records), 150):  # batches cut through the refusals
        await apply_batch(conn, records[start : start + 150], schema=schema)

    rows = await conn.fetch("SELECT * FROM alert_outbox ORDER BY occurred_at, action")
    assert [(r["action"], r["level"], r["window_name"]) for r in rows] == [
        ("daily_warning_threshold", "warning", "daily"),
        ("daily_limit_refused", "exhausted", "daily"),
        ("daily_limit_refused", "exhausted", "daily"),  # the next day's window
    ]
    assert [r["event_id"] for r in rows] == [
        events[1].event_id,
        events[2].event_id,
        events[1002].event_id,
    ]
    for row in rows:
        assert row["alert_id"] == alert_id(row["event_id"], row["action"])
        assert row["session_id"] == "s"
    assert [(r["used_tokens"], r["limit_tokens"]) for r in rows] == [
        (900, 1000),
        (900, 1000),
        (0, 1000),
    ]
    assert await conn.fetchval("SELECT daily_alert FROM session_token_budgets") == "exhausted"
    # Each alert is one notice, visible in integration_logs.
    shown = await conn.fetch(
        """SELECT event_id, action FROM integration_logs
            WHERE action LIKE '%threshold' OR action LIKE '%refused' ORDER BY created_at"""
    )
    assert [(r["event_id"], r["action"]) for r in shown] == [
        (r["event_id"], r["action"]) for r in rows
    ]

    before = await conn.fetch("SELECT * FROM alert_outbox ORDER BY alert_id")
    await replay_from_ledger(migrated_database.dsn(), schema)
    assert await conn.fetch("SELECT * FROM alert_outbox ORDER BY alert_id") == before
