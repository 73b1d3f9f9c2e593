"""The ledger the analytics benchmark reads: a month of mixed events over many sessions."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal

from tokenquota.schemas import ApiCost, BudgetSet, Event, Source, TokenReserved, TokenUsed

__all__ = ["MIX", "budgets", "events", "session_ids"]

_SOURCES = tuple(
    Source(component=component, name=f"bench-{component}")
    for component in ("sdk", "mcp", "orchestrator", "memory")
)
_API_SOURCE = Source(component="external_api", name="bench-client")
_MODELS = ("gpt-4o", "gpt-4o-mini", "claude-sonnet-4", "claude-haiku-4")
_APIS = (("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("anthropic", "claude-sonnet-4"))
#: USD per token: exact, so every cost is an exact Decimal.
_PRICE = Decimal("0.0000025")
#: One session in this many gets a daily limit its events cross, so the ledger holds
#: threshold alerts and refused reservations as well as accepted ones.
TIGHT_EVERY = 10
TIGHT_DAILY = 100_000

#: Described in the benchmark's conditions.
MIX = (
    "one BudgetSet per session (1 in 10 with a 100,000-token daily limit their events "
    "cross), then per 10 events of a session: 1 TokenReserved, the TokenUsed settling it, "
    "6 unreserved TokenUsed over 4 integrations and 4 models, 2 ApiCost over 2 APIs; "
    "occurred_at spread evenly over the last 30 days"
)


def session_ids(sessions: int) -> list[str]:
    """The benchmark's session ids."""
    return [f"session-{i}" for i in range(sessions)]


def budgets(sessions: int) -> list[Event]:
    """One BudgetSet per session; one in TIGHT_EVERY with a daily limit it will cross."""
    out: list[Event] = []
    for i, session in enumerate(session_ids(sessions)):
        daily = TIGHT_DAILY if i % TIGHT_EVERY == 0 else 10**12
        out.append(
            BudgetSet(
                session_id=session, source=_SOURCES[0], daily_limit=daily,
                monthly_limit=10**12, hard_limit=10**12, warning_threshold=Decimal("0.8"),
                critical_threshold=Decimal("0.95"), actor="os:bench",
            )
        )  # fmt: skip
    return out


def events(total: int, sessions: int, now: datetime, days: int = 30) -> Iterator[Event]:
    """`total` events of the mix, round-robin over the sessions, dated evenly from `days`
    days before `now` until `now`."""
    first = now - timedelta(days=days)
    step_time = timedelta(days=days) / max(total, 1)
    expires = now + timedelta(hours=2)
    for n in range(total):
        session = f"session-{n % sessions}"
        step = (n // sessions) % 10
        at = first + step_time * n
        source = _SOURCES[n % len(_SOURCES)]
        if step == 0:
            yield TokenReserved(
                session_id=session, source=source, occurred_at=at, task_id=f"task-{n % 7}",
                reservation_id=_reservation(n), tokens=1000, expires_at=expires,
            )  # fmt: skip
        elif step in (2, 3):
            api, model = _APIS[n % len(_APIS)]
            tokens_in, tokens_out = n % 3000, n % 500
            yield ApiCost(
                session_id=session, source=_API_SOURCE, occurred_at=at, api=api, model=model,
                input_tokens=tokens_in, output_tokens=tokens_out,
                cost_usd=_PRICE * (tokens_in + tokens_out), price_source="bench",
            )  # fmt: skip
        else:
            yield TokenUsed(
                session_id=session, source=source, occurred_at=at,
                reservation_id=_reservation(n - sessions) if step == 1 else None,
                model=_MODELS[n % len(_MODELS)], input_tokens=n % 4000,
                output_tokens=n % 700, operation="chat", counted_by="provider",
            )  # fmt: skip


def _reservation(n: int) -> uuid.UUID:
    return uuid.UUID(int=n + 1)
