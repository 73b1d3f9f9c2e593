"""`tokenquota checkpoints show` and `tokenquota checkpoints accept-gap`: the worker's
checkpoints beside the log, and moving one past offsets retention removed unapplied."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .actors import os_actor
from .cli_format import Column, OutputFormat, render, table
from .cli_run import FormatOption, fail, out, run, settings_of

if TYPE_CHECKING:
    from .config import Settings

__all__ = ["checkpoints_app"]

checkpoints_app = typer.Typer(
    help=(
        "The worker's checkpoints beside the log: what it has applied of each partition, "
        "and where the log starts and ends.\n\n"
        "Example: tokenquota checkpoints show"
    ),
    no_args_is_help=True,
)

PARTITION_COLUMNS = (
    Column("partition", "partition", "int"),
    Column("next_offset", "checkpoint", "int"),
    Column("log_first", "log first", "int"),
    Column("log_end", "log end", "int"),
    Column("status", "status"),
    Column("note", "note"),
)
ACCEPTED_COLUMNS = (
    Column("partition", "partition", "int"),
    Column("from_offset", "from", "int"),
    Column("to_offset", "to", "int"),
    Column("skipped", "skipped", "int"),
    Column("accepted_at", "accepted", "time"),
    Column("actor", "actor"),
)


def _with_kafka(ctx: typer.Context) -> Settings:
    settings = settings_of(ctx)
    if settings.kafka.bootstrap_servers is None:
        fail(
            "no Kafka configured: set KAFKA_BOOTSTRAP_SERVERS, or start `tokenquota dev` "
            "(make run) in this directory",
            code=2,
        )
    if settings.log_level == "INFO":  # the default: an unreachable broker is one error line
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    return settings


@checkpoints_app.command("show")
def show(ctx: typer.Context, fmt: FormatOption = OutputFormat.table) -> None:
    """Each partition's checkpoint, and the first and end offsets the log holds.

    The checkpoint is the offset of the next message the worker will apply. A partition
    whose checkpoint is before the log's first offset has a gap: messages removed from
    the log (retention, delete-records) before the worker applied them; the worker stops
    with LogGapError until the gap is accepted (`checkpoints accept-gap`). JSON adds the
    gaps accepted so far.

    Example: tokenquota checkpoints show --format json
    """
    settings = _with_kafka(ctx)

    async def read() -> Any:
        from .checkpoints import read_log_checkpoints

        return await read_log_checkpoints(settings)

    found = run(settings, read())
    rows = [p.model_dump() for p in found.partitions]
    gaps = sum(p.status == "gap" for p in found.partitions)
    title = f"{found.topic}: {len(rows):,} partitions, {gaps:,} with a gap"
    render(out, fmt, rows, PARTITION_COLUMNS, data=found, title=title,
           empty="no partitions")  # fmt: skip
    if fmt is OutputFormat.table and found.accepted:
        accepted = [a.model_dump() for a in found.accepted]
        out.print(table(accepted, ACCEPTED_COLUMNS, title="gaps accepted (offsets from..to-1)"))


@checkpoints_app.command("accept-gap")
def accept_gap(
    ctx: typer.Context,
    partition: Annotated[
        int,
        typer.Option(
            "--partition", "-p", min=0, help="The partition of the usage topic whose gap to accept."
        ),
    ],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Move a partition's checkpoint past offsets gone from the log and never applied.

    Only when the checkpoint is before the log's first offset (retention or
    delete-records removed messages the worker had not applied, and it stops with
    LogGapError at every restart): the checkpoint moves to the log's first offset, in one
    transaction, and the skipped range is recorded with your OS user (table
    accepted_log_gaps, shown by `checkpoints show`). The events skipped are lost to the
    projections; a replay cannot bring them back either. Refused, changing nothing, when
    there is no gap.

    Example: tokenquota checkpoints accept-gap --partition 3
    """
    from .checkpoints import GapRefusedError, accept_log_gap, find_log_gap

    settings = _with_kafka(ctx)
    try:
        gap = run(settings, find_log_gap(settings, partition))
    except GapRefusedError as exc:
        fail(str(exc))
    where = f"{gap.topic}[{gap.partition}]"
    out.print(
        f"{where}: checkpoint {gap.checkpoint}, the log starts at {gap.first}: {gap} "
        f"({gap.size:,} messages) are gone from the log and were never applied.",
        highlight=False,
    )
    if not yes:
        question = (
            f"Move the checkpoint of {where} from {gap.checkpoint} to {gap.first}? The events "
            f"at {gap} are lost to the projections (budgets, usage, reservations, alerts), "
            "and a replay cannot bring them back either"
        )
        try:
            confirmed = typer.confirm(question, default=False)
        except typer.Abort:  # no answer (end of input)
            confirmed = False
        if not confirmed:
            fail("not confirmed: nothing was changed")
    try:
        accepted = run(settings, accept_log_gap(settings, gap, os_actor()))
    except GapRefusedError as exc:
        fail(str(exc))
    out.print(
        f"{where}: checkpoint moved from {accepted.from_offset} to {accepted.to_offset}; "
        f"{accepted.skipped:,} offsets skipped, recorded in accepted_log_gaps by "
        f"{accepted.actor} at {accepted.accepted_at.isoformat()}. A worker stopped by "
        "LogGapError on it goes on once restarted.",
        highlight=False,
    )
