"""Errors that cross package boundaries (the seed design's names are kept)."""

from __future__ import annotations

__all__ = ["DevStackError", "IntegrationError"]


class IntegrationError(Exception):
    """A server tokenquota depends on (Kafka, PostgreSQL) is unreachable or misbehaves."""


class DevStackError(RuntimeError):
    """An embedded server of `tokenquota dev` could not be started."""
