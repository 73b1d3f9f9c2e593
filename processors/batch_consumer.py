"""faust's Kafka consumer, handing each fetch to the worker whole instead of message by message.

faust delivers every message on its own: one `wait_first` (two tasks) per message, a
conductor callback, a decoded Event and a queue put. Profiled here that was about half
of the worker's time, more than decoding, folding and writing together. Everything
else stays faust's: group membership and rebalances, the fetcher thread, flow control,
offset tracking and commits. Only the topics named in `batch_topics` take the batch
path; any other goes through faust's own delivery.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import ClassVar, cast

import faust
from aiokafka.errors import IllegalStateError
from faust.transport.consumer import Fetcher
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message, ServiceT, TransportT
from faust.types.tuples import ack_lock
from mode import Service
from mode.utils.futures import notify

from .consumer_thread import ConsumerThread
from .fetch_pacing import next_fetch_wait

__all__ = [
    "STOP_COMMIT_TIMEOUT",
    "BatchApp",
    "BatchConsumer",
    "Fetch",
]

#: Fetches waiting for the worker; beyond this the fetcher waits (back-pressure).
_QUEUED_FETCHES = 4
#: Fetches in a row that may find the same hole in a partition before what follows it is
#: handed over anyway (for the projections' check to refuse); the pause between two.
_HOLE_TRIES = 100
_HOLE_PAUSE = 0.01
#: How long a stopping worker waits for its batches' acknowledgements and the last commit
#: of its offsets (seconds) before it goes on stopping without them.
STOP_COMMIT_TIMEOUT = 5.0
#: The least faust's second wait of a stop gets (it commits what was acknowledged since
#: the first), even when the first used up STOP_COMMIT_TIMEOUT.
_STOP_COMMIT_LAST = 1.0


class Fetch(list[Message]):
    """The messages of the batch topics in one fetch, in order, with when the consumer
    handed them over (`handed_at`, epoch seconds) and how long before that their records
    were stamped, summed over the messages (`since_stamped`, seconds)."""

    __slots__ = ("handed_at", "since_stamped")

    def __init__(self, messages: Iterable[Message] = (), stamps_ms: float = 0.0) -> None:
        super().__init__(messages)
        self.handed_at = time.time()
        self.since_stamped = len(self) * self.handed_at - stamps_ms / 1000


class BatchConsumer(faust_aiokafka.Consumer):
    """The aiokafka consumer of faust, delivering whole fetches of the app's `batch_topics`."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.fetches: asyncio.Queue[Fetch] = asyncio.Queue(maxsize=_QUEUED_FETCHES)
        #: A fetch was dropped (a rebalance began while it waited): seek back before any
        #: other, whether or not the flow is active again by then.
        self._dropped = False
        #: The offset of the next message of each batch-topic partition to hand over
        #: (absent: not known yet, as for a partition with no committed offset).
        self._expect: dict[TP, int] = {}
        #: Per partition, the hole its fetches found last (its first missing offset) and
        #: how many fetches in a row found it.
        self._holes: dict[TP, tuple[int, int]] = {}
        #: The fetch wait in force, in ms (see fetch_pacing); None: the configured one.
        self._fetch_wait_ms: int | None = None
        #: When a stopping worker stops waiting for its last commit (loop time; None: not
        #: stopping yet), and whether it did.
        self._stop_deadline: float | None = None
        self._stop_abandoned = False

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def perform_seek(self) -> None:
        """Seek every partition to its committed offset (faust's), and expect it next."""
        await super().perform_seek()
        batch_topics = cast("BatchApp", self.app).batch_topics
        starts = cast(ConsumerThread, self._thread).starts
        self._expect.clear()  # (in place: the fetch loop holds it)
        for tp, offset in self._read_offset.items():
            if tp.topic not in batch_topics:
                continue
            expect = offset if offset is not None else starts.get(tp)
            if expect is not None:
                self._expect[tp] = expect

    def track(self, fetch: Sequence[Message]) -> None:
        """Mark a fetch as taken and pending acknowledgement, by its first message: what
        faust's wait for the messages in flight (rebalance, stop) waits on. A fetch is
        acknowledged whole (`ack_all`), so one message stands for all of it, and the
        others skip the weak set (about a microsecond each)."""
        if fetch and not fetch[0].tracked:
            fetch[0].tracked = True
            self._unacked_messages.add(fetch[0])

    def ack_all(self, messages: Sequence[Message]) -> None:
        """faust's `ack` of each of `messages`, in order, with its bookkeeping taken once
        per batch: one lock, one look-up per partition, one wake-up of a wait for acks."""
        enabled = self.app.topics.acks_enabled_for
        pending = self._unacked_messages
        partitions: dict[TP, tuple[int | None, set[int], list[int]] | None] = {}
        counted = 0
        with ack_lock:
            for message in messages:
                if message.acked:
                    continue
                message.acked = True
                if message.tracked:
                    pending.discard(message)
                tp = message.tp
                if tp in partitions:
                    books = partitions[tp]
                else:
                    books = partitions[tp] = (
                        (self._committed_offset[tp], self._acked_index[tp], self._acked[tp])
                        if enabled(message.topic)
                        else None
                    )
                if books is None:
                    continue
                committed, index, acked = books
                offset = message.offset
                if (committed is None or offset >= committed) and offset not in index:
                    index.add(offset)
                    acked.append(offset)
                    counted += 1
            self._n_acked += counted
            notify(self._waiting_for_ack)

    async def _drain_messages(self, fetcher: ServiceT) -> None:
        # faust's own loop (Consumer._drain_messages with Consumer.getmany inlined), except
        # that a fetch of the batch topics is queued in one piece, and that the end offset
        # is reported to the monitor once per partition and fetch instead of per message.
        # The read-offset, gap, flow-control and generation checks are faust's.
        callback = self.callback
        to_message = self._to_message
        consumer_stopped = cast(Service, self)._stopped.is_set
        fetcher_stopped = cast(Service, fetcher)._stopped.is_set
        read_offsets = self._read_offset
        expected = self._expect
        acks_enabled_for = self.app.topics.acks_enabled_for
        batch_topics = cast("BatchApp", self.app).batch_topics
        commit_every = self._commit_every

        def stopping() -> bool:
            return consumer_stopped() or cast(Service, fetcher).should_stop

        async def one_pass() -> None:
            await self.sleep(0)
            if self.should_stop:
                return
            try:
                records, active = await self._wait_next_records(1.0)
            except asyncio.CancelledError:
                # The consumer thread cancelled the fetch (a rebalance began). faust would
                # let this end the fetcher too (see _seek_back). The thread may have read
                # records before its answer was cancelled, moving the consumer's position
                # past them: the next pass seeks back to the committed offsets, or they
                # would be skipped.
                if stopping():
                    raise
                self._thread_cancelled("fetch")
                self._dropped = True
                return
            self._pace_fetches(records, batch_topics)
            generation = self.app.consumer_generation_id
            if records is None or self.should_stop:
                return
            if not self.flow_active or self._dropped:
                # (a fetch was dropped: seek back even if the flow has resumed since,
                # or the read offsets, already past it, would skip it for good)
                await self._seek_back(stopping)
                return
            fetched: list[Message] = []
            stamps_ms = 0  # the fetched records' timestamps, summed
            holes: dict[TP, int] = {}
            for tp, tp_records in records.items():
                if not self.flow_active or self.app.consumer_generation_id != generation:
                    break  # a rebalance began: what is left is fetched again
                if active is not None and tp not in active and tp not in self._buffered_partitions:
                    continue
                self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                whole = tp.topic in batch_topics
                read = read_offsets[tp]
                expect = expected.get(tp) if whole else None
                for record in tp_records:
                    offset = record.offset
                    if read is not None and offset < read:
                        continue  # already read: faust drops these too
                    if expect is not None and offset > expect:
                        # A hole: the embedded broker can answer with a batch appended
                        # after one it has not stored yet. What follows the hole is
                        # fetched again from it (see _hole_found).
                        holes[tp] = expect
                        break
                    if read and offset - read > 1 and not whole and acks_enabled_for(tp.topic):
                        # faust counts the offsets skipped as acknowledged, and commits
                        # past them. Not for a batch topic: its offsets have no gaps, so
                        # a jump means messages this consumer skipped, and committing past
                        # them would lose them for good. Left uncommitted, the batch is
                        # refused (LogGapError: it skips offsets of its partition), and the
                        # restarted worker reads them again from the committed offset.
                        await self._add_gap(tp, read + 1, offset)
                    message = to_message(tp, record)
                    if whole:
                        fetched.append(message)
                        stamps_ms += record.timestamp
                        expect = max(expect or 0, offset + 1)
                    else:
                        await self.wait_first(callback(message), self.suspend_flow.wait())
                    read = offset
                read_offsets[tp] = read
                if expect is not None:
                    expected[tp] = expect
                if tp not in holes:
                    self._holes.pop(tp, None)  # (a hole found before is filled)
            if commit_every is not None and self._n_acked >= commit_every:
                self._n_acked = 0
                await self.commit()
            if fetched:
                # Dropped if a rebalance suspends the flow meanwhile, as faust drops
                # a message then: it was never tracked, and is fetched again (the
                # next pass seeks back to the committed offsets).
                putting = self.fetches.put(Fetch(fetched, stamps_ms))
                waited = await self.wait_first(putting, self.suspend_flow.wait())
                if putting not in waited.done:
                    self._dropped = True
                    return
            for tp, offset in holes.items():
                await self._hole_found(tp, offset, generation)

        try:
            while not (consumer_stopped() or fetcher_stopped()):
                try:
                    await one_pass()
                except asyncio.CancelledError:
                    # Anything else the consumer thread cancelled as a rebalance began (a
                    # commit, most likely): faust would let it end the fetcher, which
                    # nothing restarts, and the worker would exit. The pass may have moved
                    # the read offsets past messages it never queued, so the next pass
                    # seeks back to the committed offsets first.
                    if stopping():
                        raise
                    self._thread_cancelled("a pass of the fetcher")
                    self._dropped = True
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise

    def _pace_fetches(
        self, records: Mapping[TP, object] | None, batch_topics: frozenset[str]
    ) -> None:
        """Set the next fetches' wait by whether a fetch brought batch-topic messages and
        whether the broker reports more than were handed over (see fetch_pacing)."""
        configured = int(cast("BatchApp", self.app).fetch_max_wait * 1000)
        current = self._fetch_wait_ms or configured
        received = bool(records) and any(tp.topic in batch_topics for tp in records or ())
        wait = next_fetch_wait(current, configured, behind=self._behind(), received=received)
        if wait == current:
            return
        if current == configured:
            self.log.info(
                "fetches bring nothing though the broker has messages past those read; "
                "waiting up to %d ms per fetch until caught up", wait,
            )  # fmt: skip
        elif wait == configured:
            self.log.info("caught up; fetches wait up to %d ms again", wait)
        cast(ConsumerThread, self._thread).set_fetch_wait(wait)
        self._fetch_wait_ms = wait

    def _behind(self) -> bool:
        """Whether the broker reported messages past the next one expected in a
        batch-topic partition (its high watermark, from the last fetch's answer)."""
        expected = self._expect
        for tp in self.assignment() & expected.keys():
            try:
                end = self.highwater(tp)
            except AssertionError:  # aiokafka's "Partition is not assigned": a rebalance
                continue
            if end is not None and end > expected[tp]:
                return True
        return False

    async def _seek_back(self, stopping: Callable[[], bool]) -> None:
        # As faust's getmany does when called while the flow is suspended, except for a
        # seek that the consumer thread cancelled (a rebalance began meanwhile): faust lets
        # that CancelledError end the fetcher, whose restart needs a supervisor it does not
        # have, and the worker exits. The flow is still suspended, so the loop comes back
        # here and seeks again. Whether the fetcher itself is being stopped is asked of
        # the fetcher (mode marks a service stopped before it cancels its tasks), not of
        # the task's cancel count, which a cancellation swallowed earlier (mode and faust
        # swallow some) leaves above zero for good.
        try:
            await self.perform_seek()
            self._dropped = False
        except asyncio.CancelledError:
            if stopping():
                raise
            self._thread_cancelled("seek to the committed offsets")
        except Exception as exc:
            self.log.warning("exception performing seek when flow not active %r", exc)

    async def _hole_found(self, tp: TP, offset: int, generation: int) -> None:
        """A fetch of `tp` went on past `offset` without it: fetch again from there.

        The embedded Tansu broker counts a batch in the log's end before it stores it, and
        answers a fetch with the batches it has stored: one appended just after another
        can be answered first. Handed over, the messages after the hole would be refused by
        the projections (LogGapError) and the worker restarted. After _HOLE_TRIES fetches
        in a row found the same hole (the log lost those offsets: retention), what follows
        it is handed over, and the projections decide.

        A rebalance meanwhile (the flow stopped, a new generation) makes this a dropped
        fetch instead: the next pass seeks back to the committed offsets.
        """
        last, seen = self._holes.get(tp, (offset, 0))
        seen = seen + 1 if last == offset else 1
        self._holes[tp] = (offset, seen)
        if seen == 1:
            self.log.info(
                "%s[%d]: the broker answered past offset %d without it; fetching again from it",
                tp.topic, tp.partition, offset,
            )  # fmt: skip
        if seen >= _HOLE_TRIES:
            self.log.warning(
                "%s[%d]: offset %d still missing after %d fetches; handing over what follows",
                tp.topic, tp.partition, offset, seen,
            )  # fmt: skip
            self._expect.pop(tp, None)
            del self._holes[tp]
        else:
            await self.sleep(_HOLE_PAUSE)

        def rebalanced() -> bool:
            return not self.flow_active or self.app.consumer_generation_id != generation

        if rebalanced():
            self._dropped = True
            return
        try:
            await cast(ConsumerThread, self._thread).seek_in_thread(tp, offset)
        except IllegalStateError:  # no longer assigned: a rebalance began
            self._dropped = True
            return
        if rebalanced():
            self._dropped = True  # the recovery's seek may have come after this one
            return
        self._read_offset[tp] = offset

    async def wait_empty(self) -> None:
        """faust's wait for the batches in flight and the commit after them; while the
        worker stops, at most STOP_COMMIT_TIMEOUT seconds in all (faust calls it twice
        then; the second gets at least _STOP_COMMIT_LAST). A rebalance waits as faust
        does.

        With the broker unreachable, aiokafka's commit waits for a group coordinator for
        as long as it takes, and a stopping worker never exited (SIGTERM after the
        broker was killed: still running a minute later). Stopping without that commit
        loses nothing: the next worker reads again from the last offsets committed, and
        the projections count what they already applied once (the ledger's event ids).
        """
        if not (self.app.should_stop or self.should_stop):
            await super().wait_empty()  # partitions revoked: hand them over complete
            return
        loop = asyncio.get_running_loop()
        if self._stop_deadline is None:
            self._stop_deadline = loop.time() + STOP_COMMIT_TIMEOUT
        left = max(self._stop_deadline - loop.time(), _STOP_COMMIT_LAST)
        waiting = asyncio.ensure_future(super().wait_empty())
        # (asyncio.wait, not wait_for: faust's commit swallows a cancellation and goes on)
        await asyncio.wait({waiting}, timeout=left)
        if waiting.done():
            waiting.result()
            return
        waiting.cancel()  # (should faust swallow this too, the task ends with the loop)
        if not self._stop_abandoned:
            self._stop_abandoned = True
            self.log.warning(
                "stopping without committing the offsets: the batches in flight and the "
                "commit after them did not end within %.0f s (is the broker or the database "
                "unreachable?); the next worker reads again from the last committed "
                "offsets, and what was applied already counts once",
                STOP_COMMIT_TIMEOUT,
            )

    def _thread_cancelled(self, what: str) -> None:
        """A call the consumer thread cancelled (not this task): noted, and forgotten so
        that a later one is not taken for a stop either."""
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            task.uncancel()
        self.log.info("%s interrupted by a rebalance; again", what)


