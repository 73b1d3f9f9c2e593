"""How the operator commands print what they read: a rich table, JSON or CSV.

A command describes its rows with `Column`s and hands them to `render`. JSON is the read
model itself (`model_dump(mode="json")`: Decimal as a string, times in ISO 8601), so a
script sees every field; CSV is one line per row with the table's columns, raw values
(no separators, no colour); the table is for people: thousands separators, USD with
cents, utilization coloured *and* labelled at the session's warning and critical
thresholds (`83.4% warning`), so colour is never the only signal.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = [
    "Column",
    "OutputFormat",
    "Row",
    "as_number",
    "format_cell",
    "format_time",
    "render",
    "render_json",
    "table",
    "to_csv",
    "usage_level",
    "utilization_text",
]

Row = Mapping[str, Any]
Kind = Literal["text", "int", "usd", "percent", "utilization", "time", "level"]


class OutputFormat(StrEnum):
    """What a reading command prints (`--format`)."""

    table = "table"
    json = "json"
    csv = "csv"


@dataclass(frozen=True, slots=True)
class Column:
    """One column: the row key it shows, its header, and how its value is written.

    `kind="utilization"` colours the value (a ratio, 0.834 is 83.4%) at the row's
    `warning_threshold` / `critical_threshold` (or the thresholds given to `render`).
    """

    key: str
    header: str
    kind: Kind = "text"

    @property
    def numeric(self) -> bool:
        return self.kind in ("int", "usd", "percent", "utilization")


def as_number(value: object) -> Decimal | None:
    """`value` as a Decimal (ints, Decimals, decimal strings); None when it is not one."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(str(value))
    if isinstance(value, str):
        try:
            return Decimal(value)
        except ArithmeticError:
            return None
    return None


def usage_level(utilization: Decimal, warning: Decimal, critical: Decimal) -> str:
    """`ok`, `warning`, `critical` or `exhausted` (at or past the limit) for a ratio."""
    if utilization >= 1:
        return "exhausted"
    if utilization >= critical:
        return "critical"
    if utilization >= warning:
        return "warning"
    return "ok"


_LEVEL_STYLE = {
    "ok": "green",
    "none": "green",
    "warning": "yellow",
    "critical": "red",
    "exhausted": "bold red",
    "degraded": "yellow",
    "down": "bold red",
}


def utilization_text(utilization: Decimal, warning: Decimal, critical: Decimal) -> Text:
    """`83.4% warning`, coloured by level: the label says what the colour says."""
    level = usage_level(utilization, warning, critical)
    return Text(f"{_percent(utilization)} {level}", style=_LEVEL_STYLE[level])


def _percent(ratio: Decimal) -> str:
    return f"{ratio * 100:,.1f}%"


def _int(value: object) -> str:
    number = as_number(value)
    return str(value) if number is None else f"{number:,.0f}"


def _usd(value: object) -> str:
    number = as_number(value)
    if number is None:
        return str(value)
    # Cents, or more digits for sums below a cent, so a small cost never reads as $0.00.
    if number != 0 and abs(number) < Decimal("0.01"):
        return f"${number:,.6f}"
    return f"${number:,.2f}"


def format_time(value: object) -> str:
    """A time to the second (`2026-12-03 09:30:12+00:00`), a date as it is."""
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value).isoformat(sep=" ", timespec="seconds")
        except ValueError:
            return value
    return str(value)


def _thresholds(row: Row, default: tuple[Decimal, Decimal]) -> tuple[Decimal, Decimal]:
    warning = as_number(row.get("warning_threshold"))
    critical = as_number(row.get("critical_threshold"))
    return (warning or default[0], critical or default[1])


def format_cell(
    column: Column,
    row: Row,
    thresholds: tuple[Decimal, Decimal] = (Decimal("0.8"), Decimal("0.95")),
) -> Text:
    """The table cell of `column` in `row` (an empty cell for a missing value)."""
    value = row.get(column.key)
    if value is None:
        return Text("-", style="dim")
    writers: dict[str, Callable[[object], str]] = {
        "int": _int,
        "usd": _usd,
        "time": format_time,
    }
    if column.kind == "utilization":
        number = as_number(value)
        if number is None:
            return Text(str(value))
        return utilization_text(number, *_thresholds(row, thresholds))
    if column.kind == "percent":
        number = as_number(value)
        return Text(str(value) if number is None else _percent(number))
    if column.kind == "level":
        text = str(value)
        return Text(text, style=_LEVEL_STYLE.get(text, ""))
    if column.kind in writers:
        return Text(writers[column.kind](value))
    return Text(str(value))


def _jsonable(data: object) -> object:
    if isinstance(data, BaseModel):
        return data.model_dump(mode="json")
    if isinstance(data, Mapping):
        return {str(k): _jsonable(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_jsonable(item) for item in data]
    if isinstance(data, Decimal):
        return str(data)
    if isinstance(data, (datetime, date)):
        return data.isoformat()
    return data


def render_json(data: object) -> str:
    """`data` (read models, lists of them, mappings) as indented JSON; Decimal as string."""
    return json.dumps(_jsonable(data), indent=2, ensure_ascii=False)


def _csv_value(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return f"{value:f}"  # 0.0000000000, never 0E-10
    return str(value)


def to_csv(rows: Sequence[Row], columns: Sequence[Column]) -> str:
    """A header line of the column keys, then one line per row with raw values."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([column.key for column in columns])
    for row in rows:
        writer.writerow([_csv_value(row.get(column.key)) for column in columns])
    return buffer.getvalue()


def table(
    rows: Sequence[Row],
    columns: Sequence[Column],
    *,
    title: str | None = None,
    thresholds: tuple[Decimal, Decimal] = (Decimal("0.8"), Decimal("0.95")),
) -> Table:
    """A rich table of `rows`; numbers right-aligned; the title as it is (never markup)."""
    heading = None if title is None else Text(title, style="table.title")
    grid = Table(title=heading, title_justify="left", header_style="bold")
    for column in columns:
        grid.add_column(column.header, justify="right" if column.numeric else "left")
    for row in rows:
        grid.add_row(*(format_cell(column, row, thresholds) for column in columns))
    return grid


def render(
    console: Console,
    fmt: OutputFormat,
    rows: Sequence[Row],
    columns: Sequence[Column],
    *,
    data: object = None,
    title: str | None = None,
    empty: str = "nothing to show",
    thresholds: tuple[Decimal, Decimal] = (Decimal("0.8"), Decimal("0.95")),
) -> None:
    """Print `rows` in `fmt`. JSON prints `data` (the read model) when given, else `rows`."""
    if fmt is OutputFormat.json:
        console.file.write(render_json(rows if data is None else data) + "\n")
    elif fmt is OutputFormat.csv:
        console.file.write(to_csv(rows, columns))
    elif not rows:
        console.print(f"{title}: {empty}" if title else empty, highlight=False, markup=False)
    else:
        console.print(table(rows, columns, title=title, thresholds=thresholds))
