"""The worker's heartbeat row survives what a PostgreSQL shutdown does to its connection."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from tests.support import fetch_value, wait_until
from tokenquota.config import DatabaseSettings, Settings
from tokenquota.processors import heartbeat as heartbeat_module
from tokenquota.processors.heartbeat import Heartbeat

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    "failure",
    [
        asyncpg.InternalClientError(
            "cannot switch to state 12; another operation (2) is in progress"
        ),
        asyncpg.InterfaceError("connection is closed"),
    ],
)
async def test_a_write_on_a_connection_a_shutdown_broke_is_retried_on_a_new_one(
    migrated_database: DatabaseSettings, monkeypatch: pytest.MonkeyPatch, failure: Exception
) -> None:
    # Found by the fault campaign: the heartbeat's write raised asyncpg's
    # InternalClientError after PostgreSQL restarted; it was not among the errors the
    # heartbeat retries, so it crashed the agent and the worker exited.
    real_execute = asyncpg.Connection.execute
    failed: list[asyncpg.Connection] = []

    async def execute(self: asyncpg.Connection, query: str, *args: Any, **kwargs: Any) -> str:
        if query == heartbeat_module._UPSERT and not failed:  # the first write, as it broke
            failed.append(self)
            raise failure
        return await real_execute(self, query, *args, **kwargs)

    monkeypatch.setattr(asyncpg.Connection, "execute", execute)
    monkeypatch.setattr(heartbeat_module, "HEARTBEAT_INTERVAL", 0.05)
    beat = Heartbeat(Settings(database=migrated_database))
    running = asyncio.create_task(beat.run())

    async def written() -> bool:
        if running.done():
            running.result()  # raises what ended it
        count = await fetch_value(migrated_database, "SELECT count(*) FROM worker_status")
        return bool(count)

    try:
        await wait_until(written, 30, "the heartbeat's row")
    finally:
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
    assert failed and failed[0].is_closed()  # given up, and the row written on a new one
