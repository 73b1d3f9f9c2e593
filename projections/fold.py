"""The pure fold: (state of the touched sessions and partitions, records in log order) ->
(state, rows).

No I/O, no wall clock, no globals: the same fold serves the worker, replay and the
property tests, so every decision it makes is the same on every replay. Time comes from
the log (`projections/log_clock.py`): each partition's log clock decides window
roll-over, reservation expiry and when a decision was made, and every usage counts in
the windows of the log clock; `occurred_at` dates an event in the rollups and reports,
unless it runs too far ahead of the log clock (it is then counted at the log clock and
flagged). What an event adds to the read models' rollups is in `projections/rollups.py`,
the alert levels and their outbox rows in `projections/alerts.py`.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterable, Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, NoReturn

from tokenquota.schemas import (
    BIGINT_MAX,
    ApiCost,
    BudgetSet,
    DefaultsSet,
    Event,
    TokenReserved,
    TokenUsed,
    account_root,
    ancestors,
)

from . import rollups
from .alerts import refused_alert, threshold_alerts, tokens_to_alert, usd_threshold_alerts
from .budget import UsdRefusal, headroom, local_day, month_of, start_of_day, usd_refusal
from .holds import Holds
from .log_clock import Moment, advance, moment_of
from .state import (
    BUILTIN_DEFAULTS,
    AlertLevel,
    ApiDelta,
    Decision,
    FoldConfig,
    Folded,
    Limits,
    LogRecord,
    LogRow,
    MinuteDelta,
    NodeBudget,
    PartitionState,
    ProjectionState,
    ReservationRecord,
    SessionBudget,
    TaskDelta,
    UsdLimits,
)

_ZERO = Decimal(0)

__all__ = ["FoldConfig", "Folding", "PoisonEventError", "fold", "new_node", "new_session"]


class PoisonEventError(Exception):
    """An event the projections can never hold: it would overflow a BIGINT total, or it
    names another account than its session's.

    The store sends it to the dead-letter topic and applies the rest of its batch; the
    decision is a function of the log alone, so a replay skips the same event.
    """

    def __init__(self, event_id: uuid.UUID, reason: str) -> None:
        self.event_id = event_id
        self.reason = reason
        super().__init__(f"event {event_id}: {reason}")


def new_node(account: str, at: datetime, config: FoldConfig) -> NodeBudget:
    """A budget tree node first seen at log time `at`: without limits of its own."""
    day = local_day(at, config.zone)
    return NodeBudget(
        account=account,
        limits=None,
        budget_event=None,
        current_day=day,
        tokens_used_today=0,
        current_month=month_of(day),
        tokens_used_month=0,
        tokens_used_total=0,
        created_at=at,
        updated_at=at,
    )


def _levels(node: NodeBudget) -> tuple[AlertLevel, ...]:
    """The alert level of each of `node`'s windows."""
    return (
        node.daily_alert,
        node.monthly_alert,
        node.total_alert,
        node.daily_usd_alert,
        node.monthly_usd_alert,
        node.total_usd_alert,
    )


def new_session(
    session_id: str, at: datetime, config: FoldConfig, account: str | None = None
) -> SessionBudget:
    """A session first seen at log time `at`, on the partition's default limits."""
    day = local_day(at, config.zone)
    return SessionBudget(
        session_id=session_id,
        limits=config.default_limits,
        current_day=day,
        tokens_used_today=0,
        current_month=month_of(day),
        tokens_used_month=0,
        tokens_used_total=0,
        daily_alert="none",
        monthly_alert="none",
        total_alert="none",
        reservations_accepted=0,
        reservations_rejected=0,
        overage_tokens=0,
        last_reset=start_of_day(day, config.zone),
        created_at=at,
        updated_at=at,
        account=account,
    )


def fold(state: ProjectionState, records: Sequence[LogRecord], *, owned: bool = False) -> Folded:
    """Apply `records` (new events only, in log order) to a copy of `state`, or to `state`
    itself when the caller `owned` it (loaded for this fold alone, never used after).

    Raises PoisonEventError for an event that can never be applied.
    """
    folding = Folding(state, owned=owned)
    folding.add(records)
    return folding.done()


