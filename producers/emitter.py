"""The emitter: events to Kafka keyed by session, with a durable spool when the broker is away."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder

from tokenquota.config import EmitterSettings, KafkaSettings, Settings
from tokenquota.errors import IntegrationError
from tokenquota.schemas import Event, encode

from .spool import Spool, SpooledMessage

__all__ = ["Delivery", "Emitter"]

log = logging.getLogger("tokenquota.emitter")

#: "acked": the broker has the event. "spooled": it is fsync'd in the local spool and
#: will be re-sent, in order, when the broker is back.
Delivery = Literal["acked", "spooled"]


class Emitter:
    """Sends events to the usage topic; never loses one it has accepted.

    `await emit(event)` returns "acked" once the broker has acknowledged it (acks=all),
    or "spooled" once it is durable in the local spool because the broker could not be
    reached. While anything is spooled, new events are spooled behind it, so a session's
    events reach the topic in the order they were emitted. A new Emitter re-sends what
    an earlier one left in the spool before anything else.
    """

    def __init__(self, kafka: KafkaSettings, options: EmitterSettings, spool_dir: Path) -> None:
        if kafka.bootstrap_servers is None:
            raise IntegrationError(
                "kafka.bootstrap_servers is not set: set KAFKA_BOOTSTRAP_SERVERS, or run "
                "`tokenquota dev` and use the address it prints"
            )
        self.topic = kafka.usage_topic
        self._servers = kafka.bootstrap_servers
        self._options = options
        self._spool = Spool(spool_dir, options.spool_max_bytes)
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self._drained = asyncio.Event()
        self._drainer: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """An emitter for the configured broker, spooling under settings.spool_dir."""
        return cls(settings.kafka, settings.emitter, settings.spool_dir)

    @property
    def spooled_bytes(self) -> int:
        """Bytes waiting in the spool (0 when everything has reached the broker)."""
        return self._spool.size

    async def start(self) -> None:
        """Connect; if the spool holds events, start re-sending them first."""
        try:
            self._producer = await self._new_producer()
        except (KafkaError, OSError, TimeoutError, IntegrationError) as exc:
            log.warning("cannot send to %s at start (%s); spooling", self._servers, exc)
        if self._spool.size:
            self._start_drainer()
        else:
            self._drained.set()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def emit(self, event: Event) -> Delivery:
        """Send one event; see the class docstring for what the result means."""
        return (await self.emit_many([event]))[0]

    async def emit_many(self, events: Iterable[Event]) -> list[Delivery]:
        """Send events in order; all are acked, or the unacked rest is spooled in order."""
        if self._closed:
            raise IntegrationError("this Emitter is closed")
        messages = [SpooledMessage(e.session_id.encode(), encode(e)) for e in events]
        if not messages:
            return []
        futures: list[asyncio.Future[object]] = []
        async with self._lock:
            if self._spool.size or self._producer is None:
                return self._to_spool(messages, acked=0)
            try:
                # Enqueued under the lock, so concurrent callers keep their order per
                # partition; acknowledgements are awaited outside it.
                futures = await self._send_batches(messages)
            except (KafkaError, OSError, TimeoutError) as exc:
                log.warning("send to %s failed (%s); spooling", self._servers, exc)
                return self._to_spool(messages, acked=0)
        try:
            async with asyncio.timeout(self._options.send_timeout):
                await asyncio.gather(*futures)
        except (KafkaError, OSError, TimeoutError) as exc:
            acked = _leading_done(futures)
            log.warning("send to %s failed (%s); spooling", self._servers, exc)
            async with self._lock:
                return self._to_spool(messages[acked:], acked=acked)
        return ["acked"] * len(messages)

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until nothing is spooled and every sent event is acknowledged."""
        try:
            async with asyncio.timeout(timeout):
                await self._drained.wait()
                if self._producer is not None:
                    await self._producer.flush()
        except TimeoutError:
            raise IntegrationError(
                f"{self._spool.size} spooled bytes not delivered within {timeout} s; "
                f"they stay in {self._spool.path}"
            ) from None

    async def close(self) -> None:
        """Flush what the producer holds and stop; spooled events stay on disk for later."""
        if self._closed:
            return
        self._closed = True
        if self._drainer is not None:
            self._drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drainer
        if self._producer is not None:
            with contextlib.suppress(KafkaError, OSError, TimeoutError):
                async with asyncio.timeout(self._options.send_timeout):
                    await self._producer.stop()
        self._spool.close()

    # -- internals ---------------------------------------------------------------------

    def _to_spool(self, messages: list[SpooledMessage], acked: int) -> list[Delivery]:
        self._spool.append(messages)  # SpoolFullError: nothing of `messages` was accepted
        self._drained.clear()
        self._start_drainer()
        result: list[Delivery] = ["acked"] * acked
        return result + ["spooled"] * len(messages)

    async def _send(self, message: SpooledMessage) -> asyncio.Future[object]:
        assert self._producer is not None
        async with asyncio.timeout(self._options.send_timeout):
            future: asyncio.Future[object] = await self._producer.send(
                self.topic, value=message.value, key=message.key
            )
        return future

    async def _send_batches(self, messages: list[SpooledMessage]) -> list[asyncio.Future[object]]:
        """Send `messages` as one batch per partition (split when full), in order.

        Returns each message's acknowledgement (its batch's), in message order. Batches
        skip aiokafka's per-message path, which costs most of the time of a large call.
        Calls of up to `_FEW` messages go through that path instead: it adds them to the
        batch each partition has open, so concurrent and successive small calls (a
        reservation each, a steady stream of usage) share produce requests. aiokafka
        sends one request at a time per broker, and each ready-made batch waits for a
        request of its own, so small batches would queue one round trip per call.
        """
        producer = self._producer
        assert producer is not None
        async with asyncio.timeout(self._options.send_timeout):
            partitions = sorted(await producer.partitions_for(self.topic))
        if len(messages) <= _FEW:
            async with asyncio.timeout(self._options.send_timeout):
                return [
                    await producer.send(
                        self.topic,
                        m.value,
                        m.key,
                        partition=_PARTITIONER(m.key, partitions, partitions),
                    )
                    for m in messages
                ]
        open_batches: dict[int, tuple[BatchBuilder, list[int]]] = {}
        acks: list[asyncio.Future[object] | None] = [None] * len(messages)

        async def send(partition: int) -> None:
            batch, members = open_batches.pop(partition)
            async with asyncio.timeout(self._options.send_timeout):
                ack = await producer.send_batch(batch, self.topic, partition=partition)
            for index in members:
                acks[index] = ack

        for index, message in enumerate(messages):
            partition = _PARTITIONER(message.key, partitions, partitions)
            if partition not in open_batches:
                open_batches[partition] = (producer.create_batch(), [])
            batch, members = open_batches[partition]
            if batch.append(key=message.key, value=message.value, timestamp=None) is None:
                await send(partition)  # full: send it, start the next one
                open_batches[partition] = (producer.create_batch(), [])
                batch, members = open_batches[partition]
                if batch.append(key=message.key, value=message.value, timestamp=None) is None:
                    raise IntegrationError(
                        f"an event of {len(message.value)} bytes exceeds "
                        f"emitter.max_batch_bytes ({self._options.max_batch_bytes})"
                    )
            members.append(index)
        for partition in list(open_batches):
            await send(partition)
        return [ack for ack in acks if ack is not None]

    async def _new_producer(self) -> AIOKafkaProducer:
        timeout_ms = int(self._options.send_timeout * 1000)
        producer = AIOKafkaProducer(
            bootstrap_servers=self._servers,
            client_id="tokenquota-emitter",
            acks="all",
            enable_idempotence=self._options.enable_idempotence,
            linger_ms=self._options.linger_ms,
            max_batch_size=self._options.max_batch_bytes,
            request_timeout_ms=timeout_ms,
        )
        try:
            async with asyncio.timeout(self._options.send_timeout):
                await producer.start()
                # Never let the first send auto-create the topic with the broker's own
                # partition count: wait for `tokenquota init` instead.
                cluster = await producer.client.fetch_all_metadata()
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise
        if self.topic not in cluster.topics():
            await producer.stop()
            raise IntegrationError(
                f"topic {self.topic!r} does not exist on {self._servers}; run `tokenquota init`"
            )
        return producer

    def _start_drainer(self) -> None:
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain(), name="tokenquota-spool-drain")

    async def _drain(self) -> None:
        """Re-send the spool, oldest first, until it is empty."""
        while True:
            async with self._lock:
                if not self._spool.size:
                    self._drained.set()
                    return
                try:
                    await self._drain_once()
                    continue
                except (KafkaError, OSError, TimeoutError, IntegrationError) as exc:
                    log.info("spool not delivered yet (%s); retrying", exc)
                    await self._drop_producer()
            await asyncio.sleep(self._options.retry_interval)

    async def _drain_once(self) -> None:
        if self._producer is None:
            self._producer = await self._new_producer()
        messages, length = self._spool.read()
        futures = [await self._send(m) for m in messages]
        async with asyncio.timeout(self._options.send_timeout):
            await asyncio.gather(*futures)
        self._spool.discard_head(length)
        log.info("re-sent %d spooled event(s)", len(messages))

    async def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await producer.stop()


#: Calls with at most this many events are added to the partitions' open batches.
_FEW = 1000
# The producer's own default: murmur2 of the key over all partitions, so events sent
# through `emit` and through `emit_many` land on the same partition for a session.
_PARTITIONER = DefaultPartitioner()


def _leading_done(futures: list[asyncio.Future[object]]) -> int:
    """How many futures, from the first, completed without error."""
    count = 0
    for future in futures:
        if not future.done() or future.cancelled() or future.exception() is not None:
            break
        count += 1
    return count
