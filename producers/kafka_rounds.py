"""aiokafka under the emitter: a producer for the usage topic, one round of ready-made
batches (at most one per partition), and halting a failed producer so that it sends
nothing more. The emitter (producers/emitter.py) decides what goes into each round and
what is spooled."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from tokenquota.config import EmitterSettings
from tokenquota.errors import IntegrationError

from .spool import SpooledMessage

__all__ = [
    "BATCH_OVERHEAD",
    "PartitionMap",
    "describe",
    "halt_producer",
    "new_producer",
    "send_all",
    "send_round",
]

log = logging.getLogger("tokenquota.emitter")

_T = TypeVar("_T")

#: A record batch's header (61 bytes) and one record's framing (at most 33), rounded up.
BATCH_OVERHEAD = 100
_CACHE = 100_000
# The producer's own default: murmur2 of the key over all partitions, so a session's
# events land on the partition any Kafka client would pick for its key.
_PARTITIONER = DefaultPartitioner()


class PartitionMap:
    """The producer's default partition of each key, cached (murmur2 is pure Python and
    costs about 6 us per event)."""

    def __init__(self, topic: str, send_timeout: float) -> None:
        self.topic = topic
        self.send_timeout = send_timeout
        self._partitions: list[int] = []
        self._of: dict[bytes, int] = {}

    async def partitions(self, producer: AIOKafkaProducer) -> list[int]:
        """The topic's partitions (the cache starts over when they change)."""
        async with asyncio.timeout(self.send_timeout):
            partitions = sorted(await producer.partitions_for(self.topic))
        if partitions != self._partitions:
            self._partitions = partitions
            self._of = {}
        return partitions

    def of(self, key: bytes, partitions: list[int]) -> int:
        """The partition of `key`: murmur2 over all partitions, as any Kafka client picks it."""
        partition = self._of.get(key)
        if partition is None:
            if len(self._of) >= _CACHE:
                self._of = {}
            partition = self._of[key] = _PARTITIONER(key, partitions, partitions)
        return partition


async def new_producer(servers: str, topic: str, options: EmitterSettings) -> AIOKafkaProducer:
    """A started producer for `topic`; IntegrationError when the topic does not exist."""
    timeout_ms = int(options.send_timeout * 1000)
    producer = AIOKafkaProducer(
        bootstrap_servers=servers,
        client_id="tokenquota-emitter",
        acks="all",
        enable_idempotence=options.enable_idempotence,
        linger_ms=0,  # batches arrive closed; the sender lingers (module docstring)
        max_batch_size=options.max_batch_bytes,
        request_timeout_ms=timeout_ms,
    )
    try:
        async with asyncio.timeout(options.send_timeout):
            await producer.start()
            # Never let the first send auto-create the topic with the broker's own
            # partition count: wait for `tokenquota init` instead.
            cluster = await producer.client.fetch_all_metadata()
    except BaseException:
        with contextlib.suppress(Exception):
            await producer.stop()
        raise
    if topic not in cluster.topics():
        await producer.stop()
        raise IntegrationError(
            f"topic {topic!r} does not exist on {servers}; run `tokenquota init`"
        )
    return producer


async def halt_producer(
    producer: AIOKafkaProducer, send_timeout: float, *, flush: bool = False
) -> None:
    """Stop the producer: with `flush`, first let it deliver what it holds (for close).

    Otherwise, or when that does not finish within send_timeout, it is halted: its
    sending task is cancelled before anything else, so it can send nothing more (not
    even a batch it was retrying), and what it holds is dropped: those events are
    acknowledged or spooled already. This reads two of aiokafka's internals
    (`_sender.sender_task`, `_message_accumulator`); without them it just stops.
    """
    interrupted = False
    if flush:
        try:
            async with asyncio.timeout(send_timeout):
                await producer.stop()
            return
        except Exception as exc:  # TimeoutError, KafkaError, OSError
            log.warning("the producer did not flush (%s); dropping it", describe(exc))
            interrupted = True
    sending: asyncio.Task[None] | None = getattr(
        getattr(producer, "_sender", None), "sender_task", None
    )
    accumulator = getattr(producer, "_message_accumulator", None)
    try:
        async with asyncio.timeout(send_timeout):
            if sending is not None and not sending.done():
                sending.cancel()  # it lets its requests in flight finish, sends no more
                await asyncio.wait([sending])
            if accumulator is not None:
                accumulator.fail_all(KafkaError("the emitter gave this producer up"))
            await producer.stop()
            if interrupted:  # stop() had begun and does nothing a second time
                await producer.client.close()
    except Exception as exc:  # TimeoutError, KafkaError, OSError
        log.warning("could not stop a failed producer cleanly (%s)", describe(exc))


