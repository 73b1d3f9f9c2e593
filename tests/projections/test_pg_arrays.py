"""Array literals for the fold's writes: every value reads back from PostgreSQL exactly as
asyncpg's own array encoding would have sent it, whatever a string holds."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from enum import IntEnum, StrEnum

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenquota.config import DatabaseSettings
from tokenquota.projections import connect
from tokenquota.projections.pg_arrays import array_literal


class Color(StrEnum):
    red = "red"


class Level(IntEnum):
    high = 3


def test_elements_are_quoted_escaped_and_null_is_bare() -> None:
    assert array_literal([1, None, -7]) == "{1,NULL,-7}"
    assert array_literal(['a"b', "c\\d", "NULL", "", "x,y}"]) == (
        '{"a\\"b","c\\\\d","NULL","","x,y}"}'
    )
    assert array_literal([Decimal("1E+2"), Decimal("-0.0012500000")]) == "{1E+2,-0.0012500000}"
    assert array_literal([True, False, Color.red, Level.high]) == '{t,f,"red",3}'
    assert array_literal([]) == "{}"
    # A column of one type is written in one go; the same text as element by element.
    assert array_literal(['a"b', "c\\d", "x,y}"]) == '{"a\\"b","c\\\\d","x,y}"}'
    assert array_literal(["a\x00b", "c"]) == '{"a\x00b","c"}'  # PostgreSQL refuses it


def test_what_postgresql_could_not_store_is_refused_here() -> None:
    with pytest.raises(ValueError, match="naive datetime"):
        array_literal([datetime(2026, 12, 6, 12)])
    with pytest.raises(ValueError, match="finite"):
        array_literal([Decimal("NaN")])
    with pytest.raises(TypeError, match="no PostgreSQL array element for list"):
        array_literal([[1]])


@pytest.fixture
async def conn(migrated_database: DatabaseSettings) -> AsyncIterator[asyncpg.Connection]:
    connection = await connect(migrated_database.dsn(), migrated_database.schema_name)
    yield connection
    await connection.close()


# PostgreSQL text holds any character but NUL.
_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"))


@pytest.mark.integration
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.none() | _TEXT, max_size=12))
async def test_any_text_reads_back_as_it_was(
    conn: asyncpg.Connection, values: list[str | None]
) -> None:
    assert await conn.fetchval("SELECT $1::text::text[]", array_literal(values)) == values


@pytest.mark.integration
async def test_numbers_times_and_ids_read_back_exactly(conn: asyncpg.Connection) -> None:
    amounts = [Decimal("0E-10"), Decimal("1E+2"), Decimal("-12345678901234567890.0123456789")]
    assert await conn.fetchval("SELECT $1::text::numeric[]", array_literal(amounts)) == amounts
    big = [2**63 - 1, -(2**63), 0, None]
    assert await conn.fetchval("SELECT $1::text::bigint[]", array_literal(big)) == big
    tokyo = timezone(timedelta(hours=9))
    times = [
        datetime(2026, 12, 6, 21, 0, 0, 123456, tzinfo=tokyo),
        datetime.min.replace(tzinfo=UTC),
    ]
    read = await conn.fetchval("SELECT $1::text::timestamptz[]", array_literal(times))
    assert read == times and all(t.tzinfo is not None for t in read)
    days = [date(2026, 12, 1), date(1, 1, 1)]
    assert await conn.fetchval("SELECT $1::text::date[]", array_literal(days)) == days
    ids = [uuid.uuid4(), uuid.UUID(int=0)]
    assert await conn.fetchval("SELECT $1::text::uuid[]", array_literal(ids)) == ids
    flags = [True, False, None]
    assert await conn.fetchval("SELECT $1::text::boolean[]", array_literal(flags)) == flags
    documents = ['{"a": "b\\"c", "n": 1}']
    assert (
        await conn.fetchval("SELECT ($1::text::jsonb[])[1] ->> 'a'", array_literal(documents))
        == 'b"c'
    )
