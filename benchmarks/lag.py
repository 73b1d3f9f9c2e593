"""Lag as a curve against the pipeline's measured capacity, all in one run.

How long after an event occurs is it committed in PostgreSQL, at a quarter, a half and
three quarters of what this pipeline (emitter, broker, worker and PostgreSQL together,
on this machine, now) can take? A fixed rate says little on its own: on a machine half
as fast the same rate is twice the load, and lag near capacity grows without bound.

1. Capacity, with the same event mix and emit pattern: steady rates from `--start`
   events/s, each `--step-seconds` long and 25 % above the last, until one leaves more
   than half a second of events uncommitted at its end twice in a row (drained, then
   once more at the same rate: one stall, an autovacuum or a checkpoint, would otherwise
   end the ramp at a fraction of the capacity; a run measured 2,375 events/s so); the
   backlog is drained, and two more steps halve the interval between the last rate that
   kept up and the first that did not. That rate is only where the holds start: an
   8-second step keeps up by letting the worker's batches grow, and leaves the
   checkpoint and autovacuum its events bring for later (a run measured 12,666 events/s
   so, and half of it then kept the worker's transactions at 135 ms). So the rate is
   then held for `--hold-seconds`, drained, and held again 15 % lower, until a hold
   keeps up and the age of its oldest uncommitted event does not grow over it (the
   median of the hold's last third at most GROWTH_MS over its first third's, sampled
   every 50 ms: `benchmarks.sustained`), at most HOLD_TRIES times. **The capacity is
   the first rate held so**: the sustainable rate, in the state (log length, table
   sizes) the steady rates then meet.
   (Offering the same events in bigger calls measured about twice as much here: fewer,
   larger producer batches are cheaper for the broker and the worker, and that is not
   the load being measured.)
2. Steady rates at 25 %, 50 % and 75 % of it, `--seconds` each (the emit pattern of
   `benchmarks.pipeline`: every 10 ms, rate/100 events, each stamped with `occurred_at`
   as it is built), the backlog drained between them.

A poller reads `partition_checkpoints` every 5 ms; afterwards the topic is read back, and
an event's lag is the first poll that saw its partition's checkpoint pass its offset,
minus its occurred_at (polling adds up to 5 ms). Per rate: p50/p99/max, the p50 of the
phase's last third minus that of its first third (lag that grows over the phase), and
the CPU seconds each process used. Then where the time went, as the mean per event of
each stage: waiting in the emitter (occurred_at to the record's timestamp, stamped when
its batch is built) and the worker's stages (its /metrics, see
`tokenquota.processors.metrics.STAGES`); their sum against the mean lag.

With --capacity N, the ramp and the holds are skipped and N is taken as the capacity:
two settings (a fetch wait, a linger) are then compared at the same rates, which a
measured capacity (noisy from one run to the next on a shared machine) does not give.
The targets are for a measured capacity.

Run: .venv/bin/python -m benchmarks.lag [--seconds S] [--start R] [--step-seconds S]
     [--hold-seconds S] [--sessions N] [--partitions P] [--capacity N] [--fresh-wal]
Starts an embedded broker, PostgreSQL and a worker unless KAFKA_BOOTSTRAP_SERVERS /
DATABASE_URL are set (a worker is started in any case).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field

import asyncpg
from rich.console import Console
from rich.table import Table

from benchmarks.cpu import CpuMeter, children_running
from benchmarks.report import machine, percentile_ms
from benchmarks.servers import default_partitions, pipeline
from benchmarks.sustained import EmitMarks, backlog_ages, growth_ms
from benchmarks.timeline import POLL, Read, Timeline, poll_checkpoints, read_events
from benchmarks.worker_stages import StageTotals, scrape_stages
from benchmarks.workload import MIX, applied, budgets, usage, wait_applied
from tokenquota.config import Settings
from tokenquota.embedded import free_port
from tokenquota.processors.metrics import STAGES
from tokenquota.producers import Emitter
from tokenquota.projections import connect

__all__ = ["main"]

TICK = 0.01
#: The steady rates, as fractions of the measured capacity.
FRACTIONS = (0.25, 0.5, 0.75)
#: The targets of issue 18: lag p99 (ms) at a fraction of capacity.
TARGETS_P99_MS = {0.5: 150.0, 0.75: 400.0}
#: Lag "grows over the phase" when its last third's p50 exceeds its first third's by more.
GROWTH_MS = 50.0
#: Holds of the capacity search: at most this many, each this much below the last.
HOLD_TRIES = 5
HOLD_STEP_DOWN = 0.85


@dataclass
class Phase:
    """One phase of the run: its offered rate (None: as fast as it goes), its interval."""

    name: str
    rate: float | None
    started: float = 0.0
    ended: float = 0.0
    emitted: int = 0
    cpu: dict[str, float] = field(default_factory=dict)
    #: Mean milliseconds per event of each of the worker's stages.
    stages: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Hold:
    """One hold of the capacity search: its rate, whether it kept up at its end, and the
    growth of its backlog's age (ms)."""

    rate: float
    kept_up: bool
    growth: float

    @property
    def sustained(self) -> bool:
        """Kept up, and the backlog's age did not grow."""
        return self.kept_up and self.growth <= GROWTH_MS


