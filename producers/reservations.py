"""The reservation API: check the projection, emit TokenReserved, wait for the log's verdict.

    async with TokenQuota(settings) as quota:
        async with await quota.reserve("session-1", 1200, task_id="summarise") as held:
            ...  # call the model
            await held.settle(input_tokens=800, output_tokens=310, model="gpt-4o")

Step 1 reads the projection and refuses at once when the budget is plainly short (no
event is emitted). Step 2 emits `TokenReserved`. In strict mode the call then waits for
the worker's decision (LISTEN/NOTIFY, with a short poll as a fallback), so concurrent
callers can never be granted more than the budget; in optimistic mode it returns once
the broker has the event.

The decision maps to the caller as `decision_error` says: a grant, a
TokenQuotaExceededError naming the window that refused, a ReservationExpiredError, or an
IntegrationError. With no decision within `reservations.decision_timeout` the
reservation is released and IntegrationError raised; with `reservations.fail_open` it
is handed back pending and unverified instead, and its settle or release closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from decimal import Decimal
from types import TracebackType
from typing import Literal, Self, TypedDict

import asyncpg

from tokenquota.config import Settings
from tokenquota.errors import (
    IntegrationError,
    TokenQuotaExceededError,
)
from tokenquota.privacy import stored_session_id
from tokenquota.projections import (
    DATABASE_FAILURES,
    AccountMetrics,
    ReservationRecord,
    SessionMetrics,
    account_metrics,
    available_tokens,
    decision_channel,
    reservation,
    sessions_metrics,
    undo_open_transaction,
)
from tokenquota.schemas import (
    DEFAULTS_SESSION,
    ApiCost,
    CountedBy,
    Event,
    Priority,
    Source,
    TokenReserved,
    TokenUsed,
    utc_now,
)

from .coalesce import Coalescer
from .decisions import decision_error
from .emitter import Delivery, Emitter
from .recent_reads import RecentReads

__all__ = ["Mode", "Reservation", "TokenQuota"]

log = logging.getLogger("tokenquota.reservations")

Mode = Literal["strict", "optimistic"]
_POLL_INTERVAL = 0.25
_RELISTEN_BACKOFF_MAX = 5.0


class Reservation:
    """Tokens held for a call. Settle it with what was used, or release it.

    Used as `async with`, it is released on exit unless it was settled.
    """

    def __init__(
        self,
        quota: TokenQuota,
        event: TokenReserved,
        status: str,
        delivery: Delivery,
        verified: bool = True,
    ) -> None:
        self._quota = quota
        self.event = event
        self.status = status
        self.delivery = delivery
        #: False when the pipeline was unreachable or did not decide in time and
        #: `reservations.fail_open` let it pass: it is then `pending`, not released, and
        #: its settle or release closes it like any other.
        self.verified = verified
        self._closed = False

    @property
    def reservation_id(self) -> uuid.UUID:
        """The id TokenUsed events name to settle this reservation."""
        return self.event.reservation_id

    @property
    def tokens(self) -> int:
        """Tokens reserved."""
        return self.event.tokens

    async def settle(
        self,
        input_tokens: int,
        output_tokens: int,
        model: str = "unknown",
        *,
        operation: str = "llm_call",
        counted_by: CountedBy = "provider",
    ) -> Delivery:
        """Report what was used; the unused rest is released, any excess counted as overage."""
        return await self._close(input_tokens, output_tokens, model, operation, counted_by)

    async def release(self) -> Delivery:
        """Give every reserved token back (a TokenUsed of zero tokens)."""
        return await self._close(0, 0, "none", "release", "provider")

    async def cost(
        self,
        cost_usd: Decimal,
        price_source: str,
        *,
        api: str,
        model: str,
        input_tokens: int,
        output_tokens: int,
    ) -> Delivery:
        """Report what the call cost (an ApiCost naming this reservation): the dollars its
        price held against USD limits are let go and the real cost counted instead. Call
        it after `settle` (tokens) for a reservation made with `reserved_usd`."""
        event = ApiCost(
            **self._follow_up(),
            api=api,
            model=model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=cost_usd,
            price_source=price_source,
        )
        return await self._quota.emit(event)

    def _follow_up(self) -> _FollowUp:
        """The fields an event about this reservation shares with it, stamped now."""
        return _FollowUp(
            session_id=self.event.session_id,
            task_id=self.event.task_id,
            source=self.event.source,
            account=self.event.account,
            occurred_at=self._quota.clock(),
            reservation_id=self.reservation_id,
        )

    async def _close(
        self, input_tokens: int, output_tokens: int, model: str, operation: str, by: CountedBy
    ) -> Delivery:
        if self._closed:
            raise RuntimeError(f"reservation {self.reservation_id} is already settled or released")
        self._closed = True
        event = TokenUsed(
            **self._follow_up(),
            model=model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            operation=operation,
            counted_by=by,
        )
        self.status = "released" if input_tokens + output_tokens == 0 else "settled"
        return await self._quota.emit(event)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._closed:
            await self.release()


class _FollowUp(TypedDict):
    session_id: str
    task_id: str | None
    source: Source
    account: str | None
    occurred_at: datetime
    reservation_id: uuid.UUID


class TokenQuota:
    """A connection to tokenquota's pipeline: the emitter, the projections, the decisions.

    Decisions arrive by NOTIFY on a LISTEN connection of their own. When PostgreSQL
    drops it (a restart), it is reconnected in the background with backoff and the
    channel listened to again; decisions are polled from the table meanwhile.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        source: Source | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.settings = settings
        self.source = source or Source(component="sdk", name="tokenquota")
        #: Stamps the events' occurred_at and expires_at (the machine's UTC clock). The
        #: worker never lets it move a budget: its windows and expiries run on the log clock.
        self.clock = clock
        self._emitter = Emitter.from_settings(settings)
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._relisten: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._waiting: dict[uuid.UUID, asyncio.Future[str]] = {}
        # asyncpg's pool hands a returned connection to whichever task asks next, so
        # under load a caller can lose it again and again; this semaphore queues callers
        # in order (first come, first served) and lets no more in than there are connections.
        self._turns = asyncio.Semaphore(settings.database.pool_size)
        #: Decisions that reached a waiting `reserve()` by NOTIFY (the others were polled).
        self.decisions_notified = 0
        # Concurrent callers' metrics (each reserve's pre-check) in one query per round.
        self._metrics = Coalescer(self._sessions_metrics)
        self._recent = RecentReads()

    async def start(self) -> None:
        """Connect to PostgreSQL (a pool and a LISTEN connection) and start the emitter."""
        db = self.settings.database
        self._loop = asyncio.get_running_loop()
        self._closing = False
        try:
            self._pool = await asyncpg.create_pool(
                db.dsn(),
                min_size=db.pool_size,  # all opened now: none is opened under load
                max_size=db.pool_size,
                server_settings={"search_path": db.schema_name},
                reset=undo_open_transaction,
                timeout=10,
            )
            self._listener = await self._listen()
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            # Only what this start opened: the emitter is not started yet, and closed it
            # could not be started again by the next start().
            await self._close_connections()
            raise IntegrationError(f"cannot connect to PostgreSQL: {exc}") from None
        await self._emitter.start()

    async def close(self) -> None:
        """Stop the emitter (spooled events stay on disk) and close the connections."""
        self._closing = True
        self._metrics.close()
        await self._emitter.close()
        await self._close_connections()

    async def _close_connections(self) -> None:
        relisten, self._relisten = self._relisten, None
        if relisten is not None:
            relisten.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relisten
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(Exception):
                await listener.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def abandon(self) -> None:
        """Give this client up without awaiting anything, e.g. once its event loop is gone.

        The emitter is abandoned: its spool's lock is released and spooled events stay on
        disk for the next emitter. The PostgreSQL connections are terminated or, when
        their loop is closed, dropped (their sockets close when they are collected). Call
        it from the client's own loop or while that loop is not running.
        """
        self._closing = True
        self._emitter.abandon()
        relisten, self._relisten = self._relisten, None
        listener, self._listener = self._listener, None
        pool, self._pool = self._pool, None
        if self._loop is None or self._loop.is_closed():
            return  # nothing can run on a closed loop, not even a socket's close
        self._metrics.close()
        if relisten is not None:
            relisten.cancel()
        if listener is not None:
            listener.terminate()
        if pool is not None:
            pool.terminate()

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

    @property
    def emitter(self) -> Emitter:
        """The emitter this client sends with."""
        return self._emitter

    @property
    def listening(self) -> bool:
        """True while the LISTEN connection is up, so that decisions arrive by NOTIFY."""
        return self._listener is not None and not self._listener.is_closed()

    def stored_session_id(self, session_id: str) -> str:
        """`session_id` as it is emitted and stored: keyed-hashed with
        `privacy.hash_session_ids`, else unchanged."""
        return stored_session_id(self.settings.privacy, session_id)

    async def emit(self, event: Event) -> Delivery:
        """Send any event through this client's emitter (its session id as stored)."""
        if event.session_id != DEFAULTS_SESSION:
            stored = self.stored_session_id(event.session_id)
            if stored != event.session_id:
                event = event.model_copy(update={"session_id": stored})
        return await self._emitter.emit(event)

    async def session_metrics(self, session_id: str) -> SessionMetrics:
        """The session's budget right now."""
        return await self._metrics.get(self.stored_session_id(session_id))

    async def account_metrics(self, account: str) -> list[AccountMetrics]:
        """The budget tree nodes from `account`'s tenant down to it, right now."""
        async with self._acquire() as conn:
            return await account_metrics(conn, account)

    async def _sessions_metrics(self, session_ids: list[str]) -> dict[str, SessionMetrics]:
        async with self._acquire() as conn:
            return await sessions_metrics(conn, session_ids)

    async def available_tokens(self, session_id: str, priority: Priority = "normal") -> int:
        """Tokens a reservation of `priority` could take right now."""
        async with self._acquire() as conn:
            stored = self.stored_session_id(session_id)
            return await available_tokens(conn, stored, priority=priority)

    async def is_applied(self, event_id: uuid.UUID) -> bool:
        """True once the worker has applied the event (it is in the ledger)."""
        async with self._acquire() as conn:
            sql = "SELECT EXISTS (SELECT 1 FROM usage_events WHERE event_id = $1)"
            return bool(await conn.fetchval(sql, event_id))

    async def reservation(self, reservation_id: uuid.UUID) -> ReservationRecord | None:
        """The worker's record of a reservation, None until it has applied it."""
        async with self._acquire() as conn:
            return await reservation(conn, reservation_id)

    async def reserve(
        self,
        session_id: str,
        tokens: int,
        task_id: str | None = None,
        priority: Priority = "normal",
        ttl: float | None = None,
        mode: Mode | None = None,
        *,
        source: Source | None = None,
        account: str | None = None,
        reserved_usd: Decimal | None = None,
        price_source: str | None = None,
    ) -> Reservation:
        """Reserve `tokens` for `session_id`; raise TokenQuotaExceededError when they don't fit.

        `source` names the integration on the events (default: this client's source).
        `account` places the session in a budget tree ("acme/research/alice"): the tokens
        must then fit every node above it that has limits too, and the error names the
        node that refused (`refused_by`). Every event of a session names the same
        account (its settlement does; events naming another go to the dead-letter topic).
        `reserved_usd` (with `price_source`, e.g. from
        `producers.integrations.pricing.price_reservation`) is the most the call can cost:
        it is held against the USD limits of the session and of its nodes until an
        ApiCost naming this reservation reports the real cost (or it is released or
        expires); UsdBudgetExceededError when it does not fit.

        Raises TokenBudgetExhaustedError when the hard limit is reached,
        ReservationExpiredError when the reservation expired before it was decided or
        its decision read, and IntegrationError when the pipeline cannot decide within
        `reservations.decision_timeout` (the reservation is then released). With
        `reservations.fail_open`, an unreachable pipeline or a missing decision hands
        back the reservation pending and unverified instead (not released: settle or
        release it as any other).
        """
        options = self.settings.reservations
        mode = mode or options.mode
        ttl = ttl if ttl is not None else options.ttl
        stored = self.stored_session_id(session_id)
        verified = await self._precheck(session_id, stored, tokens, priority, account)
        now = self.clock()
        event = TokenReserved(
            session_id=stored,
            task_id=task_id,
            source=source or self.source,
            account=account,
            occurred_at=now,
            reservation_id=uuid.uuid4(),
            tokens=tokens,
            priority=priority,
            expires_at=now + timedelta(seconds=ttl),
            reserved_usd=reserved_usd,
            price_source=price_source,
        )
        self._recent.spent(stored, tokens)
        if mode == "optimistic":
            delivery = await self._emitter.emit(event)
            return Reservation(self, event, "pending", delivery, verified=verified)
        decided: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting[event.reservation_id] = decided
        try:
            # An emitter that refuses the event (a full spool) raises here, fail_open or
            # not: nothing of this reservation, nor of its settlement, could be recorded.
            # Not lingering for company: this caller waits for the decision.
            delivery = await self._emitter.emit(event, linger=False)
            outcome = await self._decision(event, decided, options.decision_timeout)
        finally:
            self._waiting.pop(event.reservation_id, None)
        if outcome is None:
            return await self._undecided(event, delivery)
        status, record = outcome
        if record is None and status != "accepted":
            record = await self.reservation(event.reservation_id)
        error = decision_error(event, status, record, self.clock())
        if error is not None:
            if isinstance(error, TokenQuotaExceededError):
                self._recent.forget(stored)  # what it remembered was out of date
            raise error
        return Reservation(self, event, status, delivery)

    async def _precheck(
        self, session_id: str, stored: str, tokens: int, priority: str, account: str | None
    ) -> bool:
        """Step 1: raise TokenQuotaExceededError when the budget is plainly short, and
        ValueError when the session already belongs to another account than `account`
        (the worker would dead-letter the reservation, and a strict one would wait out
        its decision timeout).

        A read of the session at most `reservations.precheck_max_age` old that still
        covers `tokens` (after what this client reserved since) passes without reading
        again: the worker decides anyway, so a read that is out of date can only let a
        doomed reservation through to be refused there. A refusal is always read fresh.
        False when PostgreSQL was unreachable and `reservations.fail_open` let it pass.
        """
        options = self.settings.reservations
        if self._recent.covers(stored, tokens, priority, options.precheck_max_age):
            _same_account(session_id, self._recent.metrics(stored), account)
            return True
        try:
            metrics = await self.session_metrics(session_id)
        except IntegrationError:
            if not options.fail_open:
                raise
            return False
        _same_account(session_id, metrics, account)
        room = metrics.headroom(priority)
        if tokens > room.available:
            raise TokenQuotaExceededError.for_window(
                session_id, tokens, room.available, room.limit, room.window
            )
        self._recent.read(stored, metrics)
        return True

    async def _undecided(self, event: TokenReserved, delivery: Delivery) -> Reservation:
        """No decision came in time: fail open with the reservation pending, or release it."""
        options = self.settings.reservations
        if options.fail_open:
            # Not released: the worker may still accept it, and the caller's settle or
            # release is what closes it (a release here would make that settle unmatched).
            log.warning(
                "no decision on reservation %s within %s s; fail_open: handed back unverified",
                event.reservation_id,
                options.decision_timeout,
            )
            return Reservation(self, event, "pending", delivery, verified=False)
        # Give the tokens back should the worker accept it later.
        with contextlib.suppress(IntegrationError):
            await Reservation(self, event, "pending", delivery).release()
        raise IntegrationError(
            f"no decision on reservation {event.reservation_id} within "
            f"{options.decision_timeout} s (it was released): is `tokenquota worker` running "
            "and the broker reachable?"
        )

    async def _decision(
        self, event: TokenReserved, decided: asyncio.Future[str], timeout: float
    ) -> tuple[str, ReservationRecord | None] | None:
        """The decision's status (and the record, when it was polled); None at the deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (remaining := deadline - loop.time()) > 0:
            with contextlib.suppress(TimeoutError):
                status = await asyncio.wait_for(
                    asyncio.shield(decided), min(_POLL_INTERVAL * 4, remaining)
                )
                return status, None
            # No notification: the LISTEN connection may be down; ask the table.
            self._ensure_listening()
            try:
                async with asyncio.timeout_at(deadline):
                    record = await self.reservation(event.reservation_id)
            except TimeoutError:
                break
            except IntegrationError as exc:  # PostgreSQL away (a restart?): until the deadline
                log.info("reservation %s not polled (%s); waiting", event.reservation_id, exc)
                continue
            if record is not None:
                return record.status, record
        return None

    # -- the LISTEN connection ---------------------------------------------------------

    async def _listen(self) -> asyncpg.Connection:
        db = self.settings.database
        conn = await asyncpg.connect(db.dsn(), timeout=10)
        try:
            await conn.add_listener(decision_channel(db.schema_name), self._on_notify)
        except BaseException:
            conn.terminate()
            raise
        conn.add_termination_listener(self._on_listener_lost)
        return conn

    def _on_listener_lost(self, conn: object) -> None:
        if conn is self._listener and not self._closing:
            log.warning("the LISTEN connection to PostgreSQL was lost; reconnecting")
            self._start_relisten()

    def _ensure_listening(self) -> None:
        """Reconnect the LISTEN connection if it is down and no reconnect is under way."""
        if not self._closing and not self.listening:
            self._start_relisten()

    def _start_relisten(self) -> None:
        if self._relisten is None or self._relisten.done():
            self._relisten = asyncio.create_task(self._relisten_loop(), name="tokenquota-relisten")

    async def _relisten_loop(self) -> None:
        delay = 0.1
        while True:
            try:
                listener = await self._listen()
            except Exception as exc:  # any failure is retried: this task must never die
                log.info("LISTEN connection not restored (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RELISTEN_BACKOFF_MAX)
                continue
            if self._closing:  # closed or abandoned meanwhile
                listener.terminate()
                return
            old, self._listener = self._listener, listener
            if old is not None:
                old.terminate()
            log.info("LISTEN connection to PostgreSQL restored")
            return

    def _on_notify(self, connection: object, pid: int, channel: str, payload: object) -> None:
        rid_text, _, status = str(payload).partition(" ")
        future = self._waiting.get(uuid.UUID(rid_text))
        if future is not None and not future.done():
            self.decisions_notified += 1
            future.set_result(status)

    @contextlib.asynccontextmanager
    async def _acquire(self) -> AsyncIterator[asyncpg.Connection]:
        if self._pool is None:
            raise IntegrationError("TokenQuota is not started: use `async with TokenQuota(...)`")
        try:
            async with self._turns, self._pool.acquire(timeout=10) as conn:
                yield conn  # type: ignore[misc]  # a pool proxy behaves as a Connection
        except DATABASE_FAILURES as exc:
            raise IntegrationError(f"PostgreSQL unreachable: {exc}") from None


def _same_account(session_id: str, metrics: SessionMetrics | None, account: str | None) -> None:
    """Raise ValueError when the session, as last read, belongs to another account (or to
    none) than `account`: every event of a session names the same one."""
    if metrics is None or not metrics.known or metrics.account == account:
        return
    owner = f"account {metrics.account!r}" if metrics.account else "no account"
    named = f"account {account!r}" if account else "none"
    raise ValueError(
        f"session {session_id!r} belongs to {owner}; this reservation names {named} "
        "(every event of a session names the same account)"
    )
