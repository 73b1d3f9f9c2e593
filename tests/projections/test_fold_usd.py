"""The pure fold on USD limits: a priced reservation holds its price at the session and
every node above it from its acceptance until its ApiCost (or release, or expiry); a
window without room refuses, and the refusal names the level and its numbers."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from tests.projections.fold_support import api_cost, run, status
from tests.support import T0, budget, node_budget, reserved, used

TEAM = "acme/research"
ALICE, BOB = f"{TEAM}/alice", f"{TEAM}/bob"
S = timedelta(seconds=1)


def test_a_team_usd_limit_refuses_a_call_the_tokens_allow_and_names_its_numbers() -> None:
    spent = api_cost("a1", 10, usd="498.20", account=ALICE)
    held = reserved("a1", 100, T0 + S, account=ALICE, usd="1.50")
    asked = reserved("b1", 100, T0 + 2 * S, account=BOB, usd="0.90")
    team = node_budget(TEAM, usd=(None, "500", None))
    folded = run([team, spent, held, asked])
    assert [status(folded, e) for e in (held, asked)] == ["accepted", "rejected"]
    refused = folded.state.reservations[asked.reservation_id]
    assert (refused.refused_by, refused.reason) == (TEAM, "monthly_usd_limit")
    assert (refused.limit_usd, refused.used_usd, refused.held_usd) == (
        Decimal(500),
        Decimal("498.20"),
        Decimal("1.50"),
    )
    assert refused.reserved_usd == Decimal("0.90") and refused.usd_held is None
    for path in ("acme", TEAM, ALICE):
        assert folded.state.nodes[path].usd_used_month == Decimal("498.20")
    assert folded.state.nodes[BOB].usd_used_total == 0
    # The same call that fits: 0.30 of 0.30 left
    fits = reserved("b1", 100, T0 + 3 * S, account=BOB, usd="0.30")
    assert status(run([team, spent, held, fits]), fits) == "accepted"


def test_the_usd_hold_outlives_the_token_settlement_until_the_api_cost() -> None:
    team = node_budget(TEAM, usd=("1.00", None, None))
    first = reserved("a1", 100, account=ALICE, usd="0.80")
    tokens = used("a1", 100, T0 + S, rid=first.reservation_id, account=ALICE)
    cost = api_cost("a1", 100, T0 + 2 * S, usd="0.25", rid=first.reservation_id, account=ALICE)
    second = reserved("b1", 100, T0 + 3 * S, account=BOB, usd="0.70")
    # Between TokenUsed and ApiCost the call's price is still held: 0.80 of 1.00.
    assert status(run([team, first, tokens, second]), second) == "rejected"
    folded = run([team, first, tokens, cost, second])
    assert status(folded, second) == "accepted"  # 0.25 spent, 0.70 held
    record = folded.state.reservations[first.reservation_id]
    assert (record.status, record.usd_held, record.settled_usd) == (
        "settled",
        None,
        Decimal("0.25"),
    )
    assert folded.state.nodes[TEAM].usd_used_today == Decimal("0.25")


def test_a_release_and_an_expiry_end_the_usd_hold() -> None:
    team = node_budget(TEAM, usd=(None, None, "1.00"))
    first = reserved("a1", 100, account=ALICE, usd="0.80", ttl=timedelta(minutes=1))
    release = used("a1", 0, T0 + S, rid=first.reservation_id, account=ALICE)
    after_release = reserved("b1", 100, T0 + 2 * S, account=BOB, usd="0.90")
    assert status(run([team, first, release, after_release]), after_release) == "accepted"
    # Settled in tokens but no ApiCost ever comes: the hold ends when it expires.
    tokens = used("a1", 100, T0 + S, rid=first.reservation_id, account=ALICE)
    before = reserved("b1", 100, T0 + 30 * S, account=BOB, usd="0.90")
    after = reserved("b1", 100, T0 + 61 * S, account=BOB, usd="0.90")
    folded = run([team, first, tokens, before, after])
    assert [status(folded, e) for e in (before, after)] == ["rejected", "accepted"]
    assert folded.state.reservations[first.reservation_id].usd_held is None


def test_a_session_usd_limit_without_an_account() -> None:
    limits = budget("s1", usd=("0.50", "5", "50"))
    first = reserved("s1", 10, usd="0.40")
    second = reserved("s1", 10, T0 + S, usd="0.20")
    cost = api_cost("s1", 10, T0 + 2 * S, usd="0.05", rid=first.reservation_id)
    third = reserved("s1", 10, T0 + 3 * S, usd="0.20")
    folded = run([limits, first, second, cost, third])
    assert [status(folded, e) for e in (first, second, third)] == [
        "accepted",
        "rejected",
        "accepted",
    ]
    refused = folded.state.reservations[second.reservation_id]
    assert (refused.refused_by, refused.reason, refused.limit_usd) == (
        None,
        "daily_usd_limit",
        Decimal("0.50"),
    )
    session = folded.state.sessions["s1"]
    assert session.usd_used_today == session.usd_used_total == Decimal("0.05")
    # The next day the daily window is empty again; the monthly one keeps the spend.
    next_day = reserved("s1", 10, T0 + timedelta(days=1), usd="0.45")
    folded = run([limits, first, cost, next_day])
    assert status(folded, next_day) == "accepted"
    session = folded.state.sessions["s1"]
    assert (session.usd_used_today, session.usd_used_month) == (Decimal(0), Decimal("0.05"))


def test_an_unpriced_call_is_refused_only_once_a_limit_is_spent() -> None:
    limits = budget("s1", usd=("1.00", None, None))
    unpriced = reserved("s1", 10, T0 + S)
    assert status(run([limits, api_cost("s1", 1, usd="0.99"), unpriced]), unpriced) == "accepted"
    folded = run([limits, api_cost("s1", 1, usd="1.00"), unpriced])
    assert status(folded, unpriced) == "rejected"
    assert folded.state.reservations[unpriced.reservation_id].reason == "daily_usd_limit"


def test_low_priority_stops_at_the_critical_threshold_of_a_usd_limit() -> None:
    limits = budget("s1", usd=("10", None, None), critical="0.9")
    low = reserved("s1", 10, T0 + S, priority="low", usd="0.60")
    normal = reserved("s1", 10, T0 + S, usd="0.60")
    spent = api_cost("s1", 1, usd="8.50")
    refused = run([limits, spent, low]).state.reservations[low.reservation_id]
    assert (refused.status, refused.limit_usd) == ("rejected", Decimal("9.0"))
    assert status(run([limits, spent, normal]), normal) == "accepted"


def test_a_cost_above_the_price_counts_in_full_and_an_unknown_one_is_logged() -> None:
    limits = budget("s1", usd=(None, None, "1.00"))
    first = reserved("s1", 10, usd="0.10")
    cost = api_cost("s1", 10, T0 + S, usd="0.95", rid=first.reservation_id)
    stray = api_cost("s1", 10, T0 + 2 * S, usd="0.01", rid=reserved("s2", 1).reservation_id)
    after = reserved("s1", 10, T0 + 3 * S, usd="0.05")
    folded = run([limits, first, cost, stray, after])
    assert status(folded, after) == "rejected"  # 0.96 spent of 1.00
    assert folded.state.sessions["s1"].usd_used_total == Decimal("0.96")
    assert [row.action for row in folded.logs] == [
        "total_usd_warning_threshold",  # 0.95 of 1.00: warning and critical at once
        "total_usd_critical_threshold",
        "unmatched_cost",
        "total_usd_limit_refused",
    ]
