"""`TokenDashboard`: sessions, the system, reports and costs, from the projections.

Two classes with the same methods:

- `AsyncTokenDashboard`: coroutines, for code that runs an event loop (`await
  dashboard.get_session_metrics("alice")`);
- `TokenDashboard`: the synchronous facade the design document calls
  (`TokenDashboard().get_session_metrics("alice")`). It runs an AsyncTokenDashboard on
  an event loop of its own in a private thread, so it works in scripts and notebooks
  outside any loop; called from a thread that runs an event loop it raises and says to
  use AsyncTokenDashboard.

Every number comes from PostgreSQL (never from this process), so it survives restarts
and agrees with replay. Session ids go through `privacy.hash_session_ids` first, so a
raw id finds its hashed session.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from datetime import date, datetime
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import asyncpg

from .config import Settings, load_settings
from .errors import IntegrationError, QueryValueError, UnknownSessionError
from .kafka_probe import HighwaterProbe
from .privacy import stored_session_id
from .producers.spool_depth import pending_bytes
from .projections import account_reports, activity, analytics, browse, undo_open_transaction
from .projections.dead_letters import reviewed_offsets, unreviewed
from .projections.read_models import (
    AccountTreeNode,
    AlertRow,
    AuditRow,
    CostRow,
    DailyReport,
    DecisionRow,
    IntegrationLogRow,
    LedgerPage,
    SessionApiRow,
    SessionPage,
    SessionReport,
    SystemOverview,
    TailCursor,
    TaskRow,
    Timeline,
    TopAccount,
    TopSession,
)

__all__ = ["AsyncTokenDashboard", "TokenDashboard"]

_T = TypeVar("_T")
#: How long the overview waits for the broker before it reports lag as unknown.
_BROKER_TIMEOUT = 2.0


class AsyncTokenDashboard:
    """The read models as coroutines. Use `async with AsyncTokenDashboard(settings)`, or
    `AsyncTokenDashboard.from_pool(pool, settings)` over a pool the caller owns."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or load_settings()
        self._pool: asyncpg.Pool | None = None
        self._owns_pool = True
        self._probe = HighwaterProbe(self.settings.kafka, timeout=_BROKER_TIMEOUT)

    @classmethod
    def from_pool(cls, pool: asyncpg.Pool, settings: Settings) -> AsyncTokenDashboard:
        """A dashboard reading through `pool` (search_path set to the schema); the caller
        closes the pool."""
        dashboard = cls(settings)
        dashboard._pool, dashboard._owns_pool = pool, False
        return dashboard

    async def open(self) -> None:
        """Connect to PostgreSQL (a small pool)."""
        if self._pool is not None:
            return
        db = self.settings.database
        try:
            self._pool = await asyncpg.create_pool(
                db.dsn(),
                min_size=1,
                max_size=4,
                server_settings={"search_path": db.schema_name},
                reset=undo_open_transaction,
                timeout=10,
            )
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise IntegrationError(f"PostgreSQL unreachable: {exc}") from None

    async def close(self) -> None:
        """Close the pool it opened."""
        await self._probe.close()
        pool, self._pool = self._pool, None
        if pool is not None and self._owns_pool:
            await pool.close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _read(self, query: Callable[[asyncpg.Connection], Awaitable[_T]]) -> _T:
        if self._pool is None:
            await self.open()
        assert self._pool is not None
        try:
            async with self._pool.acquire(timeout=10) as conn:
                return await query(conn)  # type: ignore[arg-type]  # a pool proxy acts as one
        except asyncpg.UndefinedTableError as exc:
            raise IntegrationError(
                f"the database has no tokenquota tables ({exc}): run `tokenquota migrate`"
            ) from None
        except (
            OSError,
            TimeoutError,
            asyncpg.PostgresConnectionError,
            # A server shutting down, and what asyncpg raises for a connection it broke.
            asyncpg.OperatorInterventionError,
            asyncpg.InterfaceError,
            asyncpg.InternalClientError,
        ) as exc:
            raise IntegrationError(f"PostgreSQL unreachable: {exc}") from None
        except OverflowError as exc:  # a window of a date near year 1 or 9999
            raise QueryValueError(f"a date of this request is out of range: {exc}") from None
        except asyncpg.DataError as exc:  # a NUL in a text, a number past a BIGINT
            raise QueryValueError(
                f"PostgreSQL cannot take a value of this request: {exc}"
            ) from None

    def _session(self, session_id: str) -> str:
        return stored_session_id(self.settings.privacy, session_id)

    async def session_known(self, session_id: str) -> bool:
        """Whether an applied event has named the session (one primary-key lookup)."""
        stored = self._session(session_id)
        return await self._read(lambda conn: activity.session_known(conn, stored))

    async def get_session_metrics(self, session_id: str) -> SessionReport:
        """A session's limits, usage, remaining tokens and utilization per window, held
        tokens and outstanding reservations, overage, cost and last activity.

        Raises UnknownSessionError when no applied event has named it.
        """
        report = await self._read(
            lambda conn: analytics.session_report(conn, self._session(session_id))
        )
        if report is None:
            raise UnknownSessionError(session_id)
        return report

    async def get_system_overview(self, *, top: int = 5) -> SystemOverview:
        """Sessions active and tokens and cost today and this month, events applied in the
        last minute, consumer lag per partition, DLQ depth (dead letters not yet reviewed
        with `tokenquota dlq ack`), this host's spool, top sessions.
        A broker that cannot be asked leaves lag and DLQ depth None with `broker_error`."""
        kafka = self.settings.kafka
        highwaters: dict[int, int] | None = None
        dlq: dict[int, int] | None = None
        error: str | None = None
        try:
            ends = await self._probe.highwaters(kafka.usage_topic, kafka.dlq_topic)
            highwaters, dlq = ends[kafka.usage_topic], ends[kafka.dlq_topic]
        except IntegrationError as exc:
            highwaters, error = None, str(exc)
        spool = pending_bytes(self.settings.spool_dir)

        async def overview(conn: asyncpg.Connection) -> SystemOverview:
            depth = None
            if dlq is not None:  # dead letters since the last review
                depth = unreviewed(dlq, await reviewed_offsets(conn, kafka.dlq_topic))
            return await analytics.system_overview(
                conn,
                topic=kafka.usage_topic,
                highwaters=highwaters,
                broker_error=error,
                dlq_depth=depth,
                spool_bytes=spool,
                top=top,
            )

        return await self._read(overview)

    async def generate_daily_report(self, date: date | None = None) -> DailyReport:
        """One day (default today, in the windows' time zone): per session tokens in/out,
        cost and reservations accepted/rejected/expired/released with efficiency (settled
        / reserved tokens); per API and model; per integration and model."""
        return await self._read(lambda conn: analytics.daily_report(conn, date))

    async def costs(
        self,
        by: Literal["api", "model", "day"] = "api",
        since: date | None = None,
        until: date | None = None,
    ) -> list[CostRow]:
        """API cost per API, model or day between `since` and `until` (inclusive; default
        the last 30 days)."""
        return await self._read(lambda conn: analytics.costs(conn, by, since, until))

    async def top_sessions(
        self, by: Literal["tokens", "cost"] = "tokens", limit: int = 10, day: date | None = None
    ) -> list[TopSession]:
        """The sessions with the most tokens (or cost) on `day` (default today)."""
        return await self._read(lambda conn: analytics.top_sessions(conn, by, limit, day))

    async def top_accounts(
        self,
        by: Literal["tokens", "cost"] = "tokens",
        limit: int = 10,
        day: date | None = None,
        depth: int | None = None,
        under: str | None = None,
    ) -> list[TopAccount]:
        """The budget tree nodes with the most tokens (or cost) on `day` (default today),
        with their reservations accepted, rejected and refused by their own limit; only
        nodes `depth` segments deep (1: tenants) and only `under` and below when given."""
        return await self._read(
            lambda conn: account_reports.top_accounts(conn, by, limit, day, depth, under)
        )

    async def account_tree(self, root: str | None = None) -> list[AccountTreeNode]:
        """Every budget tree node (only `root` and below when given), a parent before its
        children: limits in tokens and USD, usage per window, held, available,
        utilization (the highest of its token and USD windows; None without limits), and
        this month's tokens and cost."""
        return await self._read(lambda conn: account_reports.account_tree(conn, root))

    async def recent_decisions(
        self, session_id: str | None = None, status: str | None = None, limit: int = 50
    ) -> list[DecisionRow]:
        """The latest reservation decisions (of one session, or all), newest first;
        `status` one of accepted, rejected, settled, released, expired."""
        session = None if session_id is None else self._session(session_id)
        return await self._read(
            lambda conn: activity.recent_decisions(conn, session, status, limit)
        )

    async def recent_alerts(
        self, since: datetime | None = None, session_id: str | None = None, limit: int = 100
    ) -> list[AlertRow]:
        """Threshold crossings and refusals at a limit, newest first, with their delivery."""
        session = None if session_id is None else self._session(session_id)
        return await self._read(lambda conn: activity.recent_alerts(conn, since, session, limit))

    async def integration_logs(
        self, session_id: str, since: datetime | None = None, limit: int = 100
    ) -> list[IntegrationLogRow]:
        """A session's integration_logs: applied events, decisions and notices, newest first."""
        session = self._session(session_id)
        return await self._read(lambda conn: activity.integration_log(conn, session, since, limit))

    async def audit(self, session_id: str | None = None, limit: int = 100) -> list[AuditRow]:
        """Budget and defaults changes with their actor, newest first."""
        session = None if session_id is None else self._session(session_id)
        return await self._read(lambda conn: activity.audit_trail(conn, session, limit))

    async def sessions(
        self,
        *,
        offset: int = 0,
        limit: int = 25,
        order: Literal["recent", "utilization", "name"] = "recent",
        prefix: str | None = None,
    ) -> SessionPage:
        """A page of sessions with their windows: most recently active first, most
        utilized first, or by id; only ids starting with `prefix` when given."""
        return await self._read(
            lambda conn: browse.session_page(
                conn, offset=offset, limit=limit, order=order, prefix=prefix
            )
        )

    async def timeline(
        self, scale: Literal["minute", "hour"] = "minute", *, hours: int = 48
    ) -> Timeline:
        """Events, tokens, cost and decisions per minute of the last hour, or per hour of
        the last `hours`."""
        return await self._read(lambda conn: browse.timeline(conn, scale, hours=hours))

    async def session_tasks(self, session_id: str, limit: int = 100) -> list[TaskRow]:
        """A session's tasks (allocated and used tokens, status), latest first."""
        session = self._session(session_id)
        return await self._read(lambda conn: browse.session_tasks(conn, session, limit))

    async def session_apis(self, session_id: str) -> list[SessionApiRow]:
        """A session's external APIs: tokens, cost and the last rate-limit state."""
        session = self._session(session_id)
        return await self._read(lambda conn: browse.session_apis(conn, session))

    async def tail_cursor(
        self, since: datetime | None = None, session_id: str | None = None
    ) -> TailCursor:
        """A cursor for `events_after`: at the end of the ledger, or at `since`."""
        kafka = self.settings.kafka
        return await self._read(
            lambda conn: activity.tail_cursor(
                conn, kafka.usage_topic, since, partitions=kafka.partitions
            )
        )

    async def events_after(
        self, cursor: TailCursor, limit: int = 500, session_id: str | None = None
    ) -> LedgerPage:
        """Applied events after `cursor` (of one session, or all) and the next cursor."""
        session = None if session_id is None else self._session(session_id)
        return await self._read(lambda conn: activity.events_after(conn, cursor, limit, session))


