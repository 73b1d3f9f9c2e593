"""`tokenquota checkpoints show` and `accept-gap` as a user runs them: the console script
in a subprocess against the real broker and PostgreSQL; and, in this process, the
confirmation of a gap, whose log bounds the test gives (the embedded broker cannot
delete records: see test_checkpoints.py)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from tests.support import fetch_value, settings_env
from tokenquota import checkpoints as checkpoints_module
from tokenquota import cli_run
from tokenquota.actors import os_actor
from tokenquota.cli import app
from tokenquota.config import KafkaSettings, Settings, env_var_names
from tokenquota.kafka_probe import LogBounds

pytestmark = pytest.mark.integration

TOKENQUOTA = str(Path(sys.executable).parent / "tokenquota")


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str


def _environment(settings: Settings, tmp_path: Path, **overrides: str) -> dict[str, str]:
    """The test process's environment without tokenquota settings, then `settings`'
    servers, a data directory of the test's own, and `overrides`."""
    ours = {v for variables in env_var_names().values() for v in variables}
    env = {k: v for k, v in os.environ.items() if k not in ours and k != "TOKENQUOTA_CONFIG"}
    data = tmp_path / "cli-data"
    data.mkdir(exist_ok=True)
    return (
        env
        | settings_env(settings)
        | {"TOKENQUOTA_DATA_DIR": str(data), "COLUMNS": "200"}
        | overrides
    )