class _Load:
    """The mix, emitted in ticks; every event a new index of it."""

    def __init__(self, emitter: Emitter, sessions: int, base: int) -> None:
        self.emitter, self.sessions = emitter, sessions
        #: Events committed before the load's first (the warm-up's).
        self.base = base
        self.next = 0
        self.late = 0.0
        self.marks = EmitMarks()

    async def steady(self, rate: float, seconds: float) -> int:
        """Emit at `rate` events/s for `seconds`; return the events emitted."""
        per_tick = rate * TICK
        loop = asyncio.get_running_loop()
        start = loop.time()
        sends: set[asyncio.Task[object]] = set()
        first = self.next
        tick = 0
        while loop.time() - start < seconds:
            due = start + tick * TICK
            await asyncio.sleep(max(0.0, due - loop.time()))
            self.late = max(self.late, loop.time() - due)
            count = int((tick + 1) * per_tick) - int(tick * per_tick)
            chunk = list(usage(count, self.sessions, self.next))
            self.marks.add(self.next, self.next + count, time.time())
            self.next += count
            task = asyncio.create_task(self.emitter.emit_many(chunk))
            sends.add(task)
            task.add_done_callback(sends.discard)
            tick += 1
        await asyncio.gather(*sends)
        return self.next - first


async def _drain(conn: asyncpg.Connection, settings: Settings, total: int) -> None:
    await wait_applied(
        conn, settings.database.schema_name, settings.kafka.usage_topic, total, 600, "worker"
    )


async def _keeps_up(
    load: _Load, timeline: Timeline, rate: float, seconds: float, committed_before: int
) -> tuple[bool, int, float]:
    """Emit at `rate` for `seconds` after `committed_before` events in all: whether at
    its end at most half a second of events is left uncommitted, the events emitted, and
    when the emitting ended."""
    emitted = await load.steady(rate, seconds)
    ended = time.time()
    await asyncio.sleep(2 * POLL)
    backlog = committed_before + emitted - timeline.committed_by(time.time())
    return backlog <= rate * 0.5, emitted, ended


async def _capacity(
    args: argparse.Namespace,
    conn: asyncpg.Connection,
    settings: Settings,
    load: _Load,
    timeline: Timeline,
    total: int,
) -> tuple[float, int]:
    """The highest rate that kept up, and the events applied so far (all of them)."""
    good, bad = 0.0, None
    rate = float(args.start)
    retried = False
    while bad is None:
        kept, emitted, _ = await _keeps_up(load, timeline, rate, args.step_seconds, total)
        total += emitted
        if not kept:
            await _drain(conn, settings, total)
            if retried:
                bad = rate
            retried = not retried  # once more at the same rate: one stall is not a limit
        else:
            good, rate, retried = rate, rate * 1.25, False
    for _ in range(2):
        rate = (good + bad) / 2 if good else bad / 2
        kept, emitted, _ = await _keeps_up(load, timeline, rate, args.step_seconds, total)
        total += emitted
        await _drain(conn, settings, total)
        if kept:
            good = rate
        else:
            bad = rate
    return good, total


async def _hold(
    load: _Load, timeline: Timeline, rate: float, seconds: float, committed_before: int
) -> tuple[Hold, int]:
    """Emit at `rate` for `seconds` after `committed_before` events in all: the hold, and
    the events emitted."""
    started = time.time()
    kept, emitted, ended = await _keeps_up(load, timeline, rate, seconds, committed_before)
    ages = backlog_ages(load.marks, timeline.committed_by, load.base, started, ended)
    return Hold(rate, kept, growth_ms(ages)), emitted


async def _sustained(
    args: argparse.Namespace,
    conn: asyncpg.Connection,
    settings: Settings,
    load: _Load,
    timeline: Timeline,
    total: int,
    peak: float,
) -> tuple[list[Hold], int]:
    """The holds from `peak` down until one is sustained (the last), and the events
    applied so far (all of them)."""
    holds: list[Hold] = []
    rate = peak
    for _ in range(HOLD_TRIES):
        hold, emitted = await _hold(load, timeline, rate, args.hold_seconds, total)
        total += emitted
        await _drain(conn, settings, total)
        holds.append(hold)
        if hold.sustained:
            break
        rate *= HOLD_STEP_DOWN
    return holds, total


