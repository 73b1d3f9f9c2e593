"""Logging set-up: asyncpg's reconnect retries are one line each, not a traceback."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tokenquota.logs import configure_logging


class _Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def configured() -> Iterator[_Kept]:
    """configure_logging("INFO"), and a handler keeping what reaches the root; the
    logging set-up of the test session is restored afterwards."""
    root, pool = logging.getLogger(), logging.getLogger("asyncpg.pool")
    handlers, level, filters = root.handlers[:], root.level, pool.filters[:]
    configure_logging("INFO")
    kept = _Kept()
    root.addHandler(kept)
    try:
        yield kept
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        pool.filters[:] = filters


def test_a_pool_reconnect_failure_is_one_line_naming_the_error(configured: _Kept) -> None:
    try:
        raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)")
    except ConnectionRefusedError:
        # What asyncpg's pool logs while PostgreSQL is down, at every retry.
        logging.getLogger("asyncpg.pool").warning(
            "Failed to restore the pool connection floor; retrying", exc_info=True
        )
    (record,) = configured.records
    assert record.exc_info is None
    assert record.getMessage() == (
        "Failed to restore the pool connection floor; retrying: ConnectionRefusedError: "
        "[Errno 111] Connect call failed ('127.0.0.1', 5432)"
    )