async def _run(env: Mapping[str, str], *args: str) -> Run:
    process = await asyncio.create_subprocess_exec(
        TOKENQUOTA, *args, env=dict(env), cwd=env["TOKENQUOTA_DATA_DIR"],
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return Run(process.returncode, stdout.decode(), stderr.decode())


def _one_error_line(run: Run, code: int, text: str) -> None:
    assert run.code == code, run
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    assert text in lines[0], lines[0]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def _set_checkpoints(settings: Settings, offsets: dict[int, int]) -> None:
    for partition, offset in offsets.items():
        await fetch_value(
            settings.database,
            "INSERT INTO partition_checkpoints (topic, kafka_partition, next_offset) "
            "VALUES ($1, $2, $3)",
            settings.kafka.usage_topic,
            partition,
            offset,
        )


async def test_show_prints_every_partition_in_each_format(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    await _set_checkpoints(pipeline_settings, {0: 0, 2: 5})
    env = _environment(pipeline_settings, tmp_path)
    table, as_json, as_csv = await asyncio.gather(
        _run(env, "checkpoints", "show"),
        _run(env, "checkpoints", "show", "--format", "json"),
        _run(env, "checkpoints", "show", "-f", "csv"),
    )
    topic = pipeline_settings.kafka.usage_topic
    assert table.code == 0, table
    assert f"{topic}: 3 partitions, 0 with a gap" in table.stdout
    assert "applied up to the log's end" in table.stdout
    assert "nothing applied yet" in table.stdout
    assert "the checkpoint is past the log's end" in table.stdout
    assert as_json.code == 0, as_json
    shown = json.loads(as_json.stdout)
    assert shown["topic"] == topic and shown["accepted"] == []
    assert [(p["partition"], p["next_offset"], p["status"]) for p in shown["partitions"]] == [
        (0, 0, "ok"),
        (1, None, "ok"),
        (2, 5, "ahead"),
    ]
    assert as_csv.code == 0, as_csv
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [(r["partition"], r["next_offset"], r["log_first"], r["log_end"]) for r in rows] == [
        ("0", "0", "0", "0"),
        ("1", "", "0", "0"),
        ("2", "5", "0", "0"),
    ]


async def test_accept_gap_refuses_what_it_cannot_do_in_one_line(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    await _set_checkpoints(pipeline_settings, {0: 0})
    env = _environment(pipeline_settings, tmp_path)
    topic = pipeline_settings.kafka.usage_topic
    no_broker = env | {"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{_closed_port()}"}
    no_database = env | {"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{_closed_port()}/x"}
    no_kafka = {k: v for k, v in env.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    no_gap, unknown, negative, unreachable, down, unset = await asyncio.gather(
        _run(env, "checkpoints", "accept-gap", "--partition", "0", "--yes"),
        _run(env, "checkpoints", "accept-gap", "--partition", "7", "--yes"),
        _run(env, "checkpoints", "accept-gap", "--partition", "-1", "--yes"),
        _run(no_broker, "checkpoints", "accept-gap", "-p", "0", "--yes"),
        _run(no_database, "checkpoints", "accept-gap", "-p", "0", "--yes"),
        _run(no_kafka, "checkpoints", "accept-gap", "-p", "0", "--yes"),
    )
    _one_error_line(no_gap, 1, f"no gap to accept in {topic}[0]: its checkpoint 0 is not before")
    _one_error_line(unknown, 1, f"{topic} has no partition 7 (it has partitions 0 to 2)")
    _one_error_line(negative, 2, "Invalid value for '--partition' / '-p'")
    _one_error_line(unreachable, 1, "is unreachable")
    _one_error_line(down, 1, "PostgreSQL unreachable")
    _one_error_line(unset, 2, "no Kafka configured")
    assert (
        await fetch_value(
            pipeline_settings.database, "SELECT next_offset FROM partition_checkpoints"
        )
        == 0
    )
    shown = await _run(no_broker, "checkpoints", "show")
    _one_error_line(shown, 1, "is unreachable")


@pytest.fixture
def gap_of_three(
    pipeline_settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> dict[str, str]:
    """Partition 0's log starting at 5 (a broker that deleted offsets 0 to 4), and the
    environment of a command using the pipeline's servers."""

    async def bounds(kafka: KafkaSettings, topic: str) -> dict[int, LogBounds]:
        return {0: LogBounds(first=5, end=9), 1: LogBounds(0, 0), 2: LogBounds(0, 0)}

    monkeypatch.setattr(checkpoints_module, "partition_bounds", bounds)
    # In this process: leave the test's logging alone.
    monkeypatch.setattr(cli_run, "configure_logging", lambda *args: None)
    return _environment(pipeline_settings, tmp_path)


async def _invoke(env: dict[str, str], *args: str, answer: str | None = None) -> Result:
    def invoke() -> Result:
        return CliRunner().invoke(app, list(args), input=answer, env=env)

    return await asyncio.to_thread(invoke)  # in a thread: the command runs its own loop


async def test_accept_gap_asks_first_and_changes_nothing_unless_confirmed(
    pipeline_settings: Settings, gap_of_three: dict[str, str]
) -> None:
    await _set_checkpoints(pipeline_settings, {0: 2})
    topic = pipeline_settings.kafka.usage_topic
    shown = await _invoke(gap_of_three, "checkpoints", "show")
    assert shown.exit_code == 0, shown.output
    assert f"{topic}: 3 partitions, 1 with a gap" in shown.stdout
    # The note as data: the table wraps it to whatever width the console has.
    listed = await _invoke(gap_of_three, "checkpoints", "show", "-f", "json")
    assert listed.exit_code == 0, listed.output
    (gap,) = [p for p in json.loads(listed.stdout)["partitions"] if p["status"] == "gap"]
    assert gap["note"].startswith(
        "gap: offsets 2 to 4 are gone from the log and were never applied"
    )

    for answer in ("n\n", "\n", None):  # no, just Enter (the default is no), end of input
        declined = await _invoke(
            gap_of_three, "checkpoints", "accept-gap", "-p", "0", answer=answer
        )
        assert declined.exit_code == 1, declined.output
        assert (
            f"{topic}[0]: checkpoint 2, the log starts at 5: offsets 2 to 4 (3 messages) are gone "
            "from the log and were never applied." in declined.stdout
        )
        assert (
            f"Move the checkpoint of {topic}[0] from 2 to 5? The events at offsets 2 to 4 are "
            "lost to the projections (budgets, usage, reservations, alerts), and a replay "
            "cannot bring them back either [y/N]:" in declined.stdout
        )
        assert "error: not confirmed: nothing was changed" in declined.stderr
    assert (
        await fetch_value(
            pipeline_settings.database, "SELECT next_offset FROM partition_checkpoints"
        )
        == 2
    )

    accepted = await _invoke(gap_of_three, "checkpoints", "accept-gap", "-p", "0", answer="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert (
        f"{topic}[0]: checkpoint moved from 2 to 5; 3 offsets skipped, recorded in "
        f"accepted_log_gaps by {os_actor()} at " in accepted.stdout
    )
    assert (
        await fetch_value(
            pipeline_settings.database, "SELECT next_offset FROM partition_checkpoints"
        )
        == 5
    )
    again = await _invoke(gap_of_three, "checkpoints", "accept-gap", "-p", "0", "--yes")
    assert again.exit_code == 1
    assert f"no gap to accept in {topic}[0]: its checkpoint 5 is not before" in again.stderr

    listed = await _invoke(gap_of_three, "checkpoints", "show", "-f", "json")
    recorded = json.loads(listed.stdout)["accepted"]
    assert [
        (a["partition"], a["from_offset"], a["to_offset"], a["skipped"], a["actor"])
        for a in recorded
    ] == [(0, 2, 5, 3, os_actor())]
    table = await _invoke(gap_of_three, "checkpoints", "show")
    assert "gaps accepted (offsets from..to-1)" in table.stdout


async def test_accept_gap_with_yes_asks_nothing(
    pipeline_settings: Settings, gap_of_three: dict[str, str]
) -> None:
    await _set_checkpoints(pipeline_settings, {0: 0})
    accepted = await _invoke(gap_of_three, "checkpoints", "accept-gap", "--partition", "0", "--yes")
    assert accepted.exit_code == 0, accepted.output
    assert "[y/N]" not in accepted.stdout
    assert "checkpoint moved from 0 to 5; 5 offsets skipped" in accepted.stdout
