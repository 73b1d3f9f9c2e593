"""The budget tree's read models against PostgreSQL: the nodes ranked by a day's tokens and
cost (by depth, under a node), and the tree with each node's limits, holds, utilization
(its token and USD windows) and this month's totals, all as the events sent imply."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest

from tests.support import T0, log_records, node_budget, reserved, used
from tokenquota.config import DatabaseSettings
from tokenquota.projections import apply_batch, connect
from tokenquota.projections.account_reports import account_tree, top_accounts
from tokenquota.schemas import ApiCost, Event, Source

pytestmark = pytest.mark.integration

TEAM, OPS = "acme/research", "acme/ops"
ALICE, BOB, DANA = f"{TEAM}/alice", f"{TEAM}/bob", f"{OPS}/dana"
# "acme/r_d" must not count what is under "acme/rxd" (a LIKE pattern would).
UNDERSCORE, LOOKALIKE = "acme/r_d", "acme/rxd/fay"
NOW = T0 + timedelta(minutes=1)


def _cost(session: str, usd: str, account: str, at: datetime) -> ApiCost:
    return ApiCost(
        session_id=session, account=account, source=Source(component="external_api", name="t"),
        occurred_at=at, api="openai", model="gpt-4o", input_tokens=1, output_tokens=1,
        cost_usd=Decimal(usd), price_source="test",
    )  # fmt: skip


# What the test sends: the team limits 1,000 tokens a day and $0.40 a month.
TEAM_DAILY, TEAM_USD = 1_000, Decimal("0.40")
YESTERDAY = 7  # alice, the day before
ALICE_IN, ALICE_OUT, ALICE_USD = 400, 100, Decimal("0.25")
BOB_ASK, BOB_HOLD = 600, 300
DANA_IN, DANA_USD = 2_000, Decimal("0.10")
GLOBEX_IN, FAY_HOLD = 50, 70


def tree_events(at: datetime = T0) -> list[Event]:
    """The tree's events, today's at `at` (the API's tests send them now)."""
    hour = timedelta(hours=1)
    alice = reserved("alice-1", 600, at, account=ALICE)
    return [
        used("alice-1", YESTERDAY, at - timedelta(days=1), account=ALICE),
        node_budget(
            TEAM,
            at,
            daily=TEAM_DAILY,
            monthly=10_000,
            hard=100_000,
            usd=(None, str(TEAM_USD), None),
        ),
        node_budget(UNDERSCORE, at, daily=100, monthly=1_000, hard=10_000),
        alice,
        used("alice-1", ALICE_IN, at, output=ALICE_OUT, rid=alice.reservation_id, account=ALICE),
        # 500 left today at the team: refused by the team, then 300 fit and stay held.
        reserved("bob-1", BOB_ASK, at, account=BOB),
        reserved("bob-1", BOB_HOLD, at, account=BOB, ttl=hour),
        _cost("alice-1", str(ALICE_USD), ALICE, at),
        used("dana-1", DANA_IN, at, account=DANA),
        _cost("dana-1", str(DANA_USD), DANA, at),
        used("globex-1", GLOBEX_IN, at, account="globex/x"),
        reserved("globex-1", 20_000, at, account="globex/x"),  # past the session's own limit
        reserved("fay-1", FAY_HOLD, at, account=LOOKALIKE, ttl=hour),
    ]


async def apply_tree(database: DatabaseSettings, at: datetime = T0) -> None:
    """`tree_events(at)` applied to `database` as the worker applies a batch (the read
    models' tests need no broker)."""
    connection = await connect(database.dsn(), database.schema_name)
    try:
        await apply_batch(connection, log_records(tree_events(at)), schema=database.schema_name)
    finally:
        await connection.close()


@pytest.fixture
async def conn(migrated_database: DatabaseSettings) -> AsyncIterator[asyncpg.Connection]:
    await apply_tree(migrated_database)
    connection = await connect(migrated_database.dsn(), migrated_database.schema_name)
    yield connection
    await connection.close()


async def test_top_accounts_ranks_a_days_nodes_by_tokens_or_cost(
    conn: asyncpg.Connection,
) -> None:
    day = T0.date()
    alice, dana = ALICE_IN + ALICE_OUT, DANA_IN
    ranked = await top_accounts(conn, "tokens", day=day)
    assert [(a.account, a.depth, a.tokens_used, a.cost_usd) for a in ranked] == [
        ("acme", 1, alice + dana, ALICE_USD + DANA_USD),
        (OPS, 2, dana, DANA_USD),
        (DANA, 3, dana, DANA_USD),
        (TEAM, 2, alice, ALICE_USD),
        (ALICE, 3, alice, ALICE_USD),
        ("globex", 1, GLOBEX_IN, 0),
        ("globex/x", 2, GLOBEX_IN, 0),
        (BOB, 3, 0, 0),
        ("acme/rxd", 2, 0, 0),
        (LOOKALIKE, 3, 0, 0),
    ]
    decisions = {a.account: (a.reservations_accepted, a.reservations_rejected,
                             a.reservations_refused) for a in ranked}  # fmt: skip
    # Refused: by the node's own limit. The team refused bob; globex's session refused.
    assert decisions["acme"] == (3, 1, 0)
    assert decisions[TEAM] == (2, 1, 1)
    assert decisions[BOB] == (1, 1, 0)
    assert decisions["globex"] == decisions["globex/x"] == (0, 1, 0)

    tenants = await top_accounts(conn, "tokens", day=day, depth=1)
    assert [(a.account, a.tokens_used) for a in tenants] == [
        ("acme", alice + dana),
        ("globex", GLOBEX_IN),
    ]
    by_cost = await top_accounts(conn, "cost", limit=3, day=day, under="acme")
    assert [(a.account, a.cost_usd) for a in by_cost] == [
        ("acme", ALICE_USD + DANA_USD),
        (TEAM, ALICE_USD),
        (ALICE, ALICE_USD),
    ]
    teams = await top_accounts(conn, "tokens", day=day, depth=2, under="acme")
    assert [a.account for a in teams] == [OPS, TEAM, "acme/rxd"]
    assert [a.account for a in await top_accounts(conn, day=day, under=TEAM)] == [
        TEAM,
        ALICE,
        BOB,
    ]
    assert await top_accounts(conn, day=day, under=UNDERSCORE) == []  # not acme/rxd's
    before = await top_accounts(conn, day=day - timedelta(days=1))
    assert [(a.account, a.tokens_used) for a in before] == [
        ("acme", YESTERDAY),
        (TEAM, YESTERDAY),
        (ALICE, YESTERDAY),
    ]
    with pytest.raises(ValueError, match="depth 0"):
        await top_accounts(conn, depth=0)


async def test_the_tree_shows_each_nodes_limits_holds_utilization_and_month(
    conn: asyncpg.Connection,
) -> None:
    tree = await account_tree(conn, now=NOW)
    assert [(n.account, n.depth, n.parent) for n in tree] == [
        ("acme", 1, None),
        (OPS, 2, "acme"),
        (DANA, 3, OPS),
        (UNDERSCORE, 2, "acme"),
        (TEAM, 2, "acme"),
        (ALICE, 3, TEAM),
        (BOB, 3, TEAM),
        ("acme/rxd", 2, "acme"),
        (LOOKALIKE, 3, "acme/rxd"),
        ("globex", 1, None),
        ("globex/x", 2, "globex"),
    ]
    nodes = {n.account: n for n in tree}
    team = nodes[TEAM]
    today = ALICE_IN + ALICE_OUT
    month = today + YESTERDAY
    assert (team.daily_limit, team.monthly_usd_limit) == (TEAM_DAILY, TEAM_USD)
    assert (team.tokens_used_today, team.tokens_used_month, team.tokens_held) == (
        today,
        month,
        BOB_HOLD,
    )
    assert team.available_tokens == TEAM_DAILY - today - BOB_HOLD
    assert (team.usd_used_month, team.available_usd) == (ALICE_USD, TEAM_USD - ALICE_USD)
    # Its USD window is the fuller one: 0.25 / 0.40 > 500 / 1,000 tokens.
    assert team.utilization == (ALICE_USD / TEAM_USD).quantize(Decimal("0.0001"))
    assert (team.tokens_month, team.cost_usd_month, team.reservations_refused_month) == (
        month,
        ALICE_USD,
        1,
    )
    acme = nodes["acme"]
    assert (acme.daily_limit, acme.available_tokens, acme.utilization) == (None, None, None)
    assert acme.tokens_held == BOB_HOLD + FAY_HOLD
    assert (acme.tokens_month, acme.cost_usd_month) == (month + DANA_IN, ALICE_USD + DANA_USD)
    underscore = nodes[UNDERSCORE]
    assert (underscore.tokens_held, underscore.utilization) == (0, Decimal(0))
    assert nodes[LOOKALIKE].tokens_held == FAY_HOLD
    # Later, bob's hold has expired and the day has turned: tomorrow's usage is none.
    later = {n.account: n for n in await account_tree(conn, now=T0 + timedelta(days=1))}
    assert (later[TEAM].tokens_held, later[TEAM].tokens_used_today) == (0, 0)
    assert later[TEAM].utilization == (ALICE_USD / TEAM_USD).quantize(Decimal("0.0001"))

    subtree = await account_tree(conn, TEAM, now=NOW)
    assert [n.account for n in subtree] == [TEAM, ALICE, BOB]
    assert await account_tree(conn, "nobody", now=NOW) == []
