"""bulk_gc collects rarely, yet it collects: garbage in reference cycles that lived long
enough to reach the oldest generation is freed without anyone calling gc.collect()."""

from __future__ import annotations

import gc
import weakref

from tokenquota.gc_settings import bulk_gc


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
