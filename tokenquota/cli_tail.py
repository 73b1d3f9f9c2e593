"""`tokenquota tail`: the events the worker applies, as it applies them (like
`kubectl logs -f`). It polls the ledger through the read models' cursor
(`AsyncTokenDashboard.events_after`), so it shows what the projections hold, in the
order they were applied; Ctrl-C ends it with exit code 0."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .cli_format import Column, OutputFormat, format_cell, to_csv
from .cli_run import FormatOption, out, parse_moment, require_session, run, settings_of

if TYPE_CHECKING:
    from .projections.read_models import LedgerEvent

__all__ = ["tail"]

TAIL_COLUMNS = (
    Column("occurred_at", "at", "time"),
    Column("event_type", "event"),
    Column("session_id", "session"),
    Column("task_id", "task"),
    Column("summary", "what"),
)


def summary(event: dict[str, Any]) -> str:
    """One phrase saying what an applied event did (from its payload)."""
    payload = event.get("payload") or {}
    kind = event.get("event_type")
    if kind == "TokenUsed":
        tokens = int(payload.get("input_tokens", 0)) + int(payload.get("output_tokens", 0))
        return f"{tokens:,} tokens used ({payload.get('model')}, {payload.get('operation')})"
    if kind == "TokenReserved":
        return f"{int(payload.get('tokens', 0)):,} tokens reserved ({payload.get('priority')})"
    if kind == "ApiCost":
        return f"${payload.get('cost_usd')} on {payload.get('api')} {payload.get('model')}"
    if kind == "BudgetSet":
        return (
            f"limits {int(payload.get('daily_limit', 0)):,} / "
            f"{int(payload.get('monthly_limit', 0)):,} / {int(payload.get('hard_limit', 0)):,}"
            f" by {payload.get('actor') or 'unknown'}"
        )
    if kind == "DefaultsSet":
        return f"defaults by {payload.get('actor') or 'unknown'}"
    return ""


def _line(event: LedgerEvent, fmt: OutputFormat) -> str:
    if fmt is OutputFormat.json:
        return event.model_dump_json()
    data = event.model_dump()
    row = {**data, "summary": summary(data)}
    if fmt is OutputFormat.csv:
        return to_csv([row], TAIL_COLUMNS).splitlines()[1]
    at, kind, session, task, what = (format_cell(c, row).plain for c in TAIL_COLUMNS)
    return f"{at}  {kind:<13}  {session}  {task}  {what}"


def tail(
    ctx: typer.Context,
    session: Annotated[
        str | None, typer.Option("--session", "-s", help="Only this session's events.")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            help="Start with the events that occurred since: ISO 8601 or 30m, 2h, 7d back "
            "(default: only new events)."
        ),
    ] = None,
    interval: Annotated[
        float, typer.Option(help="Seconds between polls of the ledger.", min=0.05)
    ] = 0.5,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Follow the events the worker applies, live, until Ctrl-C.

    Like `kubectl logs -f`. json prints one object per line (JSON Lines), csv a header
    and one line per event.

    Example: tokenquota tail --session alice --since 10m
    """
    moment = parse_moment(since)
    settings = settings_of(ctx)

    async def follow() -> None:
        from .dashboard import AsyncTokenDashboard

        async with AsyncTokenDashboard(settings) as dashboard:
            await require_session(dashboard, session)
            cursor = await dashboard.tail_cursor(since=moment, session_id=session)
            if fmt is OutputFormat.csv:
                out.file.write(",".join(c.key for c in TAIL_COLUMNS) + "\n")
            while True:
                page = await dashboard.events_after(cursor, limit=500, session_id=session)
                for event in page.events:
                    out.file.write(_line(event, fmt) + "\n")
                out.file.flush()
                cursor = page.cursor
                if not page.events:
                    await asyncio.sleep(interval)

    try:
        run(settings, follow())
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
