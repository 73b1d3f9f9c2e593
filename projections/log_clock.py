"""The log clock: the time that decides, taken from the log and never from a producer.

Each partition has a log clock: the latest record timestamp among the events applied
from it (the broker's append time where the broker stamps records, the producing
client's send time where it does not). It only moves forward, no event's `occurred_at`
can move it, and it is in the log, so a replay decides the same. An event's
`occurred_at` still dates it in the rollups and reports, unless it runs ahead of the
log clock by more than the partition's `max_clock_skew`: then it is counted at the log
clock (and the fold flags it).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import NamedTuple

from tokenquota.schemas import Event

from .budget import local_day
from .state import FoldConfig

__all__ = ["Moment", "advance", "moment_of"]

_NO_SHIFT = timedelta(0)


class Moment(NamedTuple):
    """When one event counts: the log clock at its record, and the time it is dated at.

    (A named tuple: the fold makes one per event.)"""

    clock: datetime
    #: occurred_at, or the log clock when occurred_at ran too far ahead of it.
    at: datetime
    #: The calendar day of `at`, in the partition's zone (the event's rollup rows).
    day: date
    #: How far occurred_at was moved back to the log clock (zero unless it ran ahead).
    shift: timedelta


def advance(clock: datetime | None, timestamp: datetime) -> datetime:
    """The partition's log clock after a record stamped `timestamp`: it never moves back."""
    return timestamp if clock is None or timestamp > clock else clock


def moment_of(event: Event, clock: datetime, config: FoldConfig) -> Moment:
    """When `event`, applied at log clock `clock`, counts."""
    at = event.occurred_at
    shift = _NO_SHIFT
    if at - clock > config.max_clock_skew:
        shift = at - clock
        at = clock
    return Moment(clock, at, local_day(at, config.zone), shift)
