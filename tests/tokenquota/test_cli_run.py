"""What every operator command shares: a user mistake is one literal `error:` line on
stderr and a non-zero exit, whatever characters the user's input holds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tokenquota.cli import app
from tokenquota.cli_run import run_app

TOKENQUOTA = str(Path(sys.executable).parent / "tokenquota")


def _error_of(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int | str | None, str]:
    with pytest.raises(SystemExit) as stopped:
        run_app(app, list(args))
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return stopped.value.code, lines[0]


@pytest.mark.parametrize("text", ["2026-13-01[/x]", "[bold]2026-13-01", "2026[red]-13[/red]"])
def test_markup_in_a_bad_date_is_printed_as_typed(
    capsys: pytest.CaptureFixture[str], text: str
) -> None:
    code, line = _error_of(capsys, "top", "--date", text)
    assert code == 2
    assert line.startswith(f"error: bad date {text!r}")


def test_markup_in_a_usage_mistake_is_printed_as_typed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, line = _error_of(capsys, "top", "--by", "[/x][bold]")
    assert code == 2
    assert "'[/x][bold]' is not one of" in line, line
    assert line.endswith(" top --help`)")  # the program name is pytest here


def test_a_bad_date_with_markup_is_one_line_and_no_traceback() -> None:
    done = subprocess.run(
        [TOKENQUOTA, "top", "--date", "2026-13-01[/x]"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: bad date '2026-13-01[/x]'"), done.stderr
