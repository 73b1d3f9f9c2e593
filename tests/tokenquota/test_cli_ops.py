"""The operator commands as a user runs them: the `tokenquota` console script in a
subprocess, against the real broker, the real PostgreSQL and a running worker. What they
print must be what the events imply, in every --format; a user mistake is one line."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from tests.conftest import WorkerStarter
from tests.support import T0, fetch_value, settings_env, used, wait_until
from tokenquota.actors import os_actor
from tokenquota.cli_reports import ReservationStatus
from tokenquota.config import Settings, env_var_names
from tokenquota.embedded import free_port
from tokenquota.privacy import stored_session_id
from tokenquota.producers.reservations import TokenQuota
from tokenquota.schemas import ApiCost, BudgetSet, Source, utc_now
from tokenquota.sections import PrivacySettings

pytestmark = pytest.mark.integration

TOKENQUOTA = str(Path(sys.executable).parent / "tokenquota")
SOURCE = Source(component="sdk", name="cli-tests")


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)

    def csv(self) -> list[dict[str, str]]:
        return list(csv.DictReader(io.StringIO(self.stdout)))


def _environment(settings: Settings | None, tmp_path: Path, **overrides: str) -> dict[str, str]:
    """The test process's environment without tokenquota settings, then `settings`' servers,
    a data directory of the test's own (the emitter's spool), and `overrides`."""
    ours = {v for variables in env_var_names().values() for v in variables}
    env = {k: v for k, v in os.environ.items() if k not in ours and k != "TOKENQUOTA_CONFIG"}
    if settings is not None:
        env |= settings_env(settings)
    return env | {"TOKENQUOTA_DATA_DIR": str(tmp_path / "cli-data"), "COLUMNS": "200"} | overrides


async def _run(env: Mapping[str, str], *args: str, timeout: float = 60) -> Run:
    process = await asyncio.create_subprocess_exec(
        TOKENQUOTA, *args, env=dict(env), cwd=env["TOKENQUOTA_DATA_DIR"].rsplit("/", 1)[0],
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return Run(process.returncode, stdout.decode(), stderr.decode())


def _one_error_line(run: Run, code: int, *words: str) -> None:
    assert run.code == code, run
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("error: "), run.stderr
    assert "Traceback" not in run.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


async def _budget(quota: TokenQuota, session: str, daily: int, monthly: int, hard: int) -> None:
    await quota.emit(
        BudgetSet(
            session_id=session,
            source=SOURCE,
            daily_limit=daily,
            monthly_limit=monthly,
            hard_limit=hard,
            warning_threshold=Decimal("0.5"),
            critical_threshold=Decimal("0.9"),
        )
    )


async def _applied(settings: Settings, count: int) -> None:
    async def done() -> bool:
        return bool(
            await fetch_value(settings.database, "SELECT count(*) >= $1 FROM usage_events", count)
        )

    await wait_until(done, 60, f"{count} events applied")


async def test_budget_set_waits_until_applied_prints_it_and_names_the_actor(
    pipeline_settings: Settings, start_worker: WorkerStarter, tmp_path: Path
) -> None:
    worker = start_worker()
    env = _environment(pipeline_settings, tmp_path)
    args = ("budget", "set", "ops-alice", "--daily", "1000", "--monthly", "20000")
    run = await _run(env, *args, "--hard", "300000", "--warning", "0.7", "--critical", "0.9",
                     "--format", "json", "--timeout", "60")  # fmt: skip
    assert run.code == 0, (run, worker.log_path.read_text()[-2000:])
    report = run.json
    assert isinstance(report, dict)
    assert report["limits"]["daily_limit"] == 1000
    assert report["limits"]["monthly_limit"] == 20000
    assert report["limits"]["hard_limit"] == 300000
    assert Decimal(report["limits"]["warning_threshold"]) == Decimal("0.7")
    # Applied before it printed: the projection already holds it.
    assert (
        await fetch_value(
            pipeline_settings.database,
            "SELECT daily_limit FROM session_token_budgets WHERE session_id = 'ops-alice'",
        )
        == 1000
    )

    table = await _run(env, "budget", "show", "ops-alice")
    assert table.code == 0, table
    assert "1,000" in table.stdout and "20,000" in table.stdout and "300,000" in table.stdout
    assert "70.0%" in table.stdout  # the warning threshold

    audit = await _run(env, "audit", "--session", "ops-alice", "--format", "json")
    assert audit.code == 0, audit
    rows = audit.json
    assert isinstance(rows, list) and len(rows) == 1
    assert rows[0]["actor"] == os_actor()
    assert rows[0]["event_type"] == "BudgetSet"


async def test_usage_reports_and_costs_show_what_the_events_imply(
    pipeline_settings: Settings, start_worker: WorkerStarter, tmp_path: Path
) -> None:
    worker = start_worker()
    now = utc_now()
    async with TokenQuota(pipeline_settings, source=SOURCE) as quota:
        await _budget(quota, "ops-bob", 10_000, 100_000, 1_000_000)
        await _budget(quota, "ops-carol", 10_000, 100_000, 1_000_000)
        await quota.emit(used("ops-bob", 6_000, now, output=1_234))  # 72.3% of the day: warning
        await quota.emit(used("ops-carol", 1_500, now))
        for cost in ("0.25", "1.5"):
            await quota.emit(
                ApiCost(
                    session_id="ops-carol", source=SOURCE, api="openai", model="gpt-4o",
                    input_tokens=100, output_tokens=10, cost_usd=Decimal(cost),
                    price_source="test",
                )
            )  # fmt: skip
    await _applied(pipeline_settings, 6)
    env = _environment(pipeline_settings, tmp_path)

    day = now.date().isoformat()
    # Each command a process of its own, run side by side (each mostly waits for imports).
    (
        usage,
        usage_table,
        top,
        costs,
        costs_table,
        report,
        apis,
        report_table,
        alerts,
    ) = await asyncio.gather(
        _run(env, "usage", "ops-bob", "--format", "csv"),
        _run(env, "usage", "ops-bob"),
        _run(env, "top", "--by", "tokens", "--format", "json"),
        _run(env, "costs", "--by", "api", "--format", "csv"),
        _run(env, "costs"),
        _run(env, "report", "daily", "--date", day, "--format", "json"),
        _run(env, "report", "daily", "--date", day, "--rows", "apis", "-f", "csv"),
        _run(env, "report", "daily", "--date", day),
        _run(env, "alerts", "--since", "1h", "--format", "json"),
    )
    assert usage.code == 0, (usage, worker.log_path.read_text()[-2000:])
    windows = {row["window"]: row for row in usage.csv()}
    assert windows["daily"]["used"] == "7234"
    assert windows["daily"]["limit"] == "10000"
    assert windows["daily"]["remaining"] == "2766"
    assert windows["total"]["used"] == "7234"
    assert "7,234" in usage_table.stdout and "72.3% warning" in usage_table.stdout

    assert top.code == 0, top
    ranked = top.json
    assert isinstance(ranked, list)
    assert [row["session_id"] for row in ranked[:2]] == ["ops-bob", "ops-carol"]
    assert ranked[0]["tokens_used"] == 7234

    assert costs.code == 0, costs
    by_api = {row["api_name"]: row for row in costs.csv()}
    assert Decimal(by_api["openai"]["cost_usd"]) == Decimal("1.75")
    assert by_api["openai"]["requests"] == "2"
    assert "$1.75" in costs_table.stdout

    assert report.code == 0, report
    sessions = {row["session_id"]: row for row in report.json["sessions"]}
    assert sessions["ops-bob"]["input_tokens"] == 6_000
    assert sessions["ops-bob"]["output_tokens"] == 1_234
    assert [(r["api_name"], r["model"], Decimal(r["cost_usd"])) for r in apis.csv()] == [
        ("openai", "gpt-4o", Decimal("1.75"))
    ]
    assert report_table.code == 0, report_table
    assert f"daily report {day}: 8,734 tokens, $1.75" in report_table.stdout
    assert "6,000" in report_table.stdout and "1,234" in report_table.stdout

    assert alerts.code == 0, alerts
    crossings = [(a["session_id"], a["window_name"], a["level"]) for a in alerts.json]
    assert ("ops-bob", "daily", "warning") in crossings
    assert not [c for c in crossings if c[0] == "ops-carol"]


async def test_reservations_lists_decisions_with_status_filter(
    pipeline_settings: Settings, start_worker: WorkerStarter, tmp_path: Path
) -> None:
    worker = start_worker()
    async with TokenQuota(pipeline_settings, source=SOURCE) as quota:
        await _budget(quota, "ops-dave", 1_000, 10_000, 100_000)
        await _applied(pipeline_settings, 1)
        held = await quota.reserve("ops-dave", 400)
        await held.settle(input_tokens=300, output_tokens=0, model="gpt-4o")
        with pytest.raises(Exception, match="ops-dave"):
            await quota.reserve("ops-dave", 900)
    env = _environment(pipeline_settings, tmp_path)
    run = await _run(env, "reservations", "ops-dave", "--format", "json")
    assert run.code == 0, (run, worker.log_path.read_text()[-2000:])
    statuses = sorted(row["status"] for row in run.json)
    assert "settled" in statuses
    only = await _run(env, "reservations", "ops-dave", "--status", "settled", "--format", "csv")
    rows = only.csv()
    assert [row["status"] for row in rows] == ["settled"]
    assert rows[0]["tokens"] == "400"
    every = run.json
    # Every status the command offers works (side by side: each mostly waits for imports).
    statuses_offered = list(ReservationStatus)
    *filtered, pending = await asyncio.gather(
        *(_run(env, "reservations", "ops-dave", "--status", st, "-f", "json")
          for st in statuses_offered),
        _run(env, "reservations", "ops-dave", "--status", "pending"),
    )  # fmt: skip
    for status, only in zip(statuses_offered, filtered, strict=True):
        assert only.code == 0, only
        assert only.json == [row for row in every if row["status"] == status], only
    _one_error_line(pending, 2, "--status")


async def test_commands_of_one_session_refuse_a_session_no_event_named(
    pipeline_settings: Settings, start_worker: WorkerStarter, tmp_path: Path
) -> None:
    start_worker()
    async with TokenQuota(pipeline_settings, source=SOURCE) as quota:
        await _budget(quota, "ops-gina", 1_000, 10_000, 100_000)
    await _applied(pipeline_settings, 1)
    env = _environment(pipeline_settings, tmp_path)
    unknown, marked = "ops-nobody", "ops-[bold]nobody[/x]"
    # Each a process of its own, run side by side (each mostly waits for its imports).
    audit, reservations, alerts, *refused = await asyncio.gather(
        _run(env, "audit", "--session", "ops-gina", "-f", "json"),
        _run(env, "reservations", "ops-gina", "-f", "json"),
        _run(env, "alerts", "--session", "ops-gina", "-f", "json"),
        _run(env, "reservations", unknown, timeout=30),
        _run(env, "alerts", "--session", unknown, timeout=30),
        _run(env, "audit", "--session", unknown, timeout=30),
        _run(env, "tail", "--session", unknown, timeout=30),
        _run(env, "reservations", marked, timeout=30),  # printed as typed, not as markup
    )
    assert audit.code == 0 and len(audit.json) == 1, audit
    for run in (reservations, alerts):
        assert (run.code, run.json) == (0, []), run
    for run, session in zip(refused, [unknown] * 4 + [marked], strict=True):
        _one_error_line(run, 1, f"unknown session {session!r}")


async def test_tail_follows_applied_events_until_ctrl_c(
    pipeline_settings: Settings, start_worker: WorkerStarter, tmp_path: Path
) -> None:
    start_worker()
    env = _environment(pipeline_settings, tmp_path)
    tail = await asyncio.create_subprocess_exec(
        TOKENQUOTA, "tail", "--format", "json", "--interval", "0.1", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with TokenQuota(pipeline_settings, source=SOURCE) as quota:
            await _budget(quota, "ops-erin", 10_000, 100_000, 1_000_000)
            await quota.emit(used("ops-erin", 42, utc_now()))
        assert tail.stdout is not None
        seen: list[dict[str, object]] = []

        async def read_two() -> None:
            assert tail.stdout is not None
            while len(seen) < 2:
                line = await tail.stdout.readline()
                assert line, "tail exited"
                seen.append(json.loads(line))

        await asyncio.wait_for(read_two(), 60)
        assert [e["event_type"] for e in seen] == ["BudgetSet", "TokenUsed"]
        assert all(e["session_id"] == "ops-erin" for e in seen)
        tail.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(tail.wait(), 30) == 0
        assert tail.stderr is not None
        assert b"Traceback" not in await tail.stderr.read()
    finally:
        if tail.returncode is None:
            tail.kill()
            await tail.wait()


async def test_health_exit_codes(
    pipeline_settings: Settings, start_worker: WorkerStarter, tmp_path: Path
) -> None:
    worker = start_worker()
    env = _environment(pipeline_settings, tmp_path)

    async def healthy() -> bool:
        return (await _run(env, "health", "--format", "json")).code == 0

    await wait_until(healthy, 60, "a healthy pipeline", [worker])
    run = await _run(env, "health", "--format", "json")
    assert run.json["status"] == "ok"

    table = await _run(env, "health")
    assert table.code == 0 and "health: ok" in table.stdout, table
    assert "Updating subscribed topics" not in table.stderr  # no Kafka client chatter

    # A message in the dead-letter topic needs a look: degraded, exit code 1.
    producer = AIOKafkaProducer(bootstrap_servers=pipeline_settings.kafka.bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(pipeline_settings.kafka.dlq_topic, b"not an event")
    finally:
        await producer.stop()
    run = await _run(env, "health", "--format", "json")
    assert run.code == 1, run
    assert run.json["status"] == "degraded"
    assert run.json["dlq"]["status"] == "degraded"
    # Looked at and acknowledged, it no longer degrades the pipeline.
    shown = await _run(env, "dlq", "show", "--format", "json")
    assert shown.code == 0, shown
    assert (shown.json["unreviewed"], shown.json["total"]) == (1, 1)
    (letter,) = shown.json["letters"]
    assert letter["value"] == "not an event" and letter["reason"] == "(no reason header)"
    table = await _run(env, "dlq", "show")
    assert "1 unreviewed of 1" in table.stdout and "not an event" in table.stdout, table
    acked = await _run(env, "dlq", "ack")
    assert acked.code == 0 and "1 dead letters marked reviewed" in acked.stderr, acked
    run = await _run(env, "health", "--format", "json")
    assert run.code == 0 and run.json["dlq"]["details"] == {"depth": 0, "total": 1}, run
    assert (await _run(env, "dlq", "show", "--format", "json")).json["letters"] == []

    down = _environment(
        pipeline_settings, tmp_path, DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/x"
    )
    run = await _run(down, "health")
    assert run.code == 2, run
    assert "health: down" in run.stdout


async def test_user_mistakes_are_one_line_and_a_non_zero_exit(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    env = _environment(pipeline_settings, tmp_path)
    unreachable = _environment(
        pipeline_settings, tmp_path, DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/x"
    )
    unconfigured = _environment(None, tmp_path)
    # No worker runs in this test: the budget is sent but not applied in time.
    no_worker = ("budget", "set", "x", "--daily", "1", "--monthly", "2", "--hard", "3")
    cases: list[tuple[dict[str, str], tuple[str, ...], int, str]] = [
        (env, ("usage", "nobody-ever"), 1, "nobody-ever"),
        (env, ("budget", "show", "nobody-ever"), 1, "nobody-ever"),
        (env, ("report", "daily", "--date", "2026-13-40"), 2, "2026-13-40"),
        (env, ("alerts", "--since", "yesterday-ish"), 2, "yesterday-ish"),
        (env, ("top", "--limit", "0"), 2, "--limit"),
        (env, ("top", "--by", "colour"), 2, "--by"),
        (env, ("costs", "--since", "2999-01-01"), 2, "2999-01-01"),
        (env, ("budget", "set", "x", "--daily", "500", "--monthly", "100", "--hard", "900"), 2,
         "daily_limit <= monthly_limit"),
        (env, ("budget", "set", "x", "--daily", "1", "--monthly", "2", "--hard", "3",
               "--warning", "high"), 2, "--warning"),
        (env, ("budget", "set", "x", "--daily", "1"), 2, "--monthly"),
        (unreachable, ("usage", "x"), 1, "unreachable"),
        (unreachable, ("top",), 1, "unreachable"),
        (unconfigured, ("costs",), 2, "DATABASE_URL"),
        (env, (*no_worker, "--timeout", "0.5"), 1, "no worker applied it"),
    ]  # fmt: skip
    # Each a process of its own, run side by side (each mostly waits for its imports).
    runs = await asyncio.gather(*(_run(e, *args, timeout=60) for e, args, _, _ in cases))
    for run, (_, args, code, word) in zip(runs, cases, strict=True):
        assert run.code == code, (args, run)
        _one_error_line(run, code, word)


async def test_hashed_session_ids_are_looked_up_by_the_raw_id(
    pipeline_settings: Settings, start_worker: WorkerStarter, tmp_path: Path
) -> None:
    start_worker()
    key = "a-key-of-sixteen-chars-or-more"
    env = _environment(
        pipeline_settings, tmp_path, PRIVACY_HASH_SESSION_IDS="true", PRIVACY_SESSION_ID_KEY=key
    )
    args = ("budget", "set", "raw-frank", "--daily", "100", "--monthly", "200", "--hard", "300")
    run = await _run(env, *args, "--timeout", "60", "--format", "json")
    assert run.code == 0, run
    stored = stored_session_id(
        PrivacySettings(hash_session_ids=True, session_id_key=key), "raw-frank"
    )
    assert run.json["session_id"] == stored != "raw-frank"
    assert (
        await fetch_value(
            pipeline_settings.database,
            "SELECT count(*) FROM session_token_budgets WHERE session_id = $1",
            "raw-frank",
        )
        == 0
    )
    usage = await _run(env, "usage", "raw-frank", "--format", "csv")
    assert usage.code == 0, usage
    assert {row["window"]: row["limit"] for row in usage.csv()}["total"] == "300"


async def test_commands_use_a_running_dev_stacks_servers(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    from tokenquota.cli_stack import write_stack_file

    data_dir = tmp_path / "cli-data"
    write_stack_file(pipeline_settings.model_copy(update={"data_dir": data_dir}))
    env = _environment(None, tmp_path)  # nothing configured, as after `make run`
    run = await _run(env, "costs", "--format", "json")
    assert run.code == 0, run
    assert run.json == []

    write_stack_file(pipeline_settings.model_copy(update={"data_dir": data_dir}), pid=2**22 + 7)
    _one_error_line(await _run(env, "costs"), 2, "DATABASE_URL")  # that dev stack is gone


async def test_after_make_run_the_commands_find_the_dev_stack_without_any_setting(
    tmp_path: Path,
) -> None:
    env = _environment(None, tmp_path)  # no server configured, as a new user has it
    stack_file = tmp_path / "cli-data" / "dev-stack.json"
    dev = await asyncio.create_subprocess_exec(
        TOKENQUOTA, "dev", env=env | {"API_PORT": str(free_port())}, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:

        async def written() -> bool:
            return stack_file.exists()

        await wait_until(written, 90, "tokenquota dev's servers file")
        args = ("budget", "set", "new-user", "--daily", "5000", "--monthly", "50000")
        run = await _run(env, *args, "--hard", "500000", "--timeout", "60", "-f", "csv")
        assert run.code == 0, run
        assert {row["window"]: row["limit"] for row in run.csv()} == {
            "daily": "5000",
            "monthly": "50000",
            "total": "500000",
        }
        health = await _run(env, "health", "-f", "json")
        assert health.json["database"]["status"] == "ok", health
        assert health.json["broker"]["status"] == "ok", health
    finally:
        dev.send_signal(signal.SIGINT)
        output, _ = await asyncio.wait_for(dev.communicate(), 60)
    assert dev.returncode == 0, output.decode()
    assert not stack_file.exists()  # removed when the stack stops
    _one_error_line(await _run(env, "usage", "new-user"), 2, "DATABASE_URL")


async def test_budget_set_and_usage_of_a_budget_tree_node(
    pipeline_settings: Settings, start_worker: WorkerStarter, tmp_path: Path
) -> None:
    worker = start_worker()
    env = _environment(pipeline_settings, tmp_path)
    limits = ("--daily", "1000", "--monthly", "20000", "--hard", "300000")
    run = await _run(env, "budget", "set", "--account", "acme/ops", *limits, "--format", "json",
                     "--timeout", "60", "--monthly-usd", "500", "--total-usd", "$900")  # fmt: skip
    assert run.code == 0, (run, worker.log_path.read_text()[-2000:])
    nodes = run.json
    assert isinstance(nodes, list)
    usd = [(n["account"], n["daily_limit"], n["monthly_usd_limit"], n["total_usd_limit"])
           for n in nodes]  # fmt: skip
    assert usd == [("acme", None, None, None), ("acme/ops", 1000, "500", "900")]
    # A USD window left out keeps its limit; `none` removes one.
    run = await _run(env, "budget", "set", "--account", "acme/ops", *limits, "--format", "json",
                     "--timeout", "60", "--total-usd", "none")  # fmt: skip
    assert run.code == 0, run
    assert (run.json[1]["monthly_usd_limit"], run.json[1]["total_usd_limit"]) == ("500", None)
    _one_error_line(
        await _run(env, "budget", "set", "--account", "acme/ops", *limits, "--daily-usd", "ten"),
        2,
        "--daily-usd must be dollars",
    )
    async with TokenQuota(pipeline_settings) as quota:
        await (await quota.reserve("cli-tree", 300, account="acme/ops/dana")).settle(200, 0)

        async def settled() -> bool:
            return (await quota.account_metrics("acme/ops/dana"))[1].tokens_used_today == 200

        await wait_until(settled, 60, "the node's usage")
    shown = await _run(env, "usage", "--account", "acme/ops/dana", "--format", "csv")
    assert shown.code == 0, shown
    rows = shown.csv()
    assert [(r["account"], r["tokens_used_today"], r["available_tokens"]) for r in rows] == [
        ("acme", "200", ""),
        ("acme/ops", "200", "800"),
        ("acme/ops/dana", "200", ""),
    ]
    table = await _run(env, "budget", "show", "--account", "acme/ops")
    assert table.code == 0 and "budget tree of acme/ops" in table.stdout, table
    _one_error_line(await _run(env, "usage"), 2, "--account")
    _one_error_line(await _run(env, "usage", "s", "--account", "acme"), 2, "not both")
    _one_error_line(await _run(env, "usage", "--account", "acme//x"), 2, "1 to 8 segments")


async def test_top_by_account_ranks_budget_tree_nodes(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    """The tree of test_account_reports, applied straight to PostgreSQL (no worker: the
    command reads the rollups only)."""
    from tests.projections import test_account_reports as tree

    await tree.apply_tree(pipeline_settings.database)
    env = _environment(pipeline_settings, tmp_path)
    day = ("--date", T0.date().isoformat())
    since = (T0 - timedelta(days=2)).isoformat()
    by_tokens, by_cost, team, mixed, bad_path, too_deep, alerts = await asyncio.gather(
        _run(env, "top", "--by", "account", *day, "-f", "json"),
        _run(env, "top", "--by", "account-cost", "--depth", "2", "--account", "acme", *day,
             "-f", "csv"),
        _run(env, "top", "--by", "account", "--account", tree.TEAM, *day),
        _run(env, "top", "--by", "tokens", "--depth", "1"),
        _run(env, "top", "--by", "account", "--account", "acme//x"),
        _run(env, "top", "--by", "account", "--depth", "9"),
        _run(env, "alerts", "--since", since, "-f", "csv"),
    )  # fmt: skip
    assert by_tokens.code == 0, by_tokens
    alice, dana = tree.ALICE_IN + tree.ALICE_OUT, tree.DANA_IN
    assert [(r["account"], r["depth"], r["tokens_used"]) for r in by_tokens.json[:4]] == [
        ("acme", 1, alice + dana),
        (tree.OPS, 2, dana),
        (tree.DANA, 3, dana),
        (tree.TEAM, 2, alice),
    ]
    assert by_cost.code == 0, by_cost
    rows = [(r["rank"], r["account"], r["tokens_used"], Decimal(r["cost_usd"]),
             r["reservations_refused"]) for r in by_cost.csv()]  # fmt: skip
    assert rows == [
        ("1", tree.TEAM, str(alice), tree.ALICE_USD, "1"),  # it refused bob's 600
        ("2", tree.OPS, str(dana), tree.DANA_USD, "0"),
        ("3", "acme/rxd", "0", 0, "0"),
    ]
    assert team.code == 0, team
    assert f"top accounts by tokens under {tree.TEAM}" in team.stdout
    assert tree.BOB in team.stdout and tree.DANA not in team.stdout
    assert "refused" in team.stdout and f"{alice:,}" in team.stdout
    _one_error_line(mixed, 2, "--by account", "--depth")
    _one_error_line(bad_path, 2, "acme//x", "1 to 8 segments")
    _one_error_line(too_deep, 2, "--depth")
    # The team's refusal exhausted its daily window: an alert naming the team.
    assert alerts.code == 0, alerts
    team_alerts = [(r["session_id"], r["window_name"], r["level"], r["limit_tokens"])
                   for r in alerts.csv() if r["account"] == tree.TEAM]  # fmt: skip
    assert ("bob-1", "daily", "exhausted", str(tree.TEAM_DAILY)) in team_alerts
