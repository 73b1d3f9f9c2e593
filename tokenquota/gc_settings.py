"""Garbage-collector settings for the long-running, busy processes (worker, replay, API).

Decoding allocates a dozen tracked objects per event, so CPython's default thresholds
run a collection every few dozen events, and each full collection walks every object
the process holds (faust, pydantic, FastAPI, the loaded modules). Measured here, that
was half of decode's cost, and in the API a pause of 60-75 ms about once a second
under load. Events and requests hold no reference cycles, so reference counting frees
them; collecting less often, and never walking what start-up made, loses nothing.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["BULK_THRESHOLDS", "bulk_gc"]

#: Generation thresholds while a bulk path runs (CPython's defaults are 700, 10, 10).
BULK_THRESHOLDS = (50_000, 20, 100)


@contextlib.contextmanager
def bulk_gc() -> Iterator[None]:
    """Freeze what exists now out of collection and collect rarely; restore on exit."""
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*BULK_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
