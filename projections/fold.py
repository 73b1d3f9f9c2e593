"""The pure fold: (state of the touched sessions, events in log order) -> (state, rows).

No I/O, no clock, no globals: the same fold serves the worker, replay and the property
tests, so every decision it makes is the same on every replay. Time comes only from
each event's `occurred_at`.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from tokenquota.schemas import ApiCost, BudgetSet, Event, TokenReserved, TokenUsed

from .budget import alert_level, headroom, local_day, month_of, start_of_day
from .state import (
    AlertLevel,
    ApiDelta,
    Decision,
    Folded,
    Limits,
    LogRow,
    ProjectionState,
    ReservationRecord,
    SessionBudget,
    TaskDelta,
    UsageDelta,
)

__all__ = ["FoldConfig", "fold", "new_session"]

_LEVELS: tuple[AlertLevel, ...] = ("none", "warning", "critical")
_UTC = ZoneInfo("UTC")


@dataclass(frozen=True, slots=True)
class FoldConfig:
    """What the fold needs besides events: default limits and the windows' time zone."""

    default_limits: Limits
    zone: ZoneInfo = _UTC


def new_session(session_id: str, at: datetime, config: FoldConfig) -> SessionBudget:
    """A session first seen at `at`, on the default limits."""
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
    )


def fold(state: ProjectionState, events: Sequence[Event], config: FoldConfig) -> Folded:
    """Apply `events` (new ones only, in log order) to a copy of `state`."""
    return _Folder(state, config).run(events)


