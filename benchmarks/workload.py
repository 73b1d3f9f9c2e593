"""The event mix the pipeline, lag and replay benchmarks send, and how they watch progress.

`usage` is the session-only mix; `tree_usage` is the same mix with every session under a
three-level budget tree (`tree_budgets` sets its tenant and team nodes first).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal

import asyncpg

from tokenquota.producers.integrations.pricing import price_reservation
from tokenquota.projections import quote_schema
from tokenquota.schemas import (
    DEFAULTS_SESSION,
    ApiCost,
    BudgetSet,
    Event,
    Source,
    TokenReserved,
    TokenUsed,
    ancestors,
    utc_now,
)

__all__ = [
    "MIX",
    "MODEL",
    "TEAMS",
    "TENANTS",
    "account_of",
    "applied",
    "budgets",
    "tree_budgets",
    "tree_mix",
    "tree_usage",
    "usage",
    "wait_applied",
]

SOURCE = Source(component="sdk", name="bench")

#: Described in every table's conditions.
MIX = (
    "one BudgetSet per session, then per 10 events: 1 TokenReserved, the TokenUsed "
    "settling it, 8 unreserved TokenUsed"
)

#: The budget tree of `tree_usage`: sessions round-robin over this many tenants...
TENANTS = 100
#: ...and within a tenant over this many teams, one user node per session.
TEAMS = 3
#: The model of every TokenUsed and ApiCost, and the price of the priced reservations.
MODEL = "gpt-4o"
#: A reservation's 1,000 tokens are priced as this much prompt plus the rest as output.
_PROMPT = 300
_ONE_MILLION = 1_000_000


def tree_mix(tenants: int = TENANTS, *, priced: bool = False) -> str:
    """What `tree_budgets` and `tree_usage` send, for the conditions of a table."""
    mix = (
        f"{MIX}, with every session under a three-level account "
        f"tenant-{{i}}/team-{{j}}/user-{{k}} over {tenants:,} tenants ({TEAMS} teams each, "
        "one user per session) and every event naming it; BudgetSets of every tenant and "
        "team node first (every other tenant and every first team with USD limits too)"
    )
    if not priced:
        return mix + "; the same events as the session-only mix otherwise"
    return mix + (
        f"; half the reservations priced ({MODEL}, reserved_usd and price_source), each with "
        "an ApiCost naming it in place of the first unreserved TokenUsed after its settlement"
    )


def budgets(sessions: int) -> list[Event]:
    """One BudgetSet per session, with limits no benchmark reaches."""
    return [_budget(f"session-{i}") for i in range(sessions)]


def account_of(session: int, tenants: int = TENANTS) -> str:
    """The account of `tree_usage`'s session number `session`: the tenants round-robin,
    then within a tenant the teams round-robin, a user node per session."""
    k = session // tenants
    return f"tenant-{session % tenants}/team-{k % TEAMS}/user-{k}"


def tree_budgets(sessions: int, tenants: int = TENANTS) -> list[Event]:
    """BudgetSets of every tenant and team node of the sessions' accounts (tenants first),
    then one per session naming its account; limits no benchmark reaches. Every other
    tenant has a monthly and a total USD limit, every tenant's team-0 a daily one."""
    accounts = [account_of(i, tenants) for i in range(sessions)]
    nodes = sorted(
        {path for a in accounts for path in ancestors(a)[:-1]},
        key=lambda path: (path.count("/"), path),
    )
    return [
        *(_node_budget(path) for path in nodes),
        *(_budget(f"session-{i}", account) for i, account in enumerate(accounts)),
    ]


def _budget(session_id: str, account: str | None = None) -> BudgetSet:
    return BudgetSet(
        session_id=session_id,
        account=account,
        source=SOURCE,
        daily_limit=10**12,
        monthly_limit=10**12,
        hard_limit=10**12,
        warning_threshold=Decimal("0.8"),
        critical_threshold=Decimal("0.95"),
    )


def _node_budget(path: str) -> BudgetSet:
    tenant, _, team = path.partition("/")
    usd_tenant = not team and int(tenant.removeprefix("tenant-")) % 2 == 0
    return BudgetSet(
        session_id=DEFAULTS_SESSION,
        account=path,
        target="account",
        source=SOURCE,
        daily_limit=10**12,
        monthly_limit=10**12,
        hard_limit=10**12,
        warning_threshold=Decimal("0.8"),
        critical_threshold=Decimal("0.95"),
        daily_usd_limit=Decimal(10**5) if team == "team-0" else None,
        monthly_usd_limit=Decimal(10**6) if usd_tenant else None,
        total_usd_limit=Decimal(10**7) if usd_tenant else None,
    )


