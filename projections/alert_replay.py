"""Replay and alerts: a rebuilt outbox must not send old alerts again.

Alert ids are derived from (event, action), so an alert the live outbox already holds
keeps its delivery (delivered, pending or failed) across a replay. An alert only the
rebuilt outbox holds (the live one never had it: alerts from before the outbox existed,
or from a changed fold) is old news: it gets a 'suppressed' delivery before the swap, in
the swap's transaction, so the notifier never sends it.
"""

from __future__ import annotations

import asyncpg

from .database import quote_schema

__all__ = ["suppress_replayed_alerts"]


async def suppress_replayed_alerts(conn: asyncpg.Connection, live: str, staging: str) -> int:
    """Give each alert of `staging`'s outbox that `live`'s lacks a suppressed delivery (in
    `live`'s alert_deliveries, which replay keeps); return how many."""
    live_q, stage_q = quote_schema(live), quote_schema(staging)
    status: str = await conn.execute(
        f"""INSERT INTO {live_q}.alert_deliveries (alert_id, status, last_error)
            SELECT s.alert_id, 'suppressed', 'rebuilt by replay; not sent'
              FROM {stage_q}.alert_outbox s
             WHERE NOT EXISTS (
                   SELECT 1 FROM {live_q}.alert_outbox l WHERE l.alert_id = s.alert_id)
            ON CONFLICT (alert_id) DO NOTHING"""  # noqa: S608 - quoted identifiers
    )
    return int(status.split()[-1])
