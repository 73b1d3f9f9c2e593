"""What the fault campaign reads back after a run: the producers' records, and the
run's output (the ledger, decisions, budget rows, dead letters, projection snapshots)
from PostgreSQL and the dead-letter topic."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from benchmarks.fault_oracle import LedgerRow, Recorded, RunOutput
from tokenquota.config import Settings
from tokenquota.kafka_probe import partition_highwaters, seek_to_start
from tokenquota.projections import PROJECTION_TABLES, connect

__all__ = ["RunReader", "read_records"]


class RunReader:
    """Reads a campaign's PostgreSQL schema and topics (a connection per query: the
    server may have been restarted between two)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def caught_up(self) -> bool:
        """True once every partition's checkpoint is at its end of the log."""
        kafka = self.settings.kafka
        ends = await partition_highwaters(kafka, kafka.usage_topic, timeout=10)
        rows = await self.fetch(
            "SELECT kafka_partition, next_offset FROM partition_checkpoints WHERE topic = $1",
            kafka.usage_topic,
        )
        applied = {r["kafka_partition"]: r["next_offset"] for r in rows}
        return all(applied.get(p, 0) >= end for p, end in ends.items())

    async def output(self) -> RunOutput:
        """The ledger in log order, the decisions, the budget rows, the dead letters."""
        kafka = self.settings.kafka
        ledger = [
            LedgerRow(r["kafka_partition"], r["kafka_offset"], r["log_time"], json.loads(r["p"]))
            for r in await self.fetch(
                "SELECT kafka_partition, kafka_offset, log_time, payload::text AS p"
                " FROM usage_events WHERE topic = $1",
                kafka.usage_topic,
            )
        ]
        decisions = {
            str(r["reservation_id"]): (r["status"], r["reason"], r["refused_by"])
            for r in await self.fetch(
                "SELECT reservation_id, status, reason, refused_by FROM reservations"
            )
        }
        session_rows = await self.fetch(
            "SELECT session_id, tokens_used_total, usd_used_total FROM session_token_budgets"
        )
        node_rows = await self.fetch(
            "SELECT account, tokens_used_total, usd_used_total FROM account_budgets"
        )
        sessions = {r["session_id"]: r["tokens_used_total"] for r in session_rows}
        nodes = {r["account"]: r["tokens_used_total"] for r in node_rows}
        days = {
            r["session_id"]: r["t"]
            for r in await self.fetch(
                "SELECT session_id, sum(tokens_used)::bigint AS t"
                " FROM session_usage_daily GROUP BY 1"
            )
        }
        return RunOutput(
            ledger, decisions, sessions, nodes, days, await self.dead_letters(),
            sessions_usd={r["session_id"]: r["usd_used_total"] for r in session_rows},
            nodes_usd={r["account"]: r["usd_used_total"] for r in node_rows},
        )  # fmt: skip

    async def dead_letters(self) -> list[str]:
        """Every value (hex) in the dead-letter topic."""
        kafka = self.settings.kafka
        ends = await partition_highwaters(kafka, kafka.dlq_topic, timeout=10)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka.bootstrap_servers, enable_auto_commit=False,
            auto_offset_reset="earliest",
        )  # fmt: skip
        await consumer.start()
        try:
            tps = [TopicPartition(kafka.dlq_topic, p) for p, end in ends.items() if end > 0]
            values: list[str] = []
            if not tps:
                return values
            consumer.assign(tps)
            seek_to_start(consumer, tps)
            left = {tp: ends[tp.partition] for tp in tps}
            deadline = time.monotonic() + 60
            while left and time.monotonic() < deadline:
                for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                    values += [r.value.hex() for r in records if r.value is not None]
                    if records and records[-1].offset + 1 >= left.get(tp, 0):
                        left.pop(tp, None)
            return values
        finally:
            await consumer.stop()

    async def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every projection table's rows, sorted."""
        tables = {}
        for table in PROJECTION_TABLES:
            rows = await self.fetch(f"SELECT * FROM {table}")  # noqa: S608 - constant names
            tables[table] = sorted((tuple(r.values()) for r in rows), key=repr)
        return tables

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        """The rows of `sql`, on a connection of its own."""
        db = self.settings.database
        conn = await connect(db.dsn(), db.schema_name)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    async def fetchval(self, sql: str, *args: Any) -> Any:
        """The first value of `sql`\'s first row (None: no row)."""
        rows = await self.fetch(sql, *args)
        return rows[0][0] if rows else None


def read_records(folder: Path) -> Recorded:
    """Every producer's records in `folder` (records-*.jsonl), merged: an event's outcome
    is acked or spooled if any record says so, else the last one recorded."""
    events: dict[str, Any] = {}
    outcomes: dict[str, str] = {}
    poison: list[str] = []
    poison_sent: list[str] = []
    claimed: dict[str, str] = {}
    invalid: list[str] = []
    for path in sorted(folder.glob("records-*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # the last line of a producer killed mid-write
            kind = record["k"]
            if kind == "e":
                events[record["id"]] = json.loads(record["ev"])
                outcomes.setdefault(record["id"], "unknown")
            elif kind == "o" and outcomes.get(record["id"]) not in ("acked", "spooled"):
                outcomes[record["id"]] = record["o"]
            elif kind == "pa":
                poison.append(record["v"])
            elif kind == "p":
                poison_sent.append(record["v"])
            elif kind == "h":
                claimed[record["id"]] = record["o"]
            elif kind == "x":
                invalid.append(record["id"])
    return Recorded(events, outcomes, poison, poison_sent, claimed, invalid)