async def send_round(
    producer: AIOKafkaProducer,
    topic: str,
    queues: dict[int, deque[_T]],
    message_of: Callable[[_T], SpooledMessage],
    send_timeout: float,
) -> tuple[list[tuple[list[_T], bool]], BaseException | None]:
    """Send one batch per partition from the heads of `queues` (taking what fits) and
    wait up to send_timeout for every acknowledgement. Returns each batch's events and
    whether it was acknowledged, and the first error."""
    batches: list[tuple[int, Any, list[_T]]] = []
    for partition in list(queues):
        queue = queues[partition]
        batch = producer.create_batch()
        taken: list[_T] = []
        while queue:
            message = message_of(queue[0])
            if batch.append(key=message.key, value=message.value, timestamp=None) is None:
                break
            taken.append(queue.popleft())
        if not queue:
            del queues[partition]
        batch.close()  # sent as it is, not held for aiokafka's linger
        batches.append((partition, batch, taken))
    acks: list[asyncio.Future[Any]] = []
    error: BaseException | None = None
    try:
        async with asyncio.timeout(send_timeout):
            for partition, batch, _ in batches:
                acks.append(await producer.send_batch(batch, topic, partition=partition))
            await asyncio.wait(acks)
    except Exception as exc:  # TimeoutError, KafkaError, OSError, ...
        error = exc
    outcome: list[tuple[list[_T], bool]] = []
    for index, (_, _, taken) in enumerate(batches):
        ack = acks[index] if index < len(acks) else None
        acked = ack is not None and ack.done() and not ack.cancelled()
        if acked and ack is not None and ack.exception() is not None:
            acked = False
            error = error or ack.exception()
        outcome.append((taken, acked))
    for ack in acks:
        if not ack.done():
            ack.add_done_callback(_retrieve)
    return outcome, error


async def send_all(
    producer: AIOKafkaProducer,
    partitions: PartitionMap,
    messages: list[SpooledMessage],
    send_timeout: float,
) -> tuple[list[SpooledMessage], BaseException | None]:
    """Send `messages` in rounds until all are acknowledged. Returns the ones that were
    not (in order) and the first failure, or ([], None)."""
    try:
        known = await partitions.partitions(producer)
    except Exception as exc:  # reported by the caller, which retries
        return messages, exc
    queues: dict[int, deque[tuple[int, SpooledMessage]]] = {}
    for item in enumerate(messages):
        partition = partitions.of(item[1].key, known)
        queue = queues.get(partition)
        if queue is None:
            queue = queues[partition] = deque()
        queue.append(item)
    while queues:
        outcome, error = await send_round(
            producer, partitions.topic, queues, _message, send_timeout
        )
        failed = [item for items, acked in outcome if not acked for item in items]
        if error is not None or failed:
            failed += [item for queue in queues.values() for item in queue]
            failed.sort(key=_position)
            return [m for _, m in failed], error or KafkaError("a batch was not acked")
    return [], None


def _position(item: tuple[int, SpooledMessage]) -> int:
    return item[0]


def _message(item: tuple[int, SpooledMessage]) -> SpooledMessage:
    return item[1]


def describe(error: BaseException | None) -> str:
    """A failure as the emitter's log lines name it."""
    if error is None:
        return "no acknowledgement"
    if isinstance(error, TimeoutError):
        return "no acknowledgement within emitter.send_timeout"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a late acknowledgement's error as seen (nobody waits for it any more)."""
    if not future.cancelled():
        future.exception()
