"""How the worker cuts batches from faust's channel queue (pure: a plain asyncio queue)."""

from __future__ import annotations

import asyncio

from tokenquota.processors.app import take_ready


def _queue(*items: object) -> asyncio.Queue[object]:
    queue: asyncio.Queue[object] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)
    return queue


async def test_a_batch_is_what_has_arrived_without_waiting() -> None:
    queue = _queue(1, 2, 3)
    assert await asyncio.wait_for(take_ready(queue, 10, 0), 1) == [1, 2, 3]
    assert queue.empty()


async def test_a_batch_never_exceeds_its_size_and_keeps_order() -> None:
    queue = _queue(*range(7))
    assert await take_ready(queue, 3, 0) == [0, 1, 2]
    assert await take_ready(queue, 3, 0) == [3, 4, 5]
    assert await take_ready(queue, 3, 0) == [6]


async def test_an_empty_queue_waits_for_the_first_event() -> None:
    queue = _queue()
    taking = asyncio.ensure_future(take_ready(queue, 10, 0))
    await asyncio.sleep(0)
    assert not taking.done()
    queue.put_nowait("first")
    assert await asyncio.wait_for(taking, 1) == ["first"]


async def test_linger_lets_a_batch_that_is_not_full_gather_more() -> None:
    queue = _queue(1)
    loop = asyncio.get_running_loop()
    loop.call_soon(queue.put_nowait, 2)
    assert await asyncio.wait_for(take_ready(queue, 10, 0.05), 1) == [1, 2]
