"""What the fold's tests share: default limits, a base state, and event builders."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal

from tests.support import T0, log_records
from tokenquota.projections import (
    Limits,
    ProjectionState,
    fold,
)
from tokenquota.projections.state import Folded
from tokenquota.schemas import (
    ApiCost,
    DefaultsSet,
    Event,
    Source,
    TokenReserved,
)

LIMITS = Limits(1000, 10_000, 100_000, Decimal("0.8"), Decimal("0.95"))


def defaults(
    limits: Limits = LIMITS, *, zone: str = "UTC", skew: timedelta = timedelta(minutes=5)
) -> DefaultsSet:
    return DefaultsSet(
        source=Source(component="cli", name="tests"),
        occurred_at=T0 - timedelta(days=40),
        daily_limit=limits.daily_limit,
        monthly_limit=limits.monthly_limit,
        hard_limit=limits.hard_limit,
        warning_threshold=limits.warning_threshold,
        critical_threshold=limits.critical_threshold,
        timezone=zone,
        max_clock_skew_ms=skew // timedelta(milliseconds=1),
    )


#: A state whose partition ("usage", 0) has LIMITS as its defaults.
BASE = fold(ProjectionState(), log_records([defaults()])).state


def run(
    events: Sequence[Event],
    state: ProjectionState | None = None,
    *,
    at: Callable[[int, Event], datetime] | None = None,
    first_offset: int = 1,
) -> Folded:
    """Fold `events` as records of partition 0 (log time: `at`, by default occurred_at)."""
    return fold(state or BASE, log_records(events, at=at, first_offset=first_offset))


def api_cost(
    session: str,
    tokens: int,
    at: datetime = T0,
    *,
    api: str = "openai",
    usd: str | None = None,
    rid: uuid.UUID | None = None,
    account: str | None = None,
) -> ApiCost:
    """An ApiCost of `tokens` input tokens at a millionth of a dollar each (or `usd`)."""
    return ApiCost(
        reservation_id=rid,
        account=account,
        session_id=session,
        source=Source(component="external_api", name="tests"),
        occurred_at=at,
        api=api,
        model="gpt-4o",
        input_tokens=tokens,
        output_tokens=1,
        cost_usd=Decimal(tokens) / 1_000_000 if usd is None else Decimal(usd),
        price_source="test",
    )


def status(folded: Folded, event: TokenReserved) -> str:
    return folded.state.reservations[event.reservation_id].status
