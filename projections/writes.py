"""The SQL that saves a fold: one set-based statement per table, and the rows for each.

Each statement inserts a whole batch: every column is an array parameter and the rows
come from unnest, so PostgreSQL plans and runs one statement per table instead of one
per row, which is most of what a batch costs.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import operator
import re
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import asyncpg

from tokenquota.schemas import BIGINT_MAX

from .budget_rows import NODE_COLUMNS, SESSION_COLUMNS, node_args, session_args
from .pg_arrays import array_literal
from .state import (
    AlertRow,
    Folded,
    LogRow,
    PartitionKey,
    ReservationRecord,
)

__all__ = [
    "CHECKPOINT",
    "RESERVATION_FIELDS",
    "Write",
    "execute_write",
    "execute_writes",
    "fold_writes",
]

#: A statement and the rows it inserts.
Write = tuple[str, list[tuple[Any, ...]]]

#: The reservations columns, in the order of ReservationRecord's fields.
RESERVATION_FIELDS = tuple(f.name for f in dataclasses.fields(ReservationRecord))
#: A ReservationRecord as the values of its row, in RESERVATION_FIELDS' order.
_reservation_args = operator.attrgetter(*RESERVATION_FIELDS)

_RESERVATION_TYPES = {
    "reservation_id": "uuid", "event_id": "uuid", "session_id": "varchar",
    "task_id": "varchar", "tokens": "bigint", "priority": "text", "status": "text",
    "reason": "text", "available_tokens": "bigint", "limit_tokens": "bigint",
    "requested_at": "timestamptz", "decided_at": "timestamptz", "expires_at": "timestamptz",
    "settled_at": "timestamptz", "settled_tokens": "bigint", "overage_tokens": "bigint",
    "account": "varchar", "refused_by": "varchar", "reserved_usd": "numeric",
    "price_source": "text", "usd_held": "numeric", "settled_usd": "numeric",
    "limit_usd": "numeric", "used_usd": "numeric", "held_usd": "numeric",
}  # fmt: skip
_RESERVATION_COLUMNS = tuple((name, _RESERVATION_TYPES[name]) for name in RESERVATION_FIELDS)
_USAGE_COLUMNS = (
    ("input_tokens", "bigint"), ("output_tokens", "bigint"), ("tokens_used", "bigint"),
    ("usage_events", "bigint"), ("cost_usd", "numeric"),
)  # fmt: skip
_ADDED_USAGE = """DO UPDATE SET
        input_tokens = t.input_tokens + EXCLUDED.input_tokens,
        output_tokens = t.output_tokens + EXCLUDED.output_tokens,
        tokens_used = t.tokens_used + EXCLUDED.tokens_used,
        usage_events = t.usage_events + EXCLUDED.usage_events,
        cost_usd = t.cost_usd + EXCLUDED.cost_usd"""


def _bulk(table: str, columns: Sequence[tuple[str, str]], key: str, conflict: str) -> str:
    """One INSERT of a whole batch: each column is an array parameter (sent as the text of
    an array literal, see pg_arrays), rows by unnest."""
    names = ", ".join(name for name, _ in columns)
    arrays = ", ".join(f"${i}::text::{kind}[]" for i, (_, kind) in enumerate(columns, 1))
    return (
        f"INSERT INTO {table} AS t ({names}) SELECT * FROM unnest({arrays}) "  # noqa: S608 - constants only
        f"ON CONFLICT ({key}) {conflict}"
    )


def _replace(columns: Sequence[tuple[str, str]], key: str) -> str:
    return "DO UPDATE SET " + ", ".join(
        f"{name} = EXCLUDED.{name}" for name, _ in columns if name != key
    )


_UPSERT_SESSIONS = _bulk(
    "session_token_budgets",
    SESSION_COLUMNS,
    "session_id",
    _replace(SESSION_COLUMNS, "session_id"),
)
_UPSERT_NODES = _bulk(
    "account_budgets",
    NODE_COLUMNS,
    "account",
    _replace(NODE_COLUMNS, "account"),
)
_UPSERT_RESERVATIONS = _bulk(
    "reservations",
    _RESERVATION_COLUMNS,
    "reservation_id",
    _replace(_RESERVATION_COLUMNS, "reservation_id"),
)
_ADD_DAILY = _bulk(
    "session_usage_daily",
    (("session_id", "varchar"), ("day", "date"), *_USAGE_COLUMNS),
    "session_id, day",
    _ADDED_USAGE,
)
_ADD_MONTHLY = _bulk(
    "session_usage_monthly",
    (("session_id", "varchar"), ("month", "date"), *_USAGE_COLUMNS),
    "session_id, month",
    _ADDED_USAGE,
)
_ACCOUNT_COLUMNS = (
    *_USAGE_COLUMNS, ("reservations_accepted", "bigint"), ("reservations_rejected", "bigint"),
    ("reservations_refused", "bigint"),
)  # fmt: skip
# No saturation: the fold refuses an event that would take a node's total past a BIGINT.
_ADDED_ACCOUNT = (
    _ADDED_USAGE
    + """,
        reservations_accepted = t.reservations_accepted + EXCLUDED.reservations_accepted,
        reservations_rejected = t.reservations_rejected + EXCLUDED.reservations_rejected,
        reservations_refused = t.reservations_refused + EXCLUDED.reservations_refused"""
)
_ADD_ACCOUNT_DAILY = _bulk(
    "account_usage_daily",
    (("account", "varchar"), ("day", "date"), *_ACCOUNT_COLUMNS),
    "account, day",
    _ADDED_ACCOUNT,
)
_ADD_TASKS = _bulk(
    "task_token_allocations",
    (
        ("session_id", "varchar"),
        ("task_id", "varchar"),
        ("allocated_tokens", "bigint"),
        ("tokens_used", "bigint"),
        ("created_at", "timestamptz"),
        ("updated_at", "timestamptz"),
    ),
    "session_id, task_id",
    """DO UPDATE SET
        allocated_tokens = t.allocated_tokens + EXCLUDED.allocated_tokens,
        tokens_used = t.tokens_used + EXCLUDED.tokens_used,
        created_at = LEAST(t.created_at, EXCLUDED.created_at),
        updated_at = GREATEST(t.updated_at, EXCLUDED.updated_at)""",
)
_ADD_APIS = _bulk(
    "external_api_tokens",
    (
        ("session_id", "varchar"),
        ("api_name", "varchar"),
        ("requests", "bigint"),
        ("input_tokens", "bigint"),
        ("output_tokens", "bigint"),
        ("cache_read_tokens", "bigint"),
        ("cache_write_tokens", "bigint"),
        ("tokens_used", "bigint"),
        ("cost_usd", "numeric"),
        ("last_used", "timestamptz"),
        ("rate_limit_remaining", "bigint"),
        ("rate_limit_reset", "timestamptz"),
    ),
    "session_id, api_name",
    """DO UPDATE SET
        requests = t.requests + EXCLUDED.requests,
        input_tokens = t.input_tokens + EXCLUDED.input_tokens,
        output_tokens = t.output_tokens + EXCLUDED.output_tokens,
        cache_read_tokens = t.cache_read_tokens + EXCLUDED.cache_read_tokens,
        cache_write_tokens = t.cache_write_tokens + EXCLUDED.cache_write_tokens,
        tokens_used = t.tokens_used + EXCLUDED.tokens_used,
        cost_usd = t.cost_usd + EXCLUDED.cost_usd,
        last_used = GREATEST(t.last_used, EXCLUDED.last_used),
        rate_limit_remaining = COALESCE(EXCLUDED.rate_limit_remaining, t.rate_limit_remaining),
        rate_limit_reset = COALESCE(EXCLUDED.rate_limit_reset, t.rate_limit_reset)""",
)
_DEFAULTS_COLUMNS = (
    ("topic", "text"), ("kafka_partition", "int"), ("event_id", "uuid"),
    ("daily_limit", "bigint"), ("monthly_limit", "bigint"), ("hard_limit", "bigint"),
    ("warning_threshold", "numeric"), ("critical_threshold", "numeric"), ("timezone", "text"),
    ("max_clock_skew_ms", "bigint"), ("set_at", "timestamptz"),
)  # fmt: skip
_UPSERT_DEFAULTS = _bulk(
    "partition_defaults",
    _DEFAULTS_COLUMNS,
    "topic, kafka_partition",
    "DO UPDATE SET "
    + ", ".join(
        f"{name} = EXCLUDED.{name}"
        for name, _ in _DEFAULTS_COLUMNS
        if name not in ("topic", "kafka_partition")
    ),
)
#: Flags the ledger rows of events counted at the log clock (occurred_at too far ahead).
_FLAG_CLOCK_SKEWED = (
    "UPDATE usage_events SET clock_skewed = true WHERE event_id = ANY($1::text::uuid[])"
)
_INSERT_NOTICES = _bulk(
    "integration_notices",
    (
        ("event_id", "uuid"),
        ("action", "varchar"),
        ("integration_type", "varchar"),
        ("component_name", "varchar"),
        ("session_id", "varchar"),
        ("task_id", "varchar"),
        ("tokens_used", "bigint"),
        ("status", "varchar"),
        ("error_message", "text"),
        ("metadata", "jsonb"),
        ("created_at", "timestamptz"),
    ),
    "event_id, action",
    "DO NOTHING",
)


def _added(columns: Sequence[str], *, saturating: Sequence[str] = ()) -> str:
    """Add each column to the row's; `saturating` ones stop at the largest BIGINT.

    The rollups of all sessions (per minute, per API or model and day) would otherwise
    overflow on sums no session can reach, and PostgreSQL would refuse whichever event
    came first, which across partitions depends on their interleaving: a replay would
    refuse another one. Stopping at the maximum is the same in any order (every value
    added is >= 0). So is reserved_tokens, which released holds can grow past any limit.
    """
    return "DO UPDATE SET " + ", ".join(
        f"{n} = LEAST(t.{n}::numeric + EXCLUDED.{n}, {BIGINT_MAX})::bigint"
        if n in saturating
        else f"{n} = t.{n} + EXCLUDED.{n}"
        for n in columns
    )


def _cap(tokens: int) -> int:
    """A batch's sum of a saturating column, at most the largest BIGINT."""
    return tokens if tokens <= BIGINT_MAX else BIGINT_MAX


