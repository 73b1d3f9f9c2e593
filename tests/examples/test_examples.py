"""Every example runs to completion; those that need the stack run against `tokenquota dev`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tokenquota.config import env_var_names

EXAMPLES = sorted(
    p for p in (Path(__file__).parents[2] / "examples").glob("*.py") if not p.name.startswith("_")
)
NEEDS_STACK = "Needs the stack"


def _clean_environment(**overrides: str) -> dict[str, str]:
    ours = {v for variables in env_var_names().values() for v in variables}
    env = {k: v for k, v in os.environ.items() if k not in ours and k != "TOKENQUOTA_CONFIG"}
    return env | overrides


@pytest.fixture(scope="module")
def dev_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """`tokenquota dev` (what `make run` runs), and the environment its clients need."""
    data = tmp_path_factory.mktemp("dev")
    process = subprocess.Popen(
        [sys.executable, "-m", "tokenquota", "dev"],
        env=_clean_environment(TOKENQUOTA_DATA_DIR=str(data / "stack")),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    found: dict[str, str] = {}
    lines: list[str] = []
    try:
        for line in process.stdout:  # ends when the process exits
            lines.append(line)
            name, _, value = line.strip().partition("=")
            if name in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"):
                found[name] = value
            if "Press Ctrl-C" in line:
                break
        assert len(found) == 2, "tokenquota dev did not start:\n" + "".join(lines)
        yield _clean_environment(**found, TOKENQUOTA_DATA_DIR=str(data / "client"))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def test_there_are_examples() -> None:
    assert EXAMPLES


@pytest.mark.parametrize(
    "example", [p for p in EXAMPLES if NEEDS_STACK not in p.read_text()], ids=lambda p: p.name
)
def test_example_runs(example: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(example)], capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip()


@pytest.mark.integration
@pytest.mark.parametrize(
    "example", [p for p in EXAMPLES if NEEDS_STACK in p.read_text()], ids=lambda p: p.name
)
def test_example_runs_against_the_dev_stack(example: Path, dev_stack: dict[str, str]) -> None:
    run = subprocess.run(
        [sys.executable, str(example)],
        env=dev_stack,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert " used " in run.stdout, run.stdout  # every stack example ends with settled usage