class _Folder:
    def __init__(self, state: ProjectionState, config: FoldConfig) -> None:
        self.config = config
        self.out = Folded(
            state=ProjectionState(
                sessions={k: copy.copy(v) for k, v in state.sessions.items()},
                reservations={k: copy.copy(v) for k, v in state.reservations.items()},
            )
        )
        self.sessions = self.out.state.sessions
        self.reservations = self.out.state.reservations
        self.held: dict[str, dict[uuid.UUID, ReservationRecord]] = {}
        for record in self.reservations.values():
            if record.status == "accepted":
                self.held.setdefault(record.session_id, {})[record.reservation_id] = record

    def run(self, events: Iterable[Event]) -> Folded:
        # By exact type: isinstance on pydantic models goes through ABCMeta, and this
        # loop runs for every event.
        handlers: dict[type, Any] = {
            TokenUsed: self._used,
            TokenReserved: self._reserved,
            ApiCost: self._api_cost,
            BudgetSet: self._budget_set,
        }
        for event in events:
            day = local_day(event.occurred_at, self.config.zone)
            session = self._session(event, day)
            self._expire(session.session_id, event.occurred_at)
            handlers[type(event)](session, event, day)
        return self.out

    # -- session windows -------------------------------------------------------------

    def _session(self, event: Event, day: date) -> SessionBudget:
        at = event.occurred_at
        session = self.sessions.get(event.session_id)
        if session is None:
            session = new_session(event.session_id, at, self.config)
            self.sessions[event.session_id] = session
        if day > session.current_day:
            session.current_day = day
            session.tokens_used_today = 0
            session.daily_alert = "none"
            session.last_reset = start_of_day(day, self.config.zone)
        if day.replace(day=1) > session.current_month:
            session.current_month = month_of(day)
            session.tokens_used_month = 0
            session.monthly_alert = "none"
        if at > session.updated_at:
            session.updated_at = at
        self.out.changed_sessions.add(session.session_id)
        return session

    def _expire(self, session_id: str, at: datetime) -> None:
        held = self.held.get(session_id)
        if not held:
            return
        for rid in [rid for rid, r in held.items() if at > r.expires_at]:
            record = held.pop(rid)
            record.status = "expired"
            self.out.changed_reservations.add(rid)

    def _held_tokens(self, session_id: str) -> int:
        return sum(r.tokens for r in self.held.get(session_id, {}).values())

    # -- events ----------------------------------------------------------------------

    def _budget_set(self, session: SessionBudget, event: BudgetSet, day: date) -> None:
        session.limits = Limits(
            daily_limit=event.daily_limit,
            monthly_limit=event.monthly_limit,
            hard_limit=event.hard_limit,
            warning_threshold=event.warning_threshold,
            critical_threshold=event.critical_threshold,
            source="event",
        )
        self._log(
            event,
            "budget_set",
            "ok",
            metadata={
                "daily_limit": event.daily_limit,
                "monthly_limit": event.monthly_limit,
                "hard_limit": event.hard_limit,
                "warning_threshold": str(event.warning_threshold),
                "critical_threshold": str(event.critical_threshold),
            },
        )
        self._check_alerts(session, event)

    def _reserved(self, session: SessionBudget, event: TokenReserved, day: date) -> None:
        rid = event.reservation_id
        at = event.occurred_at
        if rid in self.reservations:
            self._log(
                event,
                "duplicate_reservation_id",
                "error",
                error=f"reservation {rid} already exists; this TokenReserved was ignored",
                metadata={"requested": event.tokens},
            )
            return
        room = headroom(
            session.limits,
            session.tokens_used_today,
            session.tokens_used_month,
            session.tokens_used_total,
            self._held_tokens(session.session_id),
            event.priority,
        )
        accepted = event.tokens <= room.available
        record = ReservationRecord(
            reservation_id=rid,
            event_id=event.event_id,
            session_id=session.session_id,
            task_id=event.task_id,
            tokens=event.tokens,
            priority=event.priority,
            status="accepted" if accepted else "rejected",
            reason=None if accepted else room.window,
            available_tokens=max(room.available, 0),
            limit_tokens=room.limit,
            requested_at=at,
            decided_at=at,
            expires_at=event.expires_at,
        )
        self.reservations[rid] = record
        self.out.changed_reservations.add(rid)
        self.out.decisions.append(Decision(rid, record.status))
        if accepted:
            session.reservations_accepted += 1
            self.held.setdefault(session.session_id, {})[rid] = record
            if event.task_id is not None:
                self._task(session.session_id, event.task_id, at, allocated=event.tokens)
        else:
            session.reservations_rejected += 1
            self._log(
                event,
                "reservation_rejected",
                "rejected",
                error=(
                    f"requested {event.tokens} tokens, {max(room.available, 0)} available "
                    f"under the {room.window.replace('_', ' ')} of {room.limit}"
                ),
                metadata={
                    "reservation_id": str(rid),
                    "requested": event.tokens,
                    "available": max(room.available, 0),
                    "limit": room.limit,
                    "window": room.window,
                    "priority": event.priority,
                },
            )

    def _used(self, session: SessionBudget, event: TokenUsed, day: date) -> None:
        total = event.input_tokens + event.output_tokens
        month = month_of(day)
        # A late event (earlier day than the session's window) counts in its own day's
        # rollup and in the totals, but not in today's window.
        if day == session.current_day:
            session.tokens_used_today += total
        if month == session.current_month:
            session.tokens_used_month += total
        session.tokens_used_total += total
        for key, table in (
            ((session.session_id, day), self.out.daily),
            ((session.session_id, month), self.out.monthly),
        ):
            delta = table.get(key)
            if delta is None:
                delta = table[key] = UsageDelta()
            delta.input_tokens += event.input_tokens
            delta.output_tokens += event.output_tokens
            delta.tokens_used += total
            delta.usage_events += 1
        if event.task_id is not None:
            self._task(session.session_id, event.task_id, event.occurred_at, used=total)
        if event.reservation_id is not None:
            self._settle(session, event, total)
        self._check_alerts(session, event)

    def _settle(self, session: SessionBudget, event: TokenUsed, total: int) -> None:
        rid = event.reservation_id
        assert rid is not None
        record = self.reservations.get(rid)
        if record is None or record.session_id != session.session_id:
            problem = "is unknown" if record is None else "belongs to another session"
        elif record.status in ("accepted", "expired"):
            late = record.status == "expired"
            self.held.get(session.session_id, {}).pop(rid, None)
            record.status = "released" if total == 0 else "settled"
            record.settled_at = event.occurred_at
            record.settled_tokens = total
            record.overage_tokens = max(0, total - record.tokens)
            self.out.changed_reservations.add(rid)
            if record.overage_tokens:
                session.overage_tokens += record.overage_tokens
                self._log(
                    event,
                    "overage",
                    "warning",
                    tokens=total,
                    error=f"used {total} tokens on a reservation of {record.tokens}",
                    metadata={"reservation_id": str(rid), "overage": record.overage_tokens},
                )
            if late:
                self._log(
                    event,
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
            "unmatched_settlement",
            "warning",
            tokens=total,
            error=f"reservation {rid} {problem}; the usage is counted without it",
            metadata={"reservation_id": str(rid)},
        )

    def _api_cost(self, session: SessionBudget, event: ApiCost, day: date) -> None:
        at = event.occurred_at
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
        for table, window in ((self.out.daily, day), (self.out.monthly, month_of(day))):
            table.setdefault((session.session_id, window), UsageDelta()).cost_usd += event.cost_usd

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

    def _check_alerts(self, session: SessionBudget, event: Event) -> None:
        limits = session.limits
        for name, used, limit, before in (
            ("daily", session.tokens_used_today, limits.daily_limit, session.daily_alert),
            ("monthly", session.tokens_used_month, limits.monthly_limit, session.monthly_alert),
            ("total", session.tokens_used_total, limits.hard_limit, session.total_alert),
        ):
            if before == "critical":
                continue
            after = alert_level(used, limit, limits)
            if after == before or after == "none":
                continue
            setattr(session, f"{name}_alert", after)
            for level in _LEVELS[_LEVELS.index(before) + 1 : _LEVELS.index(after) + 1]:
                threshold = (
                    limits.warning_threshold if level == "warning" else limits.critical_threshold
                )
                self._log(
                    event,
                    f"{name}_{level}_threshold",
                    level,
                    tokens=used,
                    error=f"{name} usage {used} of {limit} reached the {level} threshold",
                    metadata={"used": used, "limit": limit, "threshold": str(threshold)},
                )

    def _log(
        self,
        event: Event,
        action: str,
        status: str,
        *,
        tokens: int = 0,
        error: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.out.logs.append(
            LogRow(
                event_id=event.event_id,
                action=action,
                integration_type=event.source.component,
                component_name=event.source.name,
                session_id=event.session_id,
                task_id=event.task_id,
                tokens_used=tokens,
                status=status,
                error_message=error,
                metadata=metadata,
                created_at=event.occurred_at,
            )
        )
