"""The operator commands: budgets, a session's usage, health, the live tail, the audit trail.

Thin wrappers over the read models (`tokenquota.dashboard`), the health check
(`tokenquota.health`) and the budget producer (`producers/budgets.py`); the reports live
in `cli_reports.py`. `register(app)` adds them all to the `tokenquota` command.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .cli_accounts import (
    AccountOption,
    DailyUsdOption,
    MonthlyUsdOption,
    TotalUsdOption,
    account_or_session,
    print_nodes,
    set_node_budget,
    usd_changes,
)
from .cli_format import Column, OutputFormat, format_time, render
from .cli_reports import register_reports
from .cli_run import (
    FormatOption,
    err,
    fail,
    out,
    read_dashboard,
    run,
    settings_of,
)
from .cli_tail import tail

if TYPE_CHECKING:
    from .config import Settings

__all__ = ["register"]

OptionalSession = Annotated[
    str | None,
    typer.Argument(
        help="The session id, as its events name it (or --account).", show_default=False
    ),
]

budget_app = typer.Typer(
    help="Set and show session budgets.\n\nExample: tokenquota budget show alice",
    no_args_is_help=True,
)

WINDOW_COLUMNS = (
    Column("window", "window"),
    Column("used", "used", "int"),
    Column("limit", "limit", "int"),
    Column("remaining", "remaining", "int"),
    Column("utilization", "utilization", "utilization"),
    Column("alert", "alert", "level"),
)
BUDGET_COLUMNS = (
    Column("session_id", "session"),
    Column("daily_limit", "daily limit", "int"),
    Column("monthly_limit", "monthly limit", "int"),
    Column("hard_limit", "hard limit", "int"),
    Column("warning_threshold", "warning", "percent"),
    Column("critical_threshold", "critical", "percent"),
    Column("budget_source", "source"),
    Column("daily_usd_limit", "daily USD", "usd"),
    Column("monthly_usd_limit", "monthly USD", "usd"),
    Column("total_usd_limit", "total USD", "usd"),
)


def _decimal(option: str, value: str | None) -> Decimal | None:
    if value is None:
        return None
    try:
        number = Decimal(value)
    except InvalidOperation:
        fail(f"{option} must be a number between 0 and 1 (e.g. 0.8), got {value!r}", code=2)
    if not number.is_finite() or not 0 < number <= 1:
        fail(f"{option} must be a number above 0 and at most 1 (e.g. 0.8), got {value}", code=2)
    return number


async def _session_report(settings: Settings, session_id: str) -> Any:
    from .dashboard import AsyncTokenDashboard

    async with AsyncTokenDashboard(settings) as dashboard:
        return await dashboard.get_session_metrics(session_id)


def window_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The daily, monthly and total windows of a session report, one row each."""
    limits = report["limits"]
    return [
        {
            "window": window,
            **report["windows"][window],
            "warning_threshold": limits["warning_threshold"],
            "critical_threshold": limits["critical_threshold"],
        }
        for window in ("daily", "monthly", "total")
        if window in report["windows"]
    ]


def budget_row(report: dict[str, Any]) -> dict[str, Any]:
    """A session report's limits and thresholds as one row."""
    return {"session_id": report["session_id"], **report["limits"]}


def _print_session(report: Any, fmt: OutputFormat, *, with_budget: bool) -> None:
    data = report.model_dump()
    if fmt is not OutputFormat.table:
        render(out, fmt, window_rows(data), WINDOW_COLUMNS, data=report)
        return
    if with_budget:
        render(
            out, fmt, [budget_row(data)], BUDGET_COLUMNS, title=f"budget of {data['session_id']}"
        )
    render(out, fmt, window_rows(data), WINDOW_COLUMNS, title=f"usage of {data['session_id']}")
    extras = [
        ("held", f"{data['tokens_held']:,} tokens in {data['outstanding_reservations']:,} "
                 "reservations"),
        ("available", f"{data['available_tokens']:,} tokens"),
        ("overage", f"{data['overage_tokens']:,} tokens"),
        ("cost", f"${Decimal(data['cost_usd']):,.2f}"),
        ("last activity", format_time(data["last_activity"] or "never")),
    ]  # fmt: skip
    for label, value in extras:
        out.print(f"  {label:<14}{value}", highlight=False)


