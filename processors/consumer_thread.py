"""The worker consumer's thread (faust runs the aiokafka consumer in a thread of its own)
and where it starts each partition it is assigned."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

import aiokafka
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from tokenquota.kafka_probe import seek_to_start

if TYPE_CHECKING:
    from .batch_consumer import BatchApp

__all__ = ["ConsumerThread", "seek_to_committed_or_start"]


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust's consumer thread, with the worker's fetch wait, the seek to offset 0 of
    partitions without a committed offset, and a stop that survives a broker gone."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # faust hard-codes 1.5 s and has no setting for it; a broker that holds an empty
        # fetch for the whole wait (the embedded Tansu broker does) would delay every
        # event arriving meanwhile by that much.
        wait = cast("BatchApp", self.app).fetch_max_wait
        consumer._fetch_max_wait_ms = int(wait * 1000)  # read by consumer.start()
        return consumer

    def __post_init__(self) -> None:
        super().__post_init__()
        #: Where the last seek to the committed offsets sent the partitions with none:
        #: the log's start, the offset expected first.
        self.starts: dict[TP, int] = {}

    async def seek_to_committed(self) -> Mapping[TP, int]:
        committed, self.starts = await self.call_thread(
            seek_to_committed_or_start, self._ensure_consumer()
        )
        return cast("Mapping[TP, int]", committed)

    def set_fetch_wait(self, wait_ms: int) -> None:
        """Let the fetches from now on wait at most `wait_ms` on an empty partition (the
        fetcher reads it, in this thread, each time it builds a request)."""
        consumer = self._consumer
        fetcher = getattr(consumer, "_fetcher", None) if consumer is not None else None
        if fetcher is not None:
            fetcher._fetch_max_wait_ms = wait_ms

    async def on_thread_stop(self) -> None:
        """faust's, except for the cancellation aiokafka's consumer re-raises as it stops
        with a fetch backing off (the broker unreachable): its fetcher cancels the fetch
        and awaits it. Raised here, it ended the consumer thread before its shutdown was
        signalled, and the stopping worker waited for that for good."""
        try:
            await super().on_thread_stop()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this thread's own stop was cancelled
            self.log.info("consumer stopped with a fetch still backing off (broker unreachable)")

    async def seek_in_thread(self, tp: TP, offset: int) -> None:
        """Seek `tp` to `offset` in the consumer's own thread (faust's `seek` calls the
        aiokafka consumer from the event loop of the app, another thread's)."""
        await self.call_thread(self._ensure_consumer().seek, tp, offset)


async def seek_to_committed_or_start(
    consumer: aiokafka.AIOKafkaConsumer,
) -> tuple[dict[TP, int | None], dict[TP, int]]:
    """Seek every assigned partition to its committed offset, or to offset 0 when it has
    none; return the committed offsets (None: none) and those starts (0).

    aiokafka's own `seek_to_committed` leaves the position where it is for a partition
    with no committed offset, or one of 0: after a fetch was dropped, that is past the
    records it held, and they would be skipped.

    Offset 0 rather than `seek_to_beginning` (see `seek_to_start`): the worker's first
    start skipped the offsets before the embedded broker's "earliest" for good (seen in
    CI). Where retention shortened the log, the worker, expecting 0, fetches again from
    the hole and hands over what follows after so many tries (see
    `BatchConsumer._hole_found`).
    """
    committed: dict[TP, int | None] = await consumer.seek_to_committed()
    uncommitted = [tp for tp, offset in committed.items() if not offset]
    seek_to_start(consumer, uncommitted)
    return committed, dict.fromkeys(uncommitted, 0)
