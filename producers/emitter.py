"""The emitter: events to Kafka keyed by session, with a durable spool when the broker is away.

How events travel. `emit_many` queues a call's events and awaits their outcome; one
sender task (group commit) sends what callers queued in *rounds*: a round takes, for every
partition, the oldest queued events that fit one ready-made batch (`max_batch_bytes`;
the rest wait for the next round), hands those batches to aiokafka closed (one produce
request per broker) and waits for all their acknowledgements before the next round
starts. So at most one batch per partition is ever in flight, and a batch that fails or
expires cannot be overtaken by a later batch of its partition, which aiokafka would
otherwise still send. On any failure the sender spools the round's unacknowledged events
and everything queued after them, in emit order, stops that producer before anything
else is sent and re-sends the spool with a new one; while anything is spooled, new
events are appended to the spool behind it. A timed-out batch may still be appended by
the broker later, before or after its re-sent copy: a duplicate, which the ledger drops
by event_id. Either way its partition's events before the batch were acknowledged before
it was sent, and those after it are sent only once its re-sent copy is acknowledged.

`emitter.linger_ms` is how long the oldest queued event waits for company before its
round starts: a lone emit waits linger_ms, as it did in aiokafka's accumulator, and
concurrent callers share its produce request. A round starts at once when a batch's
worth (`max_batch_bytes`) is queued or events were left over from a full batch, and on
`flush` or `close`. Events queued while a round is in flight go out in the next round,
as soon as the first of them has waited linger_ms. An emit with `linger=False` (a strict
reservation, whose caller then waits for the worker's decision) starts its round at once,
taking along whatever else is queued. aiokafka's own linger is not used: its batches
arrive closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from tokenquota.config import EmitterSettings, KafkaSettings, Settings
from tokenquota.errors import IntegrationError
from tokenquota.schemas import Event, encode, partition_key

from .kafka_rounds import (
    BATCH_OVERHEAD,
    PartitionMap,
    describe,
    halt_producer,
    new_producer,
    send_all,
    send_round,
)
from .spool import Spool, SpooledMessage

__all__ = ["Delivery", "Emitter"]

log = logging.getLogger("tokenquota.emitter")

#: "acked": the broker has the event. "spooled": it is fsync'd in the local spool and
#: will be re-sent, in order, when the broker is back.
Delivery = Literal["acked", "spooled"]


class _Call:
    """One `emit_many` call waiting for its events' outcomes."""

    __slots__ = ("future", "messages", "queued_at", "results", "seq", "unsettled")

    def __init__(
        self,
        seq: int,
        messages: list[SpooledMessage],
        queued_at: float,
        future: asyncio.Future[list[Delivery]],
    ) -> None:
        self.seq = seq
        self.messages = messages
        self.queued_at = queued_at
        self.future = future
        self.results: list[Delivery] = ["acked"] * len(messages)  # "spooled" where spooled
        self.unsettled = len(messages)


#: One queued event: its call and its index there (the pair is its place in emit order).
_Item = tuple[_Call, int]


