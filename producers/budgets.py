"""Setting a session's budget: emit a BudgetSet naming its actor, wait until it applies."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

from tokenquota.errors import IntegrationError
from tokenquota.schemas import BudgetSet, Source

from .reservations import TokenQuota

__all__ = ["set_budget"]

_POLL_INTERVAL = 0.05


async def set_budget(
    quota: TokenQuota,
    session_id: str,
    *,
    daily_limit: int,
    monthly_limit: int,
    hard_limit: int,
    warning_threshold: Decimal | None = None,
    critical_threshold: Decimal | None = None,
    actor: str,
    timeout: float = 10,
    source: Source | None = None,
) -> BudgetSet:
    """Emit a BudgetSet for `session_id` and return it once the worker has applied it.

    Thresholds left out keep the session's current ones (a new session: the defaults in
    the log). The event names `actor` (`tokenquota.actors`), so the log is the audit
    trail. Raises ValueError for inconsistent limits (nothing is sent) and
    IntegrationError when the worker has not applied it within `timeout` seconds (the
    event stays in the log and applies when a worker runs).
    """
    if warning_threshold is None or critical_threshold is None:
        current = (await quota.session_metrics(session_id)).limits
        warning_threshold = (
            current.warning_threshold if warning_threshold is None else warning_threshold
        )
        critical_threshold = (
            current.critical_threshold if critical_threshold is None else critical_threshold
        )
    event = BudgetSet(
        session_id=quota.stored_session_id(session_id),
        source=source or Source(component="sdk", name="budgets"),
        daily_limit=daily_limit,
        monthly_limit=monthly_limit,
        hard_limit=hard_limit,
        warning_threshold=warning_threshold,
        critical_threshold=critical_threshold,
        actor=actor,
    )
    await quota.emit(event)
    deadline = time.monotonic() + timeout
    while not await quota.is_applied(event.event_id):
        if time.monotonic() >= deadline:
            raise IntegrationError(
                f"the budget of {session_id!r} was sent (event {event.event_id}) but no worker "
                f"applied it within {timeout:g} s: is `tokenquota worker` running? It applies "
                "when a worker catches up"
            )
        await asyncio.sleep(_POLL_INTERVAL)
    return event