async def run(args: argparse.Namespace) -> None:
    timeline = Timeline()
    phases: list[Phase] = []
    port = free_port()
    env = {"WORKER_METRICS_PORT": str(port)}
    async with pipeline(partitions=args.partitions, worker_env=env, fresh_wal=args.fresh_wal) as (
        settings,
        servers,
    ):
        kafka, topic = settings.kafka, settings.kafka.usage_topic
        schema = settings.database.schema_name
        assert kafka.bootstrap_servers is not None
        conn = await connect(settings.database.dsn())
        stop = asyncio.Event()
        meter = CpuMeter({child.pid: "worker" for child in children_running("worker")})
        poller: asyncio.Task[None] | None = None
        peak: float | None = None
        holds: list[Hold] = []
        try:
            async with Emitter(kafka, settings.emitter, settings.data_dir / "spool") as emitter:
                warm = budgets(args.sessions)
                await emitter.emit_many(warm)
                await wait_applied(conn, schema, topic, len(warm), 120, "worker warm-up")
                total = await applied(conn, schema, topic)
                poller = asyncio.create_task(poll_checkpoints(settings, timeline, stop))
                load = _Load(emitter, args.sessions, total)
                if args.capacity is not None:
                    capacity = float(args.capacity)
                else:
                    ramp = Phase("capacity (ramp, then holds)", None)
                    phases.append(ramp)
                    before = meter.snapshot()
                    ramp.started = time.time()
                    peak, total = await _capacity(args, conn, settings, load, timeline, total)
                    holds, total = await _sustained(
                        args, conn, settings, load, timeline, total, peak
                    )
                    capacity = holds[-1].rate
                    ramp.ended = time.time()
                    ramp.emitted = load.next
                    ramp.cpu = meter.used(before, meter.snapshot())
                for fraction in FRACTIONS:
                    phase = Phase(f"{fraction:.0%} of capacity", capacity * fraction)
                    phases.append(phase)
                    before = meter.snapshot()
                    staged: StageTotals = await scrape_stages(port)
                    phase.started = time.time()
                    phase.emitted = await load.steady(capacity * fraction, args.seconds)
                    phase.ended = time.time()
                    total += phase.emitted
                    await _drain(conn, settings, total)
                    phase.cpu = meter.used(before, meter.snapshot())
                    phase.stages = (await scrape_stages(port)).mean_ms_since(staged)
            await asyncio.sleep(2 * POLL)
        finally:
            stop.set()
            await conn.close()
            if poller is not None:
                await poller
        events = await read_events(kafka.bootstrap_servers, topic, args.partitions)
    _print(args, settings, servers, phases, timeline, events, capacity, load.late)
    if peak is not None:
        _print_holds(args, peak, holds)


def _print(
    args: argparse.Namespace,
    settings: Settings,
    servers: str,
    phases: list[Phase],
    timeline: Timeline,
    events: list[Read],
    capacity: float,
    late: float,
) -> None:
    table = Table(title="lag: occurred_at -> committed in PostgreSQL, against capacity (ms)")
    roles = sorted({role for phase in phases for role in phase.cpu})
    for column in ("phase", "offered/s", "events", "p50", "p99", "max", "p50 growth"):
        table.add_column(column, justify="left" if column == "phase" else "right")
    for role in roles:
        table.add_column(f"CPU s {role}", justify="right")
    console = Console(width=200)
    verdicts = []
    for phase in phases:
        ours = sorted(
            (at, timeline.committed_at(p, o) - at)
            for p, o, at, _ in events
            if phase.started <= at < phase.ended
        )
        lags = [lag for _, lag in ours]
        third = len(ours) // 3
        first = [lag for _, lag in ours[:third]]
        last = [lag for _, lag in ours[-third:]] if third else []

        def ms(samples: list[float], q: float) -> float:
            return percentile_ms(samples, q, empty=0.0)

        growth = ms(last, 0.5) - ms(first, 0.5)
        offered = "as fast as it goes" if phase.rate is None else f"{phase.rate:,.0f}"
        table.add_row(
            phase.name, offered, f"{len(lags):,}", f"{ms(lags, 0.5):.1f}",
            f"{ms(lags, 0.99):.1f}", f"{ms(lags, 1.0):.1f}", f"{growth:+.1f}",
            *(f"{phase.cpu.get(role, 0.0):.1f}" for role in roles),
        )  # fmt: skip
        if phase.rate is None:
            continue
        fraction = phase.rate / capacity
        target = TARGETS_P99_MS.get(round(fraction, 2))
        if target is not None:
            met = ms(lags, 0.99) <= target
            verdicts.append(
                f"p99 at {fraction:.0%} <= {target:.0f} ms: {'met' if met else 'NOT met'}"
            )
        if fraction < 0.75:
            steady = growth <= GROWTH_MS
            verdicts.append(
                f"no growth at {fraction:.0%} (last third's p50 at most {GROWTH_MS:.0f} ms over "
                f"the first's): {'met' if steady else 'NOT met'}"
            )
    console.print(table)
    console.print(_breakdown(phases, timeline, events))
    console.print(
        f"capacity: {capacity:,.0f} events/s, given (--capacity), not measured: the targets "
        "are for a measured capacity"
        if args.capacity is not None
        else f"capacity: {capacity:,.0f} events/s, the first rate held for "
        f"{args.hold_seconds:.0f} s that left at most half a second of events uncommitted "
        f"and whose oldest uncommitted event's age grew by at most {GROWTH_MS:.0f} ms "
        "(the holds below)"
    )
    for verdict in verdicts:
        console.print(f"target: {verdict}")
    options = settings.worker
    ramp = (
        "no capacity ramp"
        if args.capacity is not None
        else f"capacity ramp from {args.start:,} events/s in steps of {args.step_seconds:.0f} s "
        f"(a step that fell behind tried twice), then holds of {args.hold_seconds:.0f} s from "
        f"its result down in steps of {1 - HOLD_STEP_DOWN:.0%}"
    )
    console.print(
        f"conditions: {ramp}; "
        f"each rate {args.seconds:.0f} s, {TICK * 1000:.0f} ms ticks of rate/100 events "
        f"({MIX}); {args.sessions:,} sessions; {args.partitions} partitions; emitter linger "
        f"{settings.emitter.linger_ms} ms; worker batches of what has arrived (up to "
        f"{options.batch_size:,}, batch_within {options.batch_within} s), fetch wait "
        f"{options.fetch_max_wait} s; checkpoints polled every {POLL * 1000:.0f} ms; the "
        f"steady emitting loop ran at most {late * 1000:.0f} ms late; CPU s: user + system "
        f"per process over the phase and its drain; {servers}; {machine()}"
    )


