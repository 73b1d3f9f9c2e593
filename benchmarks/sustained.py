"""Whether a rate held for a while was sustained: the age of the oldest uncommitted event,
sampled over the hold, must not grow.

A short step that keeps up says little: the worker's batches grow to absorb a rate for a
few seconds, and the checkpoint and autovacuum that the events bring come later. Held
longer, a rate beyond what the pipeline sustains shows as a backlog whose age grows.
The age is read from the checkpoint poller's timeline (`benchmarks.timeline`) and from
when the load built each tick's events; with several partitions it is approximate (the
committed count is summed over them), which a growth of tens of milliseconds over a
30-second hold does not depend on.
"""

from __future__ import annotations

import bisect
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["EmitMarks", "backlog_ages", "growth_ms"]


@dataclass
class EmitMarks:
    """When each tick's events were built: the load index of its first event, one past
    its last, and the epoch time (all ascending)."""

    firsts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)

    def add(self, first: int, end: int, at: float) -> None:
        """A tick built the events of load index `first` to `end` (excluded) at `at`."""
        self.firsts.append(first)
        self.ends.append(end)
        self.times.append(at)

    def built_by(self, at: float) -> int:
        """One past the load index of the last event built by `at`."""
        tick = bisect.bisect_right(self.times, at)
        if tick:
            return self.ends[tick - 1]
        return self.firsts[0] if self.firsts else 0

    def built_at(self, index: int) -> float:
        """When the event of load index `index` was built."""
        tick = bisect.bisect_right(self.firsts, index) - 1
        if tick < 0:
            raise ValueError(f"no tick built event {index}")
        return self.times[tick]


def backlog_ages(
    marks: EmitMarks,
    committed_by: Callable[[float], int],
    base: int,
    start: float,
    end: float,
    step: float = 0.05,
) -> list[float]:
    """The age in seconds of the oldest event not yet committed, every `step` seconds from
    `start` to `end` (0 when every event built by then is committed).

    `committed_by(t)` counts the events committed at `t`, of which `base` came before the
    load's first.
    """
    ages: list[float] = []
    at = start
    while at < end:
        oldest = committed_by(at) - base  # the load index of the oldest uncommitted event
        ages.append(at - marks.built_at(oldest) if 0 <= oldest < marks.built_by(at) else 0.0)
        at += step
    return ages


def growth_ms(ages: list[float]) -> float:
    """The median of the last third of `ages` minus that of the first third, in ms."""
    third = len(ages) // 3
    if not third:
        return 0.0
    return (statistics.median(ages[-third:]) - statistics.median(ages[:third])) * 1000
