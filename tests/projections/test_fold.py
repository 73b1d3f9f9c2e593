"""The pure fold: decision rules in log order, the log clock, and independence from batch
boundaries."""

from __future__ import annotations

import copy
import dataclasses
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import SOURCE, T0, budget, log_records, reserved, used
from tokenquota.projections import (
    BUILTIN_DEFAULTS,
    Limits,
    LogRecord,
    PoisonEventError,
    ProjectionState,
    fold,
)
from tokenquota.projections.state import Folded, UsageDelta
from tokenquota.schemas import (
    USAGE_TOKENS_MAX,
    ApiCost,
    BudgetSet,
    DefaultsSet,
    Event,
    Source,
    TokenReserved,
    TokenUsed,
)

LIMITS = Limits(1000, 10_000, 100_000, Decimal("0.8"), Decimal("0.95"))


def defaults(
    limits: Limits = LIMITS, *, zone: str = "UTC", skew: timedelta = timedelta(minutes=5)
) -> DefaultsSet:
    return DefaultsSet(
        source=Source(component="cli", name="tests"),
        occurred_at=T0 - timedelta(days=40),
        daily_limit=limits.daily_limit,
        monthly_limit=limits.monthly_limit,
        hard_limit=limits.hard_limit,
        warning_threshold=limits.warning_threshold,
        critical_threshold=limits.critical_threshold,
        timezone=zone,
        max_clock_skew_ms=skew // timedelta(milliseconds=1),
    )


#: A state whose partition ("usage", 0) has LIMITS as its defaults.
BASE = fold(ProjectionState(), log_records([defaults()])).state


def run(
    events: Sequence[Event],
    state: ProjectionState | None = None,
    *,
    at: Callable[[int, Event], datetime] | None = None,
    first_offset: int = 1,
) -> Folded:
    """Fold `events` as records of partition 0 (log time: `at`, by default occurred_at)."""
    return fold(state or BASE, log_records(events, at=at, first_offset=first_offset))


def api_cost(session: str, tokens: int, at: datetime = T0, *, api: str = "openai") -> ApiCost:
    """An ApiCost of `tokens` input tokens at a millionth of a dollar each."""
    return ApiCost(
        session_id=session,
        source=Source(component="external_api", name="tests"),
        occurred_at=at,
        api=api,
        model="gpt-4o",
        input_tokens=tokens,
        output_tokens=1,
        cost_usd=Decimal(tokens) / 1_000_000,
        price_source="test",
    )


def status(folded: Folded, event: TokenReserved) -> str:
    return folded.state.reservations[event.reservation_id].status


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

_DAY = timedelta(days=1)


@dataclass(frozen=True)
class _Step:
    producer: int
    session: str
    kind: str
    tokens: int
    gap_minutes: int
    jitter_seconds: int


_steps = st.lists(
    st.builds(
        _Step,
        producer=st.integers(0, 3),
        session=st.sampled_from(["a", "b"]),
        kind=st.sampled_from(["reserve", "reserve", "use", "settle", "budget", "cost"]),
        tokens=st.integers(1, 700),
        gap_minutes=st.sampled_from([0, 1, 7, 90, 600]),
        jitter_seconds=st.integers(-120, 120),
    ),
    min_size=1,
    max_size=50,
)
_skews = st.lists(
    st.sampled_from(
        [timedelta(0), timedelta(minutes=3), -timedelta(minutes=3), 2 * _DAY, -_DAY, _DAY / 3]
    ),
    min_size=4,
    max_size=4,
)


def _skewed_log(steps: list[_Step], skews: list[timedelta]) -> list[LogRecord]:
    """Events of four producers whose clocks are off by `skews`; record timestamps are the
    brokers' (jittered, as clients' send times would be)."""
    events: list[Event] = []
    times: list[datetime] = []
    broker = T0
    open_holds: dict[str, list[TokenReserved]] = {}
    for step in steps:
        broker += timedelta(minutes=step.gap_minutes)
        claimed = broker + skews[step.producer]
        event: Event
        if step.kind == "reserve":
            event = reserved(step.session, step.tokens, claimed, ttl=timedelta(minutes=30))
            open_holds.setdefault(step.session, []).append(event)
        elif step.kind == "settle" and open_holds.get(step.session):
            rid = open_holds[step.session].pop(0).reservation_id
            event = used(step.session, step.tokens, claimed, rid=rid)
        elif step.kind == "budget":
            event = budget(step.session, claimed, daily=step.tokens * 3, monthly=step.tokens * 9)
        elif step.kind == "cost":
            event = api_cost(step.session, step.tokens, claimed, api=f"api-{step.producer % 2}")
        else:
            event = used(step.session, step.tokens, claimed)
        events.append(event)
        times.append(broker + timedelta(seconds=step.jitter_seconds))
    return log_records(events, at=lambda i, e: times[i], first_offset=1)


