"""The webhook of a threshold alert: its JSON body, its headers and its signature."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

__all__ = [
    "ALERT_ID_HEADER",
    "ATTEMPT_HEADER",
    "SIGNATURE_HEADER",
    "Alert",
    "backoff",
    "sign",
    "verify_signature",
    "webhook_body",
    "webhook_headers",
]

SIGNATURE_HEADER = "X-Tokenquota-Signature"
ALERT_ID_HEADER = "X-Tokenquota-Alert-Id"
ATTEMPT_HEADER = "X-Tokenquota-Attempt"


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert_outbox row, as the notifier sends it."""

    alert_id: uuid.UUID
    event_id: uuid.UUID
    action: str
    session_id: str
    window: str
    level: str
    #: Tokens, or dollars for a USD window (sent as a decimal string, exact).
    used: int | Decimal
    limit: int | Decimal
    occurred_at: datetime
    created_at: datetime
    #: The budget tree node whose window it is (None: the session's own).
    account: str | None = None
    unit: str = "tokens"


def _utc(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _amount(value: int | Decimal) -> int | str:
    return value if isinstance(value, int) else str(value)


def webhook_body(alert: Alert) -> bytes:
    """The JSON body: the same bytes on every attempt (the alert id lets receivers dedupe)."""
    return json.dumps(
        {
            "alert_id": str(alert.alert_id),
            "event_id": str(alert.event_id),
            "session_id": alert.session_id,
            "account": alert.account,
            "unit": alert.unit,
            "window": alert.window,
            "level": alert.level,
            "action": alert.action,
            "used": _amount(alert.used),
            "limit": _amount(alert.limit),
            "occurred_at": _utc(alert.occurred_at),
            "created_at": _utc(alert.created_at),
        },
        separators=(",", ":"),
    ).encode()


def sign(secret: str, body: bytes) -> str:
    """The signature header's value: `sha256=` and the hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, body: bytes, header: str | None) -> bool:
    """True when `header` is the signature of `body` under `secret` (constant time)."""
    return header is not None and hmac.compare_digest(sign(secret, body), header)


def webhook_headers(alert: Alert, body: bytes, secret: str | None, attempt: int) -> dict[str, str]:
    """Content type, alert id, attempt number and (with a secret) the signature."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "tokenquota-notifier",
        ALERT_ID_HEADER: str(alert.alert_id),
        ATTEMPT_HEADER: str(attempt),
    }
    if secret is not None:
        headers[SIGNATURE_HEADER] = sign(secret, body)
    return headers


def backoff(attempts: int, first: float, most: float, rng: random.Random | None = None) -> float:
    """Seconds before the next attempt after `attempts` failed ones: `first` doubled per
    failure, capped at `most`, then jittered into its upper half (so workers spread out)."""
    delay = min(most, first * 2.0 ** max(attempts - 1, 0))
    return delay / 2 + (rng or random).uniform(0, delay / 2)