_ADD_HOURLY = _bulk(
    "session_usage_hourly",
    (("session_id", "varchar"), ("hour", "timestamptz"), *_USAGE_COLUMNS),
    "session_id, hour",
    _ADDED_USAGE,
)
_ADD_API_DAILY = _bulk(
    "api_usage_daily",
    (
        ("day", "date"), ("api_name", "varchar"), ("model", "varchar"), ("requests", "bigint"),
        ("input_tokens", "bigint"), ("output_tokens", "bigint"),
        ("cache_read_tokens", "bigint"), ("cache_write_tokens", "bigint"),
        ("cost_usd", "numeric"),
    ),
    "day, api_name, model",
    _added(
        ("requests", "input_tokens", "output_tokens", "cache_read_tokens",
         "cache_write_tokens", "cost_usd"),
        saturating=("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"),
    ),
)  # fmt: skip
_ADD_MODEL_DAILY = _bulk(
    "model_usage_daily",
    (
        ("day", "date"), ("component", "varchar"), ("model", "varchar"),
        ("usage_events", "bigint"), ("input_tokens", "bigint"), ("output_tokens", "bigint"),
    ),
    "day, component, model",
    _added(
        ("usage_events", "input_tokens", "output_tokens"),
        saturating=("input_tokens", "output_tokens"),
    ),
)  # fmt: skip
_RESERVATION_COUNTS = (
    "accepted", "rejected", "settled", "released", "expired", "reserved_tokens",
    "settled_tokens",
)  # fmt: skip
_ADD_RESERVATIONS_DAILY = _bulk(
    "session_reservations_daily",
    (
        ("session_id", "varchar"),
        ("day", "date"),
        *((name, "bigint") for name in _RESERVATION_COUNTS),
    ),
    "session_id, day",
    _added(_RESERVATION_COUNTS, saturating=("reserved_tokens",)),
)
_MINUTE_COUNTS = (
    ("events_applied", "bigint"), ("tokens_used", "bigint"), ("cost_usd", "numeric"),
    ("reservations_accepted", "bigint"), ("reservations_rejected", "bigint"),
)  # fmt: skip
_ADD_MINUTELY = _bulk(
    "system_usage_minutely",
    (("minute", "timestamptz"), *_MINUTE_COUNTS),
    "minute",
    _added([name for name, _ in _MINUTE_COUNTS], saturating=("tokens_used",)),
)
#: The alert ids are derived from (event, action): an alert is written once.
_INSERT_ALERTS = _bulk(
    "alert_outbox",
    (
        ("alert_id", "uuid"), ("event_id", "uuid"), ("action", "varchar"),
        ("session_id", "varchar"), ("window_name", "text"), ("level", "text"),
        ("used_tokens", "bigint"), ("limit_tokens", "bigint"), ("occurred_at", "timestamptz"),
        ("created_at", "timestamptz"), ("account", "varchar"), ("unit", "text"),
        ("used_usd", "numeric"), ("limit_usd", "numeric"),
    ),
    "alert_id",
    "DO NOTHING",
)  # fmt: skip


