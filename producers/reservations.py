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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from types import TracebackType
from typing import Literal, Self

import asyncpg

from tokenquota.config import Settings, fold_config
from tokenquota.errors import (
    IntegrationError,
    TokenQuotaExceededError,
)
from tokenquota.projections import (
    ReservationRecord,
    SessionMetrics,
    available_tokens,
    decision_channel,
    reservation,
    session_metrics,
)
from tokenquota.schemas import (
    CountedBy,
    Event,
    Priority,
    Source,
    TokenReserved,
    TokenUsed,
    utc_now,
)

from .emitter import Delivery, Emitter

__all__ = ["Reservation", "TokenQuota", "reserve"]

log = logging.getLogger("tokenquota.reservations")

Mode = Literal["strict", "optimistic"]
_POLL_INTERVAL = 0.25


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
        #: False when the pipeline was unreachable and `reservations.fail_open` let it pass.
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

    async def _close(
        self, input_tokens: int, output_tokens: int, model: str, operation: str, by: CountedBy
    ) -> Delivery:
        if self._closed:
            raise RuntimeError(f"reservation {self.reservation_id} is already settled or released")
        self._closed = True
        event = TokenUsed(
            session_id=self.event.session_id,
            task_id=self.event.task_id,
            source=self.event.source,
            reservation_id=self.reservation_id,
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


class TokenQuota:
    """A connection to tokenquota's pipeline: the emitter, the projections, the decisions."""

    def __init__(self, settings: Settings, *, source: Source | None = None) -> None:
        self.settings = settings
        self.config = fold_config(settings)
        self.source = source or Source(component="sdk", name="tokenquota")
        self._emitter = Emitter.from_settings(settings)
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._waiting: dict[uuid.UUID, asyncio.Future[str]] = {}
        # asyncpg's pool hands a returned connection to whichever task asks next, so
        # under load a caller can lose it again and again; this semaphore queues callers
        # in order (first come, first served) and lets no more in than there are connections.
        self._turns = asyncio.Semaphore(settings.database.pool_size)

    async def start(self) -> None:
        """Connect to PostgreSQL (a pool and a LISTEN connection) and start the emitter."""
        db = self.settings.database
        try:
            self._pool = await asyncpg.create_pool(
                db.dsn(),
                min_size=db.pool_size,  # all opened now: none is opened under load
                max_size=db.pool_size,
                server_settings={"search_path": db.schema_name},
                timeout=10,
            )
            self._listener = await asyncpg.connect(db.dsn(), timeout=10)
            await self._listener.add_listener(decision_channel(db.schema_name), self._on_notify)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            await self.close()
            raise IntegrationError(f"cannot connect to PostgreSQL: {exc}") from None
        await self._emitter.start()

    async def close(self) -> None:
        """Stop the emitter (spooled events stay on disk) and close the connections."""
        await self._emitter.close()
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
        if self._pool is not None:
            await self._pool.close()

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

    async def emit(self, event: Event) -> Delivery:
        """Send any event through this client's emitter."""
        return await self._emitter.emit(event)

    async def session_metrics(self, session_id: str) -> SessionMetrics:
        """The session's budget right now."""
        async with self._acquire() as conn:
            return await session_metrics(conn, session_id, self.config)

    async def available_tokens(self, session_id: str, priority: Priority = "normal") -> int:
        """Tokens a reservation of `priority` could take right now."""
        async with self._acquire() as conn:
            return await available_tokens(conn, session_id, self.config, priority=priority)

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
    ) -> Reservation:
        """Reserve `tokens` for `session_id`; raise TokenQuotaExceededError when they don't fit.

        `source` names the integration on the events (default: this client's source).

        Raises TokenBudgetExhaustedError when the hard limit is reached, and
        IntegrationError when the pipeline cannot decide (unless reservations.fail_open).
        """
        options = self.settings.reservations
        mode = mode or options.mode
        ttl = ttl if ttl is not None else options.ttl
        try:
            metrics = await self.session_metrics(session_id)
        except IntegrationError:
            if not options.fail_open:
                raise
            metrics = None
        if metrics is not None:
            room = metrics.headroom(priority)
            if tokens > room.available:
                raise TokenQuotaExceededError.for_window(
                    session_id, tokens, room.available, room.limit, room.window
                )
        now = utc_now()
        event = TokenReserved(
            session_id=session_id,
            task_id=task_id,
            source=source or self.source,
            occurred_at=now,
            reservation_id=uuid.uuid4(),
            tokens=tokens,
            priority=priority,
            expires_at=now + timedelta(seconds=ttl),
        )
        if mode == "optimistic":
            delivery = await self._emitter.emit(event)
            return Reservation(self, event, "pending", delivery, verified=metrics is not None)
        decided: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting[event.reservation_id] = decided
        try:
            delivery = await self._emitter.emit(event)
            status = await self._decision(event, decided, options.decision_timeout)
        except IntegrationError as exc:
            if not options.fail_open:
                raise
            log.warning("reservation %s not verified (%s); fail_open", event.reservation_id, exc)
            return Reservation(self, event, "pending", "spooled", verified=False)
        finally:
            self._waiting.pop(event.reservation_id, None)
        if status != "accepted":
            record = await self.reservation(event.reservation_id)
            assert record is not None
            raise TokenQuotaExceededError.for_window(
                record.session_id,
                record.tokens,
                record.available_tokens,
                record.limit_tokens,
                record.reason or "hard_limit",
            )
        return Reservation(self, event, status, delivery)

    async def _decision(
        self, event: TokenReserved, decided: asyncio.Future[str], timeout: float
    ) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(
                    asyncio.shield(decided), min(_POLL_INTERVAL * 4, remaining)
                )
            # A notification can be missed (listener reconnect): ask the table.
            record = await self.reservation(event.reservation_id)
            if record is not None:
                return record.status
        # Undecided: give the tokens back should the worker accept it later.
        with contextlib.suppress(IntegrationError):
            await Reservation(self, event, "pending", "acked").release()
        raise IntegrationError(
            f"no decision on reservation {event.reservation_id} within {timeout} s: "
            "is `tokenquota worker` running and the broker reachable?"
        )

    def _on_notify(self, connection: object, pid: int, channel: str, payload: object) -> None:
        rid_text, _, status = str(payload).partition(" ")
        future = self._waiting.get(uuid.UUID(rid_text))
        if future is not None and not future.done():
            future.set_result(status)

    @contextlib.asynccontextmanager
    async def _acquire(self) -> AsyncIterator[asyncpg.Connection]:
        if self._pool is None:
            raise IntegrationError("TokenQuota is not started: use `async with TokenQuota(...)`")
        try:
            async with self._turns, self._pool.acquire(timeout=10) as conn:
                yield conn  # type: ignore[misc]  # a pool proxy behaves as a Connection
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise IntegrationError(f"PostgreSQL unreachable: {exc}") from None


async def reserve(
    session_id: str,
    tokens: int,
    task_id: str | None = None,
    priority: Priority = "normal",
    ttl: float | None = None,
    mode: Mode | None = None,
    *,
    quota: TokenQuota | None = None,
) -> Reservation:
    """`quota.reserve(...)`, as a function; without `quota`, the process default client."""
    from .defaults import get_quota  # defaults builds on this module

    client = await get_quota(quota)
    return await client.reserve(session_id, tokens, task_id, priority, ttl, mode)
