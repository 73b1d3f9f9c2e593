"""Setting a budget (a session's, or a budget tree node's): emit a BudgetSet naming its
actor, wait until it applies."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

from tokenquota.errors import IntegrationError
from tokenquota.schemas import DEFAULTS_SESSION, BudgetSet, Source

from .reservations import TokenQuota

__all__ = ["set_account_budget", "set_budget"]

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
    current = await quota.session_metrics(session_id)
    event = BudgetSet(
        session_id=quota.stored_session_id(session_id),
        source=source or Source(component="sdk", name="budgets"),
        account=current.account,  # a session of a budget tree stays in it
        daily_limit=daily_limit,
        monthly_limit=monthly_limit,
        hard_limit=hard_limit,
        warning_threshold=current.limits.warning_threshold
        if warning_threshold is None
        else warning_threshold,
        critical_threshold=current.limits.critical_threshold
        if critical_threshold is None
        else critical_threshold,
        actor=actor,
    )
    return await _applied(quota, event, f"the budget of {session_id!r}", timeout)


async def set_account_budget(
    quota: TokenQuota,
    account: str,
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
    """Emit a BudgetSet for the budget tree node `account` ("acme/research") and return
    it once applied: every reservation of a session under it must then fit these limits
    too. Thresholds left out keep the node's current ones (else the log's defaults).
    Raises as `set_budget`."""
    nodes = await quota.account_metrics(account)
    limits = nodes[-1].limits or (await quota.session_metrics(DEFAULTS_SESSION)).limits
    event = BudgetSet(
        session_id=DEFAULTS_SESSION,
        source=source or Source(component="sdk", name="budgets"),
        account=account,
        target="account",
        daily_limit=daily_limit,
        monthly_limit=monthly_limit,
        hard_limit=hard_limit,
        warning_threshold=limits.warning_threshold
        if warning_threshold is None
        else warning_threshold,
        critical_threshold=limits.critical_threshold
        if critical_threshold is None
        else critical_threshold,
        actor=actor,
    )
    return await _applied(quota, event, f"the budget of account {account!r}", timeout)


async def _applied(quota: TokenQuota, event: BudgetSet, what: str, timeout: float) -> BudgetSet:
    await quota.emit(event)
    deadline = time.monotonic() + timeout
    while not await quota.is_applied(event.event_id):
        if time.monotonic() >= deadline:
            raise IntegrationError(
                f"{what} was sent (event {event.event_id}) but no worker applied it within "
                f"{timeout:g} s: is `tokenquota worker` running? It applies when a worker "
                "catches up"
            )
        await asyncio.sleep(_POLL_INTERVAL)
    return event