async def execute_write(
    conn: asyncpg.Connection, statement: str, rows: Sequence[tuple[Any, ...]]
) -> None:
    """Run one of these statements for `rows` (sent column by column, each as one array
    literal); nothing when empty."""
    if rows:
        await conn.execute(statement, *map(array_literal, zip(*rows, strict=True)))


async def execute_writes(
    conn: asyncpg.Connection, writes: Sequence[Write], *, notify: tuple[str, list[str]] | None
) -> None:
    """Run `writes` (each with rows), and NOTIFY `notify`'s payloads on its channel, in one
    statement: one round trip to PostgreSQL instead of one per table.

    Each write becomes a data-modifying WITH query; no two of them touch one table, so
    they need not see each other's rows (which they could not).
    """
    if not writes and not notify:
        return
    args: list[Any] = []
    for _, rows in writes:
        args.extend(map(array_literal, zip(*rows, strict=True)))
    if notify is not None:
        args.extend(notify)
    await conn.execute(_combined(tuple(s for s, _ in writes), notify is not None), *args)


_PARAMETER = re.compile(r"\$(\d+)")


@functools.lru_cache(maxsize=256)
def _combined(statements: tuple[str, ...], notify: bool) -> str:
    """One statement running `statements` (parameters renumbered in turn), then NOTIFY
    for each of the two last parameters' payloads on the channel before them."""
    parts: list[str] = []
    offset = 0
    for i, statement in enumerate(statements):
        count = len(set(_PARAMETER.findall(statement)))
        shifted = _PARAMETER.sub(functools.partial(_shift, by=offset), statement)
        parts.append(f"w{i} AS ({shifted})")
        offset += count
    main = (
        f"SELECT count(pg_notify(${offset + 1}::text, d)) FROM unnest(${offset + 2}::text[]) d"  # noqa: S608 - numbers only
        if notify
        else "SELECT 1"
    )
    return f"WITH {', '.join(parts)} {main}" if parts else main


