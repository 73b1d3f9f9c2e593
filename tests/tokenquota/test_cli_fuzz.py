"""The operator CLI under bad arguments: one `error:` line and exit code 2 (1 only for the
unreachable servers valid arguments go on to), never a traceback (no servers: they are
configured at a closed port, so a command that gets past its arguments fails at once)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenquota import config
from tokenquota.cli import app
from tokenquota.cli_run import run_app
from tokenquota.config import DatabaseSettings, env_var_names, removed_env_var_names

_VARIABLES = {
    v for vs in [*env_var_names().values(), *removed_env_var_names().values()] for v in vs
} | {"TOKENQUOTA_CONFIG"}
#: Servers nothing listens at: a command past its argument checks fails at once.
_NOWHERE = {
    "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none",
    "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
}

_NASTY = st.sampled_from(
    [
        "",
        " ",
        "-1",
        "0",
        "nan",
        "inf",
        "-inf",
        "1e400",
        "9" * 5_000,
        str(2**64),
        "²",
        "٣",
        "0001-01-01",
        "9999-12-31",
        "2026-02-30",
        "today",
        "5m",
        "99999999999999d",
        "²m",
        "9" * 5_000 + "m",
        "a//b",
        "x" * 300,
        "\x1b[31mred",
        "[bold]x[/bold]",
        "--",
        "-",
    ]
) | st.text(alphabet=st.characters(exclude_characters="\x00"), max_size=12)


def _commands(value: st.SearchStrategy[str]) -> st.SearchStrategy[list[str]]:
    """Operator commands with one bad-ish value somewhere an operator types one."""
    return st.one_of(
        st.tuples(
            st.just(["top"]),
            st.sampled_from(["--limit", "--date", "--depth", "--by", "--account"]),
            value,
        ).map(lambda t: [*t[0], t[1], t[2]]),
        st.tuples(st.sampled_from(["--since", "--until", "--by"]), value).map(
            lambda t: ["costs", t[0], t[1]]
        ),
        st.tuples(st.sampled_from(["--since", "--limit", "--session"]), value).map(
            lambda t: ["alerts", t[0], t[1]]
        ),
        st.tuples(st.sampled_from(["--status", "--limit"]), value).map(
            lambda t: ["reservations", "s", t[0], t[1]]
        ),
        st.tuples(st.sampled_from(["--date", "--rows"]), value).map(
            lambda t: ["report", "daily", t[0], t[1]]
        ),
        st.tuples(
            st.sampled_from(
                [
                    "--daily",
                    "--monthly",
                    "--hard",
                    "--warning",
                    "--critical",
                    "--timeout",
                    "--daily-usd",
                    "--account",
                ]
            ),
            value,
        ).map(
            lambda t: [
                "budget",
                "set",
                "s",
                "--daily",
                "1",
                "--monthly",
                "2",
                "--hard",
                "3",
                t[0],
                t[1],
            ]
        ),
        value.map(lambda v: ["usage", "--account", v]),
        value.map(lambda v: ["audit", "--limit", v]),
        value.map(lambda v: ["dlq", "show", "--limit", v]),
    )


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    with mock.patch.dict(os.environ), mock.patch.object(config, "_warned", set()):
        for variable in _VARIABLES:
            os.environ.pop(variable, None)
        os.environ.update(values)
        yield


def _run(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `tokenquota *args`, in this process."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with _environment(env or _NOWHERE), redirect_stdout(stdout), redirect_stderr(stderr):
        try:
            run_app(app, args)
        except SystemExit as exc:
            code = exc.code
        else:  # pragma: no cover - run_app always exits
            code = 0
    assert isinstance(code, int)
    return code, stdout.getvalue(), stderr.getvalue()


def _one_error_line(code: int, stdout: str, stderr: str) -> None:
    assert "Traceback" not in stdout + stderr
    assert stdout == ""
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    if code == 1:  # the arguments were fine: the closed port is what failed
        assert "127.0.0.1" in lines[0], lines[0]
    else:
        assert code == 2, (code, stderr)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_commands(_NASTY))
def test_a_bad_argument_is_one_error_line_and_exit_code_2(args: list[str]) -> None:
    _one_error_line(*_run(args))


@pytest.mark.parametrize(
    "since", ["99999999999999d", "²m", "٣h", "9" * 5_000 + "m", "1000000000000s"]
)
@pytest.mark.parametrize("command", [["alerts"], ["tail"]])
def test_a_since_past_what_a_clock_holds_is_a_bad_time(command: list[str], since: str) -> None:
    """These were tracebacks: an overflowing timedelta, int() of a non-ASCII digit, of
    more than 4,300 digits."""
    code, stdout, stderr = _run([*command, "--since", since])
    _one_error_line(code, stdout, stderr)
    assert code == 2 and "bad time" in stderr


@pytest.mark.integration
def test_dates_whose_windows_pass_year_1_or_9999_are_exit_code_2(
    migrated_database: DatabaseSettings,
) -> None:
    """These read the database, then overflowed a date: a traceback."""
    env = {
        "DATABASE_URL": migrated_database.dsn(),
        "DATABASE_SCHEMA": migrated_database.schema_name,
    }
    for args in (
        ["report", "daily", "--date", "9999-12-31"],
        ["costs", "--until", "0001-01-05"],
    ):
        code, stdout, stderr = _run(args, env)
        _one_error_line(code, stdout, stderr)
        assert code == 2 and "out of range" in stderr, (args, stderr)


def test_the_real_command_answers_a_bad_since_with_exit_code_2() -> None:
    env = {k: v for k, v in os.environ.items() if k not in _VARIABLES} | _NOWHERE
    done = subprocess.run(
        [sys.executable, "-m", "tokenquota", "alerts", "--since", "99999999999999d"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: bad time '99999999999999d'"), done.stderr
