"""The check that a worker's batch continues its partitions' checkpoints without a hole."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenquota.projections.continuity import LogGapError, batch_offsets, check_continues


def test_offsets_are_grouped_by_partition() -> None:
    positions = [("t", 0, 4), ("t", 1, 0), ("t", 0, 3), ("u", 0, 9), ("t", 0, 4)]
    assert batch_offsets(positions) == {("t", 0): {3, 4}, ("t", 1): {0}, ("u", 0): {9}}


def test_a_batch_that_runs_on_from_the_checkpoint_passes() -> None:
    check_continues({("t", 0): 5}, {("t", 0): {5, 6, 7}})
    check_continues({("t", 0): 5}, {("t", 0): {2, 3, 4, 5, 6}})  # a redelivery, then new
    check_continues({("t", 0): 5}, {("t", 0): {1, 2}})  # only redelivered
    check_continues({}, {("t", 0): {7, 8}})  # nothing applied yet: starts where it starts


def test_a_batch_that_starts_after_the_checkpoint_is_refused() -> None:
    with pytest.raises(LogGapError, match=r"t\[0\]: offsets 5 to 6 were never applied, yet"):
        check_continues({("t", 0): 5}, {("t", 0): {7, 8}})


def test_a_hole_inside_a_batch_is_refused() -> None:
    # The sixth 30-minute campaign run: a message skipped between two fetches joined into
    # one batch, which started at its checkpoint; the first-offset check let it through.
    with pytest.raises(LogGapError, match=r"t\[2\]: offsets 17014 to 17014 are missing inside"):
        check_continues({("t", 2): 17010}, {("t", 2): {17010, 17011, 17012, 17013, 17015}})
    with pytest.raises(LogGapError, match=r"t\[0\]: offsets 9 to 10 are missing inside"):
        check_continues({}, {("t", 0): {7, 8, 11}})
    with pytest.raises(LogGapError, match=r"t\[1\]: offsets 6 to 6 are missing inside"):
        check_continues({("t", 0): 0, ("t", 1): 3}, {("t", 0): {0, 1}, ("t", 1): {2, 3, 4, 5, 7}})


@given(
    checkpoint=st.integers(0, 50),
    start=st.integers(0, 60),
    length=st.integers(1, 30),
    drop=st.data(),
)
def test_exactly_the_batches_with_an_unapplied_offset_before_their_last_are_refused(
    checkpoint: int, start: int, length: int, drop: st.DataObject
) -> None:
    offsets = set(range(start, start + length))
    offsets -= drop.draw(st.sets(st.sampled_from(sorted(offsets)), max_size=length - 1))
    last = max(offsets)
    # Refused when some offset from the checkpoint to the batch's last is neither applied
    # nor in the batch.
    hole = any(o not in offsets for o in range(checkpoint, last + 1))
    if hole:
        with pytest.raises(LogGapError):
            check_continues({("t", 0): checkpoint}, {("t", 0): offsets})
    else:
        check_continues({("t", 0): checkpoint}, {("t", 0): offsets})
