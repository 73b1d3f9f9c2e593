"""`tokenquota dlq show` and `tokenquota dlq ack`: look at the dead letters, then mark
them reviewed so that the health check and the overview count only new ones."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from .actors import os_actor
from .cli_format import Column, OutputFormat, render
from .cli_run import FormatOption, err, out, run, settings_of

if TYPE_CHECKING:
    from .config import Settings

__all__ = ["dlq_app"]

dlq_app = typer.Typer(
    help=(
        "The dead-letter topic: messages the worker refused, and why.\n\n"
        "Example: tokenquota dlq show"
    ),
    no_args_is_help=True,
)

LETTER_COLUMNS = (
    Column("partition", "partition", "int"),
    Column("offset", "offset", "int"),
    Column("sent_at", "sent", "time"),
    Column("reason", "reason"),
    Column("source", "from"),
    Column("key", "key"),
    Column("value", "value"),
)


async def _read(settings: Settings, everything: bool, limit: int) -> Any:
    from .dead_letters import read_dead_letters

    return await read_dead_letters(settings, everything=everything, limit=limit)


@dlq_app.command("show")
def show(
    ctx: typer.Context,
    everything: Annotated[
        bool, typer.Option("--all", help="Also the dead letters already reviewed.")
    ] = False,
    limit: Annotated[int, typer.Option(help="At most this many.", min=1, max=10_000)] = 100,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """The dead letters not yet reviewed (--all: every one).

    Where the worker read each, why it refused it, and the start of the message.

    Example: tokenquota dlq show --format json
    """
    settings = settings_of(ctx)
    letters = run(settings, _read(settings, everything, limit))
    rows = [
        {
            **letter.model_dump(),
            "source": (
                f"{letter.source_topic}[{letter.source_partition}]@{letter.source_offset}"
                if letter.source_topic
                else ""
            ),
            "value": letter.value[:60],
        }
        for letter in letters.letters
    ]
    shown = letters.total if everything else letters.unreviewed
    title = f"{letters.topic}: {letters.unreviewed:,} unreviewed of {letters.total:,}"
    if len(rows) < shown:
        title += f", the first {len(rows):,}"
    render(out, fmt, rows, LETTER_COLUMNS, data=letters, title=title,
           empty="no dead letters to review")  # fmt: skip


@dlq_app.command("ack")
def ack(ctx: typer.Context) -> None:
    """Mark every dead letter there is now as reviewed.

    Recorded with your OS user; health and the overview then count only the ones that
    come after.

    Example: tokenquota dlq show && tokenquota dlq ack
    """
    settings = settings_of(ctx)

    async def mark() -> dict[int, int]:
        from .dead_letters import acknowledge

        return await acknowledge(settings, os_actor())

    marks = run(settings, mark())
    total = sum(marks.values())
    err.print(
        f"{settings.kafka.dlq_topic}: {total:,} dead letters marked reviewed", highlight=False
    )