def usage(count: int, sessions: int, start: int = 0) -> Iterator[Event]:
    """`count` events of the mix, round-robin over the sessions; occurred_at is now."""
    return _mix(count, sessions, start, tenants=None)


def tree_usage(
    count: int, sessions: int, tenants: int = TENANTS, start: int = 0, *, priced: bool = False
) -> Iterator[Event]:
    """`usage` under the budget tree of `tree_budgets`: the same events, each naming its
    session's account. `priced`: half the reservations are priced at what genai-prices
    charges for MODEL, and the event after the TokenUsed settling one of them is the
    ApiCost naming it (its USD hold ends there, as the hooks do) instead of an unreserved
    TokenUsed."""
    return _mix(count, sessions, start, tenants=tenants, priced=priced)


def _mix(
    count: int, sessions: int, start: int, tenants: int | None, *, priced: bool = False
) -> Iterator[Event]:
    accounts = [account_of(i, tenants) if tenants else None for i in range(sessions)]
    prices = _Prices() if tenants and priced else None
    for n in range(start, start + count):
        index = n % sessions
        session, account = f"session-{index}", accounts[index]
        step = (n // sessions) % 10
        now = utc_now()
        priced = prices is not None and (index + n // (10 * sessions)) % 2 == 0
        if step == 0:
            reserved = prices.reservation if priced and prices is not None else None
            yield TokenReserved(
                session_id=session, source=SOURCE, occurred_at=now, account=account,
                reservation_id=_reservation(n), tokens=1000,
                expires_at=now + timedelta(minutes=5),
                reserved_usd=reserved.usd if reserved else None,
                price_source=reserved.source if reserved else None,
            )  # fmt: skip
        elif step == 2 and priced and prices is not None:
            settled = n - sessions  # the TokenUsed that settled the reservation
            input_tokens, output_tokens = settled % 4000, settled % 700
            yield ApiCost(
                session_id=session, source=SOURCE, occurred_at=now, account=account,
                api="openai", model=MODEL, input_tokens=input_tokens,
                output_tokens=output_tokens,
                cost_usd=prices.cost(input_tokens, output_tokens),
                price_source=prices.reservation.source,
                reservation_id=_reservation(n - 2 * sessions),
            )  # fmt: skip
        else:
            yield TokenUsed(
                session_id=session, source=SOURCE, occurred_at=now, account=account,
                reservation_id=_reservation(n - sessions) if step == 1 else None,
                model=MODEL, input_tokens=n % 4000, output_tokens=n % 700,
                operation="chat", counted_by="provider",
            )  # fmt: skip


class _Prices:
    """MODEL's genai-prices: a reservation's price and the cost of a call, per token."""

    def __init__(self) -> None:
        reservation = price_reservation(MODEL, _PROMPT, 1000 - _PROMPT)
        per_input = price_reservation(MODEL, _ONE_MILLION, 0)
        per_output = price_reservation(MODEL, 0, _ONE_MILLION)
        assert reservation and per_input and per_output, f"genai-prices has no {MODEL}"
        self.reservation = reservation
        self._input = per_input.usd / _ONE_MILLION
        self._output = per_output.usd / _ONE_MILLION

    def cost(self, input_tokens: int, output_tokens: int) -> Decimal:
        usd = input_tokens * self._input + output_tokens * self._output
        return usd.quantize(Decimal("0.0000000001"))


def _reservation(n: int) -> uuid.UUID:
    return uuid.UUID(int=n + 1)


async def applied(conn: asyncpg.Connection, schema: str, topic: str) -> int:
    """Messages of `topic` applied in `schema` (its checkpoints; offsets start at 0)."""
    total = await conn.fetchval(
        f"SELECT coalesce(sum(next_offset), 0) FROM {quote_schema(schema)}.partition_checkpoints "  # noqa: S608
        "WHERE topic = $1",
        topic,
    )
    return int(total)


async def wait_applied(
    conn: asyncpg.Connection, schema: str, topic: str, target: int, timeout: float, what: str
) -> float:
    """Poll until `target` messages of `topic` are applied; return when (perf_counter)."""
    deadline = time.perf_counter() + timeout
    while (done := await applied(conn, schema, topic)) < target:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{what}: {done:,} of {target:,} applied after {timeout:.0f} s")
        await asyncio.sleep(0.02)
    return time.perf_counter()
