"""The worker's row in `worker_status`: alive when, last batch when, how much applied.

Written every few seconds on a connection of its own, never in a batch's transaction, so
it costs the pipeline nothing per event.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from datetime import UTC, datetime

import asyncpg

from tokenquota.config import Settings
from tokenquota.projections import DATABASE_FAILURES, connect

__all__ = ["HEARTBEAT_INTERVAL", "Heartbeat"]

log = logging.getLogger("tokenquota.worker")

#: Seconds between two writes of the worker's row.
HEARTBEAT_INTERVAL = 2.0

_UPSERT = """
    INSERT INTO worker_status AS w (member, group_id, host, pid, started_at, seen_at,
                                    last_batch_at, events_applied, batches)
    VALUES ($1, $2, $3, $4, $5, now(), $6, $7, $8)
    ON CONFLICT (member) DO UPDATE SET seen_at = now(),
        last_batch_at = EXCLUDED.last_batch_at, events_applied = EXCLUDED.events_applied,
        batches = EXCLUDED.batches
"""


class Heartbeat:
    """What the worker has done; `run()` writes it to worker_status until cancelled."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.member = f"{self.host}:{self.pid}"
        self.started_at = datetime.now(UTC)
        self.last_batch_at: datetime | None = None
        self.events_applied = 0
        self.batches = 0

    def batch_applied(self, events: int) -> None:
        """Note one applied batch of `events` new events."""
        self.last_batch_at = datetime.now(UTC)
        self.events_applied += events
        self.batches += 1

    async def run(self) -> None:
        """Write the row every HEARTBEAT_INTERVAL seconds; a failing database is retried."""
        db = self.settings.database
        conn: asyncpg.Connection | None = None
        try:
            while True:
                try:
                    if conn is None or conn.is_closed():
                        conn = await connect(db.dsn(), db.schema_name)
                    await conn.execute(
                        _UPSERT,
                        self.member,
                        self.settings.worker.group_id,
                        self.host,
                        self.pid,
                        self.started_at,
                        self.last_batch_at,
                        self.events_applied,
                        self.batches,
                    )
                except DATABASE_FAILURES as exc:
                    log.debug("worker status not written: %s", exc)
                    if conn is not None:
                        conn.terminate()
                    conn = None
                await asyncio.sleep(HEARTBEAT_INTERVAL)
        finally:
            if conn is not None:
                conn.terminate()
