"""The notifier: signed webhooks of the alert outbox, retried, delivered once, restart-safe."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from aiohttp import web
from prometheus_client import REGISTRY
from pydantic import SecretStr, ValidationError

from tests.support import T0, budget, log_records, reserved, used, wait_until
from tokenquota.config import AlertSettings, DatabaseSettings, Settings
from tokenquota.embedded import free_port
from tokenquota.processors.notifier import Notifier
from tokenquota.processors.webhook import (
    Alert,
    backoff,
    sign,
    verify_signature,
    webhook_body,
)
from tokenquota.producers import Emitter
from tokenquota.projections import apply_batch, connect
from tokenquota.projections.alerts import alert_id
from tokenquota.schemas import Event, utc_now

SECRET = "test-secret"


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1 that answers 500 to the first `fail_first` POSTs."""

    fail_first: int = 0
    received: list[tuple[dict[str, str], bytes, int]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status = 500 if len(self.received) < self.fail_first else 200
        self.received.append((dict(request.headers), body, status))
        return web.Response(status=status, text="nope" if status == 500 else "ok")

    def delivered(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body, status in self.received if status == 200]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    rec.url = f"http://127.0.0.1:{port}/hook"
    yield rec
    await runner.cleanup()


def notifier_settings(database: DatabaseSettings, url: str, **alerts: Any) -> Settings:
    options: dict[str, Any] = {
        "webhook_url": url,
        "webhook_secret": SecretStr(SECRET),
        "retry_backoff_min": 0.05,
        "retry_backoff_max": 0.2,
        "poll_interval": 0.05,
        "timeout": 2,
        **alerts,
    }
    return Settings(database=database, alerts=AlertSettings(**options))


async def crossings(database: DatabaseSettings, session: str = "s") -> list[uuid.UUID]:
    """Apply a budget and usage crossing the daily warning and critical thresholds; return
    the outbox's alert ids (stamped now, so they are young)."""
    now = utc_now()
    events: list[Event] = [budget(session, now, daily=1000), used(session, 990, now)]
    conn = await connect(database.dsn(), database.schema_name)
    try:
        await apply_batch(conn, log_records(events), schema=database.schema_name)
        rows = await conn.fetch(
            "SELECT alert_id FROM alert_outbox WHERE session_id = $1 ORDER BY action", session
        )
    finally:
        await conn.close()
    return [r["alert_id"] for r in rows]


async def deliveries(database: DatabaseSettings) -> dict[uuid.UUID, tuple[str, int]]:
    conn = await connect(database.dsn(), database.schema_name)
    try:
        rows = await conn.fetch("SELECT alert_id, status, attempts FROM alert_deliveries")
    finally:
        await conn.close()
    return {r["alert_id"]: (r["status"], r["attempts"]) for r in rows}


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def sent(result: str) -> float:
    return REGISTRY.get_sample_value("tokenquota_alerts_sent_total", {"result": result}) or 0.0


# -- pure -------------------------------------------------------------------------------


def test_the_body_is_stable_json_and_the_signature_verifies() -> None:
    event_id = uuid.uuid4()
    alert = Alert(
        alert_id(event_id, "daily_warning_threshold"),
        event_id,
        "daily_warning_threshold",
        "s",
        "daily",
        "warning",
        800,
        1000,
        T0,
        T0 + timedelta(seconds=1),
    )
    body = webhook_body(alert)
    assert body == webhook_body(alert)
    assert json.loads(body) == {
        "alert_id": str(alert.alert_id),
        "event_id": str(event_id),
        "session_id": "s",
        "account": None,
        "unit": "tokens",
        "window": "daily",
        "level": "warning",
        "action": "daily_warning_threshold",
        "used": 800,
        "limit": 1000,
        "occurred_at": "2026-11-24T12:00:00Z",
        "created_at": "2026-11-24T12:00:01Z",
    }
    assert verify_signature(SECRET, body, sign(SECRET, body))
    assert not verify_signature(SECRET, body + b" ", sign(SECRET, body))
    assert not verify_signature("other", body, sign(SECRET, body))
    assert not verify_signature(SECRET, body, None)


def test_a_node_usd_alert_names_the_node_and_sends_exact_dollars_as_strings() -> None:
    event_id = uuid.uuid4()
    action = "monthly_usd_critical_threshold"
    alert = Alert(
        alert_id(event_id, action, "acme/research"),
        event_id,
        action,
        "alice-1",
        "monthly",
        "critical",
        Decimal("480.1250000000"),
        Decimal("500.0000000000"),
        T0,
        T0,
        account="acme/research",
        unit="usd",
    )
    body = json.loads(webhook_body(alert))
    assert (body["account"], body["unit"], body["used"], body["limit"]) == (
        "acme/research",
        "usd",
        "480.1250000000",
        "500.0000000000",
    )
    assert body["alert_id"] != str(alert_id(event_id, action))  # not the session's id


def test_backoff_doubles_is_capped_and_jittered_into_its_upper_half() -> None:
    rng = random.Random(7)
    for attempts, full in ((1, 1.0), (2, 2.0), (3, 4.0), (10, 30.0), (50, 30.0)):
        for _ in range(50):
            assert full / 2 <= backoff(attempts, 1.0, 30.0, rng) <= full


def test_the_webhook_url_must_be_http() -> None:
    with pytest.raises(ValidationError, match="http:// or https://"):
        AlertSettings(webhook_url="hooks.example.com/x")
    assert AlertSettings(webhook_url="https://hooks.example.com/x").webhook_url


# -- against PostgreSQL and a local receiver --------------------------------------------


@pytest.mark.integration
async def test_failed_attempts_are_retried_and_each_alert_is_delivered_once_signed(
    migrated_database: DatabaseSettings, receiver: Receiver
) -> None:
    ids = await crossings(migrated_database)
    assert len(ids) == 2  # daily warning and critical
    receiver.fail_first = 5
    delivered_before, retries_before = sent("delivered"), sent("retry")
    notifier = Notifier(notifier_settings(migrated_database, receiver.url))
    task = asyncio.create_task(notifier.run())
    try:

        async def both_delivered() -> bool:
            return len(receiver.delivered()) == 2

        await wait_until(both_delivered, 30, "both alerts delivered")
        target = notifier.rounds + 3
        await wait_until(lambda: _rounds_after(notifier, target), 10, "3 more rounds")
    finally:
        await stop(task)
    assert sorted(uuid.UUID(a["alert_id"]) for a in receiver.delivered()) == sorted(ids)
    assert len(receiver.received) == 7
    for headers, body, _ in receiver.received:
        assert verify_signature(SECRET, body, headers["X-Tokenquota-Signature"])
        assert headers["X-Tokenquota-Alert-Id"] == json.loads(body)["alert_id"]
        assert uuid.UUID(json.loads(body)["alert_id"]) in ids
    state = await deliveries(migrated_database)
    assert {status for status, _ in state.values()} == {"delivered"}
    assert sum(attempts for _, attempts in state.values()) == 7
    assert sent("delivered") - delivered_before == 2
    assert sent("retry") - retries_before == 5


async def _rounds_after(notifier: Notifier, target: int) -> bool:
    return notifier.rounds >= target


@pytest.mark.integration
async def test_a_restarted_notifier_delivers_what_the_previous_one_was_retrying(
    migrated_database: DatabaseSettings, receiver: Receiver
) -> None:
    await crossings(migrated_database)
    receiver.fail_first = 1000  # the first notifier only ever fails
    settings = notifier_settings(migrated_database, receiver.url, retry_backoff_min=0.5)
    first = asyncio.create_task(Notifier(settings).run())

    async def failed_twice() -> bool:
        return len(receiver.received) >= 2

    await wait_until(failed_twice, 30, "two failed attempts")
    await stop(first)
    state = await deliveries(migrated_database)
    assert {status for status, _ in state.values()} == {"pending"}
    receiver.fail_first = 0
    receiver.received.clear()
    second = asyncio.create_task(Notifier(settings).run())
    try:
        # Recorded, not only answered: a notifier stopped between the receiver's 200
        # and its UPDATE leaves the alert pending (delivered again later, same alert id).
        async def recorded() -> bool:
            state = await deliveries(migrated_database)
            return {status for status, _ in state.values()} == {"delivered"}

        await wait_until(recorded, 30, "delivery after the restart, recorded")
    finally:
        await stop(second)
    assert len(receiver.delivered()) == 2


@pytest.mark.integration
async def test_two_notifiers_never_send_one_alert_twice(
    migrated_database: DatabaseSettings, receiver: Receiver
) -> None:
    ids: list[uuid.UUID] = []
    for i in range(20):
        ids += await crossings(migrated_database, f"s{i}")
    assert len(ids) == 40
    settings = notifier_settings(migrated_database, receiver.url)
    tasks = [asyncio.create_task(Notifier(settings).run()) for _ in range(2)]
    try:

        async def all_delivered() -> bool:
            return len(receiver.delivered()) >= 40

        await wait_until(all_delivered, 30, "40 alerts delivered")
    finally:
        for task in tasks:
            await stop(task)
    received = [a["alert_id"] for a in receiver.delivered()]
    assert len(received) == len(set(received)) == 40


@pytest.mark.integration
async def test_an_alert_is_given_up_after_max_attempts_and_old_alerts_are_never_sent(
    migrated_database: DatabaseSettings, receiver: Receiver
) -> None:
    await crossings(migrated_database, "young")
    conn = await connect(migrated_database.dsn(), migrated_database.schema_name)
    try:
        old: list[Event] = [budget("old", T0, daily=1000), used("old", 990, T0)]
        await apply_batch(conn, log_records(old, partition=1), schema=migrated_database.schema_name)
        assert await conn.fetchval("SELECT count(*) FROM alert_outbox") == 4
    finally:
        await conn.close()
    receiver.fail_first = 1000
    failed_before = sent("failed")
    notifier = Notifier(notifier_settings(migrated_database, receiver.url, max_attempts=3))
    task = asyncio.create_task(notifier.run())
    try:

        async def given_up() -> bool:
            state = await deliveries(migrated_database)
            return len(state) == 2 and {s for s, _ in state.values()} == {"failed"}

        await wait_until(given_up, 30, "both young alerts failed")
    finally:
        await stop(task)
    assert len(receiver.received) == 6
    assert {json.loads(body)["session_id"] for _, body, _ in receiver.received} == {"young"}
    assert all(n == 3 for _, n in (await deliveries(migrated_database)).values())
    assert sent("failed") - failed_before == 2


@pytest.mark.integration
async def test_the_worker_sends_one_webhook_per_window_and_level_through_the_pipeline(
    pipeline_settings: Settings, start_worker: Any, receiver: Receiver
) -> None:
    receiver.fail_first = 2
    worker = start_worker(
        env={
            "ALERTS_WEBHOOK_URL": receiver.url,
            "ALERTS_WEBHOOK_SECRET": SECRET,
            "ALERTS_RETRY_BACKOFF_MIN": "0.05",
            "ALERTS_RETRY_BACKOFF_MAX": "0.2",
            "ALERTS_POLL_INTERVAL": "0.1",
        }
    )
    now = utc_now()
    events: list[Event] = [budget("e2e", now, daily=1000), used("e2e", 990, now)]
    events += [reserved("e2e", 500, now + timedelta(milliseconds=i + 1)) for i in range(30)]
    async with Emitter.from_settings(pipeline_settings) as emitter:
        assert set(await emitter.emit_many(events)) == {"acked"}

    async def three_delivered() -> bool:
        return len(receiver.delivered()) >= 3

    await wait_until(three_delivered, 90, "three webhooks", [worker])
    async with httpx.AsyncClient() as client:  # the receiver is still reachable
        assert (await client.post(receiver.url, content=b"{}")).status_code == 200
    alerts = receiver.delivered()[:3]
    assert sorted((a["window"], a["level"]) for a in alerts) == [
        ("daily", "critical"),
        ("daily", "exhausted"),
        ("daily", "warning"),
    ]
    assert len({a["alert_id"] for a in alerts}) == 3
    for headers, body, _ in receiver.received[:5]:
        assert verify_signature(SECRET, body, headers["X-Tokenquota-Signature"])
    assert "notifier: delivering threshold alerts" in worker.log_path.read_text()
