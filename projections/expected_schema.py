"""The tables and columns the code relies on, and a check of a database against them."""

from __future__ import annotations

import asyncpg

from .database import quote_schema

__all__ = ["EXPECTED_COLUMNS", "schema_drift"]

#: table -> column -> (information_schema data_type, nullable)
EXPECTED_COLUMNS: dict[str, dict[str, tuple[str, bool]]] = {
    "dlq_reviews": {
        "topic": ("text", False),
        "kafka_partition": ("integer", False),
        "reviewed_to": ("bigint", False),
        "reviewed_at": ("timestamp with time zone", False),
        "actor": ("text", False),
    },
    "accepted_log_gaps": {
        "topic": ("text", False),
        "kafka_partition": ("integer", False),
        "from_offset": ("bigint", False),
        "to_offset": ("bigint", False),
        "accepted_at": ("timestamp with time zone", False),
        "actor": ("text", False),
    },
    "worker_status": {
        "member": ("text", False),
        "group_id": ("text", False),
        "host": ("text", False),
        "pid": ("integer", False),
        "started_at": ("timestamp with time zone", False),
        "seen_at": ("timestamp with time zone", False),
        "last_batch_at": ("timestamp with time zone", True),
        "events_applied": ("bigint", False),
        "batches": ("bigint", False),
    },
    "session_usage_hourly": {
        "session_id": ("character varying", False),
        "hour": ("timestamp with time zone", False),
        "input_tokens": ("bigint", False),
        "output_tokens": ("bigint", False),
        "tokens_used": ("bigint", False),
        "usage_events": ("bigint", False),
        "cost_usd": ("numeric", False),
    },
    "api_usage_daily": {
        "day": ("date", False),
        "api_name": ("character varying", False),
        "model": ("character varying", False),
        "requests": ("bigint", False),
        "input_tokens": ("bigint", False),
        "output_tokens": ("bigint", False),
        "cache_read_tokens": ("bigint", False),
        "cache_write_tokens": ("bigint", False),
        "cost_usd": ("numeric", False),
    },
    "model_usage_daily": {
        "day": ("date", False),
        "component": ("character varying", False),
        "model": ("character varying", False),
        "usage_events": ("bigint", False),
        "input_tokens": ("bigint", False),
        "output_tokens": ("bigint", False),
    },
    "session_reservations_daily": {
        "session_id": ("character varying", False),
        "day": ("date", False),
        "accepted": ("bigint", False),
        "rejected": ("bigint", False),
        "settled": ("bigint", False),
        "released": ("bigint", False),
        "expired": ("bigint", False),
        "reserved_tokens": ("bigint", False),
        "settled_tokens": ("bigint", False),
    },
    "system_usage_minutely": {
        "minute": ("timestamp with time zone", False),
        "events_applied": ("bigint", False),
        "tokens_used": ("bigint", False),
        "cost_usd": ("numeric", False),
        "reservations_accepted": ("bigint", False),
        "reservations_rejected": ("bigint", False),
    },
    "alert_outbox": {
        "alert_id": ("uuid", False),
        "event_id": ("uuid", False),
        "action": ("character varying", False),
        "session_id": ("character varying", False),
        "window_name": ("text", False),
        "level": ("text", False),
        "used_tokens": ("bigint", True),
        "limit_tokens": ("bigint", True),
        "occurred_at": ("timestamp with time zone", False),
        "created_at": ("timestamp with time zone", False),
        "account": ("character varying", True),
        "unit": ("text", False),
        "used_usd": ("numeric", True),
        "limit_usd": ("numeric", True),
    },
    "alert_deliveries": {
        "alert_id": ("uuid", False),
        "status": ("text", False),
        "attempts": ("integer", False),
        "next_attempt_at": ("timestamp with time zone", True),
        "last_attempt_at": ("timestamp with time zone", True),
        "last_status_code": ("integer", True),
        "last_error": ("text", True),
        "delivered_at": ("timestamp with time zone", True),
    },
    "usage_events": {
        "event_id": ("uuid", False),
        "event_type": ("text", False),
        "session_id": ("character varying", False),
        "task_id": ("character varying", True),
        "occurred_at": ("timestamp with time zone", False),
        "payload": ("jsonb", False),
        "topic": ("text", False),
        "kafka_partition": ("integer", False),
        "kafka_offset": ("bigint", False),
        "log_time": ("timestamp with time zone", False),
        "clock_skewed": ("boolean", False),
    },
    "partition_checkpoints": {
        "topic": ("text", False),
        "kafka_partition": ("integer", False),
        "next_offset": ("bigint", False),
        "log_clock": ("timestamp with time zone", True),
    },
    "partition_defaults": {
        "topic": ("text", False),
        "kafka_partition": ("integer", False),
        "event_id": ("uuid", False),
        "daily_limit": ("bigint", False),
        "monthly_limit": ("bigint", False),
        "hard_limit": ("bigint", False),
        "warning_threshold": ("numeric", False),
        "critical_threshold": ("numeric", False),
        "timezone": ("text", False),
        "max_clock_skew_ms": ("bigint", False),
        "set_at": ("timestamp with time zone", False),
    },
    "external_api_tokens": {
        "session_id": ("character varying", False),
        "api_name": ("character varying", False),
        "requests": ("bigint", False),
        "input_tokens": ("bigint", False),
        "output_tokens": ("bigint", False),
        "cache_read_tokens": ("bigint", False),
        "cache_write_tokens": ("bigint", False),
        "tokens_used": ("bigint", False),
        "cost_usd": ("numeric", False),
        "last_used": ("timestamp with time zone", False),
        "rate_limit_remaining": ("bigint", True),
        "rate_limit_reset": ("timestamp with time zone", True),
    },
    "integration_notices": {
        "event_id": ("uuid", False),
        "action": ("character varying", False),
        "integration_type": ("character varying", False),
        "component_name": ("character varying", False),
        "session_id": ("character varying", True),
        "task_id": ("character varying", True),
        "tokens_used": ("bigint", False),
        "status": ("character varying", False),
        "error_message": ("text", True),
        "metadata": ("jsonb", True),
        "created_at": ("timestamp with time zone", False),
    },
    # A view (0007): PostgreSQL reports every column of a view as nullable.
    "integration_logs": {
        "event_id": ("uuid", True),
        "action": ("character varying", True),
        "integration_type": ("character varying", True),
        "component_name": ("character varying", True),
        "session_id": ("character varying", True),
        "task_id": ("character varying", True),
        "tokens_used": ("bigint", True),
        "status": ("character varying", True),
        "error_message": ("text", True),
        "metadata": ("jsonb", True),
        "created_at": ("timestamp with time zone", True),
    },
    "reservations": {
        "reservation_id": ("uuid", False),
        "event_id": ("uuid", False),
        "session_id": ("character varying", False),
        "task_id": ("character varying", True),
        "tokens": ("bigint", False),
        "priority": ("text", False),
        "status": ("text", False),
        "reason": ("text", True),
        "available_tokens": ("bigint", False),
        "limit_tokens": ("bigint", False),
        "requested_at": ("timestamp with time zone", False),
        "decided_at": ("timestamp with time zone", False),
        "expires_at": ("timestamp with time zone", False),
        "settled_at": ("timestamp with time zone", True),
        "settled_tokens": ("bigint", True),
        "overage_tokens": ("bigint", False),
        "account": ("character varying", True),
        "refused_by": ("character varying", True),
        "reserved_usd": ("numeric", True),
        "price_source": ("text", True),
        "usd_held": ("numeric", True),
        "settled_usd": ("numeric", True),
        "limit_usd": ("numeric", True),
        "used_usd": ("numeric", True),
        "held_usd": ("numeric", True),
    },
    "account_usage_daily": {
        "account": ("character varying", False),
        "day": ("date", False),
        "input_tokens": ("bigint", False),
        "output_tokens": ("bigint", False),
        "tokens_used": ("bigint", False),
        "usage_events": ("bigint", False),
        "cost_usd": ("numeric", False),
        "reservations_accepted": ("bigint", False),
        "reservations_rejected": ("bigint", False),
        "reservations_refused": ("bigint", False),
    },
    "account_budgets": {
        "account": ("character varying", False),
        "daily_limit": ("bigint", True),
        "monthly_limit": ("bigint", True),
        "hard_limit": ("bigint", True),
        "warning_threshold": ("numeric", True),
        "critical_threshold": ("numeric", True),
        "budget_event": ("uuid", True),
        "current_day": ("date", False),
        "tokens_used_today": ("bigint", False),
        "current_month": ("date", False),
        "tokens_used_month": ("bigint", False),
        "tokens_used_total": ("bigint", False),
        "created_at": ("timestamp with time zone", False),
        "updated_at": ("timestamp with time zone", False),
        "daily_usd_limit": ("numeric", True),
        "monthly_usd_limit": ("numeric", True),
        "total_usd_limit": ("numeric", True),
        "usd_used_today": ("numeric", False),
        "usd_used_month": ("numeric", False),
        "usd_used_total": ("numeric", False),
        "daily_alert": ("text", False),
        "monthly_alert": ("text", False),
        "total_alert": ("text", False),
        "daily_usd_alert": ("text", False),
        "monthly_usd_alert": ("text", False),
        "total_usd_alert": ("text", False),
    },
    "session_token_budgets": {
        "session_id": ("character varying", False),
        "daily_limit": ("bigint", False),
        "monthly_limit": ("bigint", False),
        "hard_limit": ("bigint", False),
        "warning_threshold": ("numeric", False),
        "critical_threshold": ("numeric", False),
        "budget_source": ("text", False),
        "current_day": ("date", False),
        "tokens_used_today": ("bigint", False),
        "current_month": ("date", False),
        "tokens_used_month": ("bigint", False),
        "tokens_used_total": ("bigint", False),
        "daily_alert": ("text", False),
        "monthly_alert": ("text", False),
        "total_alert": ("text", False),
        "reservations_accepted": ("bigint", False),
        "reservations_rejected": ("bigint", False),
        "overage_tokens": ("bigint", False),
        "last_reset": ("timestamp with time zone", False),
        "created_at": ("timestamp with time zone", False),
        "updated_at": ("timestamp with time zone", False),
        "account": ("character varying", True),
        "daily_usd_limit": ("numeric", True),
        "monthly_usd_limit": ("numeric", True),
        "total_usd_limit": ("numeric", True),
        "usd_used_today": ("numeric", False),
        "usd_used_month": ("numeric", False),
        "usd_used_total": ("numeric", False),
        "daily_usd_alert": ("text", False),
        "monthly_usd_alert": ("text", False),
        "total_usd_alert": ("text", False),
    },
    "session_usage_daily": {
        "session_id": ("character varying", False),
        "day": ("date", False),
        "input_tokens": ("bigint", False),
        "output_tokens": ("bigint", False),
        "tokens_used": ("bigint", False),
        "usage_events": ("bigint", False),
        "cost_usd": ("numeric", False),
    },
    "session_usage_monthly": {
        "session_id": ("character varying", False),
        "month": ("date", False),
        "input_tokens": ("bigint", False),
        "output_tokens": ("bigint", False),
        "tokens_used": ("bigint", False),
        "usage_events": ("bigint", False),
        "cost_usd": ("numeric", False),
    },
    "task_token_allocations": {
        "session_id": ("character varying", False),
        "task_id": ("character varying", False),
        "allocated_tokens": ("bigint", False),
        "tokens_used": ("bigint", False),
        "status": ("character varying", False),
        "created_at": ("timestamp with time zone", False),
        "completed_at": ("timestamp with time zone", True),
        "updated_at": ("timestamp with time zone", False),
    },
    "tokenquota_schema_migrations": {
        "version": ("integer", False),
        "name": ("text", False),
        "checksum": ("text", False),
        "applied_at": ("timestamp with time zone", False),
    },
}