def _check_every_grant_fitted_on_the_log_clock(records: list[LogRecord], folded: Folded) -> None:
    """An oracle independent of the fold: recompute each window's usage by the log clock's
    day and month, and the tokens held, at every accepted reservation."""
    skew = timedelta(minutes=5)  # the DefaultsSet of BASE
    limits = {"a": LIMITS, "b": LIMITS}
    usage: list[tuple[str, datetime, int]] = []  # session, log clock, tokens
    holds: dict[uuid.UUID, tuple[str, int, datetime]] = {}  # rid -> session, tokens, expiry
    clock = datetime.min.replace(tzinfo=UTC)
    for record in records:
        clock = max(clock, record.timestamp)
        event = record.event
        if isinstance(event, BudgetSet):
            limits[event.session_id] = Limits(
                event.daily_limit,
                event.monthly_limit,
                event.hard_limit,
                event.warning_threshold,
                event.critical_threshold,
            )
        elif isinstance(event, TokenUsed):
            usage.append((event.session_id, clock, event.total_tokens))
            holds.pop(event.reservation_id, None)  # type: ignore[arg-type]
        elif isinstance(event, TokenReserved):
            decided = folded.state.reservations[event.reservation_id]
            if decided.status == "rejected":
                continue
            s, limit = event.session_id, limits[event.session_id]
            held = sum(t for (hs, t, expiry) in holds.values() if hs == s and expiry >= clock)
            day = sum(t for us, c, t in usage if us == s and c.date() == clock.date())
            this_month = clock.date().replace(day=1)
            month = sum(
                t for us, c, t in usage if us == s and c.date().replace(day=1) == this_month
            )
            total = sum(t for us, _, t in usage if us == s)
            assert day + held + event.tokens <= limit.daily_limit
            assert month + held + event.tokens <= limit.monthly_limit
            assert total + held + event.tokens <= limit.hard_limit
            ahead = event.occurred_at - clock
            expiry = event.expires_at - (ahead if ahead > skew else timedelta(0))
            holds[event.reservation_id] = (s, event.tokens, expiry)


@settings(max_examples=150, deadline=None)
@given(steps=_steps, skews=_skews, cut=st.integers(0, 50))
def test_skewed_producers_never_take_a_session_past_a_limit_on_the_log_clock(
    steps: list[_Step], skews: list[timedelta], cut: int
) -> None:
    records = _skewed_log(steps, skews)
    whole = fold(BASE, records)
    _check_every_grant_fitted_on_the_log_clock(records, whole)
    # Batch boundaries change nothing: the same state, decisions and rows.
    first = fold(BASE, records[:cut])
    second = fold(first.state, records[cut:])
    assert whole.state == second.state
    assert whole.decisions == first.decisions + second.decisions
    assert whole.logs == first.logs + second.logs
    assert whole.alerts == first.alerts + second.alerts
    assert whole.clock_skewed == first.clock_skewed + second.clock_skewed
    for name in _ROLLUPS:
        assert getattr(whole, name) == _merged(getattr(first, name), getattr(second, name))
    _check_rollups_against_the_events(records, whole)
    # Every flagged event was more than the skew ahead of the log clock, and no other was.
    clock = datetime.min.replace(tzinfo=UTC)
    expected = []
    for record in records:
        clock = max(clock, record.timestamp)
        if record.event.occurred_at - clock > timedelta(minutes=5):
            expected.append(record.event.event_id)
    assert whole.clock_skewed == expected


_ROLLUPS = ("daily", "monthly", "hourly", "api_daily", "model_daily", "reservations_daily",
            "minutely")  # fmt: skip


def _merged(first: dict[Any, Any], second: dict[Any, Any]) -> dict[Any, Any]:
    """Two batches' rollup deltas added up, as the tables add them."""
    merged = {key: copy.copy(delta) for key, delta in first.items()}
    for key, delta in second.items():
        if key not in merged:
            merged[key] = copy.copy(delta)
            continue
        for f in dataclasses.fields(delta):
            setattr(merged[key], f.name, getattr(merged[key], f.name) + getattr(delta, f.name))
    return merged


