"""What each event adds to the rollups the read models read, aggregated per batch.

The fold calls these as it applies events; each rollup is a dict keyed as its table is,
so a batch writes one row per key (`projections/writes.py` adds them to the tables).
Every key comes from the event or its record: the session's usage by the day, month and
UTC hour the event is dated at (`Moment.at`, as session_usage_daily dates it), cost and
usage per API or component and model by that day, reservations by the day they were
requested, and the whole pipeline by the minute of each record's log time. An event
of a session in a budget tree adds the same to every node from its tenant down to its
account, by that day and month (gathered per account and spread once per batch).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from tokenquota.schemas import ApiCost, TokenUsed, ancestors

from .budget import local_day, month_of
from .log_clock import Moment
from .state import (
    AccountDelta,
    Folded,
    MinuteDelta,
    ReservationDayDelta,
    ReservationRecord,
    ReservationStatus,
    UsageDelta,
)

__all__ = [
    "Calendar",
    "add_cost",
    "add_usage",
    "count_decision",
    "count_outcome",
    "hour_of",
    "spread_accounts",
]

_MINUTE = timedelta(minutes=1)
_HOUR = timedelta(hours=1)
_NEVER = datetime.max.replace(tzinfo=UTC) - _HOUR


def hour_of(at: datetime) -> datetime:
    """The UTC hour holding `at`."""
    if at.tzinfo is not UTC:  # every decoded event is in UTC already
        at = at.astimezone(UTC)
    return at.replace(minute=0, second=0, microsecond=0)


class Calendar:
    """The month of a day, the UTC hour of a time and the minute row of a log time, for
    events that come (nearly) in time order: the last answers are kept, so most events
    cost a comparison or two instead of building a datetime."""

    __slots__ = (
        "_day", "_hour_end", "_hour_start", "_minute", "_minute_end", "_month", "_sessions",
    )  # fmt: skip

    def __init__(self) -> None:
        self._day: date | None = None
        self._month = _NEVER.date()
        self._hour_start = self._hour_end = self._minute_end = _NEVER
        self._minute = MinuteDelta()
        #: Per session, its last day and hour and their daily, monthly and hourly rows.
        self._sessions: dict[str, tuple[date, datetime, UsageDelta, UsageDelta, UsageDelta]] = {}

    def month(self, day: date) -> date:
        """The first day of the month holding `day`."""
        if day != self._day:
            self._day, self._month = day, month_of(day)
        return self._month

    def hour(self, at: datetime) -> datetime:
        """The UTC hour holding `at`."""
        if not self._hour_start <= at < self._hour_end:
            self._hour_start = hour_of(at)
            self._hour_end = self._hour_start + _HOUR
        return self._hour_start

    def session_rows(
        self, out: Folded, session_id: str, moment: Moment
    ) -> tuple[UsageDelta, UsageDelta, UsageDelta]:
        """The session's daily, monthly and hourly rows of an event dated `moment.at`."""
        day, hour = moment.day, self.hour(moment.at)
        last = self._sessions.get(session_id)
        if last is not None and last[0] == day and last[1] == hour:
            return last[2], last[3], last[4]
        daily = out.daily[session_id, day]
        monthly = out.monthly[session_id, self.month(day)]
        hourly = out.hourly[session_id, hour]
        self._sessions[session_id] = (day, hour, daily, monthly, hourly)
        return daily, monthly, hourly

    def minute(self, out: Folded, log_time: datetime) -> MinuteDelta:
        """The system_usage_minutely row of the minute holding `log_time` (a record's UTC
        timestamp)."""
        if not self._minute_end - _MINUTE <= log_time < self._minute_end:
            start = log_time.replace(second=0, microsecond=0)
            self._minute_end = start + _MINUTE
            self._minute = out.minutely[start]
        return self._minute


