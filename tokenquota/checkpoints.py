"""The worker's checkpoints beside the log, as an operator reads them, and accepting a gap
(`tokenquota checkpoints show` / `tokenquota checkpoints accept-gap`).

A checkpoint before the log's first offset means messages were removed from the log
(retention, delete-records) before the worker applied them: the worker stops with
LogGapError at every restart until an operator accepts the loss, which moves the
checkpoint to the log's first offset (see projections/log_gaps.py).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Literal

from pydantic import BaseModel

from .config import KafkaSettings, Settings
from .kafka_probe import LogBounds, partition_bounds
from .projections.log_gaps import (
    AcceptedGap,
    GapRefusedError,
    LogGap,
    accept_gap,
    accepted_gaps,
    gap_of,
    read_checkpoints,
)
from .schema_connection import schema_connection

__all__ = [
    "AcceptedGapView",
    "BoundsReader",
    "Checkpoints",
    "GapRefusedError",
    "PartitionCheckpoint",
    "accept_log_gap",
    "find_log_gap",
    "read_log_checkpoints",
]

#: What these commands read and write, named when the schema lacks them.
_TABLES = "accepted_log_gaps or partition_checkpoints"

log = logging.getLogger("tokenquota.checkpoints")

#: Where a topic's partitions start and end: kafka_probe.partition_bounds unless given
#: (tests give their own, for a broker that cannot delete records).
BoundsReader = Callable[[KafkaSettings, str], Awaitable[dict[int, LogBounds]]]

Status = Literal["ok", "gap", "ahead", "missing"]


class PartitionCheckpoint(BaseModel):
    """One partition of the usage topic: the worker's checkpoint and the log's bounds."""

    partition: int
    #: The offset of the next message the projections will apply (None: none applied yet).
    next_offset: int | None
    #: The first offset the log still holds (its end when it holds none); None when the
    #: topic has no such partition.
    log_first: int | None
    #: The log's end (highwater): the offset of the next message appended.
    log_end: int | None
    #: `gap`: the checkpoint is before the log's first offset; `ahead`: past the log's
    #: end; `missing`: the topic has no such partition; `ok` otherwise.
    status: Status
    note: str


class AcceptedGapView(BaseModel):
    """A gap accepted earlier: offsets `from_offset` to `to_offset - 1` were skipped."""

    partition: int
    from_offset: int
    to_offset: int
    skipped: int
    accepted_at: datetime
    actor: str


class Checkpoints(BaseModel):
    """Every partition of the usage topic, and the gaps accepted on it."""

    topic: str
    partitions: list[PartitionCheckpoint]
    accepted: list[AcceptedGapView]


async def read_log_checkpoints(
    settings: Settings, *, bounds: BoundsReader | None = None
) -> Checkpoints:
    """The checkpoints of the usage topic beside its log's bounds."""
    topic = settings.kafka.usage_topic
    # The checkpoints first: read after the log's ends, a running worker could have moved
    # them past those ends meanwhile.
    async with schema_connection(settings, _TABLES) as conn:
        checkpoints = await read_checkpoints(conn, topic)
        accepted = await accepted_gaps(conn, topic)
    logs = await (bounds or partition_bounds)(settings.kafka, topic)
    partitions = [
        _partition(topic, p, checkpoints.get(p), logs.get(p))
        for p in sorted(set(checkpoints) | set(logs))
    ]
    return Checkpoints(topic=topic, partitions=partitions, accepted=[_view(a) for a in accepted])


async def find_log_gap(
    settings: Settings, partition: int, *, bounds: BoundsReader | None = None
) -> LogGap:
    """The gap of `partition` of the usage topic; GapRefusedError when it has none or the
    topic has no such partition."""
    topic = settings.kafka.usage_topic
    async with schema_connection(settings, _TABLES) as conn:
        checkpoint = (await read_checkpoints(conn, topic)).get(partition)
    logs = await (bounds or partition_bounds)(settings.kafka, topic)
    found = logs.get(partition)
    if found is None:
        raise GapRefusedError(
            f"{topic} has no partition {partition} (it has {_partition_range(logs)})"
        )
    gap = gap_of(topic, partition, checkpoint, found.first)
    if gap is None:
        raise GapRefusedError(
            f"no gap to accept in {topic}[{partition}]: {_no_gap(checkpoint, found)}"
        )
    return gap


