"""Budget rows as the fold sees them and as PostgreSQL stores them: the columns of
session_token_budgets and account_budgets, and the conversions both ways."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import asyncpg

from .state import BudgetSource, Limits, NodeBudget, SessionBudget, UsdLimits

__all__ = ["NODE_COLUMNS", "SESSION_COLUMNS", "node_args", "node_of", "session_args", "session_of"]

#: The USD columns both tables end with: limits (NULL: none), then spend per window.
_USD_COLUMNS = (
    ("daily_usd_limit", "numeric"), ("monthly_usd_limit", "numeric"),
    ("total_usd_limit", "numeric"), ("usd_used_today", "numeric"),
    ("usd_used_month", "numeric"), ("usd_used_total", "numeric"),
)  # fmt: skip
#: The alert level of each USD window, after them.
_USD_ALERT_COLUMNS = (
    ("daily_usd_alert", "text"), ("monthly_usd_alert", "text"), ("total_usd_alert", "text"),
)  # fmt: skip
#: (column, PostgreSQL type), in the order of session_args.
SESSION_COLUMNS = (
    ("session_id", "varchar"), ("daily_limit", "bigint"), ("monthly_limit", "bigint"),
    ("hard_limit", "bigint"), ("warning_threshold", "numeric"),
    ("critical_threshold", "numeric"), ("budget_source", "text"), ("current_day", "date"),
    ("tokens_used_today", "bigint"), ("current_month", "date"),
    ("tokens_used_month", "bigint"), ("tokens_used_total", "bigint"),
    ("daily_alert", "text"), ("monthly_alert", "text"), ("total_alert", "text"),
    ("reservations_accepted", "bigint"), ("reservations_rejected", "bigint"),
    ("overage_tokens", "bigint"), ("last_reset", "timestamptz"),
    ("created_at", "timestamptz"), ("updated_at", "timestamptz"), ("account", "varchar"),
    *_USD_COLUMNS, *_USD_ALERT_COLUMNS,
)  # fmt: skip
#: (column, PostgreSQL type), in the order of node_args.
NODE_COLUMNS = (
    ("account", "varchar"), ("daily_limit", "bigint"), ("monthly_limit", "bigint"),
    ("hard_limit", "bigint"), ("warning_threshold", "numeric"),
    ("critical_threshold", "numeric"), ("budget_event", "uuid"), ("current_day", "date"),
    ("tokens_used_today", "bigint"), ("current_month", "date"),
    ("tokens_used_month", "bigint"), ("tokens_used_total", "bigint"),
    ("created_at", "timestamptz"), ("updated_at", "timestamptz"),
    *_USD_COLUMNS, ("daily_alert", "text"), ("monthly_alert", "text"), ("total_alert", "text"),
    *_USD_ALERT_COLUMNS,
)  # fmt: skip


def _usd_args(b: SessionBudget | NodeBudget) -> tuple[Any, ...]:
    usd = b.usd
    return (
        usd.daily if usd else None,
        usd.monthly if usd else None,
        usd.total if usd else None,
        b.usd_used_today,
        b.usd_used_month,
        b.usd_used_total,
    )


def _usd_alert_args(b: SessionBudget | NodeBudget) -> tuple[Any, ...]:
    return (b.daily_usd_alert, b.monthly_usd_alert, b.total_usd_alert)


def _usd_of(row: Mapping[str, Any] | asyncpg.Record) -> UsdLimits | None:
    daily, monthly, total = row["daily_usd_limit"], row["monthly_usd_limit"], row["total_usd_limit"]
    if daily is None and monthly is None and total is None:
        return None
    return UsdLimits(daily, monthly, total)


def session_args(s: SessionBudget) -> tuple[Any, ...]:
    """A session as the values of SESSION_COLUMNS."""
    limits = s.limits
    return (
        s.session_id,
        limits.daily_limit,
        limits.monthly_limit,
        limits.hard_limit,
        limits.warning_threshold,
        limits.critical_threshold,
        limits.source,
        s.current_day,
        s.tokens_used_today,
        s.current_month,
        s.tokens_used_month,
        s.tokens_used_total,
        s.daily_alert,
        s.monthly_alert,
        s.total_alert,
        s.reservations_accepted,
        s.reservations_rejected,
        s.overage_tokens,
        s.last_reset,
        s.created_at,
        s.updated_at,
        s.account,
        *_usd_args(s),
        *_usd_alert_args(s),
    )


def node_args(n: NodeBudget) -> tuple[Any, ...]:
    """A tree node as the values of NODE_COLUMNS."""
    limits = n.limits
    return (
        n.account,
        limits.daily_limit if limits else None,
        limits.monthly_limit if limits else None,
        limits.hard_limit if limits else None,
        limits.warning_threshold if limits else None,
        limits.critical_threshold if limits else None,
        n.budget_event,
        n.current_day,
        n.tokens_used_today,
        n.current_month,
        n.tokens_used_month,
        n.tokens_used_total,
        n.created_at,
        n.updated_at,
        *_usd_args(n),
        n.daily_alert,
        n.monthly_alert,
        n.total_alert,
        *_usd_alert_args(n),
    )


def _limits_of(row: Mapping[str, Any] | asyncpg.Record, source: BudgetSource) -> Limits:
    return _limits(
        row["daily_limit"],
        row["monthly_limit"],
        row["hard_limit"],
        row["warning_threshold"],
        row["critical_threshold"],
        source,
    )


# Limits are frozen, and most rows of a batch share a few of them (a batch loads hundreds
# of sessions and nodes): one instance each instead of one per row.
@functools.lru_cache(maxsize=1024)
def _limits(
    daily: int, monthly: int, hard: int, warning: Decimal, critical: Decimal, source: BudgetSource
) -> Limits:
    return Limits(daily, monthly, hard, warning, critical, source)


def session_of(row: Mapping[str, Any] | asyncpg.Record) -> SessionBudget:
    """A session_token_budgets row as the fold's SessionBudget."""
    return SessionBudget(
        session_id=row["session_id"],
        limits=_limits_of(row, row["budget_source"]),
        current_day=row["current_day"],
        tokens_used_today=row["tokens_used_today"],
        current_month=row["current_month"],
        tokens_used_month=row["tokens_used_month"],
        tokens_used_total=row["tokens_used_total"],
        daily_alert=row["daily_alert"],
        monthly_alert=row["monthly_alert"],
        total_alert=row["total_alert"],
        reservations_accepted=row["reservations_accepted"],
        reservations_rejected=row["reservations_rejected"],
        overage_tokens=row["overage_tokens"],
        last_reset=row["last_reset"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        account=row["account"],
        usd=_usd_of(row),
        usd_used_today=row["usd_used_today"],
        usd_used_month=row["usd_used_month"],
        usd_used_total=row["usd_used_total"],
        daily_usd_alert=row["daily_usd_alert"],
        monthly_usd_alert=row["monthly_usd_alert"],
        total_usd_alert=row["total_usd_alert"],
    )


def node_of(row: Mapping[str, Any] | asyncpg.Record) -> NodeBudget:
    """An account_budgets row as the fold's NodeBudget."""
    return NodeBudget(
        account=row["account"],
        limits=None if row["budget_event"] is None else _limits_of(row, "event"),
        budget_event=row["budget_event"],
        current_day=row["current_day"],
        tokens_used_today=row["tokens_used_today"],
        current_month=row["current_month"],
        tokens_used_month=row["tokens_used_month"],
        tokens_used_total=row["tokens_used_total"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        usd=_usd_of(row),
        usd_used_today=row["usd_used_today"],
        usd_used_month=row["usd_used_month"],
        usd_used_total=row["usd_used_total"],
        daily_alert=row["daily_alert"],
        monthly_alert=row["monthly_alert"],
        total_alert=row["total_alert"],
        daily_usd_alert=row["daily_usd_alert"],
        monthly_usd_alert=row["monthly_usd_alert"],
        total_usd_alert=row["total_usd_alert"],
    )