class Folding:
    """`fold`, fed its records a slice at a time: `add(a)`, `add(b)`, then `done()` gives
    what `fold(state, a + b)` does. A caller can let other work run between slices (the
    worker sends a statement's rows meanwhile); nothing outside is touched until `done`.

    Raises PoisonEventError (from `add`) for an event that can never be applied.
    """

    def __init__(self, state: ProjectionState, *, owned: bool = False) -> None:
        if not owned:
            state = ProjectionState(
                sessions={k: copy.copy(v) for k, v in state.sessions.items()},
                reservations={k: copy.copy(v) for k, v in state.reservations.items()},
                partitions={k: copy.copy(v) for k, v in state.partitions.items()},
                nodes={k: copy.copy(v) for k, v in state.nodes.items()},
            )
        self.out = Folded(state=state)
        self.sessions = self.out.state.sessions
        self.reservations = self.out.state.reservations
        self.partitions = self.out.state.partitions
        self.nodes = self.out.state.nodes
        self.holds = Holds(self.reservations)
        #: The tree nodes of the event being applied, tenant first (empty: no account).
        self.chain: tuple[NodeBudget, ...] = ()
        #: The nodes of each account path this fold has seen, tenant first.
        self.chains: dict[str, tuple[NodeBudget, ...]] = {}
        #: The log clock's day of the event being applied (set by `_session`).
        self.today = date.min
        #: Per node, tokens it may still use before a token window can reach its next
        #: alert level (so most usage skips the threshold check); dropped when its
        #: windows roll over or its limits change.
        self.quiet: dict[str, int] = {}
        #: The same per session, dropped when its day rolls over or a BudgetSet changes
        #: its limits (0: its first usage in the batch, the headroom not worked out yet).
        self.session_quiet: dict[str, int] = {}
        self.calendar = rollups.Calendar()
        #: The system_usage_minutely row of the record being applied.
        self.minute = MinuteDelta()
        self.config = BUILTIN_DEFAULTS

    def add(self, records: Iterable[LogRecord]) -> None:
        """Fold `records`, the next in log order."""
        # By exact type: isinstance on pydantic models goes through ABCMeta, and this
        # loop runs for every event. (Not kept on self: its bound methods would make the
        # fold a reference cycle, whose batch then waits for the cyclic collector.)
        handlers: dict[type, Any] = {
            TokenUsed: self._used,
            TokenReserved: self._reserved,
            ApiCost: self._api_cost,
            BudgetSet: self._budget_set,
        }
        for record in records:
            event = record.event
            key = (record.topic, record.partition)
            partition = self.partitions.get(key)
            if partition is None:
                partition = self.partitions[key] = PartitionState()
            clock = partition.clock = advance(partition.clock, record.timestamp)
            self.out.changed_partitions.add(key)
            self.minute = self.calendar.minute(self.out, record.timestamp)
            self.minute.events_applied += 1
            if type(event) is DefaultsSet:
                self._defaults_set(key, partition, event, clock)
                continue
            config = self.config = partition.defaults
            moment = moment_of(event, clock, config)
            if moment.shift:
                self._flag_skew(event, clock, config, moment.shift)
            account = event.account
            if account is None:
                self.chain = ()
                session = self._session(event, clock, config)
                self._expire(session.session_id, clock)
            elif type(event) is BudgetSet and event.target == "account":
                self._node_budget_set(event, clock, config, moment)
                continue
            else:
                session = self._session(event, clock, config)
                self.chain = self._chain(account, clock, config, self.today)
                self._expire_tree(account_root(account), clock)
            handlers[type(event)](session, event, moment)

    def done(self) -> Folded:
        """The state and rows of everything added."""
        rollups.spread_accounts(self.out)
        return self.out

    # -- the log clock ---------------------------------------------------------------

    def _flag_skew(
        self, event: Event, clock: datetime, config: FoldConfig, ahead: timedelta
    ) -> None:
        self.out.clock_skewed.append(event.event_id)
        source = event.source
        self._log(
            event,
            clock,
            "clock_skew",
            "warning",
            error=(
                f"occurred_at {event.occurred_at.isoformat()} is {ahead} ahead of the log "
                f"clock {clock.isoformat()} (more than max_clock_skew {config.max_clock_skew}) "
                f"in an event from {source.component}/{source.name}; counted at the log clock"
            ),
            metadata={
                "occurred_at": event.occurred_at.isoformat(),
                "log_clock": clock.isoformat(),
                "ahead_ms": ahead // timedelta(milliseconds=1),
                "max_clock_skew_ms": config.max_clock_skew // timedelta(milliseconds=1),
                "producer": f"{source.component}/{source.name}",
            },
        )

    # -- session windows -------------------------------------------------------------

    def _session(self, event: Event, clock: datetime, config: FoldConfig) -> SessionBudget:
        session_id, account = event.session_id, event.account
        session = self.sessions.get(session_id)
        if session is None:
            session = new_session(session_id, clock, config, account)
            self.sessions[session_id] = session
        elif session.account != account:
            raise PoisonEventError(
                event.event_id,
                f"session {session_id!r} belongs to "
                + (f"account {session.account!r}" if session.account else "no account")
                + "; this event names "
                + (f"account {account!r}" if account else "none"),
            )
        today = self.today = local_day(clock, config.zone)
        if today > session.current_day:
            self.session_quiet.pop(session_id, None)
            session.current_day = today
            session.tokens_used_today = 0
            session.usd_used_today = _ZERO
            session.daily_alert = session.daily_usd_alert = "none"
            session.last_reset = start_of_day(today, config.zone)
        if today.replace(day=1) > session.current_month:
            session.current_month = month_of(today)
            session.tokens_used_month = 0
            session.usd_used_month = _ZERO
            session.monthly_alert = session.monthly_usd_alert = "none"
        if clock > session.updated_at:
            session.updated_at = clock
        self.out.changed_sessions.add(session_id)
        return session

    def _chain(
        self, account: str, clock: datetime, config: FoldConfig, today: date | None = None
    ) -> tuple[NodeBudget, ...]:
        """The nodes from `account`'s tenant down to it, each in its current windows
        (`today`: the log clock's day, when the caller has it)."""
        chain = self.chains.get(account)
        if chain is None:
            nodes = []
            for path in ancestors(account):
                node = self.nodes.get(path)
                if node is None:
                    node = self.nodes[path] = new_node(path, clock, config)
                    self.out.changed_nodes.add(path)
                nodes.append(node)
            chain = self.chains[account] = tuple(nodes)
        if today is None:
            today = local_day(clock, config.zone)
        for node in chain:
            if today > node.current_day:  # a new day, and perhaps a new month
                node.current_day = today
                node.tokens_used_today = 0
                node.usd_used_today = _ZERO
                node.daily_alert = node.daily_usd_alert = "none"
                month = month_of(today)
                if month > node.current_month:
                    node.current_month = month
                    node.tokens_used_month = 0
                    node.usd_used_month = _ZERO
                    node.monthly_alert = node.monthly_usd_alert = "none"
                self.quiet.pop(node.account, None)
                self._changed(node, clock)
        return chain

    def _changed(self, node: NodeBudget, clock: datetime) -> None:
        """`node` changed at `clock`: its row is written. Only a change does this, not
        every event under it (most reservations and releases change no node)."""
        if clock > node.updated_at:
            node.updated_at = clock
        self.out.changed_nodes.add(node.account)

    def _expire_tree(self, root: str, clock: datetime) -> None:
        """Expire every accepted reservation of the tree `root` past its time, whichever
        session it is of: their tokens were held at nodes this event may need."""
        self._expired(*self.holds.expire_tree(root, clock))

    def _expire(self, session_id: str, clock: datetime) -> None:
        self._expired(*self.holds.expire_session(session_id, clock))

    def _expired(self, dollars: list[ReservationRecord], tokens: list[ReservationRecord]) -> None:
        for record in dollars:
            self.out.changed_reservations.add(record.reservation_id)
        for record in tokens:
            record.status = "expired"
            self.out.changed_reservations.add(record.reservation_id)
            rollups.count_outcome(self.out, record, self.config.zone, "accepted")

    # -- events ----------------------------------------------------------------------

    def _defaults_set(
        self, key: tuple[str, int], partition: PartitionState, event: DefaultsSet, clock: datetime
    ) -> None:
        partition.defaults = FoldConfig.of(event)
        partition.defaults_event = event.event_id
        partition.defaults_set_at = clock
        self.out.changed_defaults.add(key)

    def _node_budget_set(
        self, event: BudgetSet, clock: datetime, config: FoldConfig, moment: Moment
    ) -> None:
        """Limits for a tree node (its usage and holds stay)."""
        assert event.account is not None
        node = self._chain(event.account, clock, config)[-1]
        previous, previous_usd = node.limits, node.usd
        node.limits = Limits(
            daily_limit=event.daily_limit,
            monthly_limit=event.monthly_limit,
            hard_limit=event.hard_limit,
            warning_threshold=event.warning_threshold,
            critical_threshold=event.critical_threshold,
            source="event",
        )
        node.usd = UsdLimits.of(event)
        node.budget_event = event.event_id
        self._changed(node, clock)
        self.quiet.pop(node.account, None)
        threshold_alerts(self.out, node, event, moment, previous=previous, changed=True)
        usd_threshold_alerts(self.out, node, event, moment, previous=previous_usd, changed=True)

    def _budget_set(self, session: SessionBudget, event: BudgetSet, moment: Moment) -> None:
        # The integration_logs view shows the event itself; no notice of its own.
        previous, previous_usd = session.limits, session.usd
        self.session_quiet.pop(session.session_id, None)
        session.limits = Limits(
            daily_limit=event.daily_limit,
            monthly_limit=event.monthly_limit,
            hard_limit=event.hard_limit,
            warning_threshold=event.warning_threshold,
            critical_threshold=event.critical_threshold,
            source="event",
        )
        session.usd = UsdLimits.of(event)
        threshold_alerts(self.out, session, event, moment, previous=previous)
        usd_threshold_alerts(self.out, session, event, moment, previous=previous_usd, changed=True)

    def _reserved(self, session: SessionBudget, event: TokenReserved, moment: Moment) -> None:
        rid = event.reservation_id
        if rid in self.reservations:
            self._log(
                event,
                moment.at,
                "duplicate_reservation_id",
                "error",
                error=f"reservation {rid} already exists; this TokenReserved was ignored",
                metadata={"requested": event.tokens},
            )
            return
        # A TokenReserved counted at the log clock keeps its time to live from there.
        expires_at = event.expires_at - moment.shift
        room = headroom(
            session.limits,
            session.tokens_used_today,
            session.tokens_used_month,
            session.tokens_used_total,
            self.holds.session_tokens(session.session_id),
            event.priority,
        )
        expired = expires_at <= moment.clock
        accepted = not expired and event.tokens <= room.available
        reason: str | None = None if accepted else ("expired" if expired else room.window)
        refusing: NodeBudget | None = None
        dollars: UsdRefusal | None = None
        if accepted and session.usd is not None:
            held = self.holds.session_usd(session.session_id)
            dollars = _usd_refusal(session, session.usd, held, event, session.limits)
            if dollars is not None:
                accepted, reason = False, dollars.window
        if accepted and self.chain:
            # Every node above the session that has limits must have room too; the
            # nearest one that has none is named.
            for node in reversed(self.chain):
                if node.limits is None:
                    continue  # no BudgetSet, so neither tokens nor dollars limit here
                node_room = headroom(
                    node.limits,
                    node.tokens_used_today,
                    node.tokens_used_month,
                    node.tokens_used_total,
                    self.holds.node_tokens(node.account),
                    event.priority,
                )
                if event.tokens > node_room.available:
                    accepted, reason, refusing, room = False, node_room.window, node, node_room
                    break
                if node.usd is None:
                    continue
                held = self.holds.node_usd(node.account)
                dollars = _usd_refusal(node, node.usd, held, event, node.limits)
                if dollars is not None:
                    accepted, reason, refusing = False, dollars.window, node
                    break
        refused_by = refusing.account if refusing is not None else None
        record = ReservationRecord(
            reservation_id=rid,
            event_id=event.event_id,
            session_id=session.session_id,
            task_id=event.task_id,
            tokens=event.tokens,
            priority=event.priority,
            status="accepted" if accepted else "rejected",
            reason=reason,
            available_tokens=max(room.available, 0),
            limit_tokens=room.limit,
            requested_at=moment.at,
            decided_at=moment.clock,
            expires_at=expires_at,
            account=event.account,
            refused_by=refused_by,
            reserved_usd=event.reserved_usd,
            price_source=event.price_source,
            usd_held=event.reserved_usd if accepted and event.reserved_usd else None,
            limit_usd=dollars.limit if dollars is not None else None,
            used_usd=dollars.used if dollars is not None else None,
            held_usd=dollars.held if dollars is not None else None,
        )
        self.reservations[rid] = record
        self.out.changed_reservations.add(rid)
        self.out.decisions.append(
            Decision(rid, record.status, reason, session.session_id, refused_by)
        )
        rollups.count_decision(self.out, record, self.config.zone, self.minute)
        # The integration_logs view shows the decision (from reservations): no notice.
        if accepted:
            session.reservations_accepted += 1
            self.holds.add(record)
            if event.task_id is not None:
                self._task(session.session_id, event.task_id, moment.at, allocated=event.tokens)
            return
        session.reservations_rejected += 1
        if refusing is None:
            refused_alert(self.out, session, event, moment, record)
            return
        levels = _levels(refusing)
        refused_alert(self.out, refusing, event, moment, record)
        if _levels(refusing) != levels:  # the window it refused in is now exhausted
            self._changed(refusing, moment.clock)

    def _used(self, session: SessionBudget, event: TokenUsed, moment: Moment) -> None:
        total = event.input_tokens + event.output_tokens
        if session.tokens_used_total + total > BIGINT_MAX:
            self._overflow(event, f"session {session.session_id!r}", session.tokens_used_total)
        for node in self.chain:
            if node.tokens_used_total + total > BIGINT_MAX:
                self._overflow(event, f"account {node.account!r}", node.tokens_used_total)
        # Every usage counts in the windows of the log clock (those the session is in
        # now), whatever its occurred_at; the rollups date it by occurred_at.
        session.tokens_used_today += total
        session.tokens_used_month += total
        session.tokens_used_total += total
        if total:  # a release (no tokens) changes no node
            clock, changed = moment.clock, self.out.changed_nodes
            for node in self.chain:  # (what _changed does, inline: this runs per event)
                node.tokens_used_today += total
                node.tokens_used_month += total
                node.tokens_used_total += total
                if clock > node.updated_at:
                    node.updated_at = clock
                changed.add(node.account)
        rollups.add_usage(self.out, self.calendar, session.session_id, event, moment, event.account)
        self.minute.tokens_used += total
        if event.task_id is not None:
            self._task(session.session_id, event.task_id, moment.at, used=total)
        if event.reservation_id is not None:
            self._settle(session, event, total, moment.at)
        left = self.session_quiet.get(session.session_id)
        if left is None:  # its first usage in the batch (a small batch holds one per session)
            threshold_alerts(self.out, session, event, moment)
            self.session_quiet[session.session_id] = 0  # the next works its headroom out
        elif total < left:
            self.session_quiet[session.session_id] = left - total
        else:
            threshold_alerts(self.out, session, event, moment)
            self.session_quiet[session.session_id] = tokens_to_alert(session)
        for node in self.chain:
            if node.limits is None:
                continue
            left = self.quiet.get(node.account)
            if left is not None and total < left:
                self.quiet[node.account] = left - total
                continue
            if total:
                threshold_alerts(self.out, node, event, moment)
            else:  # no usage: changed only should a level change
                levels = _levels(node)
                threshold_alerts(self.out, node, event, moment)
                if _levels(node) != levels:
                    self._changed(node, moment.clock)
            self.quiet[node.account] = tokens_to_alert(node)

    @staticmethod
    def _overflow(event: TokenUsed, owner: str, used: int) -> NoReturn:
        total = event.input_tokens + event.output_tokens
        raise PoisonEventError(
            event.event_id,
            f"{owner} has used {used} tokens; {total} more would exceed the largest total a "
            f"BIGINT holds ({BIGINT_MAX})",
        )

    def _settle(self, session: SessionBudget, event: TokenUsed, total: int, at: datetime) -> None:
        rid = event.reservation_id
        assert rid is not None
        record = self.reservations.get(rid)
        if record is None or record.session_id != session.session_id:
            problem = "is unknown" if record is None else "belongs to another session"
        elif record.status in ("accepted", "expired"):
            was = record.status
            self.holds.end_tokens(record)
            if total == 0:  # released: nothing was called, so nothing will cost
                self.holds.end_usd(record)
            record.status = "released" if total == 0 else "settled"
            record.settled_at = at
            record.settled_tokens = total
            record.overage_tokens = max(0, total - record.tokens)
            self.out.changed_reservations.add(rid)
            rollups.count_outcome(self.out, record, self.config.zone, was)
            if record.overage_tokens:
                session.overage_tokens += record.overage_tokens
                self._log(
                    event,
                    at,
                    "overage",
                    "warning",
                    tokens=total,
                    error=f"used {total} tokens on a reservation of {record.tokens}",
                    metadata={"reservation_id": str(rid), "overage": record.overage_tokens},
                )
            if was == "expired":
                self._log(
                    event,
                    at,
                    "late_settlement",
                    "warning",
                    tokens=total,
                    error=f"reservation {rid} had expired at {record.expires_at.isoformat()}",
                    metadata={"reservation_id": str(rid)},
                )
            return
        else:
            problem = f"is already {record.status}"
        self._log(
            event,
            at,
            "unmatched_settlement",
            "warning",
            tokens=total,
            error=f"reservation {rid} {problem}; the usage is counted without it",
            metadata={"reservation_id": str(rid)},
        )

    def _api_cost(self, session: SessionBudget, event: ApiCost, moment: Moment) -> None:
        at = moment.at
        key = (session.session_id, event.api)
        delta = self.out.apis.get(key)
        if delta is None:
            delta = self.out.apis[key] = ApiDelta(0, 0, 0, 0, 0, Decimal(0), at, None, None)
        delta.requests += 1
        delta.input_tokens += event.input_tokens
        delta.output_tokens += event.output_tokens
        delta.cache_read_tokens += event.cache_read_tokens
        delta.cache_write_tokens += event.cache_write_tokens
        delta.cost_usd += event.cost_usd
        delta.last_used = max(delta.last_used, at)
        if event.rate_limit_remaining is not None:
            delta.rate_limit_remaining = event.rate_limit_remaining
        if event.rate_limit_reset is not None:
            delta.rate_limit_reset = event.rate_limit_reset
        rollups.add_cost(self.out, self.calendar, session.session_id, event, moment, event.account)
        self.minute.cost_usd += event.cost_usd
        cost = event.cost_usd
        session.usd_used_today += cost
        session.usd_used_month += cost
        session.usd_used_total += cost
        for node in self.chain:
            if cost:
                node.usd_used_today += cost
                node.usd_used_month += cost
                node.usd_used_total += cost
                self._changed(node, moment.clock)
            if node.usd is not None:
                levels = _levels(node)
                usd_threshold_alerts(self.out, node, event, moment)
                if _levels(node) != levels:
                    self._changed(node, moment.clock)
        if session.usd is not None:
            usd_threshold_alerts(self.out, session, event, moment)
        if event.reservation_id is not None:
            self._settle_cost(session, event, at)

    def _settle_cost(self, session: SessionBudget, event: ApiCost, at: datetime) -> None:
        """The real cost of a reservation's call: its USD hold ends, its cost is kept."""
        rid = event.reservation_id
        record = self.reservations.get(rid) if rid is not None else None
        if record is None or record.session_id != session.session_id:
            problem = "is unknown" if record is None else "belongs to another session"
            self._log(
                event,
                at,
                "unmatched_cost",
                "warning",
                error=f"reservation {rid} {problem}; the cost is counted without it",
                metadata={"reservation_id": str(rid), "cost_usd": str(event.cost_usd)},
            )
            return
        self.holds.end_usd(record)
        record.settled_usd = (record.settled_usd or _ZERO) + event.cost_usd
        self.out.changed_reservations.add(record.reservation_id)

    # -- helpers ---------------------------------------------------------------------

    def _task(
        self, session_id: str, task_id: str, at: datetime, *, allocated: int = 0, used: int = 0
    ) -> None:
        delta = self.out.tasks.get((session_id, task_id))
        if delta is None:
            self.out.tasks[(session_id, task_id)] = TaskDelta(allocated, used, at, at)
            return
        delta.allocated_tokens += allocated
        delta.tokens_used += used
        delta.first_at = min(delta.first_at, at)
        delta.last_at = max(delta.last_at, at)

    def _log(
        self,
        event: Event,
        at: datetime,
        action: str,
        status: str,
        *,
        tokens: int = 0,
        error: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.out.logs.append(
            LogRow.of(event, at, action, status, tokens=tokens, error=error, metadata=metadata)
        )


def _usd_refusal(
    owner: SessionBudget | NodeBudget,
    usd: UsdLimits,
    held: Decimal,
    event: TokenReserved,
    limits: Limits,
) -> UsdRefusal | None:
    """The USD window of a session or node that refuses `event` (None: it fits)."""
    return usd_refusal(
        usd,
        owner.usd_used_today,
        owner.usd_used_month,
        owner.usd_used_total,
        held,
        event.reserved_usd or _ZERO,
        event.priority,
        limits.critical_threshold,
    )
