"""The process default client across event loops: two `asyncio.run` in one process."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import settings_env, wait_for_usage
from tokenquota.config import EmitterSettings, Settings
from tokenquota.embedded import WorkerProcess
from tokenquota.producers import TokenQuota, close_default_quota, reserve

pytestmark = pytest.mark.integration


def _hook_in_a_fresh_loop(session: str) -> tuple[str, str]:
    """What a script's `asyncio.run(main())` does with a hook given no quota=."""

    async def main() -> tuple[str, str]:
        async with await reserve(session, 100) as held:  # the process default client
            await held.settle(60, 10, model="gpt-4o")
        return held.status, held.delivery

    return asyncio.run(main())


def _two_runs(session: str) -> list[tuple[str, str]]:
    try:
        return [_hook_in_a_fresh_loop(session), _hook_in_a_fresh_loop(session)]
    finally:
        asyncio.run(close_default_quota())


async def test_a_second_asyncio_run_gets_a_working_default_client(
    pipeline_settings: Settings,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    worker = start_worker()
    monkeypatch.delenv("TOKENQUOTA_CONFIG", raising=False)
    environment = {
        **settings_env(pipeline_settings),
        "EMITTER_SPOOL_DIR": str(tmp_path / "default-spool"),
        "TOKENQUOTA_DATA_DIR": str(tmp_path / "default-data"),
        "RESERVATIONS_DECISION_TIMEOUT": "60",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    # Each run in a thread of its own loop, as two `asyncio.run` calls of a script.
    results = await asyncio.to_thread(_two_runs, "two-loops")
    assert results == [("settled", "acked"), ("settled", "acked")]
    own_spool = EmitterSettings(spool_dir=tmp_path / "test-spool")
    async with TokenQuota(pipeline_settings.model_copy(update={"emitter": own_spool})) as quota:
        await wait_for_usage(quota, "two-loops", 140)
    assert worker.exit_code() is None
