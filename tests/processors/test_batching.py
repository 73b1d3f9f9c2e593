"""How the worker cuts batches from the queued fetches (pure: a plain asyncio queue)."""

from __future__ import annotations

import asyncio

from tokenquota.processors.batching import Backlog, take_ready


async def _taken(queue: asyncio.Queue[list[int]], most: int, linger: float) -> list[int]:
    """The items of the fetches one take_ready takes, in order."""
    return [item for fetch in await take_ready(queue, most, linger) for item in fetch]


def _fetches(*fetches: list[int]) -> asyncio.Queue[list[int]]:
    queue: asyncio.Queue[list[int]] = asyncio.Queue()
    for fetch in fetches:
        queue.put_nowait(fetch)
    return queue


async def test_a_batch_is_every_fetch_that_has_arrived_without_waiting() -> None:
    queue = _fetches([1, 2], [3])
    assert await asyncio.wait_for(_taken(queue, 10, 0), 1) == [1, 2, 3]
    assert queue.empty()


async def test_a_batch_stops_once_it_reaches_its_size_and_keeps_order() -> None:
    queue = _fetches([0, 1], [2, 3], [4], [5, 6])
    assert await _taken(queue, 3, 0) == [0, 1, 2, 3]  # a fetch is never split
    assert await _taken(queue, 3, 0) == [4, 5, 6]
    assert queue.empty()


async def test_an_empty_queue_waits_for_the_first_fetch() -> None:
    queue = _fetches()
    taking = asyncio.ensure_future(_taken(queue, 10, 0))
    await asyncio.sleep(0)
    assert not taking.done()
    queue.put_nowait([7])
    assert await asyncio.wait_for(taking, 1) == [7]


class _RefilledWhenTaken(asyncio.Queue[list[int]]):
    """A queue that is handed `refill` one loop iteration after its first fetch is taken,
    so the refill can only be in the batch if take_ready waited after taking that fetch."""

    def __init__(self, first: list[int], refill: list[int]) -> None:
        super().__init__()
        self.put_nowait(first)
        self._refill: list[int] | None = refill

    def get_nowait(self) -> list[int]:
        item = super().get_nowait()
        if self._refill is not None:
            refill, self._refill = self._refill, None
            asyncio.get_running_loop().call_soon(self.put_nowait, refill)
        return item


async def test_linger_lets_a_batch_that_is_not_full_gather_more() -> None:
    queue = _RefilledWhenTaken([1], [2])
    assert await asyncio.wait_for(_taken(queue, 10, 0.05), 1) == [1, 2]
    assert queue.empty()


async def test_without_linger_a_batch_is_only_what_had_arrived() -> None:
    queue = _RefilledWhenTaken([1], [2])
    assert await asyncio.wait_for(_taken(queue, 10, 0), 1) == [1]
    assert await asyncio.wait_for(_taken(queue, 10, 0), 1) == [2]


async def test_a_full_batch_does_not_linger() -> None:
    queue = _RefilledWhenTaken([1, 2, 3], [4])
    assert await asyncio.wait_for(_taken(queue, 3, 60), 10) == [1, 2, 3]


async def test_the_backlog_hands_everything_that_waits_to_the_applier_at_once() -> None:
    backlog: Backlog[str] = Backlog(most=100)
    await backlog.put("fetch 1", 3)
    await backlog.put("fetch 2", 4)
    assert await asyncio.wait_for(backlog.take(), 1) == ["fetch 1", "fetch 2"]
    taking = asyncio.ensure_future(backlog.take())
    await asyncio.sleep(0.01)
    assert not taking.done()  # nothing waits: the applier waits for the next batch
    await backlog.put("fetch 3", 1)
    assert await asyncio.wait_for(taking, 1) == ["fetch 3"]


async def test_the_backlog_makes_the_decoder_wait_once_most_items_wait() -> None:
    backlog: Backlog[str] = Backlog(most=5)
    await backlog.put("a", 3)
    await backlog.put("b", 3)  # 6 >= 5: no room for more until the applier takes
    putting = asyncio.ensure_future(backlog.put("c", 1))
    await asyncio.sleep(0.01)
    assert not putting.done()
    assert await backlog.take() == ["a", "b"]
    await asyncio.wait_for(putting, 1)
    assert await backlog.take() == ["c"]