async def schema_drift(conn: asyncpg.Connection, schema: str = "public") -> list[str]:
    """Differences between `schema` and EXPECTED_COLUMNS, one readable line each."""
    quote_schema(schema)
    rows = await conn.fetch(
        """SELECT table_name, column_name, data_type, is_nullable = 'YES' AS nullable
             FROM information_schema.columns
            WHERE table_schema = $1 AND table_name = ANY($2::text[])""",
        schema,
        list(EXPECTED_COLUMNS),
    )
    actual: dict[str, dict[str, tuple[str, bool]]] = {}
    for row in rows:
        actual.setdefault(row["table_name"], {})[row["column_name"]] = (
            row["data_type"],
            row["nullable"],
        )
    problems = []
    for table, columns in EXPECTED_COLUMNS.items():
        if table not in actual:
            problems.append(f"table {schema}.{table} is missing")
            continue
        for column, (data_type, nullable) in columns.items():
            found = actual[table].get(column)
            if found is None:
                problems.append(f"column {table}.{column} is missing")
            elif found != (data_type, nullable):
                problems.append(
                    f"column {table}.{column} is {_describe(found)}, expected "
                    f"{_describe((data_type, nullable))}"
                )
        for column in sorted(set(actual[table]) - set(columns)):
            problems.append(f"column {table}.{column} is not expected by the code")
    return problems


def _describe(column: tuple[str, bool]) -> str:
    return f"{column[0]} {'NULL' if column[1] else 'NOT NULL'}"
