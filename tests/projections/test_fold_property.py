"""The fold under skewed producers and arbitrary batch cuts: a hypothesis property."""

from __future__ import annotations

import copy
import dataclasses
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.projections.fold_support import BASE, LIMITS, api_cost
from tests.support import T0, budget, log_records, reserved, used
from tokenquota.projections import (
    Limits,
    LogRecord,
    fold,
)
from tokenquota.projections.fold import Folding
from tokenquota.projections.state import Folded, UsageDelta
from tokenquota.schemas import (
    ApiCost,
    BudgetSet,
    Event,
    TokenReserved,
    TokenUsed,
)

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


@settings(max_examples=100, deadline=None)
@given(steps=_steps, skews=_skews, size=st.integers(1, 8))
def test_a_fold_fed_in_slices_is_the_fold_of_the_whole(
    steps: list[_Step], skews: list[timedelta], size: int
) -> None:
    # The worker feeds a batch to `Folding` a slice at a time (the loop runs between);
    # what the fold keeps for the batch (the alert headroom, the chains) carries across.
    records = _skewed_log(steps, skews)
    whole = fold(BASE, records)
    folding = Folding(BASE)
    for start in range(0, len(records), size):
        folding.add(records[start : start + size])
    sliced = folding.done()
    assert sliced.state == whole.state
    assert sliced.decisions == whole.decisions
    assert sliced.logs == whole.logs
    assert sliced.alerts == whole.alerts
    for name in _ROLLUPS:
        assert getattr(sliced, name) == getattr(whole, name)


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
