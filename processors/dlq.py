"""Dead letters: messages that are not valid events, kept byte for byte with the reason.

The DLQ message's value is the original value and its key the original key; headers
carry where it came from and why it was refused, so it can be inspected and re-sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["HEADER_PREFIX", "DeadLetter", "dead_letter_headers", "parse_dead_letter_headers"]

HEADER_PREFIX = "tokenquota.dlq."


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message refused by the worker and where it was in the log."""

    key: bytes | None
    value: bytes
    topic: str
    partition: int
    offset: int
    reason: str


def dead_letter_headers(letter: DeadLetter) -> list[tuple[str, bytes]]:
    """Kafka headers describing a dead letter."""
    return [
        (HEADER_PREFIX + "reason", letter.reason.encode()),
        (HEADER_PREFIX + "topic", letter.topic.encode()),
        (HEADER_PREFIX + "partition", str(letter.partition).encode()),
        (HEADER_PREFIX + "offset", str(letter.offset).encode()),
    ]


def parse_dead_letter_headers(
    headers: Sequence[tuple[str, bytes]] | Mapping[str, bytes],
) -> dict[str, str]:
    """The tokenquota.dlq.* headers of a DLQ message, prefix stripped."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {
        name.removeprefix(HEADER_PREFIX): value.decode(errors="replace")
        for name, value in items
        if name.startswith(HEADER_PREFIX)
    }
