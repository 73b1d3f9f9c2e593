"""The benchmarks' percentiles."""

from __future__ import annotations

import pytest

from benchmarks.report import percentile_ms


def test_percentiles_are_nearest_rank_in_milliseconds() -> None:
    samples = [i / 1000 for i in range(100, 0, -1)]  # 1 to 100 ms, unordered
    assert percentile_ms(samples, 0.5) == pytest.approx(51.0)
    assert percentile_ms(samples, 0.99) == pytest.approx(100.0)
    assert percentile_ms(samples, 1.0) == pytest.approx(100.0)


def test_no_samples_is_an_error_unless_a_value_for_none_is_given() -> None:
    assert percentile_ms([], 0.99, empty=0.0) == 0.0
    with pytest.raises(IndexError):
        percentile_ms([], 0.99)
