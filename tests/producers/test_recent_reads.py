"""Recent reads of a session's budget: what lets a reservation skip its pre-check (pure)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from tokenquota.producers import recent_reads
from tokenquota.producers.recent_reads import RecentReads
from tokenquota.projections import Limits, SessionMetrics


def metrics(session: str, available: int) -> SessionMetrics:
    limit = 1_000
    return SessionMetrics(
        session_id=session, known=True,
        limits=Limits(limit, limit, limit, Decimal("0.8"), Decimal("0.95")),
        tokens_used_today=limit - available, tokens_used_month=limit - available,
        tokens_used_total=limit - available, tokens_held=0, available_tokens=available,
        binding_limit="hard_limit", utilization=Decimal(0), daily_alert="none",
        monthly_alert="none", total_alert="none", reservations_accepted=0,
        reservations_rejected=0, overage_tokens=0, updated_at=None, as_of=datetime.now(UTC),
    )  # fmt: skip


def test_a_recent_read_covers_what_fits_after_what_this_client_reserved_since() -> None:
    reads = RecentReads()
    assert not reads.covers("s", 1, "normal", max_age=1.0)  # never read
    reads.read("s", metrics("s", 500))
    assert reads.covers("s", 500, "normal", max_age=1.0)
    assert not reads.covers("s", 501, "normal", max_age=1.0)  # a refusal is read fresh
    reads.spent("s", 300)
    assert reads.covers("s", 200, "normal", max_age=1.0)
    assert not reads.covers("s", 201, "normal", max_age=1.0)
    assert not reads.covers("other", 1, "normal", max_age=1.0)


def test_callers_sharing_one_read_keep_counting_and_a_newer_read_starts_over() -> None:
    reads = RecentReads()
    shared = metrics("s", 500)
    reads.read("s", shared)
    reads.spent("s", 300)
    reads.read("s", shared)  # a second caller of the same query: the count stays
    assert not reads.covers("s", 201, "normal", max_age=1.0)
    reads.read("s", metrics("s", 500))  # a newer read
    assert reads.covers("s", 500, "normal", max_age=1.0)
    reads.forget("s")
    assert not reads.covers("s", 1, "normal", max_age=1.0)


def test_a_low_priority_reservation_is_covered_only_below_the_critical_threshold() -> None:
    reads = RecentReads()
    reads.read("s", metrics("s", 100))  # 900 of 1,000 used; critical at 950
    assert reads.covers("s", 100, "normal", max_age=1.0)
    assert reads.covers("s", 50, "low", max_age=1.0)
    assert not reads.covers("s", 51, "low", max_age=1.0)


def test_a_read_older_than_max_age_covers_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    reads = RecentReads()
    reads.read("s", metrics("s", 500))
    now[0] += 1.0
    assert reads.covers("s", 10, "normal", max_age=1.0)
    now[0] += 0.001
    assert not reads.covers("s", 10, "normal", max_age=1.0)
    assert not reads.covers("s", 10, "normal", max_age=0)


def test_the_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recent_reads, "_MOST", 3)
    reads = RecentReads()
    for session in ("a", "b", "c"):
        reads.read(session, metrics(session, 500))
    reads.read("a", metrics("a", 400))  # a session it holds: nothing forgotten
    assert reads.covers("b", 10, "normal", max_age=1.0)
    reads.read("d", metrics("d", 500))  # a fourth: it starts over
    assert not reads.covers("b", 10, "normal", max_age=1.0)
    assert reads.covers("d", 10, "normal", max_age=1.0)
