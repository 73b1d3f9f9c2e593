"""The batch consumer's seek back to the committed offsets during a rebalance (pure: the
consumer is a stand-in with the two attributes `_seek_back` uses)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tokenquota.processors.batch_consumer import BatchConsumer


class _Consumer:
    """What `_seek_back` touches: perform_seek (cancelled by the consumer thread once, as a
    rebalance does) and the service's logger."""

    def __init__(self, cancelled: int) -> None:
        self.cancelled = cancelled
        self.seeks = 0
        self._dropped = False
        self.log = logging.getLogger("test.batch_consumer")

    async def perform_seek(self) -> None:
        self.seeks += 1
        if self.seeks <= self.cancelled:
            raise asyncio.CancelledError  # the thread's promise, not this task, was cancelled


async def test_a_seek_the_consumer_thread_cancelled_is_tried_again_not_fatal() -> None:
    # Found by the fault campaign: a rebalance cancelled the seek in the consumer thread;
    # faust let the CancelledError end the fetcher, and the worker exited.
    consumer = _Consumer(cancelled=1)
    consumer._dropped = True  # a fetch was dropped: the seek must happen
    await BatchConsumer._seek_back(consumer)  # type: ignore[arg-type]
    assert consumer._dropped  # not yet sought: the next pass tries again
    await BatchConsumer._seek_back(consumer)  # type: ignore[arg-type]
    assert (consumer.seeks, consumer._dropped) == (2, False)


async def test_a_fetcher_being_stopped_is_still_stopped() -> None:
    started = asyncio.Event()

    class _Slow(_Consumer):
        async def perform_seek(self) -> None:
            started.set()
            await asyncio.Event().wait()  # until cancelled

    task = asyncio.create_task(BatchConsumer._seek_back(_Slow(cancelled=0)))  # type: ignore[arg-type]
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