class Emitter:
    """Sends events to the usage topic; never loses one it has accepted.

    `await emit(event)` returns "acked" once the broker has acknowledged it (acks=all),
    or "spooled" once it is durable in the local spool because the broker could not be
    reached. A session's events reach the topic in the order they were emitted, through
    failures and spooling (see the module docstring). A new Emitter re-sends what an
    earlier one left in the spool before anything else.
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
        self._closed = False
        # Calls not yet taken by a round, and events taken but not yet sent, per partition.
        self._intake: deque[_Call] = deque()
        self._intake_bytes = 0
        self._queues: dict[int, deque[_Item]] = {}
        self._unsettled = 0  # events of calls in memory: neither acked nor spooled yet
        self._calls: set[_Call] = set()
        self._seq = 0
        self._partitions = PartitionMap(self.topic, options.send_timeout)
        self._urgent = 0  # flush or close is waiting: no lingering
        self._hurried = 0  # queued calls that asked not to linger
        self._resent = 0
        # The spool's oldest chunk while it is being re-sent: what is not acked yet, and
        # the byte length to discard once all of it is.
        self._chunk: tuple[list[SpooledMessage], int] | None = None
        self._wake = asyncio.Event()
        self._settled = asyncio.Event()  # nothing in memory
        self._idle = asyncio.Event()  # nothing in memory, nothing spooled
        self._sender: asyncio.Task[None] | None = None
        self._update_state()

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
        self._ensure_sender()

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

    async def emit(self, event: Event, *, linger: bool = True) -> Delivery:
        """Send one event; see the class docstring for what the result means."""
        return (await self.emit_many([event], linger=linger))[0]

    async def emit_many(self, events: Iterable[Event], *, linger: bool = True) -> list[Delivery]:
        """Send events in order; each is acked or, with what follows it, spooled in order.

        With `linger=False` the round that takes them starts without waiting for company
        (a caller waits on them, e.g. a strict reservation); events queued meanwhile
        still share it.

        Raises SpoolFullError or SpoolWriteError when events that had to be spooled could
        not be (none of this call's unacknowledged events was accepted then), and
        IntegrationError for an event larger than emitter.max_batch_bytes (nothing sent).
        """
        if self._closed:
            raise IntegrationError("this Emitter is closed")
        messages = [SpooledMessage(partition_key(e), encode(e)) for e in events]
        if not messages:
            return []
        largest = max(len(m.key) + len(m.value) for m in messages)
        if largest + BATCH_OVERHEAD > self._options.max_batch_bytes:
            raise IntegrationError(
                f"an event of {largest} bytes does not fit a batch of emitter.max_batch_bytes "
                f"({self._options.max_batch_bytes}); none of the {len(messages)} event(s) "
                "was sent"
            )
        self._ensure_sender()
        if not self._unsettled and (self._spool.size or self._producer is None):
            # Nothing of ours is in memory ahead of these: they queue in the spool.
            self._spool.append(messages)  # SpoolFullError / SpoolWriteError: none accepted
            self._update_state()
            self._wake.set()
            return ["spooled"] * len(messages)
        loop = asyncio.get_running_loop()
        call = _Call(self._seq, messages, loop.time(), loop.create_future())
        self._seq += 1
        self._intake.append(call)
        self._intake_bytes += sum(len(m.value) for m in messages)
        if not linger:
            self._hurried += 1
        self._calls.add(call)
        self._unsettled += len(messages)
        self._update_state()
        self._wake.set()
        return await call.future

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until nothing is spooled and every sent event is acknowledged."""
        if not self._closed:
            self._ensure_sender()
        self._urgent += 1
        self._wake.set()
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            raise IntegrationError(
                f"{self._spool.size} spooled bytes not delivered within {timeout} s; "
                f"they stay in {self._spool.path}"
            ) from None
        finally:
            self._urgent -= 1

    def abandon(self) -> None:
        """Give up this emitter without flushing, e.g. when its event loop is gone.

        The spool's lock is released (its contents stay on disk for the next emitter).
        Callers still waiting for events that were neither acknowledged nor spooled get
        an IntegrationError (such events may still reach the topic, or not).
        """
        if self._closed:
            return
        self._closed = True
        sender, self._sender = self._sender, None
        if sender is not None and not sender.done():
            with contextlib.suppress(RuntimeError):  # its loop is closed: it cannot run
                sender.cancel()
        self._fail_waiting("the emitter was abandoned")
        self._producer = None
        self._spool.close()

    async def close(self) -> None:
        """Send what callers queued (acked or spooled) and stop; spooled events stay on
        disk for the next emitter."""
        if self._closed:
            return
        self._closed = True
        self._urgent += 1
        self._wake.set()
        sender, self._sender = self._sender, None
        if sender is not None:
            if self._unsettled and not sender.done():
                settled = asyncio.ensure_future(self._settled.wait())
                await asyncio.wait([settled, sender], return_when=asyncio.FIRST_COMPLETED)
                settled.cancel()
            sender.cancel()
            await asyncio.wait([sender])  # its failure, if any, was logged when it ended
        self._fail_waiting("the emitter closed")  # only if its sender died
        await self._drop_producer(flush=True)
        self._spool.close()

    # -- the sender --------------------------------------------------------------------

    def _ensure_sender(self) -> None:
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(
                self._send_forever(), name="tokenquota-emitter"
            )
            self._sender.add_done_callback(self._sender_done)

    def _sender_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        log.error("the emitter's sender failed", exc_info=task.exception())
        self._fail_waiting(f"the emitter's sender failed ({task.exception()!r})")

    async def _send_forever(self) -> None:
        while True:
            if self._unsettled:
                if self._spool.size or self._producer is None:
                    self._spool_unsettled([])  # not expected: keep them behind the spool
                    continue
                await self._linger()
                await self._send_round()
            elif self._spool.size:
                await self._drain_chunk()
            else:
                self._update_state()
                self._wake.clear()
                await self._wake.wait()

    async def _linger(self) -> None:
        """Wait until the oldest queued call has waited linger_ms, unless a round's worth
        is queued, events were left over from a full batch, a queued call asked not to
        linger, or flush/close is waiting."""
        loop = asyncio.get_running_loop()
        linger = self._options.linger_ms / 1000
        full = self._options.max_batch_bytes
        while not (self._urgent or self._hurried or self._queues or self._intake_bytes >= full):
            remaining = self._intake[0].queued_at + linger - loop.time()
            if remaining <= 0:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._wake.wait()

    async def _send_round(self) -> None:
        """One round of what callers queued; on failure, spool from the first unacked."""
        producer = self._producer
        assert producer is not None
        try:
            partitions = await self._partitions.partitions(producer)
        except Exception as exc:  # any failure: spool, never lose
            await self._send_failed(exc, [])
            return
        queues = self._queues
        while self._intake:
            call = self._intake.popleft()
            for index, message in enumerate(call.messages):
                partition = self._partitions.of(message.key, partitions)
                queue = queues.get(partition)
                if queue is None:
                    queue = queues[partition] = deque()
                queue.append((call, index))
        self._intake_bytes = 0
        self._hurried = 0
        outcome, error = await send_round(
            producer, self.topic, queues, _item_message, self._options.send_timeout
        )
        failed: list[_Item] = []
        for items, acked in outcome:
            if not acked:
                failed += items
                continue
            for call, _ in items:
                call.unsettled -= 1
                if not call.unsettled:
                    self._finish(call)
            self._unsettled -= len(items)
        if failed:
            await self._send_failed(error, failed)
        self._update_state()

    async def _send_failed(self, error: BaseException | None, failed: list[_Item]) -> None:
        log.warning(
            "send to %s failed (%s); spooling %d event(s) and what was queued behind them",
            self._servers,
            describe(error),
            len(failed),
        )
        self._spool_unsettled(failed)
        await self._drop_producer()  # before anything else is sent

    def _spool_unsettled(self, failed: list[_Item]) -> None:
        """Spool `failed` and every event still in memory, in emit order, and tell their
        callers; a call whose events cannot be spooled gets the error instead."""
        items = failed
        for queue in self._queues.values():
            items += queue
        self._queues.clear()
        for call in self._intake:
            items += [(call, index) for index in range(len(call.messages))]
        self._intake.clear()
        self._intake_bytes = 0
        self._hurried = 0
        items.sort(key=_emit_order)
        groups: list[tuple[_Call, list[int]]] = []
        for call, index in items:
            if groups and groups[-1][0] is call:
                groups[-1][1].append(index)
            else:
                groups.append((call, [index]))
        try:
            self._spool.append([call.messages[i] for call, indexes in groups for i in indexes])
            accepted = groups
        except IntegrationError:  # full, or the write failed: accept what fits, call by call
            accepted = []
            for call, indexes in groups:
                try:
                    self._spool.append([call.messages[i] for i in indexes])
                except IntegrationError as exc:
                    call.unsettled -= len(indexes)
                    self._calls.discard(call)
                    if not call.future.done():
                        call.future.set_exception(exc)
                else:
                    accepted.append((call, indexes))
        for call, indexes in accepted:
            for index in indexes:
                call.results[index] = "spooled"
            call.unsettled -= len(indexes)
            if not call.unsettled:
                self._finish(call)
        self._unsettled -= len(items)
        self._update_state()

    async def _drain_chunk(self) -> None:
        """Re-send the oldest chunk of the spool and discard it once it is acknowledged."""
        retry = self._options.retry_interval
        if self._producer is None:
            try:
                self._producer = await self._new_producer()
            except (KafkaError, OSError, TimeoutError, IntegrationError) as exc:
                log.info("spool not delivered yet (%s); retrying in %s s", exc, retry)
                await asyncio.sleep(retry)
                return
        if self._chunk is None:
            try:
                self._chunk = self._spool.read_chunk(self._options.max_batch_bytes, _CHUNK)
            except (OSError, IntegrationError) as exc:
                log.error(
                    "cannot read the spool %s (%s); retrying in %s s", self._spool.path, exc, retry
                )
                await asyncio.sleep(retry)
                return
        waiting, length = self._chunk
        if not length:  # not expected: a spool holding bytes yields some; never spin on it
            self._chunk = None
            log.error("the spool %s yielded nothing to re-send; retrying", self._spool.path)
            await asyncio.sleep(retry)
            return
        if waiting:
            unacked, error = await send_all(
                self._producer, self._partitions, waiting, self._options.send_timeout
            )
            if error is not None:
                # The next attempt sends only what this one did not get acknowledged.
                self._chunk = (unacked, length)
                log.info("spool not delivered yet (%s); retrying in %s s", describe(error), retry)
                await self._drop_producer()
                await asyncio.sleep(retry)
                return
        try:
            self._spool.discard_head(length)
        except (OSError, IntegrationError) as exc:
            self._chunk = ([], length)  # delivered: only the discard is left to do
            log.error("cannot discard from the spool (%s); retrying in %s s", exc, retry)
            await asyncio.sleep(retry)
            return
        self._chunk = None
        self._resent += len(waiting)
        if not self._spool.size:
            log.info("re-sent %d spooled event(s)", self._resent)
            self._resent = 0
            self._update_state()

    async def _new_producer(self) -> AIOKafkaProducer:
        return await new_producer(self._servers, self.topic, self._options)

    async def _drop_producer(self, *, flush: bool = False) -> None:
        """Stop the producer (see halt_producer): nothing it holds is sent after this."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await halt_producer(producer, self._options.send_timeout, flush=flush)

    def _finish(self, call: _Call) -> None:
        self._calls.discard(call)
        if not call.future.done():
            call.future.set_result(call.results)

    def _fail_waiting(self, why: str) -> None:
        """Fail every call still waiting (its events neither acked nor spooled)."""
        calls, self._calls = self._calls, set()
        for call in calls:
            if call.future.done():
                continue
            error = IntegrationError(
                f"{why}: {call.unsettled} event(s) were neither acknowledged nor spooled; "
                "they were NOT accepted (they may still reach the topic)"
            )
            with contextlib.suppress(RuntimeError):  # the future's loop is closed
                call.future.set_exception(error)
        self._intake.clear()
        self._intake_bytes = 0
        self._hurried = 0
        self._queues.clear()
        self._unsettled = 0
        self._update_state()

    def _update_state(self) -> None:
        if self._unsettled:
            self._settled.clear()
            self._idle.clear()
            return
        self._settled.set()
        if self._spool.size:
            self._idle.clear()
        else:
            self._idle.set()


#: A chunk of the spool re-sent at a time: at most this many events (and about
#: emitter.max_batch_bytes); a failure re-sends only the chunk it interrupted.
_CHUNK = 5000


def _item_message(item: _Item) -> SpooledMessage:
    return item[0].messages[item[1]]


def _emit_order(item: _Item) -> tuple[int, int]:
    return item[0].seq, item[1]
