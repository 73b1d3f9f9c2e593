"""The pure fold: decision rules in log order and the log clock (the batch-cut property is
in test_fold_property.py)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from tests.projections.fold_support import LIMITS, api_cost, defaults, run, status
from tests.support import SOURCE, T0, budget, cyclic_garbage, log_records, reserved, used
from tokenquota.projections import (
    BUILTIN_DEFAULTS,
    Limits,
    PoisonEventError,
    ProjectionState,
    fold,
)
from tokenquota.schemas import (
    USAGE_TOKENS_MAX,
    Event,
)


def test_a_fold_leaves_no_reference_cycle_behind() -> None:
    # The worker collects cycles rarely (gc_settings.bulk_gc); a fold that made one kept
    # each batch's state and rows alive until a collection, and the long collections
    # showed as a latency tail (p99 at 25 % of capacity 83-173 ms instead of about 75).
    hold = reserved("s", 100, T0 + timedelta(seconds=1))
    settle = used("s", 90, T0 + timedelta(seconds=2), rid=hold.reservation_id)
    events: list[Event] = [
        budget("s"), used("s", 10), hold, settle, api_cost("s", 5, T0 + timedelta(seconds=3)),
        used("u", 7, account="acme/team/u"),
        reserved("u", 20, T0 + timedelta(seconds=4), account="acme/team/u"),
    ]  # fmt: skip

    def fold_them() -> None:
        assert run(events).decisions  # it did fold

    assert cyclic_garbage(fold_them) == 0


def test_sessions_without_a_budget_get_the_defaults_in_force_in_their_partition() -> None:
    folded = run([used("s", 10)])
    session = folded.state.sessions["s"]
    assert session.limits == LIMITS
    assert (session.tokens_used_today, session.tokens_used_total) == (10, 10)
    # Before any DefaultsSet: the built-in defaults, never a configuration.
    fresh = fold(ProjectionState(), log_records([used("t", 1)]))
    assert fresh.state.sessions["t"].limits == BUILTIN_DEFAULTS.default_limits


def test_a_defaults_set_applies_to_sessions_first_seen_after_it() -> None:
    later = Limits(50, 500, 5000, Decimal("0.5"), Decimal("0.9"))
    folded = run([used("old", 1), defaults(later), used("new", 1), used("old", 1)])
    assert folded.state.sessions["old"].limits == LIMITS
    assert folded.state.sessions["new"].limits == later
    partition = folded.state.partitions[("usage", 0)]
    assert partition.defaults.default_limits == later
    assert ("usage", 0) in folded.changed_defaults
    # The integration_logs view shows the event itself: no notice of its own.
    assert folded.logs == []


def test_a_reservation_is_accepted_iff_it_fits_and_held_tokens_count() -> None:
    a, b, c = reserved("s", 600), reserved("s", 400), reserved("s", 1)
    folded = run([a, b, c])
    assert [status(folded, e) for e in (a, b, c)] == ["accepted", "accepted", "rejected"]
    rejected = folded.state.reservations[c.reservation_id]
    assert (rejected.reason, rejected.available_tokens, rejected.limit_tokens) == (
        "daily_limit",
        0,
        1000,
    )
    # The decision is in reservations (the view shows it); refused at the daily limit,
    # the window is exhausted: one notice and one alert.
    assert [log.action for log in folded.logs] == ["daily_limit_refused"]
    assert folded.decisions[2].reason == "daily_limit"
    assert [d.reason for d in folded.decisions[:2]] == [None, None]
    assert {d.session_id for d in folded.decisions} == {"s"}


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
    assert status(folded, small) == "settled"
    assert state.reservations[small.reservation_id].settled_tokens == 200
    assert state.reservations[big.reservation_id].overage_tokens == 50
    assert state.sessions["s"].tokens_used_today == 350
    assert state.sessions["s"].overage_tokens == 50
    assert "overage" in [log.action for log in folded.logs]
    # Nothing is held any more: the whole rest of the day's budget is free again.
    after = run([reserved("s", 650, T0 + timedelta(seconds=1))], state, first_offset=5)
    assert list(after.state.reservations.values())[-1].status == "accepted"


def test_usage_without_or_with_an_unknown_reservation_is_still_counted() -> None:
    ghost = reserved("s", 10)
    folded = run([used("s", 5), used("s", 7, rid=ghost.reservation_id)])
    assert folded.state.sessions["s"].tokens_used_total == 12
    assert [log.action for log in folded.logs] == ["unmatched_settlement"]


def test_a_reservation_expires_on_the_log_clock() -> None:
    hold = reserved("s", 1000, ttl=timedelta(seconds=30))
    later = reserved("s", 1000, T0 + timedelta(seconds=31))
    folded = run([hold, later])
    assert (status(folded, hold), status(folded, later)) == ("expired", "accepted")
    # An event dated past the expiry but logged before it expires nothing.
    still = reserved("s", 1, T0 + timedelta(seconds=31))
    folded = run([hold, still], at=lambda i, e: T0 + timedelta(seconds=i))
    assert (status(folded, hold), status(folded, still)) == ("accepted", "rejected")


def test_low_priority_stops_at_the_critical_threshold_high_may_use_it_all() -> None:
    low, high = reserved("s", 951, priority="low"), reserved("s", 1000, priority="high")
    folded = run([low, high])
    assert folded.state.reservations[low.reservation_id].reason == "critical_threshold"
    assert status(folded, high) == "accepted"


def test_budget_set_applies_from_its_place_in_the_log() -> None:
    first, second = reserved("s", 2000), reserved("s", 2000, T0 + timedelta(seconds=2))
    folded = run([first, budget("s", T0 + timedelta(seconds=1), daily=5000), second])
    assert (status(folded, first), status(folded, second)) == ("rejected", "accepted")
    assert folded.state.sessions["s"].limits.source == "event"


def test_windows_roll_with_the_log_clock_and_the_hard_limit_exhausts() -> None:
    small = Limits(100, 150, 200, Decimal("0.8"), Decimal("0.95"))
    start = fold(ProjectionState(), log_records([defaults(small)])).state
    state = run([used("s", 100), used("s", 50, T0 + timedelta(days=1))], start).state
    assert state.sessions["s"].tokens_used_today == 50
    assert state.sessions["s"].tokens_used_month == 150
    next_month = T0 + timedelta(days=10)
    later = run([used("s", 50, next_month), reserved("s", 1, next_month)], state, first_offset=9)
    session = later.state.sessions["s"]
    assert (session.tokens_used_month, session.tokens_used_total) == (50, 200)
    assert next(iter(later.state.reservations.values())).reason == "hard_limit"


def test_the_windows_are_days_of_the_partitions_time_zone() -> None:
    state = fold(ProjectionState(), log_records([defaults(zone="Asia/Tokyo")])).state
    # 12:00 UTC is 21:00 in Tokyo; 16:00 UTC is 01:00 the next day there.
    folded = run([used("s", 10), used("s", 20, T0 + timedelta(hours=4))], state)
    session = folded.state.sessions["s"]
    assert (session.current_day, session.tokens_used_today) == (date(2026, 11, 25), 20)
    assert sorted(day for _, day in folded.daily) == [date(2026, 11, 24), date(2026, 11, 25)]
    assert session.last_reset == datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
    assert folded.state.partitions[("usage", 0)].defaults.zone == ZoneInfo("Asia/Tokyo")


def test_threshold_crossings_are_logged_once_per_window() -> None:
    events: list[Event] = [used("s", 500), used("s", 310), used("s", 10), used("s", 150)]
    folded = run(events)
    daily = [log.action for log in folded.logs if log.action.startswith("daily")]
    assert daily == ["daily_warning_threshold", "daily_critical_threshold"]
    assert folded.state.sessions["s"].daily_alert == "critical"
    next_day = run([used("s", 900, T0 + timedelta(days=1))], folded.state, first_offset=9)
    assert [log.action for log in next_day.logs] == ["daily_warning_threshold"]


def test_a_raised_budget_lowers_the_alerts_and_a_later_crossing_is_logged_again() -> None:
    folded = run([used("s", 960), budget("s", T0 + timedelta(seconds=1), daily=2000)])
    assert folded.state.sessions["s"].daily_alert == "none"
    again = run([used("s", 700, T0 + timedelta(seconds=2))], folded.state, first_offset=9)
    assert again.state.sessions["s"].daily_alert == "warning"
    assert [log.action for log in again.logs] == ["daily_warning_threshold"]


def test_the_fold_does_not_change_its_input() -> None:
    state = run([used("s", 5)]).state
    run([used("s", 7)], state, first_offset=5)
    assert state.sessions["s"].tokens_used_total == 5
    assert state.partitions[("usage", 0)].clock == T0


# -- the log clock: a producer's clock cannot move budgets -----------------------------------


def test_a_future_dated_event_moves_no_window_and_cannot_unlock_the_daily_limit() -> None:
    """The scenario of the issue: 900 of 1,000 daily tokens used; one TokenUsed of 1 token
    dated a day and an hour ahead; a TokenReserved of 900 dated now."""
    now = T0
    skewed = used("s", 1, now + timedelta(days=1, hours=1))
    grab = reserved("s", 900, now + timedelta(seconds=2))
    folded = run(
        [used("s", 900, now), skewed, grab],
        at=lambda i, e: now + timedelta(seconds=i),  # the broker's clock: now
    )
    assert status(folded, grab) == "rejected"
    session = folded.state.sessions["s"]
    assert (session.current_day, session.tokens_used_today) == (now.date(), 901)
    assert folded.clock_skewed == [skewed.event_id]
    flag = next(log for log in folded.logs if log.action == "clock_skew")
    assert flag.event_id == skewed.event_id
    assert (flag.integration_type, flag.component_name) == (SOURCE.component, SOURCE.name)
    assert flag.metadata is not None and flag.metadata["producer"] == "sdk/tests"
    assert flag.metadata["ahead_ms"] == (timedelta(days=1, hours=1) - timedelta(seconds=1)) // (
        timedelta(milliseconds=1)
    )
    # Counted at the log clock: today's rollup, not tomorrow's.
    assert set(folded.daily) == {("s", now.date())}
    assert folded.daily[("s", now.date())].tokens_used == 901


def test_a_future_dated_event_does_not_expire_the_holds_of_others() -> None:
    hold = reserved("s", 800)
    folded = run(
        [hold, used("s", 1, T0 + timedelta(days=2)), reserved("s", 500, T0)],
        at=lambda i, e: T0 + timedelta(seconds=i),
    )
    assert status(folded, hold) == "accepted"
    assert list(folded.state.reservations.values())[-1].status == "rejected"


def test_within_the_skew_occurred_at_dates_the_event_but_the_window_is_the_log_clocks() -> None:
    late_evening = datetime(2026, 11, 24, 23, 59, tzinfo=UTC)
    ahead = used("s", 10, late_evening + timedelta(minutes=3))  # tomorrow by its own clock
    folded = run([used("s", 5, late_evening), ahead], at=lambda i, e: late_evening)
    session = folded.state.sessions["s"]
    assert (session.current_day, session.tokens_used_today) == (late_evening.date(), 15)
    assert folded.clock_skewed == []
    assert ("s", date(2026, 11, 25)) in folded.daily  # dated by occurred_at


def test_an_event_from_the_past_counts_in_todays_window_and_its_own_days_rollup() -> None:
    today = T0 + timedelta(days=3)
    folded = run(
        [used("s", 100, today), used("s", 50, T0)],  # the second: three days late
        at=lambda i, e: today,
    )
    session = folded.state.sessions["s"]
    assert (session.current_day, session.tokens_used_today) == (today.date(), 150)
    assert folded.daily[("s", T0.date())].tokens_used == 50
    assert folded.daily[("s", today.date())].tokens_used == 100
    assert folded.clock_skewed == []


def test_a_reservation_already_expired_on_the_log_clock_is_refused_with_that_reason() -> None:
    behind = reserved("s", 10, T0 - timedelta(minutes=10), ttl=timedelta(minutes=5))
    folded = run([behind], at=lambda i, e: T0)
    record = folded.state.reservations[behind.reservation_id]
    assert (record.status, record.reason, record.decided_at) == ("rejected", "expired", T0)
    assert folded.decisions[0].reason == "expired"
    assert folded.logs == [] and folded.alerts == []  # no window refused it
    assert folded.state.sessions["s"].reservations_rejected == 1


def test_a_reservation_counted_at_the_log_clock_keeps_its_time_to_live_from_there() -> None:
    ahead = reserved("s", 10, T0 + timedelta(days=1), ttl=timedelta(minutes=5))
    folded = run([ahead], at=lambda i, e: T0)
    record = folded.state.reservations[ahead.reservation_id]
    assert record.status == "accepted"
    assert (record.requested_at, record.decided_at) == (T0, T0)
    assert record.expires_at == T0 + timedelta(minutes=5)


def test_the_log_clock_never_moves_back() -> None:
    folded = run(
        [used("s", 1), used("s", 2)],
        at=lambda i, e: T0 + timedelta(days=1) if i == 0 else T0,
    )
    assert folded.state.partitions[("usage", 0)].clock == T0 + timedelta(days=1)
    assert folded.state.sessions["s"].tokens_used_today == 3


def test_a_sum_that_would_overflow_its_bigint_is_refused_as_poison() -> None:
    big = [used("s", USAGE_TOKENS_MAX, output=USAGE_TOKENS_MAX) for _ in range(2)]
    state = run(big[:1]).state
    with pytest.raises(PoisonEventError, match="BIGINT") as refused:
        run(big[1:], state, first_offset=5)
    assert refused.value.event_id == big[1].event_id


# -- properties --------------------------------------------------------------------------
