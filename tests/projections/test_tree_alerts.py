"""Alerts of budget tree nodes and of USD windows: a node's token windows and every USD
window (of a session or a node) rise through warning and critical and to exhausted at
their first refusal, once per window, reset with the window, and are lowered by a raised
budget, as a session's token windows are; the store writes them and replay rebuilds them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import T0, budget, log_records, node_budget, reserved, used
from tokenquota.config import DatabaseSettings
from tokenquota.projections import ProjectionState, apply_batch, connect, fold
from tokenquota.projections.alerts import alert_id
from tokenquota.projections.ledger_replay import replay_from_ledger
from tokenquota.projections.state import AlertRow, Folded
from tokenquota.schemas import ApiCost, DefaultsSet, Event, Source

SECOND = timedelta(seconds=1)
TEAM = "acme/research"
ALICE = "acme/research/alice"


def _defaults() -> DefaultsSet:
    """Session defaults far above the team's limits: only the team's windows alert."""
    return DefaultsSet(
        source=Source(component="cli", name="tests"),
        occurred_at=T0 - timedelta(days=40),
        daily_limit=10_000_000,
        monthly_limit=100_000_000,
        hard_limit=1_000_000_000,
        warning_threshold=Decimal("0.8"),
        critical_threshold=Decimal("0.95"),
        timezone="UTC",
        max_clock_skew_ms=300_000,
    )


BASE = fold(ProjectionState(), log_records([_defaults()])).state


def run(events: Sequence[Event], state: ProjectionState = BASE, first_offset: int = 1) -> Folded:
    return fold(state, log_records(events, first_offset=first_offset))


def cost(session: str, usd: str, at: datetime = T0, *, account: str | None = ALICE) -> ApiCost:
    return ApiCost(
        session_id=session,
        account=account,
        source=Source(component="external_api", name="tests"),
        occurred_at=at,
        api="openai",
        model="gpt-4o",
        input_tokens=1,
        output_tokens=1,
        cost_usd=Decimal(usd),
        price_source="tests",
    )


def summary(folded: Folded) -> list[tuple[str | None, str, str, str]]:
    return [(a.account, a.unit, a.action, a.level) for a in folded.alerts]


def test_a_team_window_alerts_once_per_threshold_named_by_the_team_not_per_event() -> None:
    team = node_budget(TEAM, daily=1000, monthly=10_000, hard=100_000)
    crossing = used("a", 800, T0 + SECOND, account=ALICE)
    critical = used("b", 150, T0 + 2 * SECOND, account="acme/research/bob")
    folded = run([team, crossing, critical, used("a", 10, T0 + 3 * SECOND, account=ALICE)])
    assert folded.alerts == [
        AlertRow(
            alert_id=alert_id(crossing.event_id, "daily_warning_threshold", TEAM),
            event_id=crossing.event_id,
            action="daily_warning_threshold",
            session_id="a",
            window_name="daily",
            level="warning",
            used_tokens=800,
            limit_tokens=1000,
            occurred_at=crossing.occurred_at,
            created_at=crossing.occurred_at,
            account=TEAM,
        ),
        AlertRow(
            alert_id=alert_id(critical.event_id, "daily_critical_threshold", TEAM),
            event_id=critical.event_id,
            action="daily_critical_threshold",
            session_id="b",
            window_name="daily",
            level="critical",
            used_tokens=950,
            limit_tokens=1000,
            occurred_at=critical.occurred_at,
            created_at=critical.occurred_at,
            account=TEAM,
        ),
    ]
    assert folded.state.nodes[TEAM].daily_alert == "critical"
    assert folded.state.nodes["acme"].daily_alert == "none"  # no BudgetSet: no windows
    # A node's alert is not a notice of the session's integration log.
    assert [row.action for row in folded.logs] == []


def test_the_refusing_team_is_exhausted_once_and_again_the_next_day() -> None:
    team = node_budget(TEAM, daily=1000, monthly=10_000, hard=100_000)
    first = run([team, used("a", 900, T0, account=ALICE)])
    refusals = [reserved("a", 200, T0 + i * SECOND, account=ALICE) for i in range(1, 4)]
    second = run(refusals, first.state, first_offset=5)
    assert summary(second) == [(TEAM, "tokens", "daily_limit_refused", "exhausted")]
    assert second.alerts[0].event_id == refusals[0].event_id
    assert (second.alerts[0].used_tokens, second.alerts[0].limit_tokens) == (900, 1000)
    # The session's own window did not refuse: its level stays.
    assert second.state.sessions["a"].daily_alert == "none"
    tomorrow = reserved("a", 2000, T0 + timedelta(days=1), account=ALICE)
    third = run([tomorrow], second.state, first_offset=20)
    assert summary(third) == [(TEAM, "tokens", "daily_limit_refused", "exhausted")]
    assert (third.alerts[0].used_tokens, third.alerts[0].limit_tokens) == (0, 1000)


def test_a_raised_team_budget_lowers_its_level_without_a_row_and_a_later_rise_alerts() -> None:
    team = node_budget(TEAM, daily=1000, monthly=10_000, hard=100_000)
    first = run([team, used("a", 960, T0, account=ALICE)])
    assert [a.level for a in first.alerts] == ["warning", "critical"]
    raised = node_budget(TEAM, T0 + SECOND, daily=2000, monthly=10_000, hard=100_000)
    second = run([raised], first.state, first_offset=5)
    assert second.alerts == []
    assert second.state.nodes[TEAM].daily_alert == "none"
    third = run([used("a", 700, T0 + 2 * SECOND, account=ALICE)], second.state, first_offset=6)
    assert summary(third) == [(TEAM, "tokens", "daily_warning_threshold", "warning")]


def test_a_session_usd_window_alerts_at_its_thresholds_and_when_it_refuses() -> None:
    limits = budget("s", usd=("1.00", "10", "100"))
    warn = cost("s", "0.85", T0 + SECOND, account=None)
    folded = run([limits, warn, cost("s", "0.01", T0 + 2 * SECOND, account=None)])
    assert summary(folded) == [(None, "usd", "daily_usd_warning_threshold", "warning")]
    alert = folded.alerts[0]
    assert (alert.used_usd, alert.limit_usd, alert.used_tokens) == (
        Decimal("0.85"),
        Decimal("1.00"),
        None,
    )
    assert alert.alert_id == alert_id(warn.event_id, "daily_usd_warning_threshold")
    # A session's USD alert is a notice too, with the amounts.
    assert [(row.action, row.error_message) for row in folded.logs] == [
        (
            "daily_usd_warning_threshold",
            "daily USD spend 0.85 of 1.00 reached the warning threshold",
        )
    ]
    refused = reserved("s", 10, T0 + 3 * SECOND, usd="0.50")
    second = run([refused, reserved("s", 10, T0 + 4 * SECOND, usd="0.50")], folded.state, 9)
    assert summary(second) == [(None, "usd", "daily_usd_limit_refused", "exhausted")]
    assert (second.alerts[0].used_usd, second.alerts[0].limit_usd) == (
        Decimal("0.86"),
        Decimal("1.00"),
    )
    assert second.state.sessions["s"].daily_usd_alert == "exhausted"
    assert second.state.sessions["s"].daily_alert == "none"  # the token window did not


def test_a_team_usd_window_alerts_named_by_the_team_and_removing_the_limit_resets_it() -> None:
    team = node_budget(TEAM, daily=10**9, monthly=10**10, hard=10**11, usd=(None, "10", None))
    first = run([team, cost("a", "9.60", T0 + SECOND)])
    assert summary(first) == [
        (TEAM, "usd", "monthly_usd_warning_threshold", "warning"),
        (TEAM, "usd", "monthly_usd_critical_threshold", "critical"),
    ]
    assert first.state.nodes[TEAM].monthly_usd_alert == "critical"
    refused = reserved("a", 10, T0 + 2 * SECOND, usd="0.50", account=ALICE)
    second = run([refused], first.state, first_offset=5)
    assert summary(second) == [(TEAM, "usd", "monthly_usd_limit_refused", "exhausted")]
    unlimited = node_budget(TEAM, T0 + 3 * SECOND, daily=10**9, monthly=10**10, hard=10**11)
    third = run([unlimited, cost("a", "5", T0 + 4 * SECOND)], second.state, first_offset=6)
    assert third.alerts == []
    assert third.state.nodes[TEAM].monthly_usd_alert == "none"


def test_a_new_month_resets_a_team_usd_window() -> None:
    team = node_budget(TEAM, daily=10**9, monthly=10**10, hard=10**11, usd=(None, "10", None))
    first = run([team, cost("a", "8", T0)])
    assert [a.level for a in first.alerts] == ["warning"]
    december = T0 + timedelta(days=7)  # 2026-12-01
    second = run([cost("a", "8", december)], first.state, first_offset=5)
    assert summary(second) == [(TEAM, "usd", "monthly_usd_warning_threshold", "warning")]
    assert second.alerts[0].used_usd == Decimal("8")


# -- the store ------------------------------------------------------------------------


@pytest.fixture
async def conn(migrated_database: DatabaseSettings) -> AsyncIterator[asyncpg.Connection]:
    connection = await connect(migrated_database.dsn(), migrated_database.schema_name)
    yield connection
    await connection.close()


@pytest.mark.integration
async def test_the_store_writes_node_and_usd_alerts_and_replay_rebuilds_them(
    conn: asyncpg.Connection, migrated_database: DatabaseSettings
) -> None:
    schema = migrated_database.schema_name
    team = node_budget(TEAM, daily=1000, monthly=10_000, hard=100_000, usd=(None, "10", None))
    events: list[Event] = [_defaults(), team, used("a", 900, T0, account=ALICE)]
    events += [reserved("a", 200, T0 + i * SECOND, account=ALICE) for i in range(1, 301)]
    events.append(cost("a", "9.99", T0 + timedelta(minutes=10)))
    records = log_records(events)
    for start in range(0, len(records), 70):
        await apply_batch(conn, records[start : start + 70], schema=schema)
    rows = await conn.fetch(
        "SELECT account, unit, action, used_tokens, limit_tokens, used_usd, limit_usd"
        " FROM alert_outbox ORDER BY occurred_at, action"
    )
    assert [tuple(r.values()) for r in rows] == [
        (TEAM, "tokens", "daily_warning_threshold", 900, 1000, None, None),
        (TEAM, "tokens", "daily_limit_refused", 900, 1000, None, None),
        (TEAM, "usd", "monthly_usd_critical_threshold", None, None, Decimal("9.99"), 10),
        (TEAM, "usd", "monthly_usd_warning_threshold", None, None, Decimal("9.99"), 10),
    ]
    node = await conn.fetchrow(
        "SELECT daily_alert, monthly_usd_alert FROM account_budgets WHERE account = $1", TEAM
    )
    assert node is not None and tuple(node.values()) == ("exhausted", "critical")
    before = await conn.fetch("SELECT * FROM alert_outbox ORDER BY alert_id")
    await replay_from_ledger(migrated_database.dsn(), schema)
    assert await conn.fetch("SELECT * FROM alert_outbox ORDER BY alert_id") == before


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from((ALICE, "acme/research/bob", "acme/ops")),
            st.integers(0, 400),
            st.integers(0, 30),
        ),
        min_size=1,
        max_size=40,
    ),
    st.sampled_from(("0.3", "0.5", "0.8")),
)
def test_node_alerts_are_the_same_whether_folded_at_once_or_one_event_at_a_time(
    steps: list[tuple[str, int, int]], warning: str
) -> None:
    """The fold skips a node's threshold check while its usage is short of the next level
    (tokens_to_alert): folding event by event (no such memory) must alert the same."""
    events: list[Event] = [
        node_budget(TEAM, daily=1000, monthly=3000, hard=6000, warning=warning),
        node_budget("acme", daily=2000, monthly=5000, hard=9000, warning=warning),
    ]
    at = T0
    for n, (account, tokens, hours) in enumerate(steps):
        at += timedelta(hours=hours)
        events.append(used(f"s{n % 3}-{account}", tokens, at, account=account))
    whole = run(events)
    state, alerts = BASE, list[AlertRow]()
    for offset, event in enumerate(events, start=1):
        one = run([event], state, first_offset=offset)
        state, alerts = one.state, alerts + one.alerts
    assert whole.alerts == alerts
    assert whole.state.nodes == state.nodes
