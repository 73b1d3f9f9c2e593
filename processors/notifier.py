"""The notifier: delivers the alert outbox as signed webhooks, at least once, with retries.

Every `alerts.poll_interval` it (1) gives each new alert_outbox row younger than
`alerts.max_age` a pending delivery, (2) claims due pending deliveries with
`FOR UPDATE SKIP LOCKED`, counting the attempt and leasing the row (next_attempt_at =
now + timeout + 5 s) before it sends, so two notifiers never send one alert at once and
a notifier that dies mid-POST leaves the alert due again, (3) POSTs each one and records
the outcome: 2xx is delivered; anything else retries after an exponential, jittered
backoff (retry_backoff_min doubled, capped at retry_backoff_max, at least a 429/503's
Retry-After), until `alerts.max_attempts` or until the next attempt would come after
`max_age` from the alert's creation: then it is failed. All state is in PostgreSQL
(alert_deliveries), and every time is PostgreSQL's clock, so restarts and several
workers agree. Runs inside `tokenquota worker` when `alerts.webhook_url` is set.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

import asyncpg
import faust
import httpx
from prometheus_client import Counter

from tokenquota.config import Settings
from tokenquota.projections import DATABASE_FAILURES, connect

from .webhook import Alert, backoff, webhook_body, webhook_headers

__all__ = ["ALERTS_SENT", "Notifier", "attach_notifier"]

log = logging.getLogger("tokenquota.notifier")

#: Webhook attempts by result: delivered, retry (failed, tried again later), failed (given up).
ALERTS_SENT = Counter(
    "tokenquota_alerts_sent", "Webhook attempts of threshold alerts, by result", ["result"]
)
for _result in ("delivered", "retry", "failed"):
    ALERTS_SENT.labels(result=_result)

_BATCH = 32
_LEASE_MARGIN = 5.0

_ENQUEUE = """
    INSERT INTO alert_deliveries (alert_id, status, next_attempt_at)
    SELECT o.alert_id, 'pending', now() FROM alert_outbox o
     WHERE o.created_at >= now() - $1::interval
       AND NOT EXISTS (SELECT 1 FROM alert_deliveries d WHERE d.alert_id = o.alert_id)
    ON CONFLICT (alert_id) DO NOTHING"""
_CLAIM = """
    UPDATE alert_deliveries d
       SET attempts = d.attempts + 1, last_attempt_at = now(),
           next_attempt_at = now() + $2::interval
      FROM alert_outbox o
     WHERE o.alert_id = d.alert_id
       AND d.alert_id IN (
           SELECT due.alert_id FROM alert_deliveries due
             JOIN alert_outbox x ON x.alert_id = due.alert_id
            WHERE due.status = 'pending' AND due.next_attempt_at <= now()
            ORDER BY due.next_attempt_at
            LIMIT $1
              FOR UPDATE OF due SKIP LOCKED)
    RETURNING d.attempts, o.alert_id, o.event_id, o.action, o.session_id, o.window_name,
              o.level, o.used_tokens, o.limit_tokens, o.occurred_at, o.created_at, o.account,
              o.unit, o.used_usd, o.limit_usd"""
_DELIVERED = """
    UPDATE alert_deliveries
       SET status = 'delivered', delivered_at = now(), next_attempt_at = NULL,
           last_status_code = $2, last_error = NULL
     WHERE alert_id = $1 AND status = 'pending'"""
_FAILED_ATTEMPT = """
    UPDATE alert_deliveries d
       SET status = CASE WHEN $4 OR now() + $5::interval > o.created_at + $6::interval
                         THEN 'failed' ELSE 'pending' END,
           next_attempt_at = CASE WHEN $4 OR now() + $5::interval > o.created_at + $6::interval
                                  THEN NULL ELSE now() + $5::interval END,
           last_status_code = $2, last_error = $3
      FROM alert_outbox o
     WHERE o.alert_id = d.alert_id AND d.alert_id = $1 AND d.status = 'pending'
       AND d.attempts = $7
    RETURNING d.status"""


class Notifier:
    """Delivers due alerts of `settings.database`'s schema to `settings.alerts.webhook_url`."""

    def __init__(self, settings: Settings) -> None:
        if settings.alerts.webhook_url is None:
            raise ValueError("alerts.webhook_url is not set (ALERTS_WEBHOOK_URL)")
        self.settings = settings
        self.url: str = settings.alerts.webhook_url
        secret = settings.alerts.webhook_secret
        self._secret = secret.get_secret_value() if secret is not None else None
        self._conn: asyncpg.Connection | None = None
        #: Rounds completed (tests wait on it) and webhook attempts made.
        self.rounds = 0
        self.attempts = 0

    async def run(self) -> None:
        """Deliver until cancelled; a failing database is retried with backoff."""
        alerts = self.settings.alerts
        log.info("notifier: delivering threshold alerts to %s", httpx.URL(self.url).host)
        delay = 0.5
        async with httpx.AsyncClient(timeout=alerts.timeout) as client:
            try:
                while True:
                    try:
                        sent = await self.run_once(client)
                    except DATABASE_FAILURES as exc:
                        log.warning(
                            "notifier: database failed (%s); retrying in %.1f s", exc, delay
                        )
                        await self._drop_connection()
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, alerts.retry_backoff_max)
                        continue
                    delay = 0.5
                    if sent < _BATCH:
                        await asyncio.sleep(alerts.poll_interval)
            finally:
                await self._drop_connection()

    async def run_once(self, client: httpx.AsyncClient) -> int:
        """One round: enqueue new alerts, claim the due ones, send them, record; returns
        the number of alerts attempted."""
        alerts = self.settings.alerts
        conn = await self._connection()
        max_age = timedelta(seconds=alerts.max_age)
        await conn.execute(_ENQUEUE, max_age)
        lease = timedelta(seconds=alerts.timeout + _LEASE_MARGIN)
        rows = await conn.fetch(_CLAIM, _BATCH, lease)
        outcomes = await asyncio.gather(*(self._send(client, row) for row in rows))
        for row, (ok, code, error, retry_after) in zip(rows, outcomes, strict=True):
            await self._record(conn, row, ok, code, error, retry_after)
        self.rounds += 1
        return len(rows)

    async def _send(
        self, client: httpx.AsyncClient, row: asyncpg.Record
    ) -> tuple[bool, int | None, str | None, float | None]:
        alert = Alert(
            alert_id=row["alert_id"],
            event_id=row["event_id"],
            action=row["action"],
            session_id=row["session_id"],
            window=row["window_name"],
            level=row["level"],
            used=row["used_tokens"] if row["unit"] == "tokens" else row["used_usd"],
            limit=row["limit_tokens"] if row["unit"] == "tokens" else row["limit_usd"],
            occurred_at=row["occurred_at"],
            created_at=row["created_at"],
            account=row["account"],
            unit=row["unit"],
        )
        body = webhook_body(alert)
        headers = webhook_headers(alert, body, self._secret, row["attempts"])
        self.attempts += 1
        try:
            async with asyncio.timeout(self.settings.alerts.timeout):
                response = await client.post(self.url, content=body, headers=headers)
        except TimeoutError:
            return False, None, f"no answer within {self.settings.alerts.timeout} s", None
        except Exception as exc:  # any transport failure is one failed attempt
            return False, None, f"{type(exc).__name__}: {exc}"[:500], None
        if response.is_success:
            return True, response.status_code, None, None
        return (
            False,
            response.status_code,
            f"HTTP {response.status_code}: {response.text[:200]}",
            _retry_after(response),
        )

    async def _record(
        self,
        conn: asyncpg.Connection,
        row: asyncpg.Record,
        ok: bool,
        code: int | None,
        error: str | None,
        retry_after: float | None,
    ) -> None:
        alerts = self.settings.alerts
        alert_id, attempts = row["alert_id"], row["attempts"]
        if ok:
            await conn.execute(_DELIVERED, alert_id, code)
            ALERTS_SENT.labels(result="delivered").inc()
            log.info("alert %s (%s) delivered on attempt %d", alert_id, row["action"], attempts)
            return
        delay = backoff(attempts, alerts.retry_backoff_min, alerts.retry_backoff_max)
        if retry_after is not None:
            delay = min(max(delay, retry_after), alerts.retry_backoff_max)
        last = alerts.max_attempts is not None and attempts >= alerts.max_attempts
        status = await conn.fetchval(
            _FAILED_ATTEMPT,
            alert_id,
            code,
            error,
            last,
            timedelta(seconds=delay),
            timedelta(seconds=alerts.max_age),
            attempts,
        )
        if status == "failed":
            ALERTS_SENT.labels(result="failed").inc()
            log.error("alert %s given up after %d attempts: %s", alert_id, attempts, error)
        else:
            ALERTS_SENT.labels(result="retry").inc()
            log.warning(
                "alert %s attempt %d failed (%s); retrying in %.1f s",
                alert_id,
                attempts,
                error,
                delay,
            )

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            db = self.settings.database
            self._conn = await connect(db.dsn(), db.schema_name)
        return self._conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if response.status_code not in (429, 503) or value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None


def attach_notifier(app: faust.App, settings: Settings) -> Notifier | None:
    """Run a Notifier with the worker's app when alerts.webhook_url is set (else None)."""
    if settings.alerts.webhook_url is None:
        return None
    notifier = Notifier(settings)
    task: Any = notifier.run
    app.task(task)
    return notifier
