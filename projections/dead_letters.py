"""How far the dead-letter topic has been reviewed (table dlq_reviews, not a projection)."""

from __future__ import annotations

from collections.abc import Mapping

import asyncpg

__all__ = ["mark_reviewed", "reviewed_offsets", "unreviewed"]


async def reviewed_offsets(conn: asyncpg.Connection, topic: str) -> dict[int, int]:
    """Partition -> the offset up to which (exclusive) its dead letters were reviewed."""
    rows = await conn.fetch(
        "SELECT kafka_partition, reviewed_to FROM dlq_reviews WHERE topic = $1", topic
    )
    return {row["kafka_partition"]: row["reviewed_to"] for row in rows}


async def mark_reviewed(
    conn: asyncpg.Connection, topic: str, upto: Mapping[int, int], actor: str
) -> None:
    """Record `topic`'s dead letters before `upto` (per partition) as reviewed by `actor`;
    a partition's mark never moves back."""
    await conn.execute(
        """INSERT INTO dlq_reviews AS r (topic, kafka_partition, reviewed_to, reviewed_at, actor)
           SELECT $1, p, o, now(), $4 FROM unnest($2::int[], $3::bigint[]) AS u(p, o)
           ON CONFLICT (topic, kafka_partition) DO UPDATE
              SET reviewed_to = GREATEST(r.reviewed_to, EXCLUDED.reviewed_to),
                  reviewed_at = EXCLUDED.reviewed_at, actor = EXCLUDED.actor""",
        topic,
        list(upto),
        list(upto.values()),
        actor,
    )


def unreviewed(highwaters: Mapping[int, int], reviewed: Mapping[int, int]) -> int:
    """Dead letters after the review marks (a recreated topic can sit below its marks)."""
    return sum(max(end - reviewed.get(partition, 0), 0) for partition, end in highwaters.items())