def _shift(parameter: re.Match[str], *, by: int) -> str:
    return f"${int(parameter.group(1)) + by}"


def fold_writes(folded: Folded) -> list[Write]:
    """The statements that save a fold, each with its rows (no statement without rows).

    Rows go in key order, so two transactions never lock the same rows in opposite order.
    """
    state = folded.state
    writes: list[Write] = [
        (
            _UPSERT_SESSIONS,
            [session_args(state.sessions[s]) for s in sorted(folded.changed_sessions)],
        ),
        (_UPSERT_NODES, [node_args(state.nodes[a]) for a in sorted(folded.changed_nodes)]),
        (
            _UPSERT_RESERVATIONS,
            [
                _reservation_args(state.reservations[rid])
                for rid in sorted(folded.changed_reservations)
            ],
        ),
    ]
    for statement, table in ((_ADD_DAILY, folded.daily), (_ADD_MONTHLY, folded.monthly)):
        writes.append(
            (
                statement,
                [
                    (s, w, d.input_tokens, d.output_tokens, d.tokens_used, d.usage_events,
                     d.cost_usd)
                    for (s, w), d in sorted(table.items())
                ],
            )
        )  # fmt: skip
    writes.append(
        (
            _ADD_TASKS,
            [
                (s, t, d.allocated_tokens, d.tokens_used, d.first_at, d.last_at)
                for (s, t), d in sorted(folded.tasks.items())
            ],
        )
    )
    writes.append(
        (
            _ADD_APIS,
            [
                (
                    s, api, d.requests, d.input_tokens, d.output_tokens, d.cache_read_tokens,
                    d.cache_write_tokens, d.input_tokens + d.output_tokens, d.cost_usd,
                    d.last_used, d.rate_limit_remaining, d.rate_limit_reset,
                )
                for (s, api), d in sorted(folded.apis.items())
            ],
        )
    )  # fmt: skip
    writes.append((_INSERT_NOTICES, [_log_args(row) for row in folded.logs]))
    writes.extend(_rollup_writes(folded))
    writes.append((_INSERT_ALERTS, [_alert_args(row) for row in folded.alerts]))
    writes.append(
        (_UPSERT_DEFAULTS, [_defaults_args(folded, key) for key in sorted(folded.changed_defaults)])
    )
    writes.append((_FLAG_CLOCK_SKEWED, [(event_id,) for event_id in folded.clock_skewed]))
    return [(statement, rows) for statement, rows in writes if rows]