@budget_app.command("set")
def budget_set(
    ctx: typer.Context,
    daily: Annotated[int, typer.Option("--daily", help="Tokens per day.", min=0)],
    monthly: Annotated[int, typer.Option("--monthly", help="Tokens per month.", min=0)],
    hard: Annotated[int, typer.Option("--hard", help="Tokens ever (the hard limit).", min=0)],
    session: OptionalSession = None,
    account: AccountOption = None,
    warning: Annotated[
        str | None,
        typer.Option(
            "--warning", help="Warning threshold, a ratio such as 0.8 (default: the session's own)."
        ),
    ] = None,
    critical: Annotated[
        str | None,
        typer.Option(
            "--critical",
            help="Critical threshold, a ratio such as 0.95 (default: the session's own).",
        ),
    ] = None,
    daily_usd: DailyUsdOption = None,
    monthly_usd: MonthlyUsdOption = None,
    total_usd: TotalUsdOption = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the worker to apply it.", min=0.1)
    ] = 10.0,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Set a session's limits, wait until they apply, print the new state.

    Emits a BudgetSet naming you (os:<user>) as its actor, waits until the worker has
    applied it (--timeout), then prints what `budget show` prints. A threshold left out
    keeps the session's own (a new session: the defaults in the log). USD limits
    (--daily-usd, --monthly-usd, --total-usd: dollars of ApiCost, or `none` to remove
    one) left out keep their current value. With --account, the limits of that budget
    tree node instead: every session under it must fit them too.

    Example: tokenquota budget set alice --daily 100000 --monthly 2000000 --hard 10000000
    """
    from .schemas.events import check_limits

    node = account_or_session(session, account)

    warning_ratio = _decimal("--warning", warning)
    critical_ratio = _decimal("--critical", critical)
    try:
        check_limits(
            daily,
            monthly,
            hard,
            # A threshold left out keeps the session's own: only check the given ones here.
            warning_ratio if warning_ratio is not None else Decimal(0),
            critical_ratio if critical_ratio is not None else Decimal(2),
        )
    except ValueError as exc:
        fail(str(exc), code=2)
    usd = usd_changes(daily_usd, monthly_usd, total_usd)
    settings = settings_of(ctx)
    if node is not None:
        limits = {"daily_limit": daily, "monthly_limit": monthly, "hard_limit": hard,
                  "warning_threshold": warning_ratio, "critical_threshold": critical_ratio,
                  "timeout": timeout, "usd_changes": usd}  # fmt: skip
        set_node_budget(settings, node, limits)
        if fmt is OutputFormat.table:
            err.print(f"budget of account {node!r} applied", highlight=False, markup=False)
        print_nodes(settings, node, fmt)
        return
    assert session is not None

    async def apply() -> Any:
        from .actors import os_actor
        from .producers import TokenQuota
        from .producers.budgets import merged_usd, set_budget
        from .schemas import Source

        source = Source(component="cli", name="tokenquota budget set")
        async with TokenQuota(settings, source=source) as quota:
            current = (await quota.session_metrics(session)).usd
            await set_budget(
                quota,
                session,
                usd=merged_usd(current.limits if current else None, usd),
                daily_limit=daily,
                monthly_limit=monthly,
                hard_limit=hard,
                warning_threshold=warning_ratio,
                critical_threshold=critical_ratio,
                actor=os_actor(),
                timeout=timeout,
                source=source,
            )
        return await _session_report(settings, session)

    report = run(settings, apply())
    if fmt is OutputFormat.table:
        err.print(f"budget of {session!r} applied", highlight=False, markup=False)
    _print_session(report, fmt, with_budget=True)


@budget_app.command("show")
def budget_show(
    ctx: typer.Context,
    session: OptionalSession = None,
    account: AccountOption = None,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """A session's limits, thresholds and usage in each window (--account: the budget
    tree nodes from the tenant down to that one).

    Example: tokenquota budget show alice --format json
    """
    node = account_or_session(session, account)
    settings = settings_of(ctx)
    if node is not None:
        print_nodes(settings, node, fmt)
        return
    assert session is not None
    _print_session(run(settings, _session_report(settings, session)), fmt, with_budget=True)


def usage(
    ctx: typer.Context,
    session: OptionalSession = None,
    account: AccountOption = None,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """A session's usage per window, held tokens, cost and last activity.

    Used, limit, remaining and utilization today, this month and in total, utilization
    labelled at the session's warning and critical thresholds. With --account: each
    budget tree node from the tenant down to that one (usage, held, available).

    Example: tokenquota usage alice
    """
    node = account_or_session(session, account)
    settings = settings_of(ctx)
    if node is not None:
        print_nodes(settings, node, fmt)
        return
    assert session is not None
    _print_session(run(settings, _session_report(settings, session)), fmt, with_budget=False)


HEALTH_COLUMNS = (
    Column("component", "component"),
    Column("status", "status", "level"),
    Column("reason", "reason"),
)
HEALTH_COMPONENTS = ("broker", "database", "worker", "dlq", "spool")
_EXIT_CODES = {"ok": 0, "degraded": 1, "down": 2}


def health(ctx: typer.Context, fmt: FormatOption = OutputFormat.table) -> None:
    """Is the pipeline healthy? Exit code 0 healthy, 1 degraded, 2 down.

    Broker, database, worker (running workers, lag per partition, age of the last
    batch), DLQ and this host's spool, each ok, degraded or down with a reason.

    Example: tokenquota health || echo "pipeline unhealthy"
    """
    settings = settings_of(ctx, database=False)

    async def check() -> Any:
        from .health import check_integration_health_async

        return await check_integration_health_async(settings)

    result = run(settings, check())
    data = result.model_dump()
    rows = [{"component": name, **data[name]} for name in HEALTH_COMPONENTS]
    render(out, fmt, rows, HEALTH_COLUMNS, data=result, title=f"health: {data['status']}")
    raise typer.Exit(_EXIT_CODES.get(data["status"], 2))


AUDIT_COLUMNS = (
    Column("occurred_at", "at", "time"),
    Column("actor", "actor"),
    Column("event_type", "event"),
    Column("session_id", "session"),
    Column("change", "change"),
)


def audit(
    ctx: typer.Context,
    session: Annotated[
        str | None, typer.Option("--session", "-s", help="Only this session.")
    ] = None,
    limit: Annotated[
        int, typer.Option(help="At most this many, newest first.", min=1, max=10_000)
    ] = 100,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Budget and defaults changes in the log and who made them, newest first.

    The actor is an API token's name (token:<name>) or the CLI's OS user (os:<user>):
    the log itself is the audit trail.

    Example: tokenquota audit --session alice
    """
    settings = settings_of(ctx)
    rows = read_dashboard(
        settings, lambda d: d.audit(session_id=session, limit=limit), session=session
    )
    render(out, fmt, [row.model_dump() for row in rows], AUDIT_COLUMNS, data=rows,
           title="audit", empty="no budget or default changes in the log")  # fmt: skip


def register(app: typer.Typer) -> None:
    """Add the operator commands to `app` (the `tokenquota` command)."""
    app.add_typer(budget_app, name="budget")
    app.command("usage")(usage)
    register_reports(app)
    app.command("health")(health)
    app.command("tail")(tail)
    app.command("audit")(audit)
