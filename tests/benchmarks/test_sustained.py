"""The hold test of the lag benchmark's capacity search: the backlog's age and its growth."""

from __future__ import annotations

import pytest

from benchmarks.sustained import EmitMarks, backlog_ages, growth_ms

#: Events committed before the load's first (a warm-up's).
BASE = 1_000


def _marks(rate: float, seconds: float, tick: float = 0.01) -> EmitMarks:
    """A load of `rate` events/s built in ticks from t=0."""
    marks = EmitMarks()
    per_tick = int(rate * tick)
    for n in range(round(seconds / tick)):
        marks.add(n * per_tick, (n + 1) * per_tick, n * tick)
    return marks


def test_marks_say_when_an_event_was_built_and_how_many_were_by_then() -> None:
    marks = _marks(1_000, 1.0)
    assert marks.built_at(0) == 0.0
    assert marks.built_at(9) == 0.0
    assert marks.built_at(10) == pytest.approx(0.01)
    assert marks.built_by(-1.0) == 0
    assert marks.built_by(0.0) == 10
    assert marks.built_by(0.015) == 20
    with pytest.raises(ValueError, match="no tick built event -1"):
        marks.built_at(-1)


def test_a_backlog_of_constant_age_does_not_grow() -> None:
    marks = _marks(1_000, 30.0)

    def committed_by(at: float) -> int:  # every event committed 80 ms after it was built
        return BASE + marks.built_by(at - 0.08)

    ages = backlog_ages(marks, committed_by, BASE, 1.0, 30.0)
    assert len(ages) == 580
    # (the oldest uncommitted event is of the tick after those committed: up to one
    # 10 ms tick younger than 80 ms)
    assert min(ages) >= 0.07 - 1e-9
    assert max(ages) <= 0.08 + 1e-9
    assert abs(growth_ms(ages)) <= 10 + 1e-6  # one tick at most


def test_a_backlog_that_falls_behind_grows() -> None:
    marks = _marks(1_000, 30.0)

    def committed_by(at: float) -> int:  # commits 900 events/s of the 1,000 built
        return BASE + int(900 * at)

    ages = backlog_ages(marks, committed_by, BASE, 0.0, 30.0)
    # At t the oldest uncommitted event was built at 0.9 t: its age is 0.1 t.
    assert ages[-1] == pytest.approx(3.0, abs=0.02)
    assert growth_ms(ages) == pytest.approx(2_000, rel=0.02)


def test_everything_committed_is_age_zero() -> None:
    marks = _marks(1_000, 2.0)
    ages = backlog_ages(marks, lambda at: BASE + marks.built_by(at), BASE, 0.0, 2.0)
    assert set(ages) == {0.0}
    assert growth_ms(ages) == 0.0


def test_too_few_samples_show_no_growth() -> None:
    assert growth_ms([]) == 0.0
    assert growth_ms([0.1, 5.0]) == 0.0
    assert growth_ms([0.1, 0.2, 0.4]) == pytest.approx(300)