class _Fetcher(Fetcher):
    """faust's fetcher service, except when it is stopped during a rebalance.

    faust's own takes a CancelledError that ends its loop while the app is rebalancing
    for a rebalance to restart from, and wakes its supervisor to restart it; this
    worker's fetcher has none, and the AttributeError exited the worker with 1 (the
    thirteenth 30-minute campaign run: its closing SIGTERM met a rebalance). Every call
    in the loop that a rebalance cancels is survived in `BatchConsumer._drain_messages`,
    so the cancellation that ends it is the fetcher's own stop: it ends quietly then.
    Any other crashes the worker (which its supervisor restarts) rather than leave it
    running without a fetcher.
    """

    @Service.task
    async def _fetcher(self) -> None:
        try:
            await cast(BatchConsumer, self.app.consumer)._drain_messages(self)
        except asyncio.CancelledError as exc:
            if self.should_stop:
                self.log.info("fetcher stopped%s", " during a rebalance" * self.app.rebalancing)
            else:
                await self.crash(exc)
        finally:
            self.set_shutdown()


class _Transport(faust_aiokafka.Transport):
    Consumer: ClassVar[type[BatchConsumer]] = BatchConsumer
    Fetcher: ClassVar[type[ServiceT]] = _Fetcher


class BatchApp(faust.App):
    """A faust App whose Kafka consumer is a `BatchConsumer`."""

    #: Longest wait of an empty fetch, in seconds (faust's own is a fixed 1.5 s).
    fetch_max_wait: float = 1.5
    #: Topics whose fetches go whole to `BatchConsumer.fetches`; set before the worker runs.
    batch_topics: frozenset[str] = frozenset()

    def _new_transport(self) -> TransportT:
        url = self.conf.broker_consumer[0]
        if url.scheme not in ("kafka", "aiokafka"):
            raise ValueError(f"the worker needs a kafka:// broker URL, got {url}")
        return _Transport(self.conf.broker_consumer, self)
