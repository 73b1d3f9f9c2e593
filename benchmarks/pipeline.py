"""Live pipeline throughput: emitter -> broker -> `tokenquota worker` -> PostgreSQL.

Beside it, in the same run and on the same servers: the raw baseline (a bare aiokafka
consumer writing the same ledger rows with COPY, `benchmarks.baseline`), also in its own
process. For each, the consumer is started and warmed with the sessions' BudgetSets;
then the events are emitted and the clock runs until the last one is applied.

With --consume-only, instead: the topic is loaded first (every event acked), then the bare
baseline and the worker each read all of it, in their own process, one after the other
(the worker first in every second round; each after a CHECKPOINT, so that neither pays
for the other's writes): the clock runs from the moment the warm-up's BudgetSets are
applied (the consumer is up and reading) until the last event is applied. Without the
emitter and the broker's appends competing for the machine, this says how lean the
worker is; the target is 0.8 of the baseline (issue 18). The worker's CPU per event over
that time, PostgreSQL's meanwhile, and the share of the read its process was busy are
printed too: how far overlapping its work with PostgreSQL's could take it. (Not the
baseline's: it exits as soon as it has read everything, and its CPU with it.)

With --tree, instead: the worker on the session-only mix beside the worker on the same
mix with every session under a three-level budget tree over --tenants tenants
(`benchmarks.workload.tree_usage`, its tenant and team nodes' BudgetSets in the warm-up),
each on a fresh topic and schema with a worker of its own, on the same servers; the tree
must reach 0.9 of the session-only throughput (issue 16). --rounds repeats both,
alternating which goes first.

Run: .venv/bin/python -m benchmarks.pipeline [--events N] [--sessions S] [--partitions P]
     .venv/bin/python -m benchmarks.pipeline --consume-only [--events N] [--rounds R]
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
from benchmarks.servers import default_partitions, pipeline, settings_env
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
#: Issue 18: the worker reading a loaded topic, as a share of the bare baseline.
CONSUME_TARGET = 0.8


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
    if args.consume_only:
        await run_consume_only(args)
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


async def _load(settings: Settings, events: list[Event]) -> int:
    """Emit `events` into `settings`' topic (every one acked); return what it holds."""
    async with Emitter(settings.kafka, settings.emitter, settings.data_dir / "spool") as em:
        for i in range(0, len(events), CHUNK):
            deliveries = await em.emit_many(events[i : i + CHUNK])
            assert all(d == "acked" for d in deliveries)
    return sum((await partition_highwaters(settings.kafka, settings.kafka.usage_topic)).values())


async def _read_through(
    settings: Settings,
    schema: str,
    warm: int,
    total: int,
    what: str,
    meter: CpuMeter | None = None,
) -> tuple[float, dict[str, float]]:
    """Seconds from `warm` messages applied in `schema` (the consumer is reading) until all
    `total` are, and the CPU seconds per role of `meter` meanwhile."""
    conn = await connect(settings.database.dsn())
    try:
        topic = settings.kafka.usage_topic
        start = await wait_applied(conn, schema, topic, warm, 300, f"{what} warm-up")
        before = meter.snapshot() if meter is not None else {}
        end = await wait_applied(conn, schema, topic, total, 900, what)
        cpu = CpuMeter.used(before, meter.snapshot()) if meter is not None else {}
        return end - start, cpu
    finally:
        await conn.close()


@dataclass(frozen=True, slots=True)
class _Round:
    """One consume-only round: each reader's seconds, and the CPU seconds per role while
    the worker read (the worker itself and PostgreSQL)."""

    ours: float
    theirs: float
    our_cpu: dict[str, float]


