"""bulk_gc collects rarely, yet it collects: garbage in reference cycles that lived long
enough to reach the oldest generation is freed without anyone calling gc.collect(), and
under the worker's thresholds a batch alive makes no collection due, yet cycles are freed."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable

from benchmarks.workload import usage
from tokenquota.gc_settings import BATCH_THRESHOLDS, BULK_THRESHOLDS, bulk_gc
from tokenquota.projections import LogRecord
from tokenquota.projections.state import log_time
from tokenquota.schemas import decode, encode


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


def test_cycles_that_reached_the_oldest_generation_are_collected() -> None:
    # Found by benchmarks.bad_input_memory: the API's resident memory grew by about 1 MB
    # per request of 5,000 invalid events, for good. The validation errors' cycles lived
    # through the request into the oldest generation, which bulk_gc's threshold of 100
    # gen1 runs (100 million allocations) collected practically never.
    freed = 0

    def gone(_: object) -> None:
        nonlocal freed
        freed += 1

    with bulk_gc():
        old = [_Node() for _ in range(20_000)]
        refs = [weakref.ref(node, gone) for node in old]
        gc.collect(1)
        gc.collect(1)  # now in the oldest generation, as if alive through a long request
        del old
        for _ in range(200):  # what later requests allocate: no explicit collection
            churn: list[list[object]] = [[] for _ in range(100_000)]
            del churn
            if freed == len(refs):
                break
    assert freed == len(refs)


def _collections() -> tuple[list[int], Callable[[str, dict[str, int]], None]]:
    """A list that counts the collections from now on, and the callback to remove."""
    counted: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "stop":
            counted.append(info["generation"])

    gc.callbacks.append(count)
    return counted, count


def _decoded_batch(events: int) -> list[object]:
    """What the worker holds of a batch while it applies it: each event decoded into a
    LogRecord, and its ledger row."""
    stamped = log_time(1_765_000_000_000)
    held: list[object] = []
    for offset, event in enumerate(usage(events, 1_000)):
        payload = encode(event)
        record = LogRecord(decode(payload), payload, "usage", 0, offset, stamped)
        e = record.event
        row = (e.event_id, e.event_type, e.session_id, e.occurred_at, payload.decode())
        held += (record, row)
    return held


def test_a_whole_batch_alive_makes_no_collection_due_under_the_batch_thresholds() -> None:
    # A collection during a batch finds all of it alive, walks it and promotes it; the
    # worker's 15,000-event batches made 113 such collections in 600,000 events with the
    # API's thresholds, 12 % of its time. The same batch under each setting:
    for thresholds, expect_any in ((BULK_THRESHOLDS, True), (BATCH_THRESHOLDS, False)):
        with bulk_gc(thresholds):
            counted, callback = _collections()
            try:
                batch = _decoded_batch(15_000)
                assert len(batch) == 30_000
                del batch
            finally:
                gc.callbacks.remove(callback)
        assert bool(counted) is expect_any, (thresholds, counted)


def test_cycles_are_still_freed_under_the_batch_thresholds() -> None:
    # A poison message's validation error holds reference cycles; the worker frees them
    # by reference counts never. They count toward the young generation until it is
    # due, and its collection frees them: memory under bad input stays bounded.
    freed = 0

    def gone(_: object) -> None:
        nonlocal freed
        freed += 1

    with bulk_gc(BATCH_THRESHOLDS):
        garbage = [_Node() for _ in range(20_000)]
        refs = [weakref.ref(node, gone) for node in garbage]
        del garbage
        assert freed == 0
        # Batches come and go (freed by reference counts), and once one is big enough
        # to make the young generation due, the garbage goes with the collection.
        for _ in range(3):
            batch: list[list[object]] = [[] for _ in range(BATCH_THRESHOLDS[0])]
            del batch
            if freed == len(refs):
                break
    assert freed == len(refs)
