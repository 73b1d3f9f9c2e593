"""Live pipeline throughput: emitter -> broker -> `tokenquota worker` -> PostgreSQL.

Beside it, in the same run and on the same servers: the raw baseline (a bare aiokafka
consumer writing the same ledger rows with COPY, `benchmarks.baseline`), also in its own
process. For each, the consumer is started and warmed with the sessions' BudgetSets;
then the events are emitted and the clock runs until the last one is applied.

With --tree, instead: the worker on the session-only mix beside the worker on the same
mix with every session under a three-level budget tree over --tenants tenants
(`benchmarks.workload.tree_usage`, its tenant and team nodes' BudgetSets in the warm-up),
each on a fresh topic and schema with a worker of its own, on the same servers; the tree
must reach 0.9 of the session-only throughput (issue 16). --rounds repeats both,
alternating which goes first.

Run: .venv/bin/python -m benchmarks.pipeline [--events N] [--sessions S] [--partitions P]
     .venv/bin/python -m benchmarks.pipeline --tree [--tenants T] [--rounds R] [--priced]
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
from dataclasses import dataclass, field

from benchmarks.baseline import prepare
from benchmarks.cpu import CpuMeter
from benchmarks.report import machine, print_throughput
from benchmarks.servers import pipeline, settings_env
from benchmarks.workload import (
    MIX,
    TENANTS,
    budgets,
    tree_budgets,
    tree_mix,
    tree_usage,
    usage,
    wait_applied,
)
from tokenquota.config import Settings
from tokenquota.embedded import WorkerProcess
from tokenquota.kafka_probe import partition_highwaters
from tokenquota.producers import Emitter
from tokenquota.projections import connect
from tokenquota.provision import provision
from tokenquota.schemas import Event
from tokenquota.topics import ensure_topics

CHUNK = 10_000
#: Issue 16: the tree pipeline's throughput, as a share of the session-only one's.
TREE_TARGET = 0.9


@dataclass
class Drive:
    """One consumer's run: emit seconds, seconds until the last event was applied, and
    (with a meter) the CPU seconds each role spent on the timed events."""

    emitted: float
    seconds: float
    cpu: dict[str, float] = field(default_factory=dict)


async def _drive(
    settings: Settings,
    schema: str,
    warm: list[Event],
    timed: list[Event],
    what: str,
    meter: CpuMeter | None = None,
) -> Drive:
    """Emit `warm`, wait for it, then emit `timed` and wait until it is applied. What
    the topic held before (the DefaultsSets `tokenquota init` writes) counts as well."""
    topic = settings.kafka.usage_topic
    held = sum((await partition_highwaters(settings.kafka, topic)).values())
    conn = await connect(settings.database.dsn())
    try:
        async with Emitter(settings.kafka, settings.emitter, settings.data_dir / "spool") as em:
            await em.emit_many(warm)
            await wait_applied(conn, schema, topic, held + len(warm), 120, f"{what} warm-up")
            before = meter.snapshot() if meter is not None else {}
            start = time.perf_counter()
            for i in range(0, len(timed), CHUNK):
                deliveries = await em.emit_many(timed[i : i + CHUNK])
                assert deliveries[-1] == "acked", deliveries[-1]
            emitted = time.perf_counter() - start
            end = await wait_applied(conn, schema, topic, held + len(warm) + len(timed), 600, what)
            cpu = CpuMeter.used(before, meter.snapshot()) if meter is not None else {}
        return Drive(emitted, end - start, cpu)
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
        drive = await _drive(base, schema, warm, timed, "baseline")
        await asyncio.wait_for(child.wait(), 60)
        return drive.seconds
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()


async def run(args: argparse.Namespace) -> None:
    if args.tree:
        await run_tree(args)
        return
    warm = budgets(args.sessions)
    timed = list(usage(args.events, args.sessions))
    async with pipeline(partitions=args.partitions, worker=False) as (settings, servers):
        baseline = await _baseline(settings, warm, timed)
        worker = WorkerProcess(settings.data_dir.parent / "worker.log")
        worker.start(settings_env(settings))
        try:
            drive = await _drive(
                settings, settings.database.schema_name, warm, timed, "tokenquota worker"
            )
        finally:
            worker.stop()
        emitted, ours = drive.emitted, drive.seconds
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


def _case(settings: Settings, name: str) -> Settings:
    """`settings` with a topic, schema, worker group and data folder of their own."""
    base = settings.kafka.usage_topic.removesuffix(".usage")
    return settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(
                update={"usage_topic": f"{base}.{name}.usage", "dlq_topic": f"{base}.{name}.dlq"}
            ),
            "database": settings.database.model_copy(
                update={"schema_name": f"{settings.database.schema_name}_{name}"}
            ),
            "worker": settings.worker.model_copy(
                update={"group_id": f"{settings.worker.group_id}.{name}"}
            ),
            "data_dir": settings.data_dir.parent / f"data-{name}",
        }
    )


async def _worker_run(
    settings: Settings, name: str, warm: list[Event], timed: list[Event], what: str
) -> Drive:
    """Provision a fresh topic and schema, start a worker on them, drive it, stop it."""
    case = _case(settings, name)
    await provision(case)
    worker = WorkerProcess(settings.data_dir.parent / f"worker-{name}.log")
    pid = worker.start(settings_env(case))
    try:
        return await _drive(
            case, case.database.schema_name, warm, timed, what, CpuMeter({pid: "worker"})
        )
    finally:
        worker.stop()


async def run_tree(args: argparse.Namespace) -> None:
    """The session-only and the tree pipeline, `args.rounds` times each, alternating."""
    cases = {
        "session-only": (budgets(args.sessions), list(usage(args.events, args.sessions))),
        "tree": (
            tree_budgets(args.sessions, args.tenants),
            list(tree_usage(args.events, args.sessions, args.tenants, priced=args.priced)),
        ),
    }
    runs: dict[str, list[Drive]] = {name: [] for name in cases}
    async with pipeline(partitions=args.partitions, worker=False) as (settings, servers):
        for r in range(args.rounds):
            order = list(cases) if r % 2 == 0 else list(reversed(cases))
            for name in order:
                warm, timed = cases[name]
                tag = f"{name.removesuffix('-only')}{r + 1}"
                runs[name].append(
                    await _worker_run(settings, tag, warm, timed, f"{name} worker, round {r + 1}")
                )
        options = settings.worker
    seconds = {name: sum(d.seconds for d in drives) for name, drives in runs.items()}
    per_round = ", ".join(
        f"{s.seconds / t.seconds:.2f}"
        for s, t in zip(runs["session-only"], runs["tree"], strict=True)
    )
    cpu = "; ".join(
        f"{name} {sum(d.cpu.get('worker', 0.0) for d in drives) / len(drives):.1f} s"
        for name, drives in runs.items()
    )
    rounds = (
        f"{args.rounds} rounds (alternating which goes first; ratio per round {per_round})"
        if args.rounds > 1
        else "one round, session-only first"
    )
    print_throughput(
        "live pipeline: a three-level budget tree vs sessions only, events/s from the "
        "first emit until the last is applied",
        "pipeline",
        args.events * args.rounds,
        (f"tree: {args.tenants:,} tenants", seconds["tree"]),
        ("session-only", seconds["session-only"]),
        f"{args.events:,} events over {args.sessions:,} sessions per run, {rounds}; "
        f"session-only: {MIX}; "
        f"tree: {tree_mix(args.tenants, priced=args.priced)}; "
        f"warm-up {len(cases['session-only'][0]):,} "
        f"and {len(cases['tree'][0]):,} BudgetSets; worker CPU seconds per run: {cpu}; "
        f"{args.partitions} partitions; each run on a fresh topic and schema with a "
        f"`tokenquota worker` of its own; emitted in calls of {CHUNK:,}; worker batches of up "
        f"to {options.batch_size:,} within {options.batch_within} s, fetch wait "
        f"{options.fetch_max_wait} s; {servers}; {machine()}",
        target=TREE_TARGET,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--sessions", type=int, default=1_000)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument(
        "--tree",
        action="store_true",
        help="the worker on a three-level budget tree beside the session-only worker "
        "(no bare baseline)",
    )
    parser.add_argument(
        "--tenants", type=int, default=TENANTS, help="tenants of the tree (with --tree)"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="runs of each case, alternating (with --tree)"
    )
    parser.add_argument(
        "--priced",
        action="store_true",
        help="price half the tree's reservations, an ApiCost naming each (with --tree; the "
        "tree's mix then differs from the session-only one)",
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
