"""The CLI's view of budget tree nodes: `budget set --account`, `budget show --account`
and `usage --account` print the nodes from the tenant down to the account."""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .cli_format import Column, OutputFormat, render
from .cli_run import fail, out, run

if TYPE_CHECKING:
    from .config import Settings
    from .projections import AccountMetrics

__all__ = [
    "AccountOption",
    "DailyUsdOption",
    "MonthlyUsdOption",
    "TotalUsdOption",
    "account_or_session",
    "account_rule",
    "checked_account",
    "print_nodes",
    "set_node_budget",
    "usd_changes",
]

AccountOption = Annotated[
    str | None,
    typer.Option(
        "--account",
        help="A budget tree node (tenant/team/user) instead of a session.",
        show_default=False,
    ),
]


def _usd_option(flag: str, per: str) -> Any:
    return typer.Option(
        flag, help=f"USD of ApiCost {per}, e.g. 500 (`none` removes the limit).", show_default=False
    )


DailyUsdOption = Annotated[str | None, _usd_option("--daily-usd", "per day")]
MonthlyUsdOption = Annotated[str | None, _usd_option("--monthly-usd", "per calendar month")]
TotalUsdOption = Annotated[str | None, _usd_option("--total-usd", "in all")]


def usd_changes(
    daily: str | None, monthly: str | None, total: str | None
) -> dict[str, Decimal | None]:
    """The USD windows given on the command line (exit 2 for an amount that is not one)."""
    from decimal import InvalidOperation

    changes: dict[str, Decimal | None] = {}
    for window, value in (("daily", daily), ("monthly", monthly), ("total", total)):
        if value is None:
            continue
        if value.strip().lower() == "none":
            changes[window] = None
            continue
        try:
            amount = Decimal(value.strip().lstrip("$"))
        except InvalidOperation:
            amount = Decimal(-1)
        if not amount.is_finite() or amount < 0 or amount.as_tuple().exponent < -10:  # type: ignore[operator]
            fail(
                f"--{window}-usd must be dollars (at most 10 decimal places) or `none`, "
                f"got {value!r}",
                code=2,
            )
        changes[window] = amount
    return changes


NODE_COLUMNS = (
    Column("account", "account"),
    Column("daily_limit", "daily limit", "int"),
    Column("monthly_limit", "monthly limit", "int"),
    Column("hard_limit", "hard limit", "int"),
    Column("tokens_used_today", "today", "int"),
    Column("tokens_used_month", "month", "int"),
    Column("tokens_used_total", "total", "int"),
    Column("tokens_held", "held", "int"),
    Column("available_tokens", "available", "int"),
    Column("utilization", "utilization", "utilization"),
    Column("monthly_usd_limit", "monthly USD", "usd"),
    Column("usd_used_month", "USD month", "usd"),
    Column("usd_held", "USD held", "usd"),
    Column("available_usd", "USD available", "usd"),
)


def account_rule() -> str:
    """What an account path may be, in words (the hooks' wording: one for both)."""
    from .producers.defaults import account_rule as rule

    return rule()


def account_or_session(session: str | None, account: str | None) -> str | None:
    """The checked account path when `--account` is given (and no session); None for a
    session. Exit 2 for neither, both, or a path that is not one."""
    if (session is None) == (account is None):
        fail("give a session, or --account PATH for a budget tree node (not both)", code=2)
    if account is None:
        return None
    return checked_account(account)


def checked_account(account: str) -> str:
    """`--account`'s path, checked (exit 2 with the rule when it is not one)."""
    from pydantic import TypeAdapter, ValidationError

    from .schemas import AccountPath

    try:
        return TypeAdapter(AccountPath).validate_python(account)
    except ValidationError:
        fail(f"--account {account!r}: {account_rule()}", code=2)


async def _nodes(settings: Settings, account: str) -> list[AccountMetrics]:
    from .producers import TokenQuota

    async with TokenQuota(settings) as quota:
        return await quota.account_metrics(account)


def print_nodes(settings: Settings, account: str, fmt: OutputFormat) -> None:
    """The nodes from `account`'s tenant down to it, in `fmt`."""
    nodes = run(settings, _nodes(settings, account))
    rows = [_row(node) for node in nodes]
    render(out, fmt, rows, NODE_COLUMNS, data=rows, title=f"budget tree of {account}")


def set_node_budget(settings: Settings, account: str, limits: dict[str, Any]) -> None:
    """Emit a BudgetSet for the node `account` and wait until it applies."""

    async def apply() -> None:
        from .actors import os_actor
        from .producers import TokenQuota
        from .producers.budgets import merged_usd, set_account_budget
        from .schemas import Source

        source = Source(component="cli", name="tokenquota budget set")
        given = dict(limits)
        changes = given.pop("usd_changes", {})
        async with TokenQuota(settings, source=source) as quota:
            current = (await quota.account_metrics(account))[-1].usd
            usd = merged_usd(current.limits if current else None, changes)
            await set_account_budget(
                quota, account, actor=os_actor(), source=source, usd=usd, **given
            )

    run(settings, apply())


def _row(node: AccountMetrics) -> dict[str, Any]:
    limits = node.limits
    return {
        "account": node.account,
        "daily_limit": limits.daily_limit if limits else None,
        "monthly_limit": limits.monthly_limit if limits else None,
        "hard_limit": limits.hard_limit if limits else None,
        "warning_threshold": limits.warning_threshold if limits else Decimal("0.8"),
        "critical_threshold": limits.critical_threshold if limits else Decimal("0.95"),
        "tokens_used_today": node.tokens_used_today,
        "tokens_used_month": node.tokens_used_month,
        "tokens_used_total": node.tokens_used_total,
        "tokens_held": node.tokens_held,
        "available_tokens": node.available_tokens,
        "utilization": node.utilization,
        "reservations_accepted": node.reservations_accepted,
        "reservations_rejected": node.reservations_rejected,
        **_usd_row(node),
    }


def _usd_row(node: AccountMetrics) -> dict[str, Any]:
    """The node's USD columns as plain digits (500, not 500.0000000000)."""
    columns = node.usd.columns() if node.usd else {}
    return {
        name: None if value is None else Decimal(format(value.normalize(), "f"))
        for name, value in columns.items()
    }