def _print_holds(args: argparse.Namespace, peak: float, holds: list[Hold]) -> None:
    table = Table(
        title=f"capacity: holds of {args.hold_seconds:.0f} s from the ramp's {peak:,.0f}/s"
    )
    for column in ("rate/s", "of the ramp's", "kept up", "age growth (ms)", "sustained"):
        table.add_column(column, justify="right")
    for hold in holds:
        table.add_row(
            f"{hold.rate:,.0f}", f"{hold.rate / peak:.0%}", "yes" if hold.kept_up else "no",
            f"{hold.growth:+.1f}", "yes" if hold.sustained else "no",
        )  # fmt: skip
    console = Console(width=200)
    console.print(table)
    if not holds[-1].sustained:
        console.print(
            f"no hold was sustained in {HOLD_TRIES} tries: the capacity taken is the last "
            "rate tried, which the pipeline did not sustain either"
        )


def _breakdown(phases: list[Phase], timeline: Timeline, events: list[Read]) -> Table:
    """Mean milliseconds per event of each stage, per steady phase."""
    table = Table(title="where an event's time goes: mean per event (ms)")
    columns = ("phase", "emitter queue", *STAGES, "sum", "lag mean")
    for column in columns:
        table.add_column(column, justify="left" if column == "phase" else "right")
    for phase in phases:
        if phase.rate is None:
            continue
        ours = [
            (at, stamped, timeline.committed_at(p, o))
            for p, o, at, stamped in events
            if phase.started <= at < phase.ended
        ]
        if not ours:
            continue
        queue = sum(stamped - at for at, stamped, _ in ours) / len(ours) * 1000
        lag = sum(committed - at for at, _, committed in ours) / len(ours) * 1000
        stages = [phase.stages.get(stage, 0.0) for stage in STAGES]
        table.add_row(
            phase.name,
            *(f"{ms:.1f}" for ms in (queue, *stages, queue + sum(stages), lag)),
        )
    return table


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of events/s, got {text}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=30, help="each steady rate")
    parser.add_argument("--start", type=int, default=2_000, help="the ramp's first rate")
    parser.add_argument("--step-seconds", type=float, default=8, help="each step of the ramp")
    parser.add_argument(
        "--hold-seconds", type=float, default=30, help="each hold of the capacity search"
    )
    parser.add_argument("--sessions", type=int, default=1_000)
    parser.add_argument(
        "--partitions", type=int, default=default_partitions(), help="default: as `tokenquota dev`"
    )
    parser.add_argument(
        "--fresh-wal",
        action="store_true",
        help="an embedded PostgreSQL without WAL files made ahead (benchmarks.servers)",
    )
    parser.add_argument(
        "--capacity",
        type=_positive,
        help="skip the ramp and take this as the capacity (events/s), to compare settings",
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
