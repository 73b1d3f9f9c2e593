"""The configuration under bad input, in the environment and in the file: one clear error
naming the setting (ConfigError, exit code 2 through the CLI), never a traceback, and
nothing accepted that a command would crash on later (pure: no servers)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, get_args
from unittest import mock

import annotated_types
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from tokenquota import config
from tokenquota.config import (
    ConfigError,
    Settings,
    env_var_names,
    fold_config,
    load_settings,
    removed_env_var_names,
)
from tokenquota.log_defaults import defaults_event

ROOT = Path(__file__).resolve().parents[2]
#: Every variable a setting is read from, and the file's name.
_VARIABLES = sorted(
    {v for vs in [*env_var_names().values(), *removed_env_var_names().values()] for v in vs}
    | {"TOKENQUOTA_CONFIG"}
)
#: (setting path, its first variable), for the settings one variable sets.
_SETTINGS = sorted((path, variables[0]) for path, variables in env_var_names().items())
#: Text that is no setting's value, or a value some setting takes only up to a bound.
_BAD_TEXT = st.sampled_from(
    [
        "inf",
        "-inf",
        "nan",
        "Infinity",
        "1e400",
        "1e300",
        "1e9",
        "-1",
        "0",
        "9" * 5_000,
        str(2**63),
        "true",
        "[]",
        "{}",
        "{",
        '[{"name": 1}]',
        "x" * 10_000,
        "\t",
        "\x7f",
        "é",
        "a,b,,",
        "postgresql://",
        "host:99999",
    ]
) | st.text(alphabet=st.characters(exclude_characters="\x00", codec="utf-8"), max_size=30)
#: JSON values for the file, the special literals Python's json writes included.
_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.sampled_from([10**400, 1e300, 1e9, 2**63])
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Only `values` among the settings' variables, for the block (no warning given yet)."""
    with mock.patch.dict(os.environ), mock.patch.object(config, "_warned", set()):
        for variable in _VARIABLES:
            os.environ.pop(variable, None)
        os.environ.update(values)
        yield


def _loaded(file: Path | None = None) -> Settings | ConfigError:
    """The settings, checked to be usable, or the one ConfigError (nothing else escapes)."""
    try:
        loaded = load_settings(file)
    except ConfigError as exc:
        error = exc
    else:
        usable(loaded)
        return loaded
    assert error.problems and str(error).startswith("invalid configuration")
    return error


def usable(loaded: Settings) -> None:
    """What commands make of loaded settings works: `config` prints them as JSON, `init`
    and the worker write and compare the defaults (a DefaultsSet), durations fit."""
    json.dumps(loaded.model_dump(mode="json"), allow_nan=False)
    defaults_event(fold_config(loaded))
    for section in loaded.model_dump().values():
        for value in section.values() if isinstance(section, dict) else ():
            if isinstance(value, float):
                assert math.isfinite(value)


# --- the environment --------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_SETTINGS), _BAD_TEXT)
def test_a_bad_environment_variable_is_one_line_naming_it(
    setting: tuple[tuple[str, ...], str], value: str
) -> None:
    path, variable = setting
    with _environment({variable: value}):
        result = _loaded()
    if isinstance(result, ConfigError):
        dotted = ".".join(path)
        mine = [p for p in result.problems if p.startswith((dotted, path[0] + ":"))]
        assert mine, result.problems
        assert all(f"(from environment variable {variable})" in p for p in mine if " = " in p)


# --- the file ---------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_SETTINGS), _JSON_VALUES)
def test_a_bad_value_in_the_file_is_one_line_naming_the_setting_and_file(
    tmp_path_factory: pytest.TempPathFactory, setting: tuple[tuple[str, ...], str], value: Any
) -> None:
    path, _ = setting
    body: Any = value
    for part in reversed(path):
        body = {part: body}
    file = tmp_path_factory.mktemp("config") / "tokenquota.json"
    file.write_text(json.dumps(body))
    with _environment({}):
        result = _loaded(file)
    if isinstance(result, ConfigError):
        assert all(str(file) in p or p.startswith(path[0] + ":") for p in result.problems)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'{"mcp": {"port": ' + b"9" * 5_000 + b"}}", "is not valid JSON: a number of 5000 digits"),
        (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "is not valid JSON: nested too deeply"),
        (b'{"log_file": "\xff\xfe"}', "is not UTF-8 text: invalid start byte at byte 14"),
        (b'{"mcp": {"port": 1}, "mcp": {"port": 2}}', "names `mcp` twice"),
        (b'{"mcp": {"port": 1, "host": "h", "port": 2}}', "names `mcp.port` twice"),
    ],
)
def test_a_file_json_cannot_hold_is_one_line_naming_the_file(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    file = tmp_path / "tokenquota.json"
    file.write_bytes(content)
    with _environment({}):
        result = _loaded(file)
    assert isinstance(result, ConfigError) and len(result.problems) == 1
    assert result.problems[0].startswith(f"configuration file {file} ")
    assert expected in result.problems[0]


# --- bounds -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("RESERVATIONS_TTL", "inf", "reservations.ttl = 'inf' (from environment variable "
         "RESERVATIONS_TTL): Input should be a finite number"),
        ("WORKER_MAX_CLOCK_SKEW", "1e300", "worker.max_clock_skew = '1e300' (from environment "
         "variable WORKER_MAX_CLOCK_SKEW): Input should be less than or equal to 31536000"),
        ("WORKER_MAX_CLOCK_SKEW", "1e9", "less than or equal to 31536000"),
        ("API_RATE_LIMIT", "inf", "api.rate_limit = 'inf'"),
        ("WORKER_BATCH_WITHIN", "Infinity", "worker.batch_within = 'Infinity'"),
        ("TOKEN_LIMITS_HARD_LIMIT", str(2**63), "token_limits.hard_limit = '9223372036854775808'"
         " (from environment variable TOKEN_LIMITS_HARD_LIMIT): Input should be less than or "
         "equal to 9223372036854775807"),
    ],
)  # fmt: skip
def test_durations_and_limits_are_bounded(variable: str, value: str, expected: str) -> None:
    """Accepted, these crashed later: a timedelta overflowed, `init`'s DefaultsSet refused a
    skew past a year or a limit past a BIGINT, `config` printed `Infinity` (no JSON)."""
    with _environment({variable: value}):
        result = _loaded()
    assert isinstance(result, ConfigError)
    assert any(expected in p for p in result.problems), result.problems


