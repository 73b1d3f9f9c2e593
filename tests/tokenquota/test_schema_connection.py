"""The operator commands' connection to the schema, against a real PostgreSQL."""

from __future__ import annotations

import socket

import pytest
from pydantic import SecretStr

from tokenquota.config import DatabaseSettings, Settings
from tokenquota.errors import IntegrationError
from tokenquota.schema_connection import schema_connection

pytestmark = pytest.mark.integration


async def test_it_reads_the_configured_schema(
    settings: Settings, migrated_database: DatabaseSettings
) -> None:
    async with schema_connection(settings, "partition_checkpoints") as conn:
        assert await conn.fetchval("SELECT current_schema()") == settings.database.schema_name
        assert await conn.fetchval("SELECT count(*) FROM partition_checkpoints") == 0
    assert conn.is_closed()


async def test_a_schema_without_the_tables_names_them_and_migrate(settings: Settings) -> None:
    with pytest.raises(IntegrationError) as raised:
        async with schema_connection(settings, "dlq_reviews") as conn:
            await conn.fetch("SELECT * FROM dlq_reviews")
    assert str(raised.value) == (
        f"schema {settings.database.schema_name} has no dlq_reviews table: run `tokenquota migrate`"
    )
    assert conn.is_closed()


async def test_an_unreachable_server_is_an_integration_error(settings: Settings) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: refused
        nowhere = settings.model_copy(
            update={
                "database": DatabaseSettings(
                    url=SecretStr(f"postgresql://nobody@127.0.0.1:{port}/none")
                )
            }
        )
        with pytest.raises(IntegrationError, match=r"^PostgreSQL unreachable: "):
            async with schema_connection(nowhere, "dlq_reviews"):
                pytest.fail("connected to nothing")
