"""A replay keeps every alert's delivery and never sends an old alert again."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from tests.processors.test_notifier import (
    Receiver,
    crossings,
    deliveries,
    notifier_settings,
    receiver,
    stop,
)
from tests.support import wait_until
from tokenquota.config import DatabaseSettings
from tokenquota.processors.notifier import Notifier
from tokenquota.projections import connect
from tokenquota.projections.ledger_replay import replay_from_ledger

__all__ = ["receiver"]  # the fixture, shared with the notifier's tests

pytestmark = pytest.mark.integration


async def test_replay_keeps_deliveries_suppresses_alerts_the_live_outbox_lacked(
    migrated_database: DatabaseSettings, receiver: Receiver
) -> None:
    db = migrated_database
    settings = notifier_settings(db, receiver.url)
    delivered = await crossings(db, "a")
    notifier = Notifier(settings)
    task = asyncio.create_task(notifier.run())
    try:

        async def sent_a() -> bool:
            return len(receiver.delivered()) == 2

        await wait_until(sent_a, 30, "a's alerts delivered")
    finally:
        await stop(task)
    pending, unseen = await crossings(db, "b")
    lacked = await crossings(db, "c")
    conn = await connect(db.dsn(), db.schema_name)
    try:
        await conn.execute(
            """INSERT INTO alert_deliveries (alert_id, status, attempts, next_attempt_at)
               VALUES ($1, 'pending', 2, now() + interval '1 hour')""",
            pending,
        )
        # c's alerts predate the outbox: the live projection never held them
        await conn.execute("DELETE FROM alert_outbox WHERE alert_id = ANY($1::uuid[])", lacked)
    finally:
        await conn.close()
    before = await deliveries(db)

    await replay_from_ledger(db.dsn(), db.schema_name)

    after = await deliveries(db)
    for alert in (*delivered, pending):
        assert after[alert] == before[alert]
    assert unseen not in after
    assert {after[alert] for alert in lacked} == {("suppressed", 0)}
    conn = await connect(db.dsn(), db.schema_name)
    try:
        assert await conn.fetchval("SELECT count(*) FROM alert_outbox") == 6
        await conn.execute(
            "UPDATE alert_deliveries SET next_attempt_at = now() WHERE alert_id = $1", pending
        )
    finally:
        await conn.close()

    receiver.received.clear()
    notifier = Notifier(settings)
    task = asyncio.create_task(notifier.run())
    try:

        async def sent_b() -> bool:
            return len(receiver.delivered()) == 2

        await wait_until(sent_b, 30, "b's alerts delivered")
        target = notifier.rounds + 3

        async def three_more_rounds() -> bool:
            return notifier.rounds >= target

        await wait_until(three_more_rounds, 10, "three more rounds")
    finally:
        await stop(task)
    assert sorted(
        uuid.UUID(json.loads(body)["alert_id"]) for _, body, _ in receiver.received
    ) == sorted([pending, unseen])
