"""Replay throughput: `tokenquota replay` rebuilding fresh projections from the whole log.

Beside it, in the same run, from the same topic: the raw baseline (`benchmarks.baseline`,
a bare aiokafka consumer writing the ledger rows with COPY). Both run in this process,
one after the other, and both are timed from start until the last row is committed.

Run: .venv/bin/python -m benchmarks.replay [--events N] [--sessions S] [--partitions P]
Starts an embedded broker and PostgreSQL unless KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL
are set.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import time

from benchmarks.baseline import copy_consume, prepare
from benchmarks.report import print_throughput
from benchmarks.servers import default_partitions, pipeline
from benchmarks.workload import MIX, budgets, usage
from tokenquota.producers import Emitter
from tokenquota.projections.replay import BATCH_SIZE, replay_into

CHUNK = 10_000


async def run(args: argparse.Namespace) -> None:
    async with pipeline(partitions=args.partitions, worker=False) as (settings, servers):
        kafka, db = settings.kafka, settings.database
        assert kafka.bootstrap_servers is not None
        total = args.sessions + args.events
        async with Emitter(kafka, settings.emitter, settings.data_dir / "spool") as emitter:
            await emitter.emit_many(budgets(args.sessions))
            for start in range(0, args.events, CHUNK):
                chunk = list(usage(min(CHUNK, args.events - start), args.sessions, start))
                deliveries = await emitter.emit_many(chunk)
                assert deliveries[-1] == "acked", deliveries[-1]
        copy_schema = f"{db.schema_name}_copy"
        await prepare(db.dsn(), copy_schema)
        started = time.perf_counter()
        await copy_consume(
            kafka.bootstrap_servers, kafka.usage_topic, db.dsn(), copy_schema, total,
            batch=args.batch,
        )  # fmt: skip
        baseline = time.perf_counter() - started
        started = time.perf_counter()
        report = await replay_into(
            kafka.bootstrap_servers, kafka.usage_topic, db.dsn(), db.schema_name,
            batch_size=args.batch,
        )  # fmt: skip
        ours = time.perf_counter() - started
        if report.events != total:
            raise RuntimeError(f"replay read {report.events:,} events, expected {total:,}")
    print_throughput(
        "replay: events/s rebuilding fresh projections from the log",
        "reader",
        total,
        ("tokenquota replay (fold, all projections)", ours),
        ("bare aiokafka + COPY (ledger only)", baseline),
        f"{total:,} events over {args.sessions:,} sessions ({MIX}); "
        f"{args.partitions} partitions; batches of up to {args.batch:,} on both sides; "
        f"replay includes building the staging schema and the swap; "
        f"{servers}; python {platform.python_version()}, {os.cpu_count()} cores",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--sessions", type=int, default=1_000)
    parser.add_argument(
        "--partitions", type=int, default=default_partitions(), help="default: as `tokenquota dev`"
    )
    parser.add_argument("--batch", type=int, default=BATCH_SIZE)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
