"""The pure fold: decision rules in log order, and independence from batch boundaries."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import T0, budget, reserved, used
from tokenquota.projections import FoldConfig, Limits, ProjectionState, fold
from tokenquota.projections.state import Folded
from tokenquota.schemas import Event, TokenReserved

LIMITS = Limits(1000, 10_000, 100_000, Decimal("0.8"), Decimal("0.95"))
CONFIG = FoldConfig(LIMITS)


def run(events: list[Event], state: ProjectionState | None = None) -> Folded:
    return fold(state or ProjectionState(), events, CONFIG)


def test_sessions_without_a_budget_get_the_configured_defaults() -> None:
    folded = run([used("s", 10)])
    session = folded.state.sessions["s"]
    assert session.limits == LIMITS
    assert (session.tokens_used_today, session.tokens_used_total) == (10, 10)


def test_a_reservation_is_accepted_iff_it_fits_and_held_tokens_count() -> None:
    a, b, c = reserved("s", 600), reserved("s", 400), reserved("s", 1)
    folded = run([a, b, c])
    statuses = [folded.state.reservations[e.reservation_id].status for e in (a, b, c)]
    assert statuses == ["accepted", "accepted", "rejected"]
    rejected = folded.state.reservations[c.reservation_id]
    assert (rejected.reason, rejected.available_tokens, rejected.limit_tokens) == (
        "daily_limit",
        0,
        1000,
    )
    assert [log.action for log in folded.logs] == ["reservation_rejected"]


def test_settling_releases_the_rest_and_flags_overage() -> None:
    small, big = reserved("s", 500), reserved("s", 100)
    folded = run(
        [
            small,
            big,
            used("s", 200, rid=small.reservation_id),
            used("s", 150, rid=big.reservation_id),
        ]
    )
    state = folded.state
    assert state.reservations[small.reservation_id].status == "settled"
    assert state.reservations[small.reservation_id].settled_tokens == 200
    assert state.reservations[big.reservation_id].overage_tokens == 50
    assert state.sessions["s"].tokens_used_today == 350
    assert state.sessions["s"].overage_tokens == 50
    assert "overage" in [log.action for log in folded.logs]
    # Nothing is held any more: the whole rest of the day's budget is free again.
    after = run([reserved("s", 650, T0 + timedelta(seconds=1))], state)
    assert list(after.state.reservations.values())[-1].status == "accepted"


def test_usage_without_or_with_an_unknown_reservation_is_still_counted() -> None:
    ghost = reserved("s", 10)
    folded = run([used("s", 5), used("s", 7, rid=ghost.reservation_id)])
    assert folded.state.sessions["s"].tokens_used_total == 12
    assert [log.action for log in folded.logs] == ["unmatched_settlement"]


def test_an_expired_reservation_stops_holding_tokens() -> None:
    hold = reserved("s", 1000, ttl=timedelta(seconds=30))
    later = reserved("s", 1000, T0 + timedelta(seconds=31))
    folded = run([hold, later])
    assert folded.state.reservations[hold.reservation_id].status == "expired"
    assert folded.state.reservations[later.reservation_id].status == "accepted"


def test_low_priority_stops_at_the_critical_threshold_high_may_use_it_all() -> None:
    low, high = reserved("s", 951, priority="low"), reserved("s", 1000, priority="high")
    folded = run([low, high])
    assert folded.state.reservations[low.reservation_id].reason == "critical_threshold"
    assert folded.state.reservations[high.reservation_id].status == "accepted"


def test_budget_set_applies_from_its_place_in_the_log() -> None:
    first, second = reserved("s", 2000), reserved("s", 2000, T0 + timedelta(seconds=2))
    folded = run([first, budget("s", T0 + timedelta(seconds=1), daily=5000), second])
    assert folded.state.reservations[first.reservation_id].status == "rejected"
    assert folded.state.reservations[second.reservation_id].status == "accepted"
    assert folded.state.sessions["s"].limits.source == "event"


def test_windows_roll_with_the_event_time_and_hard_limit_exhausts() -> None:
    config = FoldConfig(Limits(100, 150, 200, Decimal("0.8"), Decimal("0.95")))
    events: list[Event] = [used("s", 100), used("s", 50, T0 + timedelta(days=1))]
    state = fold(ProjectionState(), events, config).state
    assert state.sessions["s"].tokens_used_today == 50
    assert state.sessions["s"].tokens_used_month == 150
    next_month = T0 + timedelta(days=10)
    later = fold(state, [used("s", 50, next_month), reserved("s", 1, next_month)], config)
    session = later.state.sessions["s"]
    assert (session.tokens_used_month, session.tokens_used_total) == (50, 200)
    assert next(iter(later.state.reservations.values())).reason == "hard_limit"


def test_threshold_crossings_are_logged_once_per_window() -> None:
    events: list[Event] = [used("s", 500), used("s", 310), used("s", 10), used("s", 150)]
    folded = run(events)
    daily = [log.action for log in folded.logs if log.action.startswith("daily")]
    assert daily == ["daily_warning_threshold", "daily_critical_threshold"]
    assert folded.state.sessions["s"].daily_alert == "critical"
    next_day = run([used("s", 900, T0 + timedelta(days=1))], folded.state)
    assert [log.action for log in next_day.logs] == ["daily_warning_threshold"]


def test_the_fold_does_not_change_its_input() -> None:
    state = run([used("s", 5)]).state
    run([used("s", 7)], state)
    assert state.sessions["s"].tokens_used_total == 5


_event_specs = st.lists(
    st.tuples(
        st.sampled_from(["a", "b"]),
        st.sampled_from(["reserve", "use", "settle", "budget"]),
        st.integers(1, 700),
        st.integers(0, 120),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(specs=_event_specs, cut=st.integers(0, 40))
def test_batch_boundaries_do_not_change_the_result(
    specs: list[tuple[str, str, int, int]], cut: int
) -> None:
    events: list[Event] = []
    open_reservations: dict[str, list[TokenReserved]] = {}
    for i, (session, kind, tokens, minutes) in enumerate(specs):
        at = T0 + timedelta(minutes=i * 7 + minutes)
        if kind == "reserve":
            event = reserved(session, tokens, at, ttl=timedelta(minutes=30))
            open_reservations.setdefault(session, []).append(event)
            events.append(event)
        elif kind == "settle" and open_reservations.get(session):
            events.append(
                used(session, tokens, at, rid=open_reservations[session].pop(0).reservation_id)
            )
        elif kind == "budget":
            events.append(budget(session, at, daily=tokens * 3))
        else:
            events.append(used(session, tokens, at))
    whole = run(events)
    first = run(events[:cut])
    second = run(events[cut:], first.state)
    assert whole.state == second.state
    assert [d.status for d in whole.decisions] == [
        d.status for d in first.decisions + second.decisions
    ]
    # Every granted reservation fitted the room there was when it was decided.
    for record in whole.state.reservations.values():
        if record.status != "rejected":
            assert record.tokens <= record.available_tokens
        else:
            assert record.tokens > record.available_tokens
