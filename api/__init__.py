"""The HTTP API (`tokenquota api`): a thin FastAPI adapter over the read side and the
producers, with no SQL of its own."""

from __future__ import annotations

from .app import create_app
from .auth import hash_token
from .body_limit import MAX_BODY_BYTES

__all__ = ["MAX_BODY_BYTES", "create_app", "hash_token"]