async def _consume_round(
    settings: Settings, name: str, warm: list[Event], timed: list[Event], *, worker_first: bool
) -> _Round:
    """Load a fresh topic, then the baseline and the worker each read it (in that order,
    or the worker first): their seconds, and the CPU the worker and PostgreSQL spent while
    the worker read. Each reader starts after a checkpoint, so that neither pays for what
    the other wrote."""
    case = _case(settings, name)
    await provision(case)
    held = await _load(case, warm)
    total = await _load(case, timed)
    kafka, dsn = case.kafka, case.database.dsn()
    servers = kafka.bootstrap_servers
    assert servers is not None
    copy_schema = f"{case.database.schema_name}_copy"
    await prepare(dsn, copy_schema)

    async def baseline() -> float:
        await _checkpoint(dsn)
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.baseline", servers,
            kafka.usage_topic, dsn, copy_schema, str(total), stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            seconds, _ = await _read_through(case, copy_schema, held, total, "baseline")
            await asyncio.wait_for(child.wait(), 60)
            return seconds
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()

    async def worker() -> tuple[float, dict[str, float]]:
        await _checkpoint(dsn)
        process = WorkerProcess(settings.data_dir.parent / f"worker-{name}.log")
        meter = CpuMeter({process.start(settings_env(case)): "worker"})
        try:
            schema = case.database.schema_name
            return await _read_through(case, schema, held, total, "worker", meter)
        finally:
            process.stop()

    if worker_first:
        (ours, our_cpu), theirs = await worker(), await baseline()
    else:
        theirs, (ours, our_cpu) = await baseline(), await worker()
    return _Round(ours, theirs, our_cpu)


async def _checkpoint(dsn: str) -> None:
    conn = await connect(dsn)
    try:
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def run_consume_only(args: argparse.Namespace) -> None:
    """The worker and the bare baseline reading the same loaded topic, `args.rounds` times."""
    warm = budgets(args.sessions)
    timed = list(usage(args.events, args.sessions))
    rounds: list[_Round] = []
    async with pipeline(partitions=args.partitions, worker=False) as (settings, servers):
        for r in range(args.rounds):
            rounds.append(
                await _consume_round(
                    settings, f"loaded{r + 1}", warm, timed, worker_first=r % 2 == 1
                )
            )
        options = settings.worker
    ours = sum(r.ours for r in rounds)
    baseline = sum(r.theirs for r in rounds)
    per_round = ", ".join(f"{r.theirs / r.ours:.2f}" for r in rounds)

    def per_event(role: str) -> float:
        """Mean CPU microseconds per event of `role` while the worker read."""
        used = sum(r.our_cpu.get(role, 0.0) for r in rounds)
        events: int = args.events * len(rounds)
        return used / events * 1e6

    busy = sum(r.our_cpu.get("worker", 0.0) for r in rounds) / ours

    print_throughput(
        "consume-only: events/s reading a loaded topic into PostgreSQL",
        "consumer",
        args.events * args.rounds,
        ("tokenquota worker (faust, fold)", ours),
        ("bare aiokafka + COPY", baseline),
        f"{args.events:,} events over {args.sessions:,} sessions ({MIX}) loaded first, "
        f"after {len(warm):,} BudgetSets; {args.rounds} round(s), each on a fresh topic read "
        f"by the baseline, then the worker (the worker first in even rounds; each after a "
        f"CHECKPOINT; ratio per round {per_round}); the clock runs from "
        f"the BudgetSets applied until the last event is; while the worker read, CPU per "
        f"event: the worker {per_event('worker'):.1f} us (its process busy {busy:.0%} of the "
        f"read), PostgreSQL {per_event('PostgreSQL'):.1f} us; "
        f"{args.partitions} partitions; worker batches of up to {options.batch_size:,} within "
        f"{options.batch_within} s, fetch wait {options.fetch_max_wait} s; baseline batches "
        f"of up to 5,000, fetch wait 0.05 s; {servers}; {machine()}",
        target=CONSUME_TARGET,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--sessions", type=int, default=1_000)
    parser.add_argument(
        "--partitions", type=int, default=default_partitions(), help="default: as `tokenquota dev`"
    )
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
        "--consume-only",
        action="store_true",
        help="the worker and the bare baseline each reading a topic loaded first",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="runs of each case (with --tree, alternating which goes first; --consume-only)",
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
