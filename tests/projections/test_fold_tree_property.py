"""Budget trees under random workloads: a hypothesis property of the pure fold.

Random reservations (priced at mixed per-token rates, or unpriced), settlements above
and below them, their ApiCosts above and below their price, releases, expiries, usage
without a reservation, node and session budgets (tokens and USD) set mid-stream and day
roll-overs, over a small tree. Checked against an oracle that recounts usage and spend
from the events alone: no accepted reservation ever takes the session or any node above
it past a limit it has, every node's counters equal the recount, and cutting the log
into two batches anywhere (the second folded from only what the store would load)
changes nothing.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.projections.fold_support import BASE, api_cost
from tests.support import T0, budget, log_records, node_budget, reserved, used
from tokenquota.projections import Limits, ProjectionState, fold
from tokenquota.projections.state import UsdLimits
from tokenquota.schemas import ApiCost, Event, TokenReserved, TokenUsed, ancestors

#: session -> its account
SESSIONS = {"s1": "t/a/u1", "s2": "t/a/u2", "s3": "t/b/u3"}
NODES = ("t", "t/a", "t/b", "t/a/u1")


@dataclass(frozen=True)
class _Step:
    kind: str
    session: str
    tokens: int
    node: str
    limit: int
    gap_minutes: int
    ttl_minutes: int
    #: dollars per 1,000 tokens of a reservation (None: unpriced), and the ApiCost's
    #: share of its price
    rate: str | None
    cost_share: str


_steps = st.lists(
    st.builds(
        _Step,
        kind=st.sampled_from(
            [
                "reserve",
                "reserve",
                "reserve",
                "settle",
                "release",
                "cost",
                "use",
                "budget",
                "session_budget",
            ]
        ),
        session=st.sampled_from(sorted(SESSIONS)),
        tokens=st.integers(1, 700),
        node=st.sampled_from(NODES),
        limit=st.sampled_from([300, 800, 1_500, 5_000]),
        gap_minutes=st.sampled_from([0, 0, 1, 7, 45, 600]),
        ttl_minutes=st.sampled_from([2, 10, 60]),
        rate=st.sampled_from([None, "0.15", "2.5", "10"]),
        cost_share=st.sampled_from(["0", "0.5", "1", "1.7"]),
    ),
    min_size=1,
    max_size=40,
)


def _events(steps: list[_Step]) -> list[Event]:
    events: list[Event] = []
    at = T0
    open_holds: dict[str, list[TokenReserved]] = {}
    unbilled: dict[str, list[TokenReserved]] = {}
    for step in steps:
        at += timedelta(minutes=step.gap_minutes, seconds=1)
        account = SESSIONS[step.session]
        holds = open_holds.setdefault(step.session, [])
        if step.kind == "reserve":
            hold = reserved(
                step.session,
                step.tokens,
                at,
                account=account,
                ttl=timedelta(minutes=step.ttl_minutes),
                usd=None if step.rate is None else str(Decimal(step.rate) * step.tokens / 1000),
            )
            holds.append(hold)
            unbilled.setdefault(step.session, []).append(hold)
            events.append(hold)
        elif step.kind == "cost" and unbilled.get(step.session):
            hold = unbilled[step.session].pop(0)
            price = (hold.reserved_usd or Decimal("0.01")) * Decimal(step.cost_share)
            events.append(
                api_cost(
                    step.session,
                    step.tokens,
                    at,
                    usd=str(price),
                    rid=hold.reservation_id,
                    account=account,
                )
            )
        elif step.kind in ("settle", "release") and holds:
            hold = holds.pop(0)
            tokens = step.tokens if step.kind == "settle" else 0
            events.append(used(step.session, tokens, at, rid=hold.reservation_id, account=account))
        elif step.kind == "use":
            events.append(used(step.session, step.tokens, at, account=account))
        elif step.kind == "budget":
            limit = step.limit
            usd = _usd_limits(limit)
            events.append(
                node_budget(step.node, at, daily=limit, monthly=3 * limit, hard=9 * limit, usd=usd)
            )
        elif step.kind == "session_budget":
            limit = step.limit
            events.append(
                budget(
                    step.session,
                    at,
                    daily=limit,
                    monthly=3 * limit,
                    hard=9 * limit,
                    account=account,
                    usd=_usd_limits(limit // 2),
                )
            )
    return events


def _usd_limits(limit: int) -> tuple[str | None, str | None, str | None]:
    """Some budgets have USD limits, of a dollar per 1,000 tokens of their token limits."""
    if limit == 5_000:
        return (None, None, None)
    dollars = Decimal(limit) / 1000
    return (str(dollars), None, str(5 * dollars))


def _under(account: str | None, node: str) -> bool:
    return account is not None and (account == node or account.startswith(node + "/"))


def _check_acceptance(
    state: ProjectionState,
    event: TokenReserved,
    used_events: list[TokenUsed],
    costs: list[ApiCost],
    at: datetime,
) -> None:
    """After `event` was accepted: at the session and at every node above it that has
    limits, what was used (recounted from the events) plus what is held fits."""
    assert event.account is not None
    session = state.sessions[event.session_id]
    owners: list[tuple[str, Limits | None, UsdLimits | None, str]] = [
        (event.session_id, session.limits, session.usd, "session")
    ]
    owners += [
        (path, state.nodes[path].limits, state.nodes[path].usd, "node")
        for path in ancestors(event.account)
    ]
    for owner, limits, usd, kind in owners:
        if limits is None:
            continue

        def mine(account: str | None, session: str, owner: str = owner, kind: str = kind) -> bool:
            return session == owner if kind == "session" else _under(account, owner)

        totals = [(u.occurred_at, u.input_tokens + u.output_tokens) for u in used_events
                  if mine(u.account, u.session_id)]  # fmt: skip
        today = sum(t for when, t in totals if when.date() == at.date())
        month = sum(t for when, t in totals if (when.year, when.month) == (at.year, at.month))
        total = sum(t for _, t in totals)
        held = sum(r.tokens for r in state.reservations.values()
                   if r.status == "accepted" and mine(r.account, r.session_id))  # fmt: skip
        assert today + held <= limits.daily_limit, (owner, today, held, limits)
        assert month + held <= limits.monthly_limit, (owner, month, held, limits)
        assert total + held <= limits.hard_limit, (owner, total, held, limits)
        if usd is None:
            continue
        spent = [(c.occurred_at, c.cost_usd) for c in costs if mine(c.account, c.session_id)]
        usd_today = sum((d for when, d in spent if when.date() == at.date()), Decimal(0))
        usd_total = sum((d for _, d in spent), Decimal(0))
        usd_held = sum((r.usd_held or Decimal(0) for r in state.reservations.values()
                        if mine(r.account, r.session_id)), Decimal(0))  # fmt: skip
        if usd.daily is not None:
            assert usd_today + usd_held <= usd.daily, (owner, usd_today, usd_held, usd)
        if usd.total is not None:
            assert usd_total + usd_held <= usd.total, (owner, usd_total, usd_held, usd)


@settings(max_examples=150, deadline=None)
@given(_steps)
def test_no_accepted_reservation_takes_any_level_past_a_limit(steps: list[_Step]) -> None:
    events = _events(steps)
    state = BASE
    applied: list[TokenUsed] = []
    costs: list[ApiCost] = []
    for offset, event in enumerate(events, 1):
        folded = fold(state, log_records([event], first_offset=offset))
        state = folded.state
        if isinstance(event, TokenUsed):
            applied.append(event)
        elif isinstance(event, ApiCost):
            costs.append(event)
        elif (
            isinstance(event, TokenReserved)
            and state.reservations[event.reservation_id].status == "accepted"
        ):
            _check_acceptance(state, event, applied, costs, event.occurred_at)
    if not events:
        return
    # Every node's counters equal the recount, at the last event's day and month.
    last = events[-1].occurred_at
    for path, node in state.nodes.items():
        mine = [u for u in applied if _under(u.account, path)]
        assert node.tokens_used_total == sum(u.input_tokens + u.output_tokens for u in mine)
        assert node.usd_used_total == sum(
            (c.cost_usd for c in costs if _under(c.account, path)), Decimal(0)
        )
        if node.current_day == last.date():
            today = [u for u in mine if u.occurred_at.date() == last.date()]
            assert node.tokens_used_today == sum(u.input_tokens + u.output_tokens for u in today)


@settings(max_examples=100, deadline=None)
@given(_steps, st.integers(1, 39))
def test_a_tree_folds_the_same_whatever_the_batch_cut(steps: list[_Step], cut: int) -> None:
    events = _events(steps)
    if not events:
        return
    cut = min(cut, len(events))
    whole = fold(BASE, log_records(events, first_offset=1)).state
    first = fold(BASE, log_records(events[:cut], first_offset=1)).state
    # What the store loads for the second batch: its tenants' accepted reservations, those
    # it names, its sessions, the nodes above its accounts.
    named: set[uuid.UUID | None] = {getattr(e, "reservation_id", None) for e in events[cut:]}
    reloaded = ProjectionState(
        sessions=dict(first.sessions),
        reservations={
            rid: r
            for rid, r in first.reservations.items()
            if r.status == "accepted" or r.usd_held is not None or rid in named
        },
        partitions=first.partitions,
        nodes=dict(first.nodes),
    )
    second = fold(reloaded, log_records(events[cut:], first_offset=1 + cut)).state
    reservations = {**first.reservations, **second.reservations}
    assert reservations == whole.reservations
    assert {**first.nodes, **second.nodes} == whole.nodes
    assert {**first.sessions, **second.sessions} == whole.sessions
