"""Garbage-collector settings for the long-running, busy processes (worker, replay, API).

Decoding allocates a dozen tracked objects per event, so CPython's default thresholds
run a collection every few dozen events, and each full collection walks every object
the process holds (faust, pydantic, FastAPI, the loaded modules). Measured here, that
was half of decode's cost, and in the API a pause of 60-75 ms about once a second
under load. So what start-up made is frozen out of collection, and the young
generations are collected less often. The oldest still is, now and then: bad input
makes reference cycles (validation errors, exceptions and their tracebacks) that can
outlive a long request into it, and it walks only what was made since start-up.

The worker and replay take a young generation larger than a batch
(`BATCH_THRESHOLDS`): a batch's objects all live until it is applied, so a collection
during it finds them all alive, walks them and promotes them, and the next generation's
collections walk them again. With the API's young generation of 50,000, a worker
reading a loaded topic collected 113 times in 600,000 events, 16 ms each, and its
middle generation 5 times, 220-270 ms each: 12 % of its time. Freed by their reference
counts when the batch is done, a batch's objects never make the young generation due;
what does is garbage in reference cycles, which a collection then frees.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["BATCH_THRESHOLDS", "BULK_THRESHOLDS", "bulk_gc"]

#: Generation thresholds while a bulk path runs (CPython's defaults are 700, 10, 10).
BULK_THRESHOLDS = (50_000, 20, 10)
#: The worker's and replay's: a fetch of a loaded topic (about 15,000 events) kept up to
#: 560,000 tracked objects alive at once in the worker (decoded events, their messages,
#: ledger rows, the fold's state), well under the young generation's 1,000,000.
BATCH_THRESHOLDS = (1_000_000, 20, 10)


@contextlib.contextmanager
def bulk_gc(thresholds: tuple[int, int, int] = BULK_THRESHOLDS) -> Iterator[None]:
    """Freeze what exists now out of collection and collect rarely (at `thresholds`);
    restore on exit."""
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    # Again, now that it walks nothing frozen: CPython holds a full collection back until
    # what was promoted since the last one is a quarter of what survived it, and that
    # count should not include what is frozen.
    gc.collect()
    gc.set_threshold(*thresholds)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
