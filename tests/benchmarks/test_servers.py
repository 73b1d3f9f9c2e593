"""The benchmarks' embedded PostgreSQL: its WAL files made ahead for reuse (a server of
its own, real: the shared one's WAL settings are left alone)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from benchmarks.servers import recycle_wal
from tokenquota.embedded import EmbeddedPostgres


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[str]:
    server = EmbeddedPostgres(tmp_path / "pg", tmp_path / "pg.log")
    with server:
        yield server.start()


async def _segments_ahead(conn: asyncpg.Connection) -> int:
    """WAL segment files named after the one being written: made, not yet reached."""
    current = await conn.fetchval("SELECT pg_walfile_name(pg_current_wal_lsn())")
    names = await conn.fetch("SELECT name FROM pg_ls_waldir() WHERE length(name) = 24")
    return sum(row["name"] > current for row in names)


async def test_recycled_wal_files_wait_ahead_of_the_log(own_postgres: str) -> None:
    conn = await asyncpg.connect(own_postgres)
    try:
        assert await _segments_ahead(conn) <= 1  # a new cluster makes them as it goes
        await recycle_wal(own_postgres, megabytes=128)  # 8 files of 16 MB
        assert await _segments_ahead(conn) >= 7
        # min_wal_size keeps them at later checkpoints; max_wal_size is back to its default
        assert await conn.fetchval("SHOW min_wal_size") == "128MB"
        assert await conn.fetchval("SHOW max_wal_size") == "1GB"
        await conn.execute("CHECKPOINT")
        assert await _segments_ahead(conn) >= 7
    finally:
        await conn.close()
