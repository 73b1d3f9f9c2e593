"""Servers for the benchmarks: the configured ones, or embedded ones started and stopped here."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tokenquota.embedded import EmbeddedBroker

__all__ = ["kafka_servers"]


@contextlib.contextmanager
def kafka_servers() -> Iterator[tuple[str, str]]:
    """(bootstrap servers, description): KAFKA_BOOTSTRAP_SERVERS, or an embedded broker."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        yield configured, f"configured broker {configured}"
        return
    with tempfile.TemporaryDirectory(prefix="tq-bench-") as folder:
        broker = EmbeddedBroker(Path(folder) / "broker.log")
        with broker:
            yield broker.start(), "embedded Tansu broker (memory storage)"