def _check_rollups_against_the_events(records: list[LogRecord], folded: Folded) -> None:
    """An oracle for the rollups: each recomputed from the events and their records (the
    day and hour of the time an event is dated at; the minute of its record's log time),
    and the reservations' days from the decided reservations."""
    skew = timedelta(minutes=5)
    clock = datetime.min.replace(tzinfo=UTC)
    usage: dict[tuple[str, Any], list[int]] = {}  # (session, day|hour) -> in, out, events
    cost: dict[tuple[str, Any], Decimal] = {}
    models: dict[tuple[date, str, str], list[int]] = {}
    apis: dict[tuple[date, str, str], list[Any]] = {}
    minutes: dict[datetime, list[Any]] = {}
    for record in records:
        clock = max(clock, record.timestamp)
        event = record.event
        at = clock if event.occurred_at - clock > skew else event.occurred_at
        hour = at.replace(minute=0, second=0, microsecond=0)
        minute = minutes.setdefault(
            record.timestamp.replace(second=0, microsecond=0), [0, 0, Decimal(0), 0, 0]
        )
        minute[0] += 1
        keys = [(event.session_id, ("day", at.date())), (event.session_id, ("hour", hour))]
        keys.append((event.session_id, ("month", at.date().replace(day=1))))
        if isinstance(event, TokenUsed):
            for key in keys:
                row = usage.setdefault(key, [0, 0, 0])
                row[0] += event.input_tokens
                row[1] += event.output_tokens
                row[2] += 1
            model = models.setdefault((at.date(), event.source.component, event.model), [0, 0, 0])
            model[0] += 1
            model[1] += event.input_tokens
            model[2] += event.output_tokens
            minute[1] += event.total_tokens
        elif isinstance(event, ApiCost):
            for key in keys:
                cost[key] = cost.get(key, Decimal(0)) + event.cost_usd
            api = apis.setdefault((at.date(), event.api, event.model), [0, 0, 0, Decimal(0)])
            api[0] += 1
            api[1] += event.input_tokens
            api[2] += event.output_tokens
            api[3] += event.cost_usd
            minute[2] += event.cost_usd
        elif isinstance(event, TokenReserved):
            decided = folded.state.reservations[event.reservation_id]
            if decided.event_id == event.event_id:  # not a duplicate reservation id
                minute[3 if decided.status != "rejected" else 4] += 1

    def usage_rows(kind: str, table: dict[Any, UsageDelta]) -> None:
        expected = {
            (s, w): (*usage.get((s, (k, w)), [0, 0, 0]), cost.get((s, (k, w)), Decimal(0)))
            for (s, (k, w)) in {*usage, *cost}
            if k == kind
        }
        actual = {
            key: (d.input_tokens, d.output_tokens, d.usage_events, d.cost_usd)
            for key, d in table.items()
        }
        assert actual == expected
        assert all(d.tokens_used == d.input_tokens + d.output_tokens for d in table.values())

    usage_rows("day", folded.daily)
    usage_rows("month", folded.monthly)
    usage_rows("hour", folded.hourly)
    assert {
        key: [d.usage_events, d.input_tokens, d.output_tokens]
        for key, d in folded.model_daily.items()
    } == models
    assert {
        key: [d.requests, d.input_tokens, d.output_tokens, d.cost_usd]
        for key, d in folded.api_daily.items()
    } == apis
    assert {
        key: [
            d.events_applied, d.tokens_used, d.cost_usd, d.reservations_accepted,
            d.reservations_rejected,
        ]
        for key, d in folded.minutely.items()
    } == minutes  # fmt: skip
    days: dict[tuple[str, date], list[int]] = {}
    for r in folded.state.reservations.values():
        row = days.setdefault((r.session_id, r.requested_at.date()), [0] * 7)
        statuses = ("accepted", "rejected", "settled", "released", "expired")
        row[1 if r.status == "rejected" else 0] += 1
        if r.status in statuses[2:]:
            row[statuses.index(r.status)] += 1
        if r.status != "rejected":
            row[5] += r.tokens
        row[6] += r.settled_tokens or 0
    assert {
        key: [d.accepted, d.rejected, d.settled, d.released, d.expired, d.reserved_tokens,
              d.settled_tokens]
        for key, d in folded.reservations_daily.items()
    } == days  # fmt: skip
