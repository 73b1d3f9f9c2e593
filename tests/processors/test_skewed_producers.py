"""Two producer processes race strict reservations on one session, one of them with its
clock a day ahead: the daily limit holds on the log clock, the skewed events are
flagged, and replay rebuilds every table row for row."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import budget, fetch_value, settings_env, snapshot, wait_until
from tokenquota.config import Settings
from tokenquota.producers import Emitter
from tokenquota.projections import connect
from tokenquota.projections.replay import replay_into
from tokenquota.schemas import utc_now

pytestmark = pytest.mark.integration

PRODUCER = Path(__file__).with_name("skewed_producer.py")
REPO = Path(__file__).parents[2]
DAY_AHEAD = 25 * 3600  # a day and an hour, as in the issue
LIMIT, TOKENS, ATTEMPTS = 10_000, 100, 60  # 2 x 60 x 100 tokens asked against 10,000


async def producer(
    settings: Settings, tmp_path: Path, name: str, *extra: str
) -> asyncio.subprocess.Process:
    """Start a producer process and wait until it is connected and ready to race."""
    env = {
        **os.environ,
        **settings_env(settings),
        "EMITTER_SPOOL_DIR": str(tmp_path / f"spool-{name}"),
        "PYTHONPATH": str(REPO),
        # What is tested is which reservations win, not how fast: 120 strict reservations
        # at once on a loaded 2-core machine (two test workers) can take over 10 s.
        "RESERVATIONS_DECISION_TIMEOUT": "90",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(PRODUCER),
        "--session=race",
        f"--name={name}",
        f"--count={ATTEMPTS}",
        f"--tokens={TOKENS}",
        *extra,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 60)
    assert line == b"ready\n", line
    return process


async def outcome(process: asyncio.subprocess.Process) -> dict[str, int]:
    stdout, stderr = await asyncio.wait_for(process.communicate(b"go\n"), 120)
    assert process.returncode == 0, stderr.decode()[-3000:]
    result: dict[str, int] = json.loads(stdout.decode().strip().splitlines()[-1])
    return result


async def test_a_client_a_day_ahead_cannot_spend_tomorrows_budget_today(
    pipeline_settings: Settings, start_worker: Any, tmp_path: Path
) -> None:
    settings = pipeline_settings
    worker = start_worker()
    async with Emitter.from_settings(settings) as emitter:
        await emitter.emit(budget("race", utc_now(), daily=LIMIT, monthly=10**6, hard=10**6))

    async def budget_applied() -> bool:
        limit = await fetch_value(
            settings.database, "SELECT daily_limit FROM session_token_budgets"
        )
        return bool(limit == LIMIT)

    await wait_until(budget_applied, 60, "the budget", [worker])
    skewed = await producer(settings, tmp_path, "ahead", f"--skew={DAY_AHEAD}", "--first-use=1")
    honest = await producer(settings, tmp_path, "honest")

    async def opener_applied() -> bool:  # the skewed usage is in the log before the race
        used = await fetch_value(
            settings.database, "SELECT tokens_used_total FROM session_token_budgets"
        )
        return bool(used == 1)

    await wait_until(opener_applied, 60, "the skewed opener", [worker])
    results = await asyncio.gather(outcome(skewed), outcome(honest))

    granted = sum(r["accepted"] for r in results)
    assert all(r["accepted"] for r in results), results  # both took part in the race
    assert granted == (LIMIT - 1) // TOKENS, results  # exactly what fits, no more
    assert sum(r["refused"] for r in results) == 2 * ATTEMPTS - granted

    async def settled() -> bool:
        held = await fetch_value(
            settings.database, "SELECT count(*) FROM reservations WHERE status = 'accepted'"
        )
        used = await fetch_value(
            settings.database, "SELECT tokens_used_total FROM session_token_budgets"
        )
        return bool(held == 0 and used == 1 + granted * TOKENS)

    await wait_until(settled, 60, "every grant settled", [worker])
    conn = await connect(settings.database.dsn(), settings.database.schema_name)
    try:
        session = await conn.fetchrow("SELECT * FROM session_token_budgets")
        assert session is not None
        # One day's window, on the log clock: nothing rolled over to "tomorrow".
        assert session["current_day"] == utc_now().date()
        assert session["tokens_used_today"] == 1 + granted * TOKENS <= LIMIT
        by_producer = {
            (row["name"], row["clock_skewed"]): row["events"]
            for row in await conn.fetch(
                """SELECT payload->'source'->>'name' AS name, clock_skewed, count(*) AS events
                     FROM usage_events WHERE event_type <> 'BudgetSet' GROUP BY 1, 2"""
            )
        }
        flags = await conn.fetch(
            "SELECT component_name, metadata FROM integration_logs WHERE action = 'clock_skew'"
        )
    finally:
        await conn.close()
    # Every event of the client a day ahead is flagged (and counted at the log clock),
    # none of the honest one's.
    assert set(by_producer) == {("ahead", True), ("honest", False)}, by_producer
    assert len(flags) == by_producer[("ahead", True)]
    assert {f["component_name"] for f in flags} == {"ahead"}
    assert all(json.loads(f["metadata"])["producer"] == "sdk/ahead" for f in flags)

    worker.stop()
    before = await snapshot(settings.database)
    await replay_into(
        settings.kafka.bootstrap_servers or "",
        settings.kafka.usage_topic,
        settings.database.dsn(),
        settings.database.schema_name,
    )
    assert await snapshot(settings.database) == before
