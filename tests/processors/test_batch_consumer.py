"""The batch consumer's seek back to the committed offsets during a rebalance (pure: the
consumer is a stand-in with the two attributes `_seek_back` uses)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import SimpleNamespace

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

    _thread_cancelled = BatchConsumer._thread_cancelled


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


#: What a fetch returns: records by partition.
_Records = dict[object, list[object]]


class _Draining(_Consumer):
    """What `_drain_messages` touches up to its fetch: a fetch the consumer thread cancels
    `cancelled` times, after which the fetcher is stopped (the loop ends)."""

    def __init__(self, cancelled: int) -> None:
        super().__init__(cancelled)
        self.fetches_tried = 0
        self._stopped = asyncio.Event()
        self.fetcher = SimpleNamespace(_stopped=asyncio.Event(), should_stop=False)
        self.callback = self._to_message = self._read_offset = None
        self._commit_every: int | None = None
        self.should_stop = False
        self.app = SimpleNamespace(
            topics=SimpleNamespace(acks_enabled_for=None), batch_topics=frozenset(),
            consumer_generation_id=0,
        )  # fmt: skip
        self.consumer_stopped_errors = ()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def _wait_next_records(self, timeout: float) -> tuple[_Records | None, None]:
        self.fetches_tried += 1
        if self.fetches_tried <= self.cancelled:
            raise asyncio.CancelledError  # the thread's getmany promise was cancelled
        self.fetcher._stopped.set()  # then the fetcher is stopped: the loop ends
        return None, None


async def test_a_fetch_the_consumer_thread_cancelled_is_fetched_again_not_fatal() -> None:
    # Found by the fourth 30-minute campaign: a rebalance cancelled the consumer thread's
    # getmany; faust let the CancelledError end the fetcher, and the worker exited.
    consumer = _Draining(cancelled=2)
    await BatchConsumer._drain_messages(consumer, consumer.fetcher)  # type: ignore[arg-type]
    assert consumer.fetches_tried == 3


async def test_a_fetch_cancelled_because_the_fetcher_stops_still_stops_it() -> None:
    consumer = _Draining(cancelled=1)
    consumer.fetcher.should_stop = True  # mode marks it stopped, then cancels its task
    with pytest.raises(asyncio.CancelledError):
        await BatchConsumer._drain_messages(consumer, consumer.fetcher)  # type: ignore[arg-type]


class _Committing(_Draining):
    """Fetches that return nothing new, and a commit due after each that the consumer
    thread cancels `cancelled_commits` times (a rebalance began); the third fetch stops."""

    def __init__(self, cancelled_commits: int) -> None:
        super().__init__(cancelled=0)
        self.cancelled_commits = cancelled_commits
        self.commits = 0
        self._commit_every = 1
        self._n_acked = 0
        self.flow_active = True

    _seek_back = BatchConsumer._seek_back

    async def _wait_next_records(self, timeout: float) -> tuple[_Records | None, None]:
        self.fetches_tried += 1
        if self.fetches_tried >= 3:
            self.fetcher._stopped.set()
            return None, None
        self._n_acked = 1  # a commit is due after this fetch
        return {}, None

    async def commit(self) -> None:
        self.commits += 1
        if self.commits <= self.cancelled_commits:
            raise asyncio.CancelledError  # the thread's commit promise was cancelled


async def test_any_other_call_the_consumer_thread_cancelled_is_not_fatal_and_seeks_back() -> None:
    # Each 30-minute campaign found one more call of the fetcher's loop (a seek, a fetch)
    # whose cancellation by a rebalance ended the fetcher; a commit would be next. The
    # loop now outlives any of them, and seeks back before reading on.
    consumer = _Committing(cancelled_commits=1)
    await BatchConsumer._drain_messages(consumer, consumer.fetcher)  # type: ignore[arg-type]
    assert consumer.commits == 1  # the cancelled one; the next pass seeks back instead
    assert (consumer.seeks, consumer._dropped, consumer.fetches_tried) == (1, False, 3)


async def test_a_pass_cancelled_because_the_fetcher_stops_still_stops_it() -> None:
    consumer = _Committing(cancelled_commits=1)
    consumer.fetcher.should_stop = True
    with pytest.raises(asyncio.CancelledError):
        await BatchConsumer._drain_messages(consumer, consumer.fetcher)  # type: ignore[arg-type]
    assert consumer.commits == 1
