"""The reading commands over many sessions: the daily report, top sessions, costs,
reservation decisions and alerts. Each is one call of the read models
(`tokenquota.dashboard.AsyncTokenDashboard`) and one `render`."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from .cli_accounts import checked_account
from .cli_format import Column, OutputFormat, format_cell, render
from .cli_run import (
    FormatOption,
    SessionArgument,
    fail,
    out,
    parse_day,
    parse_moment,
    read_dashboard,
    settings_of,
)

if TYPE_CHECKING:
    from .projections.read_models import TopAccount, TopSession

__all__ = ["register_reports", "report_app"]

report_app = typer.Typer(
    help="Reports over all sessions.\n\nExample: tokenquota report daily --date 2026-12-03",
    no_args_is_help=True,
)


def _dump(rows: Any) -> list[dict[str, Any]]:
    return [row.model_dump() for row in rows]


DAILY_SESSION_COLUMNS = (
    Column("session_id", "session"),
    Column("input_tokens", "tokens in", "int"),
    Column("output_tokens", "tokens out", "int"),
    Column("cost_usd", "cost", "usd"),
    Column("accepted", "accepted", "int"),
    Column("rejected", "rejected", "int"),
    Column("expired", "expired", "int"),
    Column("released", "released", "int"),
    Column("efficiency", "efficiency", "percent"),
)
DAILY_API_COLUMNS = (
    Column("api_name", "api"),
    Column("model", "model"),
    Column("requests", "requests", "int"),
    Column("input_tokens", "tokens in", "int"),
    Column("output_tokens", "tokens out", "int"),
    Column("cost_usd", "cost", "usd"),
)


DAILY_MODEL_COLUMNS = (
    Column("component", "integration"),
    Column("model", "model"),
    Column("usage_events", "events", "int"),
    Column("input_tokens", "tokens in", "int"),
    Column("output_tokens", "tokens out", "int"),
)


class DailyRows(StrEnum):
    sessions = "sessions"
    apis = "apis"
    models = "models"


DAILY_TABLES = {
    DailyRows.sessions: (DAILY_SESSION_COLUMNS, "sessions", "no usage"),
    DailyRows.apis: (DAILY_API_COLUMNS, "APIs and models (ApiCost)", "no API costs"),
    DailyRows.models: (DAILY_MODEL_COLUMNS, "integrations and models (TokenUsed)", "no usage"),
}


@report_app.command("daily")
def report_daily(
    ctx: typer.Context,
    day: Annotated[
        str | None,
        typer.Option("--date", "-d", help="The day, YYYY-MM-DD (default: today)."),
    ] = None,
    rows: Annotated[
        DailyRows | None,
        typer.Option(help="Only these rows (csv: default sessions; table: default all)."),
    ] = None,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """A day's usage and cost per session, per API and model, per integration.

    Per session: tokens in and out, cost, reservations accepted, rejected, expired and
    released, efficiency (settled / reserved tokens).

    Example: tokenquota report daily --date 2026-12-03 --format csv --rows apis
    """
    when = parse_day(day)
    settings = settings_of(ctx)
    report = read_dashboard(settings, lambda d: d.generate_daily_report(when))
    data = report.model_dump()
    if fmt is OutputFormat.json:
        render(out, fmt, [], DAILY_SESSION_COLUMNS, data=report)
        return
    if fmt is OutputFormat.csv:  # one table per CSV
        columns, _, _ = DAILY_TABLES[rows or DailyRows.sessions]
        render(out, fmt, data[(rows or DailyRows.sessions).value], columns)
        return
    efficiency = data["efficiency"]
    out.print(
        f"daily report {data['date']}: {data['tokens_used']:,} tokens, "
        f"{format_cell(Column('cost', '', 'usd'), {'cost': data['cost_usd']}).plain}, "
        f"{data['reservations_accepted']:,} reservations accepted, "
        f"{data['reservations_rejected']:,} rejected, efficiency "
        f"{'-' if efficiency is None else f'{efficiency * 100:.1f}%'}",
        highlight=False,
    )
    for name in [rows] if rows is not None else list(DailyRows):
        columns, title, empty = DAILY_TABLES[name]
        render(out, fmt, data[name.value], columns, title=title, empty=empty)


class TopBy(StrEnum):
    tokens = "tokens"
    cost = "cost"
    account = "account"
    account_cost = "account-cost"


TOP_COLUMNS = (
    Column("rank", "#", "int"),
    Column("session_id", "session"),
    Column("tokens_used", "tokens", "int"),
    Column("cost_usd", "cost", "usd"),
)
TOP_ACCOUNT_COLUMNS = (
    Column("rank", "#", "int"),
    Column("account", "account"),
    Column("tokens_used", "tokens", "int"),
    Column("cost_usd", "cost", "usd"),
    Column("reservations_refused", "refused", "int"),
)


def top(
    ctx: typer.Context,
    by: Annotated[
        TopBy,
        typer.Option(
            "--by",
            help="Rank sessions by tokens or cost, or budget tree nodes by tokens (account) "
            "or cost (account-cost).",
        ),
    ] = TopBy.tokens,
    limit: Annotated[
        int, typer.Option("--limit", "-n", help="How many rows (1-1000).", min=1, max=1000)
    ] = 10,
    day: Annotated[
        str | None, typer.Option("--date", "-d", help="A day, YYYY-MM-DD (default: today).")
    ] = None,
    depth: Annotated[
        int | None,
        typer.Option("--depth", help="Only nodes this deep: 1 tenants, 2 teams, ...", min=1, max=8),
    ] = None,
    account: Annotated[
        str | None,
        typer.Option(
            "--account", help="Only this node and the nodes below it.", show_default=False
        ),
    ] = None,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """The sessions that used the most tokens (or cost the most) on a day, or with --by
    account / account-cost the budget tree nodes (the sessions under each added up), with
    the reservations each node's own limit refused.

    Example: tokenquota top --by account --depth 1 --limit 5
    """
    when = parse_day(day)
    nodes = by in (TopBy.account, TopBy.account_cost)
    if not nodes and (depth is not None or account is not None):
        fail(
            f"--depth and --account rank budget tree nodes: use them with --by account or "
            f"--by account-cost, not --by {by.value}",
            code=2,
        )
    under = checked_account(account) if account is not None else None
    order: Literal["tokens", "cost"] = (
        "cost" if by in (TopBy.cost, TopBy.account_cost) else "tokens"
    )
    settings = settings_of(ctx)
    rows: list[TopSession] | list[TopAccount]
    columns: tuple[Column, ...]
    if not nodes:
        rows = read_dashboard(settings, lambda d: d.top_sessions(by=order, limit=limit, day=when))
        columns, title = TOP_COLUMNS, f"top sessions by {order}"
    else:
        rows = read_dashboard(
            settings,
            lambda d: d.top_accounts(by=order, limit=limit, day=when, depth=depth, under=under),
        )
        columns, title = TOP_ACCOUNT_COLUMNS, f"top accounts by {order}"
        title += f" under {under}" if under else ""
        title += f" at depth {depth}" if depth else ""
    ranked = [{"rank": i, **row} for i, row in enumerate(_dump(rows), start=1)]
    render(out, fmt, ranked, columns, data=rows, title=title, empty="no usage")


class CostsBy(StrEnum):
    api = "api"
    model = "model"
    day = "day"


COST_COLUMNS = {
    CostsBy.api: (Column("api_name", "api"),),
    CostsBy.model: (Column("model", "model"),),
    CostsBy.day: (Column("day", "day", "time"),),
}
COST_VALUE_COLUMNS = (
    Column("requests", "requests", "int"),
    Column("input_tokens", "tokens in", "int"),
    Column("output_tokens", "tokens out", "int"),
    Column("cost_usd", "cost", "usd"),
)


def costs(
    ctx: typer.Context,
    by: Annotated[CostsBy, typer.Option("--by", help="Group by api, model or day.")] = CostsBy.api,
    since: Annotated[
        str | None,
        typer.Option(help="First day, YYYY-MM-DD (default: 29 days before --until: 30 days)."),
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Last day, YYYY-MM-DD (default: today).")
    ] = None,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """What the external APIs cost, in USD, grouped by API, model or day.

    --since and --until are included; left out, the window is the 30 days up to today
    (days in the budgets' time zone, as the log's DefaultsSet sets it).

    Example: tokenquota costs --by model --since 2026-12-01
    """
    first, last = parse_day(since), parse_day(until)
    if first is not None and last is not None and first > last:
        fail(f"--since {first} is after --until {last}", code=2)
    settings = settings_of(ctx)
    try:
        rows = read_dashboard(settings, lambda d: d.costs(by=by.value, since=first, until=last))
    except ValueError as exc:  # --since after today (the read decides what today is)
        fail(f"--since {first} is after today: {exc}", code=2)
    render(out, fmt, _dump(rows), (*COST_COLUMNS[by], *COST_VALUE_COLUMNS), data=rows,
           title=f"costs by {by.value}", empty="no API costs")  # fmt: skip


class ReservationStatus(StrEnum):
    """What a decision reads as (projections.activity.RESERVATION_STATES): the fold decides
    each reservation as it applies it, so none is ever read as pending."""

    accepted = "accepted"
    rejected = "rejected"
    settled = "settled"
    released = "released"
    expired = "expired"


DECISION_COLUMNS = (
    Column("decided_at", "decided", "time"),
    Column("reservation_id", "reservation"),
    Column("task_id", "task"),
    Column("tokens", "tokens", "int"),
    Column("priority", "priority"),
    Column("status", "status"),
    Column("reason", "reason"),
    Column("settled_tokens", "settled", "int"),
)


def reservations(
    ctx: typer.Context,
    session: SessionArgument,
    status: Annotated[
        ReservationStatus | None, typer.Option("--status", help="Only reservations in it.")
    ] = None,
    limit: Annotated[
        int,
        typer.Option("--limit", "-n", help="At most this many, newest first.", min=1, max=10_000),
    ] = 50,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """A session's recent reservation decisions, newest first.

    Tokens, priority, status (accepted, rejected and why, settled, released, expired)
    and the tokens settled.

    Example: tokenquota reservations alice --status rejected
    """
    settings = settings_of(ctx)
    state = status.value if status is not None else None
    rows = read_dashboard(
        settings,
        lambda d: d.recent_decisions(session_id=session, status=state, limit=limit),
        session=session,
    )
    render(out, fmt, _dump(rows), DECISION_COLUMNS, data=rows,
           title=f"reservations of {session}", empty="no reservations")  # fmt: skip


ALERT_COLUMNS = (
    Column("occurred_at", "at", "time"),
    Column("session_id", "session"),
    Column("account", "node"),
    Column("window_name", "window"),
    Column("level", "level", "level"),
    Column("used_tokens", "used", "int"),
    Column("limit_tokens", "limit", "int"),
    Column("used_usd", "used $", "usd"),
    Column("limit_usd", "limit $", "usd"),
    Column("delivery", "webhook"),
)


def alerts(
    ctx: typer.Context,
    since: Annotated[
        str | None,
        typer.Option(help="From this time: ISO 8601 (UTC unless zoned) or 30m, 2h, 7d back."),
    ] = None,
    session: Annotated[
        str | None, typer.Option("--session", "-s", help="Only this session.")
    ] = None,
    limit: Annotated[
        int,
        typer.Option("--limit", "-n", help="At most this many, newest first.", min=1, max=10_000),
    ] = 100,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Threshold alerts, newest first, with their webhook delivery.

    A session's or a budget tree node's window (tokens, or dollars where a USD limit is
    set) crossing its warning or critical threshold, or refused at its limit (exhausted),
    once per window and level; a node's alert names the node.

    Example: tokenquota alerts --since 24h
    """
    moment = parse_moment(since)
    settings = settings_of(ctx)
    rows = read_dashboard(
        settings,
        lambda d: d.recent_alerts(since=moment, session_id=session, limit=limit),
        session=session,
    )
    render(out, fmt, _dump(rows), ALERT_COLUMNS, data=rows, title="alerts",
           empty="no alerts")  # fmt: skip


def register_reports(app: typer.Typer) -> None:
    """Add the reports to `app`."""
    app.add_typer(report_app, name="report")
    app.command("top")(top)
    app.command("costs")(costs)
    app.command("reservations")(reservations)
    app.command("alerts")(alerts)