async def accept_log_gap(
    settings: Settings, gap: LogGap, actor: str, *, bounds: BoundsReader | None = None
) -> AcceptedGapView:
    """Move the checkpoint past `gap` (found by find_log_gap, and confirmed) and record it
    with `actor`; GapRefusedError, changing nothing, when the checkpoint or the log's
    start are not what `gap` says any more."""
    now = (await (bounds or partition_bounds)(settings.kafka, gap.topic)).get(gap.partition)
    if now is None or now.first != gap.first:
        moved = "is gone" if now is None else f"starts at {now.first} now"
        raise GapRefusedError(
            f"the log of {gap.topic}[{gap.partition}] {moved}, not at {gap.first} as read "
            "before: nothing was changed; look again (`tokenquota checkpoints show`)"
        )
    async with schema_connection(settings, _TABLES) as conn:
        accepted = await accept_gap(conn, settings.database.schema_name, gap, actor)
    log.warning(
        "accepted a log gap: %s[%d] offsets %d to %d were gone from the log and never "
        "applied; checkpoint moved from %d to %d by %s",
        gap.topic,
        gap.partition,
        gap.checkpoint,
        gap.first - 1,
        gap.checkpoint,
        gap.first,
        actor,
    )
    return _view(accepted)


def _partition(
    topic: str, partition: int, checkpoint: int | None, bounds: LogBounds | None
) -> PartitionCheckpoint:
    def row(status: Status, note: str) -> PartitionCheckpoint:
        return PartitionCheckpoint(
            partition=partition,
            next_offset=checkpoint,
            log_first=None if bounds is None else bounds.first,
            log_end=None if bounds is None else bounds.end,
            status=status,
            note=note,
        )

    if bounds is None:
        return row("missing", "the topic has no such partition")
    gap = gap_of(topic, partition, checkpoint, bounds.first)
    if gap is not None:
        return row(
            "gap",
            f"gap: {gap} are gone from the log and were never applied; after checking, "
            f"`tokenquota checkpoints accept-gap --partition {partition}`",
        )
    if checkpoint is None:
        return row("ok", "nothing applied yet")
    if checkpoint > bounds.end:
        return row(
            "ahead",
            "the checkpoint is past the log's end: not the log the projections were built "
            "from (a recreated topic, a restarted in-memory broker)",
        )
    waiting = bounds.end - checkpoint
    return row("ok", f"{waiting:,} to apply" if waiting else "applied up to the log's end")


def _no_gap(checkpoint: int | None, bounds: LogBounds) -> str:
    log_is = f"the log holds offsets {bounds.first} to {bounds.end - 1}"
    if bounds.first == bounds.end:
        log_is = f"the log holds nothing, its first and next offset is {bounds.first}"
    if checkpoint is None:
        return f"nothing was applied from it yet ({log_is})"
    return (
        f"its checkpoint {checkpoint} is not before the log's first offset ({log_is}), so "
        "every message not applied yet is still in the log. A worker stopped by LogGapError "
        "on it fetches them again from its group's committed offset when restarted; should "
        "that offset be past the checkpoint too (a database restored from a backup), reset "
        f"the group's offset of the partition to {checkpoint} (kafka-consumer-groups.sh "
        "--reset-offsets)"
    )


def _partition_range(logs: dict[int, LogBounds]) -> str:
    if not logs:
        return "none"
    return f"partitions {min(logs)} to {max(logs)}" if len(logs) > 1 else f"partition {min(logs)}"


def _view(accepted: AcceptedGap) -> AcceptedGapView:
    return AcceptedGapView(
        partition=accepted.partition,
        from_offset=accepted.from_offset,
        to_offset=accepted.to_offset,
        skipped=accepted.to_offset - accepted.from_offset,
        accepted_at=accepted.accepted_at,
        actor=accepted.actor,
    )
