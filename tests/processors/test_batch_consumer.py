"""The batch consumer's seek back to the committed offsets during a rebalance (pure: the
consumer is a stand-in with the two attributes `_seek_back` uses)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from tokenquota.processors.batch_consumer import BatchConsumer


def _running() -> bool:
    return False  # the fetcher is not being stopped


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
    await BatchConsumer._seek_back(consumer, _running)  # type: ignore[arg-type]
    assert consumer._dropped  # not yet sought: the next pass tries again
    await BatchConsumer._seek_back(consumer, _running)  # type: ignore[arg-type]
    assert (consumer.seeks, consumer._dropped) == (2, False)


async def test_a_cancellation_swallowed_earlier_does_not_make_the_next_one_fatal() -> None:
    # Found by the 30-minute campaign: the worker exited on a seek the consumer thread
    # cancelled, because the fetcher's task still counted a cancellation that had been
    # swallowed before (Task.cancelling() stays above zero until uncancel()), so the seek
    # was taken for the fetcher being stopped.
    task = asyncio.current_task()
    assert task is not None
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):  # swallowed without uncancel(), as
        await asyncio.sleep(0)  # some of mode's and faust's waits do
    assert task.cancelling() == 1
    consumer = _Consumer(cancelled=1)
    try:
        await BatchConsumer._seek_back(consumer, _running)  # type: ignore[arg-type]
        await BatchConsumer._seek_back(consumer, _running)  # type: ignore[arg-type]
    finally:
        while task.cancelling():  # as found: nothing of it reaches the next test
            task.uncancel()
    assert consumer.seeks == 2


async def test_a_fetcher_being_stopped_is_still_stopped() -> None:
    started = asyncio.Event()
    stopped = False

    class _Slow(_Consumer):
        async def perform_seek(self) -> None:
            started.set()
            await asyncio.Event().wait()  # until cancelled

    task = asyncio.create_task(
        BatchConsumer._seek_back(_Slow(cancelled=0), lambda: stopped)  # type: ignore[arg-type]
    )
    await asyncio.wait_for(started.wait(), 5)
    stopped = True  # mode marks the service stopped, then cancels its tasks
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
