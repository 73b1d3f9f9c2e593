"""Shared by the examples that talk to a running stack (not an example itself)."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

from tokenquota.producers import get_quota
from tokenquota.schemas import BudgetSet, Source


async def demo_session(prefix: str, limit: int) -> str:
    """A fresh session with `limit` tokens in every window, once the worker has applied it."""
    session = f"{prefix}-{uuid.uuid4().hex[:8]}"
    quota = await get_quota()
    await quota.emit(
        BudgetSet(
            session_id=session,
            source=Source(component="sdk", name="examples"),
            daily_limit=limit,
            monthly_limit=limit,
            hard_limit=limit,
            warning_threshold=Decimal("0.8"),
            critical_threshold=Decimal("0.95"),
        )
    )
    async with asyncio.timeout(60):
        # Polling: the projection is in PostgreSQL, there is no event to wait on here.
        while (await quota.session_metrics(session)).limits.hard_limit != limit:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    return session


async def settled(session: str, at_least: int = 1) -> int:
    """Wait until `session` holds no tokens and has used `at_least`; return its usage."""
    quota = await get_quota()
    async with asyncio.timeout(60):
        while True:
            metrics = await quota.session_metrics(session)
            if metrics.tokens_held == 0 and metrics.tokens_used_total >= at_least:
                return metrics.tokens_used_total
            await asyncio.sleep(0.05)
