"""A worker's batch must continue its partitions' checkpoints without a hole.

The usage topic's offsets have no gaps (its producers write no transactions and it is
not compacted), so every offset from a partition's checkpoint to the last one of a batch
is either in the batch (an event or a dead letter) or was taken from the log and never
applied: a fetch that a rebalance dropped, or a batch that a crash lost. Applying the
batch would move the checkpoint past such messages for good; the worker stops instead
(LogGapError) and fetches again from its committed offset, which never passes a message
it has not applied. The check covers the whole batch, not only where it starts: a
message skipped between two fetches joined into one batch is a hole inside it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .state import PartitionKey

__all__ = ["LogGapError", "batch_offsets", "check_continues"]


class LogGapError(RuntimeError):
    """A batch skips offsets of its partition that were never applied: after the
    checkpoint, or between two of its own messages. The messages there were taken from
    the log and never applied (a fetch a rebalance dropped, a batch a crash lost).
    Applying it would move the checkpoint past them; the worker stops instead, and
    fetches again from its committed offset, which never passes an unapplied message.

    Unless the log no longer holds them: retention or delete-records removed them before
    they were applied, and the worker, reset to the log's start, stops at every restart.
    The worker cannot tell the two apart; `tokenquota checkpoints show` can, and
    `tokenquota checkpoints accept-gap` moves the checkpoint to the log's start."""


def batch_offsets(positions: Iterable[tuple[str, int, int]]) -> dict[PartitionKey, set[int]]:
    """The offsets of a batch's messages (events and dead letters) by partition."""
    offsets: dict[PartitionKey, set[int]] = {}
    for topic, partition, offset in positions:
        offsets.setdefault((topic, partition), set()).add(offset)
    return offsets


def check_continues(
    applied: Mapping[PartitionKey, int | None], offsets: Mapping[PartitionKey, set[int]]
) -> None:
    """Raise LogGapError unless each partition's `offsets` at or past its checkpoint
    (`applied`, the next offset to apply; None: nothing applied yet) run on from it
    without a hole. Offsets below the checkpoint are redeliveries, and fine."""
    for key, taken in offsets.items():
        checkpoint = applied.get(key)
        ahead = sorted(o for o in taken if checkpoint is None or o >= checkpoint)
        if not ahead:
            continue
        expected = ahead[0] if checkpoint is None else checkpoint
        for offset in ahead:
            if offset != expected:
                _refuse(key, expected, offset, inside=expected != checkpoint)
            expected = offset + 1


def _refuse(key: PartitionKey, missing: int, found: int, *, inside: bool) -> None:
    name = f"partition {key[0]}[{key[1]}]: offsets {missing} to {found - 1}"
    if inside:
        raise LogGapError(
            f"{name} are missing inside a batch, between two of its messages: this "
            "worker's consumer skipped them; stopping so that they are fetched again from "
            "the committed offset"
        )
    raise LogGapError(
        f"{name} were never applied, yet a batch from after them arrived; stopping so "
        "that they are fetched again from the committed offset. If the log no longer "
        "holds these offsets (retention or delete-records removed them), the worker stops "
        "like this at every restart: check with `tokenquota checkpoints show`, then run "
        f"`tokenquota checkpoints accept-gap --partition {key[1]}` (the events at those "
        "offsets are lost to the projections)"
    )
