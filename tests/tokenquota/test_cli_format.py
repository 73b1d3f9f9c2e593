"""The operator commands' output layer: tables, JSON and CSV from the same rows."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from pydantic import BaseModel
from rich.console import Console

from tokenquota.cli_format import (
    Column,
    OutputFormat,
    as_number,
    format_cell,
    render,
    render_json,
    to_csv,
    usage_level,
    utilization_text,
)

COLUMNS = (
    Column("session_id", "session"),
    Column("tokens_used", "used", "int"),
    Column("cost_usd", "cost", "usd"),
    Column("utilization", "utilization", "utilization"),
    Column("at", "at", "time"),
)
ROWS = [
    {
        "session_id": "alice",
        "tokens_used": 1234567,
        "cost_usd": Decimal("12.3456"),
        "utilization": Decimal("0.85"),
        "warning_threshold": Decimal("0.8"),
        "critical_threshold": Decimal("0.95"),
        "at": datetime(2026, 12, 3, 9, 30, tzinfo=UTC),
    },
    {
        "session_id": "bob, the second",
        "tokens_used": 0,
        "cost_usd": Decimal("0.000123"),
        "utilization": Decimal("0.5"),
        "warning_threshold": Decimal("0.4"),
        "critical_threshold": Decimal("0.6"),
        "at": None,
    },
]


def _printed(fmt: OutputFormat, rows: list[dict[str, object]], **kwargs: object) -> str:
    console = Console(file=io.StringIO(), width=200, color_system=None)
    render(console, fmt, rows, COLUMNS, **kwargs)  # type: ignore[arg-type]
    output = console.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(output, str)
    return output


@pytest.mark.parametrize(
    ("ratio", "level"),
    [
        ("0", "ok"),
        ("0.7999", "ok"),
        ("0.8", "warning"),
        ("0.9499", "warning"),
        ("0.95", "critical"),
        ("0.9999", "critical"),
        ("1", "exhausted"),
        ("1.5", "exhausted"),
    ],
)
def test_usage_level_is_decided_at_the_thresholds(ratio: str, level: str) -> None:
    assert usage_level(Decimal(ratio), Decimal("0.8"), Decimal("0.95")) == level


def test_utilization_is_labelled_and_coloured_by_level() -> None:
    ok = utilization_text(Decimal("0.5"), Decimal("0.8"), Decimal("0.95"))
    warning = utilization_text(Decimal("0.834"), Decimal("0.8"), Decimal("0.95"))
    critical = utilization_text(Decimal("0.96"), Decimal("0.8"), Decimal("0.95"))
    assert (ok.plain, str(ok.style)) == ("50.0% ok", "green")
    assert (warning.plain, str(warning.style)) == ("83.4% warning", "yellow")
    assert (critical.plain, str(critical.style)) == ("96.0% critical", "red")


def test_cells_use_separators_and_the_rows_own_thresholds() -> None:
    alice, bob = ROWS
    assert format_cell(COLUMNS[1], alice).plain == "1,234,567"
    assert format_cell(COLUMNS[2], alice).plain == "$12.35"
    assert format_cell(COLUMNS[2], bob).plain == "$0.000123"  # a small cost is not $0.00
    assert format_cell(COLUMNS[3], alice).plain == "85.0% warning"
    assert format_cell(COLUMNS[3], bob).plain == "50.0% warning"  # bob warns at 0.4
    assert format_cell(COLUMNS[4], alice).plain == "2026-12-03 09:30:00+00:00"
    assert format_cell(COLUMNS[4], bob).plain == "-"
    # Values as the read models' JSON has them: decimal strings.
    assert format_cell(COLUMNS[1], {"tokens_used": "9876543210"}).plain == "9,876,543,210"


def test_table_shows_every_row_formatted() -> None:
    printed = _printed(OutputFormat.table, ROWS, title="usage")
    assert "usage" in printed
    assert "1,234,567" in printed and "85.0% warning" in printed
    assert "bob, the second" in printed


def test_an_empty_table_says_so() -> None:
    assert _printed(OutputFormat.table, [], title="alerts", empty="no alerts").strip() == (
        "alerts: no alerts"
    )


@pytest.mark.parametrize("rows", [ROWS, []])
def test_a_title_is_printed_as_it_is_never_as_markup(rows: list[dict[str, object]]) -> None:
    title = "reservations of [bold]a[/bold][/x]"  # a session id may hold brackets
    assert title in _printed(OutputFormat.table, rows, title=title, empty="none")


def test_csv_has_a_header_and_raw_values() -> None:
    parsed = list(csv.DictReader(io.StringIO(_printed(OutputFormat.csv, ROWS))))
    assert list(parsed[0]) == [c.key for c in COLUMNS]
    assert parsed[0]["tokens_used"] == "1234567"
    assert parsed[0]["cost_usd"] == "12.3456"
    assert parsed[0]["at"] == "2026-12-03T09:30:00+00:00"
    assert parsed[1]["session_id"] == "bob, the second"  # quoted, not split
    assert parsed[1]["at"] == ""
    assert to_csv([], COLUMNS).strip() == ",".join(c.key for c in COLUMNS)
    zero = to_csv([{"cost_usd": Decimal("0E-10")}], [COLUMNS[2]]).splitlines()[1]
    assert zero == "0.0000000000"  # NUMERIC(30, 10) zero, never in exponent notation


class _Model(BaseModel):
    day: date
    cost_usd: Decimal
    tokens: int


def test_json_is_the_read_model_with_decimals_as_strings() -> None:
    model = _Model(day=date(2026, 12, 3), cost_usd=Decimal("0.1000000001"), tokens=3)
    printed = _printed(OutputFormat.json, ROWS, data=[model])
    assert json.loads(printed) == [{"day": "2026-12-03", "cost_usd": "0.1000000001", "tokens": 3}]
    rows = json.loads(render_json(ROWS))
    assert rows[0]["cost_usd"] == "12.3456"
    assert rows[0]["at"] == "2026-12-03T09:30:00+00:00"


def test_numbers_are_read_exactly() -> None:
    assert as_number("0.1") == Decimal("0.1")
    assert as_number(0.1) == Decimal("0.1")
    assert as_number(True) is None
    assert as_number("n/a") is None
