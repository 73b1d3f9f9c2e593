"""A partition whose checkpoint is behind the log's start, and moving it there on purpose.

The worker refuses a batch that skips offsets after its partition's checkpoint
(LogGapError, see `continuity`). When retention or delete-records removed messages before the worker
applied them, the log starts after the checkpoint and no batch ever will: an operator
looks (`tokenquota checkpoints show`) and accepts the loss (`tokenquota checkpoints
accept-gap`), which moves the checkpoint to the log's first offset and records that in
`accepted_log_gaps` (not a projection: replay leaves it alone).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from .store import partition_lock_key, projection_lock_key

__all__ = [
    "AcceptedGap",
    "GapRefusedError",
    "LogGap",
    "accept_gap",
    "accepted_gaps",
    "gap_of",
    "read_checkpoints",
]


class GapRefusedError(Exception):
    """There is no gap to accept (any more): nothing was changed."""


@dataclass(frozen=True, slots=True)
class LogGap:
    """Offsets `checkpoint` to `first - 1` of a partition: never applied, and gone from
    the log, whose first offset is `first`."""

    topic: str
    partition: int
    checkpoint: int
    first: int

    @property
    def size(self) -> int:
        """How many offsets are skipped."""
        return self.first - self.checkpoint

    def __str__(self) -> str:
        return f"offsets {self.checkpoint} to {self.first - 1}"


@dataclass(frozen=True, slots=True)
class AcceptedGap:
    """A row of `accepted_log_gaps`: offsets `from_offset` to `to_offset - 1` skipped."""

    topic: str
    partition: int
    from_offset: int
    to_offset: int
    accepted_at: datetime
    actor: str


def gap_of(topic: str, partition: int, checkpoint: int | None, first: int) -> LogGap | None:
    """The gap between a partition's checkpoint and the log's first offset; None when the
    checkpoint is not before it, or when there is none (nothing applied from the
    partition yet: the worker takes it from wherever the log starts)."""
    if checkpoint is None or checkpoint >= first:
        return None
    return LogGap(topic, partition, checkpoint, first)


async def read_checkpoints(conn: asyncpg.Connection, topic: str) -> dict[int, int]:
    """Partition -> the offset of the next message the projections will apply."""
    rows = await conn.fetch(
        "SELECT kafka_partition, next_offset FROM partition_checkpoints WHERE topic = $1", topic
    )
    return {row["kafka_partition"]: row["next_offset"] for row in rows}


async def accepted_gaps(conn: asyncpg.Connection, topic: str) -> list[AcceptedGap]:
    """Every gap accepted on `topic`, oldest first."""
    rows = await conn.fetch(
        """SELECT topic, kafka_partition, from_offset, to_offset, accepted_at, actor
             FROM accepted_log_gaps WHERE topic = $1
            ORDER BY accepted_at, kafka_partition""",
        topic,
    )
    return [_accepted(row) for row in rows]


_MOVE = """
    WITH moved AS (
        UPDATE partition_checkpoints SET next_offset = $4
         WHERE topic = $1 AND kafka_partition = $2 AND next_offset = $3
        RETURNING topic, kafka_partition)
    INSERT INTO accepted_log_gaps
           (topic, kafka_partition, from_offset, to_offset, accepted_at, actor)
    SELECT topic, kafka_partition, $3, $4, now(), $5 FROM moved
    RETURNING topic, kafka_partition, from_offset, to_offset, accepted_at, actor"""


async def accept_gap(conn: asyncpg.Connection, schema: str, gap: LogGap, actor: str) -> AcceptedGap:
    """Move the partition's checkpoint from `gap.checkpoint` to `gap.first` and record it,
    in one transaction; GapRefusedError, changing nothing, when the checkpoint is not
    `gap.checkpoint` any more (read again under the partition's locks, FOR UPDATE).

    The caller vouches that the log starts at `gap.first` (offsets only leave a log from
    its start, so it cannot start earlier later on).
    """
    if gap.first <= gap.checkpoint:
        raise ValueError(f"not a gap: checkpoint {gap.checkpoint}, log start {gap.first}")
    where = f"{gap.topic}[{gap.partition}]"
    async with conn.transaction():
        # The locks a batch of the partition takes, in its order: a worker's batch, or
        # replay's swap, comes before or after this, never in the middle.
        await conn.execute(
            "SELECT pg_advisory_xact_lock_shared(hashtextextended($1, 0))",
            projection_lock_key(schema),
        )
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 1))",
            partition_lock_key(gap.topic, gap.partition),
        )
        current = await conn.fetchval(
            """SELECT next_offset FROM partition_checkpoints
                WHERE topic = $1 AND kafka_partition = $2 FOR UPDATE""",
            gap.topic,
            gap.partition,
        )
        if current is None:
            raise GapRefusedError(f"{where} has no checkpoint: nothing was applied from it")
        if current != gap.checkpoint:
            raise GapRefusedError(
                f"the checkpoint of {where} is {current} now, not {gap.checkpoint} as read "
                "before: nothing was changed; look again (`tokenquota checkpoints show`)"
            )
        row = await conn.fetchrow(_MOVE, gap.topic, gap.partition, gap.checkpoint, gap.first, actor)
    assert row is not None  # the row was there, locked, with that offset
    return _accepted(row)


def _accepted(row: asyncpg.Record) -> AcceptedGap:
    return AcceptedGap(
        row["topic"],
        row["kafka_partition"],
        row["from_offset"],
        row["to_offset"],
        row["accepted_at"],
        row["actor"],
    )
