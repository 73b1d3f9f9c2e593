"""The dead-letter topic as an operator reads it: what was refused, where from, and why,
and how far it has been reviewed (`tokenquota dlq show` / `tokenquota dlq ack`).

A dead letter stays in its topic for good (nothing consumes it), so "how many" means
"how many since the last review": the health check and the overview count those.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord
from pydantic import BaseModel

from .config import Settings
from .errors import IntegrationError
from .kafka_probe import partition_highwaters
from .projections.dead_letters import mark_reviewed, reviewed_offsets, unreviewed
from .schema_connection import schema_connection

__all__ = ["DeadLetterView", "DeadLetters", "acknowledge", "read_dead_letters"]

#: Bytes of a dead letter's value shown (it can be anything up to a batch).
_EXCERPT = 200


class DeadLetterView(BaseModel):
    """One message of the dead-letter topic."""

    partition: int
    offset: int
    sent_at: datetime
    reviewed: bool
    reason: str
    #: Where the worker read it: the usage topic's partition and offset.
    source_topic: str | None
    source_partition: int | None
    source_offset: int | None
    key: str | None
    #: The start of the refused message, as text (invalid UTF-8 replaced).
    value: str
    value_bytes: int


class DeadLetters(BaseModel):
    """Dead letters after the review marks (or all of them), oldest first per partition."""

    topic: str
    total: int
    unreviewed: int
    letters: list[DeadLetterView]


async def read_dead_letters(
    settings: Settings, *, everything: bool = False, limit: int = 100, timeout: float = 10
) -> DeadLetters:
    """The unreviewed dead letters (with `everything`, all of them), at most `limit`."""
    kafka = settings.kafka
    highwaters = await partition_highwaters(kafka, kafka.dlq_topic)
    reviewed = await _reviewed(settings)
    start = {p: 0 if everything else min(reviewed.get(p, 0), end) for p, end in highwaters.items()}
    wanted = {p: end for p, end in highwaters.items() if start[p] < end}
    letters = await _fetch(settings, start, wanted, limit, timeout) if wanted else []
    for letter in letters:
        letter.reviewed = letter.offset < reviewed.get(letter.partition, 0)
    return DeadLetters(
        topic=kafka.dlq_topic,
        total=sum(highwaters.values()),
        unreviewed=unreviewed(highwaters, reviewed),
        letters=letters,
    )


async def acknowledge(settings: Settings, actor: str) -> dict[int, int]:
    """Mark every dead letter there is now as reviewed by `actor`; the marks set."""
    kafka = settings.kafka
    highwaters = await partition_highwaters(kafka, kafka.dlq_topic)
    async with schema_connection(settings, "dlq_reviews") as conn:
        await mark_reviewed(conn, kafka.dlq_topic, highwaters, actor)
    return highwaters


async def _reviewed(settings: Settings) -> dict[int, int]:
    async with schema_connection(settings, "dlq_reviews") as conn:
        return await reviewed_offsets(conn, settings.kafka.dlq_topic)


async def _fetch(
    settings: Settings,
    start: dict[int, int],
    ends: dict[int, int],
    limit: int,
    timeout: float,
) -> list[DeadLetterView]:
    """Read each partition from `start` up to `ends` (at most `limit` letters in all)."""
    kafka = settings.kafka
    topic = kafka.dlq_topic
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers,
        enable_auto_commit=False,
        fetch_max_wait_ms=10,
        request_timeout_ms=int(timeout * 1000),
    )
    # Imported here: the processors package brings faust (0.6 s) for this one parser.
    from .processors.dlq import parse_dead_letter_headers

    letters: list[DeadLetterView] = []
    deadline = time.monotonic() + timeout
    try:
        await asyncio.wait_for(consumer.start(), timeout)
        partitions = [TopicPartition(topic, p) for p in sorted(ends)]
        consumer.assign(partitions)
        for tp in partitions:
            consumer.seek(tp, start[tp.partition])
        remaining = dict(ends)
        while remaining and len(letters) < limit:
            if time.monotonic() > deadline:
                raise IntegrationError(f"{topic} not read within {timeout} s")
            batches = await consumer.getmany(*partitions, timeout_ms=200)
            for tp, records in batches.items():
                for record in records:
                    end = remaining.get(tp.partition)
                    if end is None or record.offset >= end:
                        continue
                    headers = parse_dead_letter_headers(list(record.headers or ()))
                    letters.append(_view(record, headers))
                    if record.offset + 1 >= end:
                        remaining.pop(tp.partition)
    except (KafkaError, OSError, TimeoutError) as exc:
        raise IntegrationError(
            f"cannot read {topic} from {kafka.bootstrap_servers}: {exc}"
        ) from None
    finally:
        await consumer.stop()
    letters.sort(key=lambda letter: (letter.partition, letter.offset))
    return letters[:limit]


def _view(record: ConsumerRecord[bytes, bytes], headers: dict[str, str]) -> DeadLetterView:
    value = record.value or b""
    return DeadLetterView(
        partition=record.partition,
        offset=record.offset,
        sent_at=datetime.fromtimestamp(record.timestamp / 1000, UTC),
        reviewed=False,
        reason=headers.get("reason", "(no reason header)"),
        source_topic=headers.get("topic"),
        source_partition=_int(headers.get("partition")),
        source_offset=_int(headers.get("offset")),
        key=record.key.decode(errors="replace") if record.key is not None else None,
        value=value[:_EXCERPT].decode(errors="replace"),
        value_bytes=len(value),
    )


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None
