"""The lag benchmarks' bookkeeping: when a poll first saw an offset committed (pure)."""

from __future__ import annotations

import pytest

from benchmarks.timeline import Timeline
from benchmarks.worker_stages import StageTotals
from tokenquota.processors.metrics import STAGES


def test_an_offset_is_committed_at_the_first_poll_past_it() -> None:
    timeline = Timeline()
    timeline.record(1.0, 0, 3)  # offsets 0..2 committed
    timeline.record(2.0, 0, 3)  # unchanged: not a new point
    timeline.record(3.0, 0, 7)
    timeline.record(3.0, 1, 2)
    assert timeline.committed_at(0, 2) == 1.0
    assert timeline.committed_at(0, 3) == 3.0
    assert timeline.committed_at(1, 0) == 3.0
    with pytest.raises(IndexError):  # never seen committed
        timeline.committed_at(0, 7)


def test_events_committed_by_a_moment_add_up_over_partitions() -> None:
    timeline = Timeline()
    timeline.record(1.0, 0, 3)
    timeline.record(2.0, 1, 5)
    timeline.record(4.0, 0, 9)
    assert timeline.committed_by(0.5) == 0
    assert timeline.committed_by(2.0) == 3 + 5
    assert timeline.committed_by(10.0) == 9 + 5


def test_stage_means_are_the_difference_of_two_scrapes_per_event() -> None:
    before = StageTotals({"broker": 1.0, "transaction": 2.0}, events=10)
    after = StageTotals({"broker": 3.0, "transaction": 2.5, "decode": 0.1}, events=30)
    means = after.mean_ms_since(before)
    assert set(means) == set(STAGES)
    assert means["broker"] == pytest.approx(100.0)  # 2 s over 20 events
    assert means["transaction"] == pytest.approx(25.0)
    assert means["decode"] == pytest.approx(5.0)
    assert means["queued"] == 0.0
    assert after.mean_ms_since(after) == dict.fromkeys(STAGES, 0.0)
