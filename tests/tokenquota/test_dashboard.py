"""TokenDashboard and AsyncTokenDashboard against a running worker: every read model
agrees with what the emitted events imply."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from tests.support import BROKEN_CONNECTION, budget, fetch_value, reserved, used, wait_until
from tokenquota import AsyncTokenDashboard, TokenDashboard, UnknownSessionError
from tokenquota.config import Settings
from tokenquota.errors import IntegrationError
from tokenquota.producers import Emitter
from tokenquota.projections import activity
from tokenquota.schemas import ApiCost, Event, Source, utc_now

pytestmark = pytest.mark.integration

SOURCE = Source(component="external_api", name="tests")


def cost(session: str, api: str, model: str, tokens_in: int, tokens_out: int, usd: str) -> ApiCost:
    return ApiCost(
        session_id=session,
        source=SOURCE,
        api=api,
        model=model,
        input_tokens=tokens_in,
        output_tokens=tokens_out,
        cost_usd=Decimal(usd),
        price_source="test",
    )


def workload() -> tuple[list[Event], uuid.UUID]:
    now = utc_now()
    granted, refused = uuid.uuid4(), uuid.uuid4()
    events: list[Event] = [
        budget("alice", now, daily=1_000, monthly=10_000, hard=100_000),
        budget("bob", now, daily=500, monthly=5_000, hard=50_000),
        reserved("alice", 600, now, rid=granted),
        reserved("alice", 900, now, rid=refused),  # 400 left under the daily limit
        used("alice", 300, now, rid=granted, output=200),  # settles 500 of 600
        used("bob", 450, now),  # 90% of bob's day: over the warning threshold
        cost("alice", "openai", "gpt-4o", 300, 200, "0.0125"),
        cost("alice", "anthropic", "claude-sonnet-4-5", 100, 50, "0.0030"),
        cost("bob", "openai", "gpt-4o", 400, 50, "0.0100"),
    ]
    return events, refused


async def emit_and_wait(settings: Settings, events: Sequence[Event]) -> None:
    async with Emitter(settings.kafka, settings.emitter, settings.spool_dir) as emitter:
        await emitter.emit_many(events)

    async def applied() -> bool:
        count = await fetch_value(settings.database, "SELECT count(*) FROM usage_events")
        return bool(count >= len(events))

    await wait_until(applied, 60, "the workload applied")


async def test_the_read_models_agree_with_the_events(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    start_worker()
    events, refused = workload()
    await emit_and_wait(pipeline_settings, events)
    async with AsyncTokenDashboard(pipeline_settings) as dashboard:
        alice = await dashboard.get_session_metrics("alice")
        assert alice.windows["daily"].used == 500 and alice.windows["daily"].limit == 1_000
        assert alice.windows["daily"].remaining == 500
        assert alice.windows["daily"].utilization == Decimal("0.5")
        assert alice.tokens_held == 0 and alice.outstanding_reservations == 0
        assert alice.reservations_accepted == 1 and alice.reservations_rejected == 1
        assert alice.cost_usd == alice.cost_usd_today == Decimal("0.0155")
        assert alice.limits.budget_source == "event"
        bob = await dashboard.get_session_metrics("bob")
        assert bob.windows["daily"].alert == "warning"
        with pytest.raises(UnknownSessionError, match="'nobody'"):
            await dashboard.get_session_metrics("nobody")

        overview = await dashboard.get_system_overview()
        assert overview.sessions_active_today == 2
        assert overview.tokens_today == 950 and overview.tokens_month == 950
        assert overview.cost_usd_today == Decimal("0.0255")
        ledger = await fetch_value(pipeline_settings.database, "SELECT count(*) FROM usage_events")
        assert overview.events_last_minute == ledger >= len(events)
        assert overview.broker_error is None and overview.total_lag == 0
        assert overview.dlq_depth == 0
        assert [t.session_id for t in overview.top_by_tokens] == ["alice", "bob"]
        assert [t.session_id for t in overview.top_by_cost] == ["alice", "bob"]

        report = await dashboard.generate_daily_report()
        rows = {row.session_id: row for row in report.sessions}
        assert (rows["alice"].accepted, rows["alice"].rejected, rows["alice"].settled) == (1, 1, 1)
        assert rows["alice"].reserved_tokens == 600 and rows["alice"].settled_tokens == 500
        assert rows["alice"].efficiency == Decimal("0.8333")
        assert (rows["bob"].input_tokens, rows["bob"].accepted) == (450, 0)
        apis = {(a.api_name, a.model): a for a in report.apis}
        assert apis[("openai", "gpt-4o")].requests == 2
        assert apis[("openai", "gpt-4o")].cost_usd == Decimal("0.0225")
        assert report.tokens_used == 950 and report.cost_usd == Decimal("0.0255")

        by_api = {row.api_name: row.cost_usd for row in await dashboard.costs(by="api")}
        assert by_api == {"openai": Decimal("0.0225"), "anthropic": Decimal("0.0030")}
        by_day = await dashboard.costs(by="day")
        assert [row.cost_usd for row in by_day] == [Decimal("0.0255")]

        decisions = await dashboard.recent_decisions(session_id="alice")
        assert {d.status for d in decisions} == {"settled", "rejected"}
        rejected = await dashboard.recent_decisions(status="rejected")
        assert [d.reservation_id for d in rejected] == [refused]
        assert rejected[0].reason == "daily_limit" and rejected[0].available_tokens == 400

        alerts = await dashboard.recent_alerts(session_id="bob")
        assert [(a.window_name, a.level) for a in alerts] == [("daily", "warning")]

        logs = await dashboard.integration_logs("alice")
        actions = {row.action for row in logs}
        assert {"budget_set", "token_used", "api_cost", "reservation_rejected"} <= actions

        audit = await dashboard.audit(session_id="bob")
        assert [a.event_type for a in audit] == ["BudgetSet"]
        assert "500 / 5,000 / 50,000" in audit[0].change


async def test_tail_follows_what_is_applied_after_the_cursor(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    start_worker()
    first: list[Event] = [used("carol", 10, utc_now())]
    await emit_and_wait(pipeline_settings, first)
    async with AsyncTokenDashboard(pipeline_settings) as dashboard:
        cursor = await dashboard.tail_cursor()
        page = await dashboard.events_after(cursor)
        assert page.events == []
        later: list[Event] = [used("carol", 20, utc_now()), used("dave", 5, utc_now())]
        await emit_and_wait(pipeline_settings, first + later)
        page = await dashboard.events_after(cursor)
        assert sorted(e.payload["input_tokens"] for e in page.events) == [5, 20]
        only = await dashboard.events_after(cursor, session_id="dave")
        assert [e.session_id for e in only.events] == ["dave"]
        assert (await dashboard.events_after(page.cursor)).events == []
        since = await dashboard.tail_cursor(since=utc_now() - timedelta(minutes=5))
        assert len((await dashboard.events_after(since)).events) == 3


async def test_the_synchronous_facade_works_outside_a_loop_and_refuses_inside(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    start_worker()
    await emit_and_wait(pipeline_settings, [used("erin", 42, utc_now())])

    def read() -> int:
        with TokenDashboard(pipeline_settings) as dashboard:
            return dashboard.get_session_metrics("erin").windows["total"].used

    assert await asyncio.to_thread(read) == 42
    dashboard = TokenDashboard(pipeline_settings)
    try:
        with pytest.raises(RuntimeError, match="AsyncTokenDashboard"):
            dashboard.get_system_overview()
    finally:
        await asyncio.to_thread(dashboard.close)


async def test_both_facades_read_the_budget_tree(pipeline_settings: Settings) -> None:
    """The read models' tree (applied straight to PostgreSQL), through each class."""
    from tests.projections import test_account_reports as tree

    now = utc_now()
    await tree.apply_tree(pipeline_settings.database, now)
    spent = tree.ALICE_USD + tree.DANA_USD

    def read() -> tuple[list[Any], list[Any]]:
        with TokenDashboard(pipeline_settings) as dashboard:
            top = dashboard.top_accounts("cost", limit=1, depth=1)
            return top, dashboard.account_tree(tree.TEAM)

    top, nodes = await asyncio.to_thread(read)
    assert [(a.account, a.cost_usd) for a in top] == [("acme", spent)]
    assert [(n.account, n.tokens_held) for n in nodes] == [
        (tree.TEAM, tree.BOB_HOLD),
        (tree.ALICE, 0),
        (tree.BOB, tree.BOB_HOLD),
    ]
    async with AsyncTokenDashboard(pipeline_settings) as dashboard:
        assert await dashboard.top_accounts("cost", limit=1, depth=1) == top
        under = await dashboard.top_accounts(under=tree.OPS, day=now.date())
        assert [(a.account, a.tokens_used) for a in under] == [
            (tree.OPS, tree.DANA_IN),
            (tree.DANA, tree.DANA_IN),
        ]


@pytest.mark.parametrize("failure", BROKEN_CONNECTION)
async def test_a_read_cut_by_a_postgres_shutdown_is_an_integration_error(
    pipeline_settings: Settings, monkeypatch: pytest.MonkeyPatch, failure: Exception
) -> None:
    # What asyncpg raises for a connection a PostgreSQL shutdown broke (seen by the fault
    # campaign in the client, whose reads had the same gap): the API answered 500 with a
    # traceback in its log instead of 503.
    async def broken(conn: object, stored: str) -> None:
        raise failure

    async with AsyncTokenDashboard(pipeline_settings) as dashboard:
        monkeypatch.setattr(activity, "session_known", broken)
        with pytest.raises(IntegrationError, match="PostgreSQL unreachable"):
            await dashboard.session_known("cut")
        monkeypatch.undo()
        assert not await dashboard.session_known("cut")  # the next read works