class TokenDashboard:
    """The synchronous facade of AsyncTokenDashboard: the same methods, called without
    `await`, from code that runs no event loop. Close it (or use `with`) when done."""

    def __init__(self, settings: Settings | None = None) -> None:
        self._dashboard = AsyncTokenDashboard(settings)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="tokenquota-dashboard", daemon=True
        )
        self._thread.start()

    @property
    def settings(self) -> Settings:
        """The settings it reads with."""
        return self._dashboard.settings

    def _run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            coroutine.close()
            raise RuntimeError(
                "TokenDashboard blocks; inside a running event loop use AsyncTokenDashboard "
                "and await its methods"
            )
        if self._loop.is_closed():
            coroutine.close()
            raise RuntimeError("this TokenDashboard is closed")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def close(self) -> None:
        """Close the connections and stop the private event loop."""
        if self._loop.is_closed():
            return
        self._run(self._dashboard.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def session_known(self, session_id: str) -> bool:
        """See AsyncTokenDashboard.session_known."""
        return self._run(self._dashboard.session_known(session_id))

    def get_session_metrics(self, session_id: str) -> SessionReport:
        """See AsyncTokenDashboard.get_session_metrics."""
        return self._run(self._dashboard.get_session_metrics(session_id))

    def get_system_overview(self, *, top: int = 5) -> SystemOverview:
        """See AsyncTokenDashboard.get_system_overview."""
        return self._run(self._dashboard.get_system_overview(top=top))

    def generate_daily_report(self, date: date | None = None) -> DailyReport:
        """See AsyncTokenDashboard.generate_daily_report."""
        return self._run(self._dashboard.generate_daily_report(date))

    def costs(
        self,
        by: Literal["api", "model", "day"] = "api",
        since: date | None = None,
        until: date | None = None,
    ) -> list[CostRow]:
        """See AsyncTokenDashboard.costs."""
        return self._run(self._dashboard.costs(by, since, until))

    def top_sessions(
        self, by: Literal["tokens", "cost"] = "tokens", limit: int = 10, day: date | None = None
    ) -> list[TopSession]:
        """See AsyncTokenDashboard.top_sessions."""
        return self._run(self._dashboard.top_sessions(by, limit, day))

    def top_accounts(
        self,
        by: Literal["tokens", "cost"] = "tokens",
        limit: int = 10,
        day: date | None = None,
        depth: int | None = None,
        under: str | None = None,
    ) -> list[TopAccount]:
        """See AsyncTokenDashboard.top_accounts."""
        return self._run(self._dashboard.top_accounts(by, limit, day, depth, under))

    def account_tree(self, root: str | None = None) -> list[AccountTreeNode]:
        """See AsyncTokenDashboard.account_tree."""
        return self._run(self._dashboard.account_tree(root))

    def recent_decisions(
        self, session_id: str | None = None, status: str | None = None, limit: int = 50
    ) -> list[DecisionRow]:
        """See AsyncTokenDashboard.recent_decisions."""
        return self._run(self._dashboard.recent_decisions(session_id, status, limit))

    def recent_alerts(
        self, since: datetime | None = None, session_id: str | None = None, limit: int = 100
    ) -> list[AlertRow]:
        """See AsyncTokenDashboard.recent_alerts."""
        return self._run(self._dashboard.recent_alerts(since, session_id, limit))

    def integration_logs(
        self, session_id: str, since: datetime | None = None, limit: int = 100
    ) -> list[IntegrationLogRow]:
        """See AsyncTokenDashboard.integration_logs."""
        return self._run(self._dashboard.integration_logs(session_id, since, limit))

    def audit(self, session_id: str | None = None, limit: int = 100) -> list[AuditRow]:
        """See AsyncTokenDashboard.audit."""
        return self._run(self._dashboard.audit(session_id, limit))

    def sessions(
        self,
        *,
        offset: int = 0,
        limit: int = 25,
        order: Literal["recent", "utilization", "name"] = "recent",
        prefix: str | None = None,
    ) -> SessionPage:
        """See AsyncTokenDashboard.sessions."""
        return self._run(
            self._dashboard.sessions(offset=offset, limit=limit, order=order, prefix=prefix)
        )

    def timeline(self, scale: Literal["minute", "hour"] = "minute", *, hours: int = 48) -> Timeline:
        """See AsyncTokenDashboard.timeline."""
        return self._run(self._dashboard.timeline(scale, hours=hours))

    def session_tasks(self, session_id: str, limit: int = 100) -> list[TaskRow]:
        """See AsyncTokenDashboard.session_tasks."""
        return self._run(self._dashboard.session_tasks(session_id, limit))

    def session_apis(self, session_id: str) -> list[SessionApiRow]:
        """See AsyncTokenDashboard.session_apis."""
        return self._run(self._dashboard.session_apis(session_id))
