"""Garbage-collector settings for the long-running, busy processes (worker, replay, API).

Decoding allocates a dozen tracked objects per event, so CPython's default thresholds
run a collection every few dozen events, and each full collection walks every object
the process holds (faust, pydantic, FastAPI, the loaded modules). Measured here, that
was half of decode's cost, and in the API a pause of 60-75 ms about once a second
under load. So what start-up made is frozen out of collection, and the young
generations are collected less often. The oldest still is, now and then: bad input
makes reference cycles (validation errors, exceptions and their tracebacks) that can
outlive a long request into it, and it walks only what was made since start-up.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["BULK_THRESHOLDS", "bulk_gc"]

#: Generation thresholds while a bulk path runs (CPython's defaults are 700, 10, 10).
BULK_THRESHOLDS = (50_000, 20, 10)


@contextlib.contextmanager
def bulk_gc() -> Iterator[None]:
    """Freeze what exists now out of collection and collect rarely; restore on exit."""
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    # Again, now that it walks nothing frozen: CPython holds a full collection back until
    # what was promoted since the last one is a quarter of what survived it, and that
    # count should not include what is frozen.
    gc.collect()
    gc.set_threshold(*BULK_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
