"""Read models over the budget tree: the nodes ranked by a day's tokens or cost
(`account_usage_daily`), and the whole tree with each node's limits, usage, holds and
utilization (`account_budgets`, read as `account_metrics` reads a node) and this month's
totals (the month's days of `account_usage_daily`). A few indexed queries each; none
reads the ledger.

"Today" and "this month" are the windows' day and month (see analytics.windows_zone).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Literal

import asyncpg

from .analytics import windows_zone
from .budget import local_day, month_of
from .read import AccountMetrics, accounts_metrics
from .read_models import AccountTreeNode, TopAccount

__all__ = ["account_tree", "top_accounts"]

_ORDER = {"tokens": "tokens_used", "cost": "cost_usd"}
_ZERO = Decimal(0)

# `under`: the node and its subtree (starts_with, not LIKE: a segment may hold % or _).
_TOP = """
    SELECT account, cardinality(string_to_array(account, '/')) AS depth, tokens_used,
           cost_usd, reservations_accepted, reservations_rejected, reservations_refused
      FROM account_usage_daily
     WHERE day = $1
       AND ($3::int IS NULL OR cardinality(string_to_array(account, '/')) = $3)
       AND ($4::varchar IS NULL OR account = $4 OR starts_with(account, $4 || '/'))
"""


async def top_accounts(
    conn: asyncpg.Connection,
    by: Literal["tokens", "cost"] = "tokens",
    limit: int = 10,
    day: date | None = None,
    depth: int | None = None,
    under: str | None = None,
    *,
    now: datetime | None = None,
) -> list[TopAccount]:
    """The nodes whose sessions used the most tokens (or cost the most) on `day` (default
    today): only those `depth` segments deep when given (1: tenants), only `under` and the
    nodes below it when given. Ties in name order."""
    if by not in _ORDER:
        raise ValueError(f"top accounts by {by!r}: use one of {', '.join(_ORDER)}")
    if depth is not None and depth < 1:
        raise ValueError(f"depth {depth}: 1 is a tenant, 2 a node under one, ...")
    if day is None:
        day = local_day(now or datetime.now(UTC), await windows_zone(conn))
    order = f" ORDER BY {_ORDER[by]} DESC, account LIMIT $2"  # a constant's column
    rows = await conn.fetch(_TOP + order, day, limit, depth, under)
    return [TopAccount(**dict(row)) for row in rows]


_MONTH = """
    SELECT account, sum(tokens_used)::bigint AS tokens_used, sum(cost_usd) AS cost_usd,
           sum(reservations_refused)::bigint AS reservations_refused
      FROM account_usage_daily
     WHERE account = ANY($2::varchar[]) AND day >= $1 AND day < ($1 + interval '1 month')::date
     GROUP BY account
"""


async def account_tree(
    conn: asyncpg.Connection, root: str | None = None, *, now: datetime | None = None
) -> list[AccountTreeNode]:
    """Every node the events have reached or a BudgetSet named (only `root` and the nodes
    below it when given), a parent before its children and each subtree together."""
    now = now or datetime.now(UTC)
    paths = [
        row["account"]
        for row in await conn.fetch(
            "SELECT account FROM account_budgets"
            " WHERE $1::varchar IS NULL OR account = $1 OR starts_with(account, $1 || '/')",
            root,
        )
    ]
    paths.sort(key=lambda path: path.split("/"))
    metrics = await accounts_metrics(conn, paths, now=now)
    month = month_of(local_day(now, await windows_zone(conn)))
    monthly = {row["account"]: row for row in await conn.fetch(_MONTH, month, paths)}
    nodes = []
    for path in paths:
        rollup = monthly.get(path)
        nodes.append(
            _node(
                metrics[path],
                tokens_month=rollup["tokens_used"] if rollup else 0,
                cost_month=rollup["cost_usd"] if rollup else _ZERO,
                refused_month=rollup["reservations_refused"] if rollup else 0,
            )
        )
    return nodes


def _node(
    node: AccountMetrics, *, tokens_month: int, cost_month: Decimal, refused_month: int
) -> AccountTreeNode:
    limits, usd = node.limits, node.usd
    ratios = [r for r in (node.utilization, usd.utilization() if usd else None) if r is not None]
    parent = node.account.rpartition("/")[0]
    return AccountTreeNode(
        account=node.account,
        depth=node.account.count("/") + 1,
        parent=parent or None,
        daily_limit=limits.daily_limit if limits else None,
        monthly_limit=limits.monthly_limit if limits else None,
        hard_limit=limits.hard_limit if limits else None,
        warning_threshold=limits.warning_threshold if limits else None,
        critical_threshold=limits.critical_threshold if limits else None,
        daily_usd_limit=usd.limits.daily if usd and usd.limits else None,
        monthly_usd_limit=usd.limits.monthly if usd and usd.limits else None,
        total_usd_limit=usd.limits.total if usd and usd.limits else None,
        tokens_used_today=node.tokens_used_today,
        tokens_used_month=node.tokens_used_month,
        tokens_used_total=node.tokens_used_total,
        usd_used_today=usd.used_today if usd else _ZERO,
        usd_used_month=usd.used_month if usd else _ZERO,
        usd_used_total=usd.used_total if usd else _ZERO,
        tokens_held=node.tokens_held,
        usd_held=usd.held if usd else _ZERO,
        available_tokens=node.available_tokens,
        available_usd=usd.available if usd else None,
        utilization=max(ratios) if ratios else None,
        reservations_accepted=node.reservations_accepted,
        reservations_rejected=node.reservations_rejected,
        tokens_month=tokens_month,
        cost_usd_month=cost_month,
        reservations_refused_month=refused_month,
        updated_at=node.updated_at,
        as_of=node.as_of,
    )
