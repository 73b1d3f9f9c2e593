"""The store against a real PostgreSQL: large batches (COPY) and small ones (arrays) agree."""

from __future__ import annotations

import uuid

import pytest

from tests.support import live_workload, snapshot
from tokenquota.config import DatabaseSettings, Settings, fold_config
from tokenquota.projections import LogRecord, apply_batch, apply_migrations, connect
from tokenquota.schemas import encode

pytestmark = pytest.mark.integration


async def test_large_and_small_batches_build_the_same_projections_once_each(
    migrated_database: DatabaseSettings,
) -> None:
    events = live_workload(sessions=24)
    records = [LogRecord(e, encode(e), "usage", i % 3, i) for i, e in enumerate(events)]
    config = fold_config(Settings())
    schema = migrated_database.schema_name
    small = migrated_database.model_copy(update={"schema_name": f"test_{uuid.uuid4().hex[:12]}"})
    large = await connect(migrated_database.dsn(), schema)
    by_arrays = await connect(small.dsn(), small.schema_name)
    try:
        await by_arrays.execute(f'CREATE SCHEMA "{small.schema_name}"')
        await apply_migrations(by_arrays, small.schema_name)
        for start in range(0, len(records), 7):
            batch = records[start : start + 7]
            await apply_batch(by_arrays, batch, config, schema=small.schema_name)

        # Two large batches inside one transaction (as replay's catch-up runs them), the
        # second overlapping the first; then a redelivery of the first 700.
        async with large.transaction():
            first = await apply_batch(large, records[:600], config, schema=schema)
            second = await apply_batch(
                large, records[550:] + records[550:560], config, schema=schema
            )
        again = await apply_batch(large, records[:700], config, schema=schema)

        assert (first.applied, first.duplicates) == (600, 0)
        assert (second.applied, second.duplicates) == (len(records) - 600, 60)
        assert (again.applied, again.duplicates) == (0, 700)
        assert await snapshot(migrated_database) == await snapshot(small)
    finally:
        await by_arrays.execute(f'DROP SCHEMA IF EXISTS "{small.schema_name}" CASCADE')
        await by_arrays.close()
        await large.close()
