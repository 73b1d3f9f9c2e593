"""Setting a budget (a session's, or a budget tree node's): emit a BudgetSet naming its
actor, wait until it applies."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from decimal import Decimal
from typing import TypedDict

from tokenquota.errors import IntegrationError
from tokenquota.projections import Limits, UsdLimits
from tokenquota.schemas import DEFAULTS_SESSION, BudgetSet, Source

from .reservations import TokenQuota

__all__ = ["merged_usd", "set_account_budget", "set_budget"]

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
    usd: UsdLimits | None = None,
    actor: str,
    timeout: float = 10,
    source: Source | None = None,
) -> BudgetSet:
    """Emit a BudgetSet for `session_id` and return it once the worker has applied it.

    Thresholds left out keep the session's current ones (a new session: the defaults in
    the log); so do USD limits, unless `usd` replaces them (a window of None: no limit
    for it). The event names `actor` (`tokenquota.actors`), so the log is the audit
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
        **_kept(
            current.limits,
            warning_threshold,
            critical_threshold,
            current.usd.limits if current.usd else None,
            usd,
        ),
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
    usd: UsdLimits | None = None,
    actor: str,
    timeout: float = 10,
    source: Source | None = None,
) -> BudgetSet:
    """Emit a BudgetSet for the budget tree node `account` ("acme/research") and return
    it once applied: every reservation of a session under it must then fit these limits
    too. Thresholds and USD limits left out keep the node's current ones (thresholds:
    else the log's defaults). Raises as `set_budget`."""
    node = (await quota.account_metrics(account))[-1]
    limits = node.limits or (await quota.session_metrics(DEFAULTS_SESSION)).limits
    event = BudgetSet(
        session_id=DEFAULTS_SESSION,
        source=source or Source(component="sdk", name="budgets"),
        account=account,
        target="account",
        daily_limit=daily_limit,
        monthly_limit=monthly_limit,
        hard_limit=hard_limit,
        **_kept(
            limits,
            warning_threshold,
            critical_threshold,
            node.usd.limits if node.usd else None,
            usd,
        ),
        actor=actor,
    )
    return await _applied(quota, event, f"the budget of account {account!r}", timeout)


class _Kept(TypedDict):
    warning_threshold: Decimal
    critical_threshold: Decimal
    daily_usd_limit: Decimal | None
    monthly_usd_limit: Decimal | None
    total_usd_limit: Decimal | None


def merged_usd(
    current: UsdLimits | None, changes: Mapping[str, Decimal | None]
) -> UsdLimits | None:
    """The USD limits after `changes` ({"daily"|"monthly"|"total": a limit, or None to
    remove it}); None when nothing changes (a BudgetSet then keeps `current`)."""
    if not changes:
        return None
    windows: dict[str, Decimal | None] = {"daily": None, "monthly": None, "total": None}
    if current is not None:
        windows.update(daily=current.daily, monthly=current.monthly, total=current.total)
    unknown = set(changes) - set(windows)
    if unknown:
        raise ValueError(f"unknown USD windows {sorted(unknown)}: daily, monthly or total")
    windows.update(changes)
    return UsdLimits(windows["daily"], windows["monthly"], windows["total"])


def _kept(
    limits: Limits,
    warning: Decimal | None,
    critical: Decimal | None,
    current_usd: UsdLimits | None,
    usd: UsdLimits | None,
) -> _Kept:
    """The thresholds and USD limits of a new BudgetSet: those given, else the current."""
    dollars = usd if usd is not None else current_usd
    return _Kept(
        warning_threshold=limits.warning_threshold if warning is None else warning,
        critical_threshold=limits.critical_threshold if critical is None else critical,
        daily_usd_limit=dollars.daily if dollars else None,
        monthly_usd_limit=dollars.monthly if dollars else None,
        total_usd_limit=dollars.total if dollars else None,
    )


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
