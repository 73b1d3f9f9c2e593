"""The `tokenquota` command as a user runs it: a subprocess against the real servers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from tests.support import wait_until
from tokenquota.config import DatabaseSettings, env_var_names
from tokenquota.embedded import EMBEDDED_PARTITIONS, free_port
from tokenquota.projections import connect

pytestmark = pytest.mark.integration

# The console script installed next to the interpreter running the tests.
TOKENQUOTA = str(Path(sys.executable).parent / "tokenquota")


def _environment(**overrides: str) -> dict[str, str]:
    """The test process's environment without any tokenquota setting, plus `overrides`."""
    ours = {v for variables in env_var_names().values() for v in variables}
    env = {k: v for k, v in os.environ.items() if k not in ours and k != "TOKENQUOTA_CONFIG"}
    return env | overrides


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str


async def _run(*args: str, env: Mapping[str, str], timeout: float = 60) -> Run:
    process = await asyncio.create_subprocess_exec(
        TOKENQUOTA, *args, env=dict(env),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return Run(process.returncode, stdout.decode(), stderr.decode())


async def _partitions(bootstrap_servers: str, topics: list[str]) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        if not set(topics) <= set(await admin.list_topics()):
            return {}
        return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(topics)}
    finally:
        await admin.close()


async def _delete_topics(bootstrap_servers: str, topics: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        await admin.delete_topics(topics)
    finally:
        await admin.close()


async def test_init_sets_up_topics_and_schema_and_a_second_run_changes_nothing(
    bootstrap_servers: str, database_settings: DatabaseSettings
) -> None:
    name = f"tq-init-{uuid.uuid4().hex[:8]}"
    env = _environment(
        KAFKA_BOOTSTRAP_SERVERS=bootstrap_servers,
        KAFKA_USAGE_TOPIC=f"{name}.usage",
        KAFKA_DLQ_TOPIC=f"{name}.dlq",
        KAFKA_PARTITIONS="5",
        DATABASE_URL=database_settings.dsn(),
        DATABASE_SCHEMA=database_settings.schema_name,
    )
    try:
        first = await _run("init", env=env)
        assert first.code == 0, first.stderr
        assert f"{name}.usage: created, 5 partitions" in first.stdout
        assert f"{name}.dlq: created, 1 partitions" in first.stdout
        assert "migrations applied: 0001_usage_ledger" in first.stdout
        assert await _partitions(bootstrap_servers, [f"{name}.usage", f"{name}.dlq"]) == {
            f"{name}.usage": 5,
            f"{name}.dlq": 1,
        }

        second = await _run("init", env=env)
        assert second.code == 0, second.stderr
        assert f"{name}.usage: exists, 5 partitions" in second.stdout
        assert "migrations applied: none pending" in second.stdout

        resized = await _run("init", env=env | {"KAFKA_PARTITIONS": "8"})
        assert resized.code == 0
        assert "has 5 partitions, configured 8; left unchanged" in resized.stdout
    finally:
        await _delete_topics(bootstrap_servers, [f"{name}.usage", f"{name}.dlq"])


async def test_migrate_applies_once(database_settings: DatabaseSettings) -> None:
    env = _environment(
        DATABASE_URL=database_settings.dsn(), DATABASE_SCHEMA=database_settings.schema_name
    )
    first = await _run("migrate", env=env)
    assert (first.code, first.stdout.strip()) == (
        0,
        "migrations applied: 0001_usage_ledger, 0002_budget_projections, 0003_log_clock, "
        "0004_alerts, 0005_read_model_rollups, 0006_worker_status, "
        "0007_integration_logs_view, 0008_read_model_indexes, 0009_dlq_reviews, "
        "0010_budget_tree, 0011_usd_limits, 0012_account_rollups, "
        "0013_tree_alerts, 0014_budget_fillfactor, 0015_node_counters_from_rollups, "
        "0016_accepted_log_gaps",
    )
    second = await _run("migrate", env=env)
    assert (second.code, second.stdout.strip()) == (0, "migrations applied: none pending")
    conn = await connect(database_settings.dsn(), database_settings.schema_name)
    try:
        assert await conn.fetchval("SELECT count(*) FROM tokenquota_schema_migrations") == 16
    finally:
        await conn.close()


async def test_invalid_configuration_stops_start_up_with_exit_code_2() -> None:
    run = await _run("init", env=_environment(MCP_PORT="http", KAFKA_PARTITIONS="-1"))
    assert run.code == 2
    assert "mcp.port = 'http' (from environment variable MCP_PORT)" in run.stderr
    assert "kafka.partitions = '-1' (from environment variable KAFKA_PARTITIONS)" in run.stderr
    assert "Traceback" not in run.stderr


async def test_unreachable_servers_are_reported_without_a_traceback(
    database_settings: DatabaseSettings,
) -> None:
    run = await _run(
        "init", env=_environment(KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}"), timeout=90
    )
    assert run.code == 1
    assert "error: Kafka at 127.0.0.1:" in run.stderr and "Traceback" not in run.stderr

    run = await _run(
        "migrate", env=_environment(DATABASE_URL=f"postgresql://x@127.0.0.1:{free_port()}/x")
    )
    assert run.code == 1
    assert "cannot connect to PostgreSQL" in run.stderr and "Traceback" not in run.stderr

    run = await _run("migrate", env=_environment())
    assert run.code == 1
    assert "set DATABASE_URL" in run.stderr


async def test_config_prints_the_effective_settings_with_secrets_masked(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps({"kilocode": {"max_concurrent_tasks": 7}, "database": {"password": "s3cret"}})
    )
    run = await _run("--config", str(path), "config", env=_environment(MCP_PORT="8123"))
    assert run.code == 0, run.stderr
    shown = json.loads(run.stdout)
    assert shown["orchestrator"]["max_concurrent_tasks"] == 7  # `kilocode`: its old name
    assert shown["mcp"]["port"] == 8123
    assert "s3cret" not in run.stdout


async def test_schema_files_check_passes_on_the_committed_files() -> None:
    run = await _run("schemas", "--check", env=_environment())
    assert run.code == 0, run.stderr
    assert "up to date" in run.stdout


# --- tokenquota dev -----------------------------------------------------------------------


class DevProcess:
    """A running `tokenquota dev` and what it printed once ready."""

    def __init__(self, process: asyncio.subprocess.Process, output: list[str]) -> None:
        self.process = process
        self.output = output

    def value(self, key: str) -> str:
        line = next(line for line in self.output if line.strip().startswith(f"{key}="))
        return line.strip().split("=", 1)[1]

    def children(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children(recursive=True)

    def api(self) -> tuple[str, int]:
        """The API's URL and PID from the line `  api      http://...  (docs /docs), pid N, ...`."""
        line = next(line for line in self.output if line.strip().startswith("api "))
        url = line.split()[1]
        pid = int(line.split(", pid ")[1].split(",")[0])
        return url, pid


async def _start_dev(env: Mapping[str, str], *args: str) -> DevProcess:
    # An API port of its own: never 8787, which a developer's `make run` may hold.
    env = {"API_PORT": str(free_port()), **env}
    process = await asyncio.create_subprocess_exec(
        TOKENQUOTA, "dev", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdout is not None
    output: list[str] = []

    async def until_ready() -> None:
        assert process.stdout is not None
        while not output or "Press Ctrl-C" not in output[-1]:
            line = await process.stdout.readline()
            if not line:
                raise AssertionError("tokenquota dev exited early:\n" + "".join(output))
            output.append(line.decode())

    try:
        await asyncio.wait_for(until_ready(), timeout=90)
    except BaseException:
        process.kill()
        await process.wait()
        raise
    return DevProcess(process, output)


async def _stop_dev(dev: DevProcess, sig: signal.Signals) -> str:
    dev.process.send_signal(sig)
    assert dev.process.stdout is not None
    rest, _ = await asyncio.wait_for(dev.process.communicate(), timeout=60)
    assert dev.process.returncode == 0, rest.decode()
    return rest.decode()


def _gone(processes: list[psutil.Process]) -> bool:
    alive = []
    for process in processes:
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            continue
    return not alive


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
async def test_dev_runs_the_embedded_stack_and_stops_everything_it_started(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    dev = await _start_dev(_environment(TOKENQUOTA_DATA_DIR=str(tmp_path / "dev")))
    try:
        children = dev.children()
        commands = [" ".join(c.cmdline()) for c in children]
        assert any("tansu" in c and "tcp://127.0.0.1:" in c for c in commands), commands
        assert any("postgres" in c and "-h 127.0.0.1" in c for c in commands), commands

        bootstrap = dev.value("KAFKA_BOOTSTRAP_SERVERS")
        assert bootstrap.startswith("127.0.0.1:")
        assert await _partitions(bootstrap, ["tokenquota.usage", "tokenquota.usage.dlq"]) == {
            "tokenquota.usage": EMBEDDED_PARTITIONS,  # not the 12 of a configured Kafka
            "tokenquota.usage.dlq": 1,
        }
        database_url = dev.value("DATABASE_URL")
        assert "@127.0.0.1:" in database_url
        conn = await connect(database_url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM usage_events") == 0
        finally:
            await conn.close()

        api_url, api_pid = dev.api()
        assert api_url.startswith("http://127.0.0.1:")
        api_process = next(c for c in children if c.pid == api_pid)
        async with httpx.AsyncClient(base_url=api_url, trust_env=False, timeout=10) as client:
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            overview = await client.get("/v1/overview")
            assert overview.status_code == 200, overview.text
            assert overview.json()["sessions_active_today"] == 0
    finally:
        tail = await _stop_dev(dev, stop_signal)
    assert "tokenquota dev stack stopped" in tail
    assert _gone(children)
    assert _gone([api_process])


async def test_dev_demo_fills_the_page_through_the_hooks_and_ctrl_c_stops_it_all(
    tmp_path: Path,
) -> None:
    dev = await _start_dev(_environment(TOKENQUOTA_DATA_DIR=str(tmp_path / "dev")), "--demo")
    try:
        api_url, _ = dev.api()
        assert dev.output[0] == f"tokenquota dashboard: {api_url}/ (starting...)\n"
        line = next(line for line in dev.output if line.strip().startswith("demo "))
        demo_pid = int(line.split("pid ")[1].split(",")[0])
        children = dev.children()
        assert demo_pid in [c.pid for c in children]
        seen: dict[str, list[dict[str, Any]]] = {}
        openai = {"gpt-4o", "gpt-4o-mini", "gpt-4.1-mini"}
        anthropic = {"claude-sonnet-4-5", "claude-haiku-4-5"}

        def demo_rows(rows: list[dict[str, Any]]) -> bool:
            return any(row.get("session_id", "demo-").startswith("demo-") for row in rows)

        # What each read must show before the page is "filled"; each is read again until
        # it does (the demo's sessions start at different paces).
        wanted: dict[str, tuple[str, dict[str, str], Callable[[list[dict[str, Any]]], bool]]] = {
            "usage": ("/v1/top", {}, demo_rows),
            # a refusal by the worker, at the tiny budget's limit
            "refused": ("/v1/decisions", {"status": "rejected"},
                        lambda rows: "demo-tiny-budget" in {r["session_id"] for r in rows}),
            "costs": ("/v1/costs", {"by": "model"},
                      lambda rows: bool({r["model"] for r in rows} & openai)
                      and bool({r["model"] for r in rows} & anthropic)),
            "alerts": ("/v1/alerts", {}, demo_rows),
        }  # fmt: skip

        async def on_the_page() -> bool:
            async with httpx.AsyncClient(base_url=api_url, trust_env=False, timeout=10) as api:
                for name, (path, params, shown) in wanted.items():
                    if name not in seen:
                        rows = (await api.get(path, params=params)).json()
                        if shown(rows):
                            seen[name] = rows
            return len(seen) == len(wanted)

        what = "the demo's usage, refusals, costs of both providers and alerts"
        await wait_until(on_the_page, 90, what)
    finally:
        tail = await _stop_dev(dev, signal.SIGINT)
    assert "tokenquota dev stack stopped" in tail
    assert _gone(children)
    log = (tmp_path / "dev" / "logs" / "demo.log").read_text()
    assert "demo stopping:" in log, log[-2000:]  # it stopped on its own terms, not killed


EMIT_FROM_PYTHON_C = """
import asyncio
from tokenquota import load_settings
from tokenquota.producers import Emitter
from tokenquota.schemas import Source, TokenUsed

async def main():
    async with Emitter.from_settings(load_settings()) as emitter:
        print(await emitter.emit(TokenUsed(
            session_id="from-python-c", source=Source(component="sdk", name="readme"),
            model="gpt-4o", input_tokens=120, output_tokens=30, operation="chat",
            counted_by="provider")))

asyncio.run(main())
"""


async def test_dev_runs_the_worker_so_an_emitted_event_reaches_the_budget_table(
    tmp_path: Path,
) -> None:
    dev = await _start_dev(_environment(TOKENQUOTA_DATA_DIR=str(tmp_path / "dev")))
    try:
        # one partition on the embedded broker unless KAFKA_PARTITIONS is set (EMBEDDED_PARTITIONS)
        assert dev.value("KAFKA_PARTITIONS") == "1"
        assert any("tokenquota.usage: created, 1 partitions" in line for line in dev.output)
        env = _environment(
            KAFKA_BOOTSTRAP_SERVERS=dev.value("KAFKA_BOOTSTRAP_SERVERS"),
            TOKENQUOTA_DATA_DIR=str(tmp_path / "client"),
        )
        emitted = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", EMIT_FROM_PYTHON_C],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (emitted.returncode, emitted.stdout.strip()) == (0, "acked"), emitted.stderr
        conn = await connect(dev.value("DATABASE_URL"))
        try:

            async def counted() -> bool:
                used = await conn.fetchval(
                    "SELECT tokens_used_total FROM session_token_budgets "
                    "WHERE session_id = 'from-python-c'"
                )
                return bool(used == 150)

            await wait_until(counted, 60, "the event in session_token_budgets")
        finally:
            await conn.close()
    finally:
        await _stop_dev(dev, signal.SIGTERM)


async def test_dev_keeps_its_database_across_restarts(tmp_path: Path) -> None:
    env = _environment(TOKENQUOTA_DATA_DIR=str(tmp_path / "dev"), KAFKA_PARTITIONS="4")
    first = await _start_dev(env)
    await _stop_dev(first, signal.SIGTERM)
    assert any("migrations applied: 0001_usage_ledger" in line for line in first.output)
    second = await _start_dev(env, "--no-api")
    ours = [c.cmdline()[1:] for c in second.children() if "tokenquota" in c.cmdline()]
    await _stop_dev(second, signal.SIGTERM)
    assert ours == [["-m", "tokenquota", "worker"]]  # --no-api: no API process
    assert not any(line.strip().startswith("api ") for line in second.output)
    assert any("migrations applied: none pending" in line for line in second.output)
    # the broker is memory-only: its topics are created anew on every start, with the
    # partitions KAFKA_PARTITIONS sets
    assert any("tokenquota.usage: created, 4 partitions" in line for line in second.output)
    assert second.value("KAFKA_PARTITIONS") == "4"


def _is_this_interpreter(executable: str) -> bool:
    """True when `executable` is the Python running the tests, however the console
    script's shebang or a symlink names it (python, python3, a venv link)."""
    return Path(executable).resolve() == Path(sys.executable).resolve()


async def test_dev_uses_configured_servers_instead_of_starting_its_own(
    tmp_path: Path, bootstrap_servers: str, database_settings: DatabaseSettings
) -> None:
    name = f"tq-dev-{uuid.uuid4().hex[:8]}"
    dev = await _start_dev(
        _environment(
            TOKENQUOTA_DATA_DIR=str(tmp_path / "dev"),
            KAFKA_BOOTSTRAP_SERVERS=bootstrap_servers,
            KAFKA_USAGE_TOPIC=f"{name}.usage",
            KAFKA_DLQ_TOPIC=f"{name}.dlq",
            DATABASE_URL=database_settings.dsn(),
            DATABASE_SCHEMA=database_settings.schema_name,
        )
    )
    try:
        commands = [c.cmdline() for c in dev.children()]
        # only the worker and the API, no servers of its own
        assert sorted(c[1:4] for c in commands) == [
            ["-m", "tokenquota", "api"],
            ["-m", "tokenquota", "worker"],
        ], commands
        assert all(_is_this_interpreter(c[0]) for c in commands), commands
        assert dev.value("KAFKA_BOOTSTRAP_SERVERS") == bootstrap_servers
        assert dev.value("DATABASE_URL") == database_settings.dsn()
        assert not (tmp_path / "dev" / "postgres").exists()
    finally:
        await _stop_dev(dev, signal.SIGTERM)
        await _delete_topics(bootstrap_servers, [f"{name}.usage", f"{name}.dlq"])


async def test_dev_refuses_a_data_directory_in_use_by_another_server(tmp_path: Path) -> None:
    env = _environment(TOKENQUOTA_DATA_DIR=str(tmp_path / "dev"))
    first = await _start_dev(env)
    try:
        clash = await _run("dev", env=env | {"API_PORT": str(free_port())})
        assert clash.code == 1
        assert "is already running on" in clash.stderr
    finally:
        await _stop_dev(first, signal.SIGTERM)


async def test_dev_refuses_a_taken_api_port_before_starting_anything(tmp_path: Path) -> None:
    with socket.socket() as taken:  # what a first `make run` holds
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        clash = await _run(
            "dev",
            env=_environment(TOKENQUOTA_DATA_DIR=str(tmp_path / "dev"), API_PORT=str(port)),
        )
    assert clash.code == 1
    lines = clash.stderr.strip().splitlines()
    assert len(lines) == 1, clash.stderr
    assert f"port {port} on 127.0.0.1 is already in use" in lines[0]
    assert "API_PORT=" in lines[0]
    assert not (tmp_path / "dev" / "postgres").exists()  # no server was started
