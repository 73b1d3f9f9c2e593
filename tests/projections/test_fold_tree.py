"""The pure fold on budget trees: a reservation fits the session and every node above it
that has limits; usage and holds count at every node; the nearest refusing node is named;
an event naming another account than its session's is refused."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.projections.fold_support import BASE, run, status
from tests.support import T0, log_records, node_budget, reserved, used
from tokenquota.projections import PoisonEventError, ProjectionState, fold
from tokenquota.schemas import Event, partition_key

TEAM = "acme/research"
ALICE, BOB = f"{TEAM}/alice", f"{TEAM}/bob"


def test_a_team_limit_refuses_what_the_session_limit_allows_and_is_named() -> None:
    # Sessions on the partition's defaults (1,000 a day each); the team has 1,500 a day.
    a = reserved("a1", 900, account=ALICE)
    b = reserved("b1", 900, account=BOB)
    c = reserved("b1", 500, account=BOB)
    folded = run([node_budget(TEAM, daily=1_500), a, b, c])
    assert [status(folded, e) for e in (a, b, c)] == ["accepted", "rejected", "accepted"]
    refused = folded.state.reservations[b.reservation_id]
    # the team held 900 of its 1,500: 600 left, under its daily limit
    assert (refused.refused_by, refused.reason) == (TEAM, "daily_limit")
    assert (refused.available_tokens, refused.limit_tokens) == (600, 1_500)
    assert refused.account == BOB
    decision = next(d for d in folded.decisions if d.reservation_id == b.reservation_id)
    assert decision.refused_by == TEAM
    nodes = folded.state.nodes
    assert set(nodes) == {"acme", TEAM, ALICE, BOB}
    team_days = [d for (account, _), d in folded.account_daily.items() if account == TEAM]
    assert [(d.reservations_accepted, d.reservations_refused) for d in team_days] == [(2, 1)]
    assert nodes["acme"].limits is None  # no BudgetSet: unlimited
    # The refusal exhausts the team's daily window, not the session's.
    assert [(x.account, x.action, x.used_tokens) for x in folded.alerts] == [
        (TEAM, "daily_limit_refused", 0)
    ]
    assert (nodes[TEAM].daily_alert, folded.state.sessions["b1"].daily_alert) == (
        "exhausted",
        "none",
    )


def test_usage_counts_at_every_node_and_settling_frees_the_hold_everywhere() -> None:
    hold = reserved("a1", 800, account=ALICE)
    settle = used("a1", 300, T0 + timedelta(seconds=1), rid=hold.reservation_id, account=ALICE)
    late = reserved("b1", 1_000, T0 + timedelta(seconds=2), account=BOB)
    folded = run([node_budget(TEAM, daily=1_500), hold, late])
    assert status(folded, late) == "rejected"  # 800 held of the team's 1,500
    folded = run([node_budget(TEAM, daily=1_500), hold, settle, late])
    assert status(folded, late) == "accepted"  # 300 used, nothing held: 1,200 left
    for path in ("acme", TEAM, ALICE):
        node = folded.state.nodes[path]
        assert (node.tokens_used_today, node.tokens_used_month, node.tokens_used_total) == (
            300,
            300,
            300,
        )
    assert folded.state.nodes[BOB].tokens_used_total == 0


def test_a_hold_of_one_session_expires_at_an_event_of_another_in_its_tree() -> None:
    hold = reserved("a1", 1_000, account=ALICE, ttl=timedelta(seconds=30))
    later = reserved("b1", 1_000, T0 + timedelta(minutes=1), account=BOB)
    folded = run([node_budget(TEAM, daily=1_500), hold, later])
    assert status(folded, hold) == "expired"
    assert status(folded, later) == "accepted"


def test_the_tightest_node_decides_and_the_nearest_refusing_one_is_named() -> None:
    ask = reserved("a1", 700, account=ALICE)
    folded = run([node_budget("acme", daily=600), node_budget(TEAM, daily=500), ask])
    refused = folded.state.reservations[ask.reservation_id]
    assert (refused.status, refused.refused_by, refused.limit_tokens) == ("rejected", TEAM, 500)
    folded = run([node_budget("acme", daily=600), node_budget(TEAM, daily=800), ask])
    refused = folded.state.reservations[ask.reservation_id]
    assert (refused.refused_by, refused.limit_tokens) == ("acme", 600)
    # The session's own limit comes first: 1,000 a day on the defaults.
    big = reserved("a1", 1_200, account=ALICE)
    assert run([big]).state.reservations[big.reservation_id].refused_by is None


def test_node_windows_roll_over_with_the_day() -> None:
    first = used("a1", 900, account=ALICE)
    ask = reserved("a1", 900, T0 + timedelta(days=1), account=ALICE)
    folded = run([node_budget(TEAM, daily=1_000, monthly=5_000), first, ask])
    assert status(folded, ask) == "accepted"
    team = folded.state.nodes[TEAM]
    assert (team.tokens_used_today, team.tokens_used_month) == (0, 900)


def test_a_node_budget_set_mid_stream_keeps_the_usage_and_applies_from_then_on() -> None:
    spent = used("a1", 800, account=ALICE)
    before = reserved("a1", 150, T0 + timedelta(seconds=1), account=ALICE)
    after = reserved("a1", 150, T0 + timedelta(seconds=3), account=ALICE)
    tighten = node_budget(TEAM, T0 + timedelta(seconds=2), daily=900)
    folded = run([spent, before, tighten, after])
    assert [status(folded, e) for e in (before, after)] == ["accepted", "rejected"]
    team = folded.state.nodes[TEAM]
    assert team.tokens_used_today == 800 and team.budget_event == tighten.event_id


@pytest.mark.parametrize(
    ("first", "then"),
    [(ALICE, BOB), (None, ALICE), (ALICE, None)],
    ids=["another account", "none, then one", "one, then none"],
)
def test_an_event_naming_another_account_than_its_sessions_is_poison(
    first: str | None, then: str | None
) -> None:
    wrong = used("s", 1, T0 + timedelta(seconds=1), account=then)
    with pytest.raises(PoisonEventError, match="session 's' belongs to") as raised:
        run([used("s", 1, account=first), wrong])
    assert raised.value.event_id == wrong.event_id


def test_a_tree_folds_the_same_cut_anywhere_with_only_what_the_store_reloads() -> None:
    events: list[Event] = [
        node_budget(TEAM, daily=2_000),
        reserved("a1", 900, account=ALICE),
        reserved("b1", 900, T0 + timedelta(seconds=1), account=BOB),
        reserved("b1", 500, T0 + timedelta(seconds=2), account=BOB),
        used("a1", 100, T0 + timedelta(seconds=3), account=ALICE),
    ]
    whole = run(events)
    for cut in range(1, len(events)):
        first = run(events[:cut])
        # What _load_state would hand the second batch: the tree's nodes, its accepted
        # reservations and those the batch names, the sessions it names.
        state = first.state
        named = {getattr(e, "reservation_id", None) for e in events[cut:]}
        reloaded = ProjectionState(
            sessions={k: v for k, v in state.sessions.items()},
            reservations={
                rid: r
                for rid, r in state.reservations.items()
                if r.status == "accepted" or rid in named
            },
            partitions=state.partitions,
            nodes=state.nodes,
        )
        second = run(events[cut:], reloaded, first_offset=1 + cut)
        for rid, record in whole.state.reservations.items():
            folded = second.state.reservations.get(rid) or state.reservations[rid]
            assert folded == record, cut
        assert second.state.nodes == whole.state.nodes, cut


def test_events_of_a_tree_are_keyed_by_their_tenant_others_by_their_session() -> None:
    assert partition_key(reserved("a1", 1, account=ALICE)) == b"acme"
    assert partition_key(node_budget(TEAM)) == b"acme"
    assert partition_key(reserved("a1", 1)) == b"a1"


def test_sessions_without_an_account_fold_as_before() -> None:
    events: list[Event] = [reserved("s", 600), reserved("s", 500), used("s", 10)]
    folded = fold(BASE, log_records(events, first_offset=1))
    assert folded.state.nodes == {} and folded.changed_nodes == set()
    assert all(
        r.account is None and r.refused_by is None for r in folded.state.reservations.values()
    )


def test_a_node_is_written_only_when_it_changes() -> None:
    # Deciding and releasing reservations changes nothing of a node's row (their counts
    # are in its days); usage does, and so does the first refusal that exhausts a window.
    setup = run([node_budget(TEAM, daily=1_000), reserved("a1", 10, account=ALICE)])
    assert setup.changed_nodes == {"acme", TEAM, ALICE}  # new nodes are written
    later = T0 + timedelta(minutes=1)
    a = reserved("a1", 300, later, account=ALICE)
    b = reserved("b1", 300, later, account=BOB)
    quiet = run([a, b, used("a1", 0, later, rid=a.reservation_id, account=ALICE)],
                setup.state, first_offset=3)  # fmt: skip
    assert quiet.changed_nodes == {BOB}  # bob's node is new; the others did not change
    assert quiet.state.nodes[TEAM].updated_at == setup.state.nodes[TEAM].updated_at
    settled = used("b1", 200, later, rid=b.reservation_id, account=BOB)
    refused = reserved("a1", 900, later, account=ALICE)
    again = reserved("a1", 900, later, account=ALICE)
    busy = run([settled, refused, again], quiet.state, first_offset=6)
    assert [status(busy, e) for e in (refused, again)] == ["rejected", "rejected"]
    assert busy.changed_nodes == {"acme", TEAM, BOB}
    assert busy.state.nodes[TEAM].daily_alert == "exhausted"
    assert busy.state.nodes[TEAM].updated_at == later
    again_only = run([reserved("a1", 900, later, account=ALICE)], busy.state, first_offset=9)
    assert again_only.changed_nodes == set()  # already exhausted: nothing new
