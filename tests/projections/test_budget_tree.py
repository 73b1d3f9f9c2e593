"""Budget trees against the real broker, worker and PostgreSQL: a team budget refuses a
reservation its session's budget allows, and names itself; the nodes' usage and holds
read back; an event naming another account than its session's goes to the dead-letter
topic; replay (from the topic and from the ledger) rebuilds every table row for row."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from tests.processors.test_worker import dead_letters
from tests.projections.test_replay import (
    applied_offsets,
    recreate_topics,
    replay,
    with_views,
)
from tests.support import fetch_value, node_budget, reserved, used, wait_until
from tokenquota.config import Settings
from tokenquota.errors import TokenQuotaExceededError, UsdBudgetExceededError
from tokenquota.processors import parse_dead_letter_headers
from tokenquota.producers import Emitter, TokenQuota
from tokenquota.producers.budgets import set_account_budget
from tokenquota.projections import UsdLimits
from tokenquota.projections.ledger_replay import replay_from_ledger
from tokenquota.schemas import Event, decode, utc_now

pytestmark = pytest.mark.integration

TEAM = "acme/research"
ALICE, BOB = f"{TEAM}/alice", f"{TEAM}/bob"


def _priced(usd: str) -> dict[str, Any]:
    return {"reserved_usd": Decimal(usd), "price_source": "test"}


async def test_a_team_budget_refuses_what_the_session_budget_allows_and_replays_alike(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    settings = pipeline_settings
    worker = start_worker()
    async with TokenQuota(settings) as quota:
        await set_account_budget(
            quota, TEAM, daily_limit=1_000, monthly_limit=10_000, hard_limit=100_000, actor="test"
        )
        # Each session alone could take 600 (the defaults give them far more).
        first = await quota.reserve("alice-1", 600, account=ALICE)
        with pytest.raises(TokenQuotaExceededError) as refused:
            await quota.reserve("bob-1", 600, account=BOB)
        assert refused.value.refused_by == TEAM
        assert str(refused.value) == (
            "account 'acme/research': requested 600 tokens, 400 available under its daily "
            "limit of 1000 tokens"
        )
        await first.settle(200, 50, "gpt-4o")
        # What alice's call did not use is free again for bob.
        await (await quota.reserve("bob-1", 600, account=BOB)).release()

        async def settled() -> bool:
            nodes = await quota.account_metrics(BOB)
            return nodes[1].tokens_used_today == 250 and nodes[1].tokens_held == 0

        await wait_until(settled, 60, "the team's usage", [worker])
        tenant, team, bob = await quota.account_metrics(BOB)
        assert (tenant.account, tenant.limits, tenant.tokens_used_total) == ("acme", None, 250)
        assert team.limits is not None and team.limits.daily_limit == 1_000
        assert (team.available_tokens, team.binding_limit) == (750, "daily_limit")
        assert (team.reservations_accepted, team.reservations_rejected) == (2, 1)
        assert (bob.tokens_used_total, bob.reservations_accepted) == (0, 1)
        assert (await quota.session_metrics("bob-1")).account == BOB

        # USD: the team may spend a dollar a month. A priced reservation holds its price
        # from its acceptance until its ApiCost, through its token settlement.
        await set_account_budget(quota, TEAM, daily_limit=1_000, monthly_limit=10_000,
                                 hard_limit=100_000, usd=UsdLimits(None, Decimal(1), None),
                                 actor="test")  # fmt: skip
        call = await quota.reserve("alice-1", 10, account=ALICE, **_priced("0.80"))
        await call.settle(5, 5, "gpt-4o")
        with pytest.raises(UsdBudgetExceededError) as priced:
            await quota.reserve("bob-1", 10, account=BOB, **_priced("0.30"))
        message = "acme/research: monthly USD 1.00, used 0.00, held 0.80, requested 0.30"
        assert (str(priced.value), priced.value.refused_by) == (message, TEAM)
        await call.cost(Decimal("0.1"), "test", api="openai", model="gpt-4o",
                        input_tokens=5, output_tokens=5)  # fmt: skip
        # The real cost replaced the price: 0.90 of the dollar is left.
        await (await quota.reserve("bob-1", 10, account=BOB, **_priced("0.90"))).release()

        async def billed() -> bool:
            team = (await quota.account_metrics(BOB))[1]
            return (
                team.usd is not None
                and team.usd.used_month == Decimal("0.1")
                and not (team.usd.held)
            )

        await wait_until(billed, 60, "the team's spend", [worker])
        team = (await quota.account_metrics(BOB))[1]
        assert team.usd is not None and team.usd.available == Decimal("0.9")
        logged = await fetch_value(
            settings.database,
            "SELECT error_message FROM integration_logs WHERE action = 'reservation_rejected'"
            " AND metadata ? 'limit_usd'",
        )
        assert logged == message

    # Raw events too: a tenant budget, a settlement above its reservation, a second team,
    # and an event that names no account for a session of the tree (dead-lettered, the
    # rest applied).
    now = utc_now()
    hold = reserved("carol-1", 100, now, account=f"{TEAM}/carol")
    events: list[Event] = [
        node_budget("acme", now, daily=5_000),
        hold,
        used("carol-1", 150, now, rid=hold.reservation_id, account=f"{TEAM}/carol"),
        reserved("dave-1", 50, now, account="acme/ops/dave"),
        used("dave-1", 5, now, account="acme/ops/dave"),
        used("carol-1", 1, now),  # no account: poison
    ]
    before = await applied_offsets(settings)
    async with Emitter.from_settings(settings) as emitter:
        await emitter.emit_many(events)

    async def applied() -> bool:
        return await applied_offsets(settings) >= before + len(events)

    await wait_until(applied, 90, "the tree's events", [worker])
    (letter,) = await dead_letters(settings, 1)
    assert decode(letter.value).event_id == events[-1].event_id
    reason = parse_dead_letter_headers(letter.headers)["reason"]
    assert "session 'carol-1' belongs to account 'acme/research/carol'" in reason, reason
    # A client finds the same mistake before it sends anything (a strict reservation
    # would otherwise wait out its decision timeout).
    async with TokenQuota(settings) as quota:
        for other in (None, "acme/ops/carol"):
            with pytest.raises(ValueError, match="belongs to account 'acme/research/carol'"):
                await quota.reserve("carol-1", 10, account=other)
    statuses = await fetch_value(
        settings.database,
        "SELECT array_agg(status ORDER BY session_id) FROM reservations"
        " WHERE session_id IN ('carol-1', 'dave-1')",
    )
    assert statuses == ["settled", "accepted"]
    acme = await fetch_value(
        settings.database,
        "SELECT tokens_used_total FROM account_budgets WHERE account = 'acme'",
    )
    assert acme == 250 + 10 + 150 + 5

    live = await with_views(settings)
    assert len(live["account_budgets"]) == 7  # acme, its two teams, four users
    report = await replay(settings)
    assert report.skipped == 1 and await with_views(settings) == live  # the poison skipped
    worker.stop()
    await recreate_topics(settings.kafka)
    await replay_from_ledger(settings.database.dsn(), settings.database.schema_name)
    assert await with_views(settings) == live
