"""Live pipeline throughput: emitter -> broker -> `tokenquota worker` -> PostgreSQL.

Beside it, in the same run and on the same servers: the raw baseline (a bare aiokafka
consumer writing the same ledger rows with COPY, `benchmarks.baseline`), also in its own
process. For each, the consumer is started and warmed with the sessions' BudgetSets;
then the events are emitted and the clock runs until the last one is applied.

Run: .venv/bin/python -m benchmarks.pipeline [--events N] [--sessions S] [--partitions P]
Starts an embedded broker and PostgreSQL unless KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL
are set.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time

from benchmarks.baseline import prepare
from benchmarks.report import print_throughput
from benchmarks.servers import pipeline, settings_env
from benchmarks.workload import MIX, budgets, usage, wait_applied
from tokenquota.config import Settings
from tokenquota.embedded import WorkerProcess
from tokenquota.producers import Emitter
from tokenquota.projections import connect
from tokenquota.schemas import Event
from tokenquota.topics import ensure_topics

CHUNK = 10_000


async def _drive(
    settings: Settings, schema: str, warm: list[Event], timed: list[Event], what: str
) -> tuple[float, float]:
    """Emit `warm`, wait for it, then emit `timed`; return (emit seconds, total seconds)."""
    topic = settings.kafka.usage_topic
    conn = await connect(settings.database.dsn())
    try:
        async with Emitter(settings.kafka, settings.emitter, settings.data_dir / "spool") as em:
            await em.emit_many(warm)
            await wait_applied(conn, schema, topic, len(warm), 120, f"{what} warm-up")
            start = time.perf_counter()
            for i in range(0, len(timed), CHUNK):
                deliveries = await em.emit_many(timed[i : i + CHUNK])
                assert deliveries[-1] == "acked", deliveries[-1]
            emitted = time.perf_counter() - start
            end = await wait_applied(conn, schema, topic, len(warm) + len(timed), 600, what)
        return emitted, end - start
    finally:
        await conn.close()


async def _baseline(settings: Settings, warm: list[Event], timed: list[Event]) -> float:
    kafka = settings.kafka.model_copy(
        update={"usage_topic": f"{settings.kafka.usage_topic}.copy",
                "dlq_topic": f"{settings.kafka.usage_topic}.copy.dlq"}
    )  # fmt: skip
    await ensure_topics(kafka)
    schema = f"{settings.database.schema_name}_copy"
    dsn = settings.database.dsn()
    await prepare(dsn, schema)
    assert kafka.bootstrap_servers is not None
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.baseline", kafka.bootstrap_servers,
        kafka.usage_topic, dsn, schema, str(len(warm) + len(timed)),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), 60)
        if line.strip() != b"ready":
            raise RuntimeError(f"baseline consumer did not start: {line!r}")
        base = settings.model_copy(update={"kafka": kafka})
        _, seconds = await _drive(base, schema, warm, timed, "baseline")
        await asyncio.wait_for(child.wait(), 60)
        return seconds
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()


async def run(args: argparse.Namespace) -> None:
    warm = budgets(args.sessions)
    timed = list(usage(args.events, args.sessions))
    async with pipeline(partitions=args.partitions, worker=False) as (settings, servers):
        baseline = await _baseline(settings, warm, timed)
        worker = WorkerProcess(settings.data_dir.parent / "worker.log")
        worker.start(settings_env(settings))
        try:
            emitted, ours = await _drive(
                settings, settings.database.schema_name, warm, timed, "tokenquota worker"
            )
        finally:
            worker.stop()
        options = settings.worker
    print_throughput(
        "live pipeline: events/s from the first emit until the last is applied",
        "consumer",
        args.events,
        ("tokenquota worker (faust, fold)", ours),
        ("bare aiokafka + COPY", baseline),
        f"{args.events:,} events over {args.sessions:,} sessions ({MIX}); "
        f"{args.partitions} partitions; emitted in calls of {CHUNK:,} with linger "
        f"{settings.emitter.linger_ms} ms (all acked after {emitted:.1f} s); worker batches "
        f"of up to {options.batch_size:,} within {options.batch_within} s, fetch wait "
        f"{options.fetch_max_wait} s; baseline batches of up to 5,000, fetch wait 0.05 s; "
        f"each consumer in its own process, warmed with {len(warm):,} BudgetSets first; "
        f"{servers}; python {platform.python_version()}, {os.cpu_count()} cores",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--sessions", type=int, default=1_000)
    parser.add_argument("--partitions", type=int, default=12)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