def spread_accounts(out: Folded) -> None:
    """Add what the fold counted per account named by events (`out.leaf_daily`) to the
    day's row of every node from its tenant down: once per batch and key, instead of
    once per event and node."""
    for (leaf, day), delta in out.leaf_daily.items():
        for path in ancestors(leaf):
            row = out.account_daily[path, day]
            row.input_tokens += delta.input_tokens
            row.output_tokens += delta.output_tokens
            row.tokens_used += delta.tokens_used
            row.usage_events += delta.usage_events
            row.cost_usd += delta.cost_usd
            row.reservations_accepted += delta.reservations_accepted
            row.reservations_rejected += delta.reservations_rejected
    out.leaf_daily.clear()


def add_usage(
    out: Folded,
    calendar: Calendar,
    session_id: str,
    event: TokenUsed,
    moment: Moment,
    account: str | None = None,
) -> None:
    """A TokenUsed in the session's day, month and hour, its component's model's day, and
    its account's day (spread to every node of the account by `spread_accounts`)."""
    day = moment.day
    tokens_in, tokens_out = event.input_tokens, event.output_tokens
    deltas: tuple[UsageDelta | AccountDelta, ...] = calendar.session_rows(out, session_id, moment)
    if account is not None:
        deltas = (*deltas, out.leaf_daily[account, day])
    for delta in deltas:
        delta.input_tokens += tokens_in
        delta.output_tokens += tokens_out
        delta.tokens_used += tokens_in + tokens_out
        delta.usage_events += 1
    model = out.model_daily[day, event.source.component, event.model]
    model.usage_events += 1
    model.input_tokens += tokens_in
    model.output_tokens += tokens_out


def add_cost(
    out: Folded,
    calendar: Calendar,
    session_id: str,
    event: ApiCost,
    moment: Moment,
    account: str | None = None,
) -> None:
    """An ApiCost's money in the session's day, month and hour and in its account's day;
    the call in its API's day."""
    day = moment.day
    cost: Decimal = event.cost_usd
    for row in calendar.session_rows(out, session_id, moment):
        row.cost_usd += cost
    if account is not None:
        out.leaf_daily[account, day].cost_usd += cost
    api = out.api_daily[day, event.api, event.model]
    api.requests += 1
    api.input_tokens += event.input_tokens
    api.output_tokens += event.output_tokens
    api.cache_read_tokens += event.cache_read_tokens
    api.cache_write_tokens += event.cache_write_tokens
    api.cost_usd += cost


def _day_of(out: Folded, record: ReservationRecord, zone: ZoneInfo) -> ReservationDayDelta:
    return out.reservations_daily[record.session_id, local_day(record.requested_at, zone)]


def count_decision(
    out: Folded,
    record: ReservationRecord,
    zone: ZoneInfo,
    minute: MinuteDelta,
) -> None:
    """A reservation just decided: in its session's day, in its record's minute, in its
    account's day, and a refusal by a node as refused by that node."""
    day = local_day(record.requested_at, zone)
    delta = out.reservations_daily[record.session_id, day]
    accepted = record.status == "accepted"
    if accepted:
        delta.accepted += 1
        delta.reserved_tokens += record.tokens
        minute.reservations_accepted += 1
    else:
        delta.rejected += 1
        minute.reservations_rejected += 1
    account = record.account
    if account is None:
        return
    leaf = out.leaf_daily[account, day]
    if accepted:
        leaf.reservations_accepted += 1
        return
    leaf.reservations_rejected += 1
    refused_by = record.refused_by
    if refused_by is not None:
        out.account_daily[refused_by, day].reservations_refused += 1


def count_outcome(
    out: Folded, record: ReservationRecord, zone: ZoneInfo, was: ReservationStatus
) -> None:
    """An accepted reservation that has just ended (settled, released or expired), or an
    expired one settled late (it then counts as settled, no longer as expired)."""
    delta = _day_of(out, record, zone)
    if was == "expired":
        delta.expired -= 1
    status = record.status
    if status == "expired":
        delta.expired += 1
        return
    if status == "settled":
        delta.settled += 1
    elif status == "released":
        delta.released += 1
    delta.settled_tokens += record.settled_tokens or 0
