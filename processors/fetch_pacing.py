"""How long the worker's next fetch may wait: the configured wait, longer while behind.

The fetch wait exists for an empty partition: the broker holds a fetch that finds nothing
for at most that long. A fetch that finds messages is answered at once, by Apache Kafka
whatever the wait. The embedded Tansu broker instead lists every batch a partition holds
within the wait, and answers nothing for it when the wait runs out first; past 50,000 to
100,000 batches in a partition (with a 50 ms wait, benchmarks/broker_listing.py) every
fetch comes back empty, and a worker with messages to read would never read them.
So while the broker reports messages past those handed over and a fetch brought none,
the wait doubles (up to `BEHIND_WAIT_MAX_MS`); once caught up it is the configured one
again, so that a message arriving at an empty partition is not held longer.
"""

from __future__ import annotations

__all__ = ["BEHIND_WAIT_MAX_MS", "next_fetch_wait"]

#: The longest a fetch waits while the worker is behind, in ms.
BEHIND_WAIT_MAX_MS = 5_000


def next_fetch_wait(current_ms: int, configured_ms: int, *, behind: bool, received: bool) -> int:
    """The next fetch's wait in ms, after a fetch waited `current_ms`: `configured_ms` when
    caught up, the same while behind and receiving, twice it (at most BEHIND_WAIT_MAX_MS)
    while behind and receiving nothing."""
    if not behind:
        return configured_ms
    if received:
        return current_ms
    return max(configured_ms, min(2 * max(current_ms, 1), BEHIND_WAIT_MAX_MS))