def test_the_bounds_themselves_are_accepted() -> None:
    with _environment(
        {
            "WORKER_MAX_CLOCK_SKEW": "31536000",
            "RESERVATIONS_TTL": "31536000",
            "TOKEN_LIMITS_DAILY_LIMIT": str(2**63 - 1),
            "TOKEN_LIMITS_MONTHLY_LIMIT": str(2**63 - 1),
            "TOKEN_LIMITS_HARD_LIMIT": str(2**63 - 1),
        }
    ):
        loaded = _loaded()
    assert isinstance(loaded, Settings) and loaded.worker.max_clock_skew == 31_536_000


# --- through the real command ----------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "file_content", "expected"),
    [
        ({"MCP_PORT": "99999", "RESERVATIONS_TTL": "inf"}, None, "mcp.port = '99999'"),
        ({}, b'{"a":' * 50_000 + b"}" * 50_000, "nested too deeply"),
        ({"TOKEN_LIMITS_WARNING_THRESHOLD": "nan"}, b'{"mcp": {"port": 1}, "mcp": {}}', "twice"),
    ],
)
def test_the_cli_answers_bad_configuration_with_exit_code_2_and_no_traceback(
    tmp_path: Path, env: dict[str, str], file_content: bytes | None, expected: str
) -> None:
    clean = {k: v for k, v in os.environ.items() if k not in _VARIABLES}
    if file_content is not None:
        (tmp_path / "tokenquota.json").write_bytes(file_content)
        clean["TOKENQUOTA_CONFIG"] = str(tmp_path / "tokenquota.json")
    done = subprocess.run(
        [sys.executable, "-m", "tokenquota", "config"],
        env={**clean, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == "" and "Traceback" not in done.stderr
    assert re.match(r"error: invalid configuration", done.stderr), done.stderr
    assert expected in done.stderr


# --- the bounds of numbers ------------------------------------------------------------------


def _upper_bound(info: Any) -> Any:
    """The `le` of a numeric setting (also inside `X | None`), None when it has none."""
    metadata = list(info.metadata)
    for arg in get_args(info.annotation):
        metadata += [m for inner in get_args(arg)[1:] for m in getattr(inner, "metadata", [inner])]
    bounds: list[Any] = [m.le for m in metadata if isinstance(m, annotated_types.Le)]
    return min(bounds) if bounds else None


def _numeric_settings() -> list[tuple[str, str, Any, bool]]:
    """(path, variable, upper bound, integer?) of every number setting."""
    found = []
    for setting, variables in sorted(env_var_names().items()):
        if len(setting) != 2:
            continue  # the top-level ones: a level, a file, a folder
        section, key = setting
        model = Settings.model_fields[section].annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        info = next(f for n, f in model.model_fields.items() if key in (n, f.validation_alias))
        types = {a for arg in (info.annotation, *get_args(info.annotation))
                 for a in (arg, *get_args(arg))}  # fmt: skip
        if bool in types or not types & {int, float}:
            continue
        found.append((f"{section}.{key}", variables[0], _upper_bound(info), int in types))
    return found


def test_every_number_setting_has_an_upper_bound() -> None:
    # A number past what anything can use loaded, then failed (or overflowed) where it
    # was used; every one now has a bound the README's table states.
    numbers = _numeric_settings()
    assert len(numbers) > 30, numbers
    assert [path for path, _, bound, _ in numbers if bound is None] == []


@pytest.mark.parametrize(("path", "variable", "bound", "integer"), _numeric_settings())
def test_a_number_setting_takes_its_bound_and_refuses_one_past_it(
    path: str, variable: str, bound: Any, integer: bool
) -> None:
    at, past = (str(bound), str(bound + 1)) if integer else (repr(bound), repr(bound * 1.01))
    with _environment({variable: at}):
        loaded = _loaded()
    if isinstance(loaded, ConfigError):  # only a rule between settings may refuse it
        assert not [p for p in loaded.problems if p.startswith(f"{path} =")], loaded
    with _environment({variable: past}):
        refused = _loaded()
    assert isinstance(refused, ConfigError)
    assert any(
        p.startswith(f"{path} = ") and "less than or equal to" in p for p in refused.problems
    ), refused.problems
