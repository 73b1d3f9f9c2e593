"""Recent reads of sessions' budgets, so a busy session's pre-check need not read each time."""

from __future__ import annotations

import time
from dataclasses import dataclass

from tokenquota.projections import SessionMetrics

__all__ = ["RecentReads"]

#: Sessions remembered at most; past it, the memory starts over (a read each, again).
_MOST = 10_000


@dataclass(slots=True)
class _Read:
    metrics: SessionMetrics
    at: float
    spent: int = 0  # tokens this client reserved since the read


class RecentReads:
    """The last read of each session's budget, and what this client reserved since."""

    def __init__(self) -> None:
        self._reads: dict[str, _Read] = {}

    def read(self, session_id: str, metrics: SessionMetrics) -> None:
        """Remember a read of `session_id`, unless the one remembered is as recent (callers
        that shared one query keep counting what they reserved since it)."""
        known = self._reads.get(session_id)
        if known is not None and known.metrics.as_of >= metrics.as_of:
            return
        if known is None and len(self._reads) >= _MOST:
            self._reads = {}
        self._reads[session_id] = _Read(metrics, time.monotonic())

    def metrics(self, session_id: str) -> SessionMetrics | None:
        """The remembered read of `session_id`, if any."""
        read = self._reads.get(session_id)
        return read.metrics if read is not None else None

    def forget(self, session_id: str) -> None:
        """Drop the read of `session_id` (the worker refused what it passed)."""
        self._reads.pop(session_id, None)

    def spent(self, session_id: str, tokens: int) -> None:
        """This client reserved `tokens` of `session_id` since its last read."""
        read = self._reads.get(session_id)
        if read is not None:
            read.spent += tokens

    def covers(self, session_id: str, tokens: int, priority: str, max_age: float) -> bool:
        """True when a read at most `max_age` seconds old still has room for `tokens`."""
        read = self._reads.get(session_id)
        if read is None or time.monotonic() - read.at > max_age:
            return False
        return tokens <= read.metrics.headroom(priority).available - read.spent