def _rollup_writes(folded: Folded) -> list[Write]:
    """The read-model rollups: one row per key of the batch, added to the tables."""
    return [
        (
            _ADD_HOURLY,
            [
                (s, h, d.input_tokens, d.output_tokens, d.tokens_used, d.usage_events,
                 d.cost_usd)
                for (s, h), d in sorted(folded.hourly.items())
            ],
        ),
        (
            _ADD_API_DAILY,
            [
                (day, api, model, d.requests, _cap(d.input_tokens), _cap(d.output_tokens),
                 _cap(d.cache_read_tokens), _cap(d.cache_write_tokens), d.cost_usd)
                for (day, api, model), d in sorted(folded.api_daily.items())
            ],
        ),
        (
            _ADD_MODEL_DAILY,
            [
                (day, component, model, d.usage_events, _cap(d.input_tokens),
                 _cap(d.output_tokens))
                for (day, component, model), d in sorted(folded.model_daily.items())
            ],
        ),
        (
            _ADD_RESERVATIONS_DAILY,
            [
                (s, day, d.accepted, d.rejected, d.settled, d.released, d.expired,
                 _cap(d.reserved_tokens), d.settled_tokens)
                for (s, day), d in sorted(folded.reservations_daily.items())
            ],
        ),
        (
            _ADD_ACCOUNT_DAILY,
            [
                (a, day, d.input_tokens, d.output_tokens, d.tokens_used, d.usage_events,
                 d.cost_usd, d.reservations_accepted, d.reservations_rejected,
                 d.reservations_refused)
                for (a, day), d in sorted(folded.account_daily.items())
            ],
        ),
        (
            _ADD_MINUTELY,
            [
                (minute, d.events_applied, _cap(d.tokens_used), d.cost_usd,
                 d.reservations_accepted, d.reservations_rejected)
                for minute, d in sorted(folded.minutely.items())
            ],
        ),
    ]  # fmt: skip


def _alert_args(row: AlertRow) -> tuple[Any, ...]:
    return (
        row.alert_id,
        row.event_id,
        row.action,
        row.session_id,
        row.window_name,
        row.level,
        row.used_tokens,
        row.limit_tokens,
        row.occurred_at,
        row.created_at,
        row.account,
        row.unit,
        row.used_usd,
        row.limit_usd,
    )


def _defaults_args(folded: Folded, key: PartitionKey) -> tuple[Any, ...]:
    partition = folded.state.partitions[key]
    config, limits = partition.defaults, partition.defaults.default_limits
    return (
        *key,
        partition.defaults_event,
        limits.daily_limit,
        limits.monthly_limit,
        limits.hard_limit,
        limits.warning_threshold,
        limits.critical_threshold,
        config.zone.key,
        config.max_clock_skew // timedelta(milliseconds=1),
        partition.defaults_set_at,
    )


def _log_args(row: LogRow) -> tuple[Any, ...]:
    return (
        row.event_id,
        row.action,
        row.integration_type,
        row.component_name,
        row.session_id,
        row.task_id,
        row.tokens_used,
        row.status,
        row.error_message,
        None if row.metadata is None else json.dumps(row.metadata, sort_keys=True),
        row.created_at,
    )


#: Advances partition_checkpoints (never backwards); rows (topic, partition, next_offset,
#: log clock or None when the batch applied nothing of that partition).
CHECKPOINT = _bulk(
    "partition_checkpoints",
    (
        ("topic", "text"),
        ("kafka_partition", "int"),
        ("next_offset", "bigint"),
        ("log_clock", "timestamptz"),
    ),
    "topic, kafka_partition",
    """DO UPDATE SET next_offset = GREATEST(t.next_offset, EXCLUDED.next_offset),
        log_clock = GREATEST(t.log_clock, EXCLUDED.log_clock)""",
)
