"""Bearer tokens (`api.tokens`: name, role, SHA-256 of the token) and per-client rate limits."""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from dataclasses import dataclass

from fastapi import HTTPException, Request

from tokenquota.actors import os_actor, token_actor
from tokenquota.sections import ApiSettings

__all__ = ["Caller", "RateLimiter", "authenticate", "hash_token"]

_ROLES = {"read": 0, "admin": 1}


def hash_token(token: str) -> str:
    """The hex SHA-256 that `api.tokens[].sha256` holds for `token`."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Caller:
    """Who calls: a configured token's name and role, or the local user without tokens."""

    name: str
    role: str
    actor: str
    #: What the rate limit counts by: the token's name, or the client's address.
    key: str


def authenticate(settings: ApiSettings, request: Request, needed: str) -> Caller:
    """The caller of `request`, allowed `needed` ('read' or 'admin'); 401/403 otherwise.

    Without configured tokens every caller is the local OS user with the admin role (the
    API then serves 127.0.0.1 only)."""
    client = request.client.host if request.client else "unknown"
    if not settings.tokens:
        return Caller("local", "admin", os_actor(), f"addr:{client}")
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(
            401,
            "an API token is needed: send `Authorization: Bearer <token>`",
            headers={"WWW-Authenticate": "Bearer"},
        )
    digest = hash_token(token.strip())
    found = None
    for configured in settings.tokens:  # every one compared, in constant time each
        if hmac.compare_digest(digest, configured.sha256):
            found = configured
    if found is None:
        raise HTTPException(401, "unknown API token", headers={"WWW-Authenticate": "Bearer"})
    if _ROLES[found.role] < _ROLES[needed]:
        raise HTTPException(
            403, f"the token {found.name!r} has role {found.role}; this needs {needed}"
        )
    return Caller(found.name, found.role, token_actor(found.name), f"token:{found.name}")


class RateLimiter:
    """A token bucket per caller: `rate` requests per second, `burst` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> float:
        """0 when `key` may make a request now, else the seconds until it may."""
        now = time.monotonic()
        tokens, at = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        if tokens >= 1:
            self._buckets[key] = (tokens - 1, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1 - tokens) / self.rate

    @staticmethod
    def retry_after(seconds: float) -> str:
        """A Retry-After header value (whole seconds, at least 1)."""
        return str(max(1, math.ceil(seconds)))
