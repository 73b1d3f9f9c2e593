"""The defaults in the log: `tokenquota init` writes them, the log (not a worker's or a
replay's configuration) decides with them."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from tests.support import fetch_value, reserved, settings_env, snapshot, wait_until
from tokenquota.config import Settings
from tokenquota.producers import Emitter
from tokenquota.schemas import utc_now

pytestmark = pytest.mark.integration


def tokenquota(settings: Settings, *args: str, **env: str) -> str:
    """Run the `tokenquota` CLI against the test's servers; return its output."""
    done = subprocess.run(
        [sys.executable, "-m", "tokenquota", *args],
        env={**os.environ, **settings_env(settings), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


async def defaults_in_force(settings: Settings) -> list[int]:
    rows = await fetch_value(
        settings.database,
        "SELECT array_agg(daily_limit ORDER BY kafka_partition) FROM partition_defaults",
    )
    return list(rows or [])


async def test_the_log_decides_with_the_defaults_init_wrote_whatever_else_is_configured(
    pipeline_settings: Settings, start_worker: Any
) -> None:
    settings = pipeline_settings
    partitions = settings.kafka.partitions
    first = tokenquota(settings, "init", TOKEN_LIMITS_DAILY_LIMIT="300")
    assert "defaults (token_limits, worker.max_clock_skew) in the log: written" in first
    # This worker is configured with the built-in 10,000 tokens a day; the log says 300.
    worker = start_worker()

    async def written() -> bool:
        return await defaults_in_force(settings) == [300] * partitions

    await wait_until(written, 60, "the DefaultsSets applied", [worker])
    holds = [reserved("s", 100, utc_now()) for _ in range(5)]
    async with Emitter.from_settings(settings) as emitter:  # straight to the worker
        await emitter.emit_many(holds)

    async def decided() -> bool:
        count = await fetch_value(settings.database, "SELECT count(*) FROM reservations")
        return int(count) == len(holds)

    await wait_until(decided, 60, "the decisions", [worker])
    statuses = await fetch_value(
        settings.database,
        "SELECT array_agg(status || ':' || coalesce(reason, '')) FROM reservations",
    )
    assert sorted(statuses) == ["accepted:"] * 3 + ["rejected:daily_limit"] * 2

    # The same configuration again writes nothing; a changed one writes new defaults,
    # which sessions created from then on get.
    assert "in the log: unchanged" in tokenquota(settings, "init", TOKEN_LIMITS_DAILY_LIMIT="300")
    changed = tokenquota(settings, "init", TOKEN_LIMITS_DAILY_LIMIT="1000")
    assert "in the log: configuration changed" in changed

    async def rewritten() -> bool:
        return await defaults_in_force(settings) == [1000] * partitions

    await wait_until(rewritten, 60, "the new DefaultsSets applied", [worker])
    async with Emitter.from_settings(settings) as emitter:
        await emitter.emit(reserved("t", 900, utc_now()))

    async def t_decided() -> bool:
        status = await fetch_value(
            settings.database, "SELECT status FROM reservations WHERE session_id = 't'"
        )
        return status is not None

    await wait_until(t_decided, 60, "the decision for t", [worker])
    limits = await fetch_value(
        settings.database,
        "SELECT array_agg(session_id || '=' || daily_limit ORDER BY session_id) "
        "FROM session_token_budgets",
    )
    assert limits == ["s=300", "t=1000"]
    defaults_events = await fetch_value(
        settings.database, "SELECT count(*) FROM usage_events WHERE event_type = 'DefaultsSet'"
    )
    assert defaults_events == 2 * partitions

    # A replay configured otherwise rebuilds exactly the same tables.
    worker.stop()
    before = await snapshot(settings.database)
    tokenquota(
        settings, "replay", TOKEN_LIMITS_DAILY_LIMIT="50", TOKEN_LIMITS_TIMEZONE="Asia/Tokyo"
    )
    assert await snapshot(settings.database) == before

    # A row of a partition the topic does not have (a dev data directory made with more
    # partitions) is no log's: init neither counts it as differing nor writes to it.
    stale = await fetch_value(
        settings.database,
        """INSERT INTO partition_defaults (topic, kafka_partition, event_id, daily_limit,
               monthly_limit, hard_limit, warning_threshold, critical_threshold, timezone,
               max_clock_skew_ms, set_at)
           SELECT topic, $1, gen_random_uuid(), 5, monthly_limit, hard_limit,
               warning_threshold, critical_threshold, timezone, max_clock_skew_ms, set_at
             FROM partition_defaults WHERE kafka_partition = 0
           RETURNING kafka_partition""",
        partitions + 5,
    )
    assert stale == partitions + 5
    assert "in the log: unchanged" in tokenquota(settings, "init", TOKEN_LIMITS_DAILY_LIMIT="1000")
