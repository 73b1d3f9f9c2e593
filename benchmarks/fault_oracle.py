"""The fault campaign's oracle: what must hold after a run, computed without the fold.

It knows only what the producers recorded (each event they handed to their emitter and
what became of it: acked, spooled, refused or unknown; each poison message) and what the
run left behind (the ledger in log order, the reservation decisions, the budget rows,
the dead letters). From those alone it re-decides every reservation in ledger order with
its own small model of a budget (token limits, holds that end at settlement, release or
expiry on the log clock; total USD limits, USD holds that end when the reservation's
cost is reported, at release or at expiry; a tree's nodes counting every hold under
them), so a fold that counted twice, lost an event or let a reservation through that
did not fit disagrees with it. The campaign's budgets set the daily, monthly and hard
token limit alike and only a total USD limit, so the hard limits are the ones that bind
and windows rolling over at midnight change nothing.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

__all__ = ["Invariant", "LedgerRow", "Recorded", "RunOutput", "check"]

Payload = dict[str, Any]


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """One usage_events row: where the worker applied it from, and the event."""

    partition: int
    offset: int
    log_time: datetime
    event: Payload


@dataclass(frozen=True, slots=True)
class Recorded:
    """What the producers recorded: every event by id with its outcome, and the poison."""

    #: event id -> the event as sent.
    events: Mapping[str, Payload]
    #: event id -> "acked", "spooled", "refused" (the emitter said no) or "unknown"
    #: (the producer died, or its emitter failed, before it knew).
    outcomes: Mapping[str, str]
    #: Poison values (hex) the broker acknowledged.
    poison: Sequence[str]
    #: Poison values (hex) handed to the broker, acknowledged or not (one whose send
    #: timed out may still have reached it).
    poison_sent: Sequence[str] = ()
    #: event id -> "acked" or "spooled": what the HTTP API answered for an ingested item.
    claimed: Mapping[str, str] = field(default_factory=dict)
    #: Ids of ingested items the HTTP API answered invalid (never to be sent).
    invalid: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class RunOutput:
    """What the run left in PostgreSQL and in the dead-letter topic."""

    ledger: Sequence[LedgerRow]
    #: reservation id -> (status, reason, refused_by) as the reservations table holds it.
    decisions: Mapping[str, tuple[str, str | None, str | None]]
    #: session -> tokens_used_total (session_token_budgets).
    sessions: Mapping[str, int]
    #: node -> tokens_used_total (account_budgets).
    nodes: Mapping[str, int]
    #: session -> the sum of its session_usage_daily tokens.
    session_days: Mapping[str, int]
    #: Values (hex) in the dead-letter topic.
    dead_letters: Sequence[str]
    #: session -> usd_used_total (session_token_budgets).
    sessions_usd: Mapping[str, Decimal] = field(default_factory=dict)
    #: node -> usd_used_total (account_budgets).
    nodes_usd: Mapping[str, Decimal] = field(default_factory=dict)


@dataclass(slots=True)
class Invariant:
    """One property of the run: how many cases were checked, and the ones that broke it."""

    name: str
    checked: int = 0
    violations: list[str] = field(default_factory=list)

    @property
    def held(self) -> bool:
        """True when no case broke it."""
        return not self.violations

    def fail(self, message: str) -> None:
        """Record a case that broke it."""
        self.violations.append(message)


@dataclass(slots=True)
class _Level:
    limit: int | None = None
    used: int = 0
    held: dict[str, int] = field(default_factory=dict)
    usd_limit: Decimal | None = None
    usd_used: Decimal = Decimal(0)
    usd_held: dict[str, Decimal] = field(default_factory=dict)

    def room(self) -> int | None:
        if self.limit is None:
            return None
        return self.limit - self.used - sum(self.held.values())

    def usd_fits(self, dollars: Decimal) -> bool:
        """Whether `dollars` more fit the total USD limit; with no dollars left, not even
        an unpriced (0 USD) reservation does."""
        if self.usd_limit is None:
            return True
        left = self.usd_limit - self.usd_used - sum(self.usd_held.values(), Decimal(0))
        return dollars <= left and left > 0


def check(recorded: Recorded, run: RunOutput) -> list[Invariant]:
    """Every invariant of the campaign, checked; see the module docstring."""
    return [
        _nothing_lost(recorded, run),
        _nothing_unsent(recorded, run),
        _counted_once(run),
        *_decisions(run),
        _dead_letters(recorded, run),
    ]


def _nothing_lost(recorded: Recorded, run: RunOutput) -> Invariant:
    inv = Invariant("every acked or spooled event is in the ledger")
    in_ledger = {row.event["event_id"] for row in run.ledger}
    for event_id, outcome in recorded.outcomes.items():
        if outcome in ("acked", "spooled"):
            inv.checked += 1
            if event_id not in in_ledger:
                event = recorded.events.get(event_id, {})
                inv.fail(
                    f"{outcome} event {event_id} ({event.get('event_type')}) is not in the ledger"
                )
    for event_id, outcome in recorded.claimed.items():
        inv.checked += 1
        if event_id not in in_ledger:
            inv.fail(f"the HTTP API answered {outcome} for {event_id}; it is not in the ledger")
    return inv


def _nothing_unsent(recorded: Recorded, run: RunOutput) -> Invariant:
    inv = Invariant("the ledger holds only events a producer sent, each once")
    seen: Counter[str] = Counter()
    invalid = set(recorded.invalid)
    for row in run.ledger:
        inv.checked += 1
        event_id = row.event["event_id"]
        seen[event_id] += 1
        if event_id in invalid:
            inv.fail(f"ledger event {event_id} was answered invalid by the HTTP API")
        # The configured defaults are published into the log by provisioning, not sent.
        if event_id not in recorded.events and row.event["event_type"] != "DefaultsSet":
            inv.fail(f"ledger event {event_id} at {row.partition}@{row.offset} was never sent")
    for event_id, times in seen.items():
        if times > 1:
            inv.fail(f"event {event_id} is in the ledger {times} times")
    return inv


def _counted_once(run: RunOutput) -> Invariant:
    inv = Invariant(
        "each session's and node's tokens and dollars are its ledger usage, counted once"
    )
    by_session: Counter[str] = Counter()
    by_node: Counter[str] = Counter()
    usd_session: dict[str, Decimal] = defaultdict(Decimal)
    usd_node: dict[str, Decimal] = defaultdict(Decimal)
    for row in run.ledger:
        event = row.event
        if event["event_type"] == "ApiCost":
            cost = Decimal(event["cost_usd"])
            usd_session[event["session_id"]] += cost
            for node in _ancestors(event.get("account")):
                usd_node[node] += cost
        if event["event_type"] != "TokenUsed":
            continue
        tokens = int(event["input_tokens"]) + int(event["output_tokens"])
        by_session[event["session_id"]] += tokens
        for node in _ancestors(event.get("account")):
            by_node[node] += tokens
    for owner, stored, ledger in (
        ("session", run.sessions_usd, usd_session), ("node", run.nodes_usd, usd_node)
    ):  # fmt: skip
        for name in sorted(set(stored) | set(ledger)):
            inv.checked += 1
            if stored.get(name, Decimal(0)) != ledger.get(name, Decimal(0)):
                inv.fail(f"{owner} {name}: {stored.get(name, 0)} USD, ledger {ledger.get(name, 0)}")
    for session in sorted(set(by_session) | set(run.sessions)):
        inv.checked += 1
        expected = by_session.get(session, 0)
        if run.sessions.get(session, 0) != expected:
            inv.fail(f"session {session}: {run.sessions.get(session, 0)} tokens, ledger {expected}")
        if run.session_days.get(session, 0) != expected:
            inv.fail(
                f"session {session}: its days add up to {run.session_days.get(session, 0)} "
                f"tokens, ledger {expected}"
            )
    for node in sorted(set(by_node) | set(run.nodes)):
        inv.checked += 1
        if run.nodes.get(node, 0) != by_node.get(node, 0):
            inv.fail(f"node {node}: {run.nodes.get(node, 0)} tokens, ledger {by_node.get(node, 0)}")
    return inv


def _decisions(run: RunOutput) -> tuple[Invariant, Invariant, Invariant]:
    """Re-decide every reservation in log order (each partition's in offset order)."""
    over = Invariant("no accepted reservation took a session or node past its limit")
    needless = Invariant("every rejection was needed, and names the level that refused")
    missing = Invariant("every reservation in the ledger was decided")
    by_partition: dict[int, list[LedgerRow]] = defaultdict(list)
    for row in run.ledger:
        by_partition[row.partition].append(row)
    for rows in by_partition.values():
        _Partition(run.decisions, over, needless, missing).fold(
            sorted(rows, key=lambda r: r.offset)
        )
    return over, needless, missing


@dataclass(slots=True)
class _Partition:
    decisions: Mapping[str, tuple[str, str | None, str | None]]
    over: Invariant
    needless: Invariant
    missing: Invariant
    sessions: dict[str, _Level] = field(default_factory=lambda: defaultdict(_Level))
    nodes: dict[str, _Level] = field(default_factory=lambda: defaultdict(_Level))
    #: reservation id -> (tokens, expires_at, session, account) while it holds tokens.
    holds: dict[str, tuple[int, datetime, str, str | None]] = field(default_factory=dict)
    #: reservation id -> (expires_at, session, account) while it holds dollars.
    usd_holds: dict[str, tuple[datetime, str, str | None]] = field(default_factory=dict)
    #: reservation id -> its session, of every accepted one not yet settled or released.
    open: dict[str, str] = field(default_factory=dict)
    clock: datetime | None = None

    def fold(self, rows: Iterable[LedgerRow]) -> None:
        for row in rows:
            self.clock = row.log_time if self.clock is None else max(self.clock, row.log_time)
            self._expire()
            event = row.event
            kind = event["event_type"]
            if kind == "BudgetSet":
                self._budget(event)
            elif kind == "TokenReserved":
                self._reserved(event, row)
            elif kind == "TokenUsed":
                self._used(event)
            elif kind == "ApiCost":
                self._cost(event)

    def _levels(self, session: str, account: str | None) -> list[tuple[str, _Level]]:
        """The session's level, then its nodes from the nearest up (the order the fold
        names a refusing level in)."""
        chain = [(node, self.nodes[node]) for node in reversed(_ancestors(account))]
        return [(f"session {session}", self.sessions[session]), *chain]

    def _expire(self) -> None:
        assert self.clock is not None
        for rid, (_, expires_at, session, account) in list(self.holds.items()):
            if self.clock > expires_at:
                self._end(rid, session, account)
        for rid, (expires_at, session, account) in list(self.usd_holds.items()):
            if self.clock > expires_at:
                self._end_usd(rid, session, account)

    def _end(self, rid: str, session: str, account: str | None) -> None:
        del self.holds[rid]
        for _, level in self._levels(session, account):
            level.held.pop(rid, None)

    def _end_usd(self, rid: str, session: str, account: str | None) -> None:
        if self.usd_holds.pop(rid, None) is None:
            return
        for _, level in self._levels(session, account):
            level.usd_held.pop(rid, None)

    def _budget(self, event: Payload) -> None:
        level = (
            self.nodes[event["account"]]
            if event.get("target") == "account"
            else self.sessions[event["session_id"]]
        )
        level.limit = int(event["hard_limit"])
        total = event.get("total_usd_limit")
        level.usd_limit = None if total is None else Decimal(total)

    def _reserved(self, event: Payload, row: LedgerRow) -> None:
        assert self.clock is not None
        rid, tokens = event["reservation_id"], int(event["tokens"])
        session, account = event["session_id"], event.get("account")
        dollars = Decimal(event.get("reserved_usd") or 0)
        decided = self.decisions.get(rid)
        self.missing.checked += 1
        if decided is None:
            self.missing.fail(f"reservation {rid} ({row.partition}@{row.offset}) has no row")
            return
        status, reason, refused_by = decided
        expires_at = datetime.fromisoformat(event["expires_at"])
        refusing: str | None = None
        fits = expires_at > self.clock
        if fits:
            for name, level in self._levels(session, account):
                room = level.room()
                if level.limit is None and name != f"session {session}":
                    continue  # a node without a budget limits nothing
                if (room is not None and tokens > room) or not level.usd_fits(dollars):
                    fits, refusing = False, name
                    break
        where = f"reservation {rid} of {tokens} tokens for {session} ({row.partition}@{row.offset})"
        if status != "rejected":
            self.over.checked += 1
            if not fits:
                self.over.fail(f"{where} was accepted; {refusing or 'its expiry'} had no room")
                return
            self.holds[rid] = (tokens, expires_at, session, account)
            self.open[rid] = session
            for _, level in self._levels(session, account):
                level.held[rid] = tokens
                if dollars:
                    level.usd_held[rid] = dollars
            if dollars:
                self.usd_holds[rid] = (expires_at, session, account)
            return
        self.needless.checked += 1
        named = f"session {session}" if refused_by is None else refused_by
        if fits:
            self.needless.fail(f"{where} was rejected ({reason}, by {named}) though it fit")
        elif reason != "expired" and refusing != named:
            self.needless.fail(f"{where} was rejected by {named}; the oracle's refusal: {refusing}")

    def _used(self, event: Payload) -> None:
        tokens = int(event["input_tokens"]) + int(event["output_tokens"])
        session, account = event["session_id"], event.get("account")
        rid = event.get("reservation_id")
        if rid is not None and self.open.get(rid) == session:
            # Settled or released (a late settlement of an expired one too); a release
            # (nothing used) ends its USD hold as well, a settlement waits for its cost.
            del self.open[rid]
            if rid in self.holds:
                self._end(rid, session, account)
            if tokens == 0:
                self._end_usd(rid, session, account)
        for _, level in self._levels(session, account):
            level.used += tokens

    def _cost(self, event: Payload) -> None:
        cost = Decimal(event["cost_usd"])
        session, account = event["session_id"], event.get("account")
        rid = event.get("reservation_id")
        if rid is not None and rid in self.usd_holds and self.usd_holds[rid][1] == session:
            self._end_usd(rid, session, account)
        for _, level in self._levels(session, account):
            level.usd_used += cost


def _dead_letters(recorded: Recorded, run: RunOutput) -> Invariant:
    inv = Invariant("the dead-letter topic holds the poison sent and nothing else")
    acked, lettered = set(recorded.poison), set(run.dead_letters)
    sent = acked | set(recorded.poison_sent)
    inv.checked = len(lettered)
    for value in sorted(acked - lettered):
        inv.fail(f"acked poison {value[:40]} is not in the dead-letter topic")
    for value in sorted(lettered - sent):
        inv.fail(f"dead letter {value[:40]} was not sent as poison")
    return inv


def _ancestors(account: str | None) -> tuple[str, ...]:
    if account is None:
        return ()
    parts = account.split("/")
    return tuple("/".join(parts[: i + 1]) for i in range(len(parts)))


def summary(invariants: Sequence[Invariant]) -> dict[str, Any]:
    """The invariants as plain data (for a report file)."""
    return {"invariants": [dataclasses.asdict(i) for i in invariants]}
