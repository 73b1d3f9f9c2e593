"""The fault campaign: a seeded run of producers, workers, broker and PostgreSQL under
random faults, checked afterwards by an oracle that does not use the fold.

Load: --producers processes of `benchmarks.fault_load` (strict and optimistic
reservations racing for shared sessions, half of them in a budget tree whose nodes have
limits; token and total USD limits, some reservations priced; settlements above and
below, releases, expiries, unreserved usage from the past and the future, ApiCosts,
budget changes, duplicates re-sent, poison). Their roles take turns: the client alone;
the client and its hooks (MCP meter, orchestrator tasks, memory operations); the client
and the HTTP API (ingested event arrays with invalid items, reservations settled and
released over HTTP), which runs as its own process (`benchmarks.fault_api`). Producer 0
has a small spool, so that a stopped broker fills it and its emits are refused.

Faults, one at a time at seeded random moments: SIGKILL of a worker (restarted),
SIGSTOP/SIGCONT of a worker (long enough, sometimes, for the group to rebalance),
SIGSTOP of the broker for seconds (clients time out and spool), SIGKILL of a producer
or of the HTTP API (restarted on the same spool, which it drains first), PostgreSQL
stopped (fast or immediate shutdown) and restarted, and a replay of the live schema.

Afterwards, with every process resumed and the workers caught up: the oracle's
invariants (`benchmarks.fault_oracle`), a replay that must reproduce every projection
row for row, and no process of the run left behind. The same seed gives the same load
plan and fault schedule (the moments they meet differ from run to run).

Run: .venv/bin/python -m benchmarks.faults --seconds N --seed S [--producers P] [--workers W]
(FAULTS_WORKER_LOG_LEVEL=INFO: the workers log at INFO instead of WARNING)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from benchmarks.fault_load import Recorder, node_budget, session_budget
from benchmarks.fault_oracle import Invariant, check
from benchmarks.fault_processes import ProducerProcess, alive
from benchmarks.fault_reads import RunReader, read_records
from benchmarks.fault_report import Report, print_report
from tokenquota.config import DatabaseSettings, KafkaSettings, Settings, WorkerSettings
from tokenquota.embedded import (
    EmbeddedBroker,
    EmbeddedPostgres,
    WorkerProcess,
    free_port,
    process_env,
)
from tokenquota.producers.emitter import Emitter
from tokenquota.projections import PROJECTION_TABLES
from tokenquota.projections.replay import replay_into
from tokenquota.provision import provision
from tokenquota.schemas import Source

__all__ = ["Report", "campaign", "main"]

SOURCE = Source(component="cli", name="fault-campaign")
#: (fault, weight) of the schedule.
FAULTS = (
    ("worker-kill", 3), ("worker-stop", 3), ("broker-stop", 3), ("producer-kill", 3),
    ("api-kill", 2), ("postgres-fast", 1), ("postgres-immediate", 1), ("replay-live", 1),
)  # fmt: skip
#: The producers' roles, in turn (see `benchmarks.fault_load`).
PRODUCER_ROLES = ("sdk", "hooks", "http")


def plan(seed: int, topic: str) -> dict[str, Any]:
    """The sessions (half in a tree), the nodes with limits and their first budgets
    (tokens, and total USD for about half of them)."""
    rng = random.Random(f"{seed}/plan")
    teams = ["t0/a", "t0/b", "t1/a"]
    sessions = [{"session": f"s{i}", "account": None} for i in range(6)] + [
        {"session": f"u{i}", "account": f"{teams[i % 3]}/u{i}"} for i in range(9)
    ]
    budgets = {
        **{s["session"]: rng.randint(1_500, 6_000) for s in sessions},
        **{team: rng.randint(3_000, 8_000) for team in teams},
        "t0": 12_000,
        "t1": 9_000,
    }
    usd = {owner: rng.choice([None, str(rng.randint(40, 400) / 1_000)]) for owner in budgets}
    return {
        "topic": topic,
        "sessions": sessions,
        "nodes": ["t0", "t1", *teams],
        "budgets": budgets,
        "usd": usd,
    }


class _Run:
    def __init__(self, folder: Path, seed: int, seconds: float, producers: int, workers: int):
        self.folder, self.seed, self.seconds = folder, seed, seconds
        self.rng = random.Random(f"{seed}/faults")
        self.report = Report(seed, seconds)
        self.broker = EmbeddedBroker(folder / "broker.log")
        self.postgres = EmbeddedPostgres(folder / "pg", folder / "postgres.log")
        self.worker_count, self.producer_count = workers, producers
        self.workers: list[WorkerProcess] = []
        self.producers: list[ProducerProcess] = []
        self.api: ProducerProcess | None = None
        self.started_pids: list[int] = []
        name = f"faults_{uuid.uuid4().hex[:8]}"
        self.settings = Settings(
            kafka=KafkaSettings(
                bootstrap_servers=self.broker.bootstrap_servers, usage_topic=f"{name}.usage",
                dlq_topic=f"{name}.dlq", partitions=6,
            ),
            database=DatabaseSettings(url=SecretStr(self.postgres.dsn), schema_name=name),
            worker=WorkerSettings(group_id=f"{name}.workers"),
            data_dir=folder / "data",
        )  # fmt: skip
        self.plan = plan(seed, self.settings.kafka.usage_topic)
        self.reader = RunReader(self.settings)

    # -- processes -------------------------------------------------------------------

    def _worker_env(self, i: int) -> dict[str, str]:
        return {
            **process_env(self.settings),
            "TOKENQUOTA_DATA_DIR": str(self.folder / f"worker-{i}"),
            "WORKER_SESSION_TIMEOUT": "6",
            # INFO shows each fetch or seek a rebalance interrupted (and much of faust's)
            "LOG_LEVEL": os.environ.get("FAULTS_WORKER_LOG_LEVEL", "WARNING"),
        }

    def _start_worker(self, i: int) -> None:
        self.started_pids.append(self.workers[i].start(self._worker_env(i)))

    def _client_env(self, name: str) -> dict[str, str]:
        return {
            **os.environ, **process_env(self.settings),
            "TOKENQUOTA_DATA_DIR": str(self.folder / name),
            "RESERVATIONS_DECISION_TIMEOUT": "8", "LOG_LEVEL": "ERROR",
            "EMITTER_SEND_TIMEOUT": "3",
        }  # fmt: skip

    def _start_producers(self, until: float) -> None:
        plan_file = self.folder / "plan.json"
        plan_file.write_text(json.dumps({**self.plan, "started": time.time()}))
        roles = [PRODUCER_ROLES[i % len(PRODUCER_ROLES)] for i in range(self.producer_count)]
        url = None
        if "http" in roles:
            port = free_port()
            env = {**self._client_env("api"), "API_RATE_LIMIT": "100000",
                   "API_RATE_BURST": "100000"}  # fmt: skip
            args = ["--port", str(port), "--records", str(self.folder / "records-api.jsonl")]
            self.api = ProducerProcess(
                -1, env, args, self.folder / "api.log", "benchmarks.fault_api"
            )
            self.api.start()
            url = f"http://127.0.0.1:{port}"
        for i, role in enumerate(roles):
            env = self._client_env(f"producer-{i}")
            if i == 0:
                env["EMITTER_SPOOL_MAX_BYTES"] = str(16 * 1024)
            records = self.folder / f"records-{i}.jsonl"
            args = ["--index", str(i), "--seed", str(self.seed), "--until", str(until),
                    "--plan", str(plan_file), "--records", str(records), "--role", role,
                    *(["--api", url] if role == "http" and url else [])]  # fmt: skip
            producer = ProducerProcess(i, env, args, self.folder / f"producer-{i}.log")
            producer.start()
            self.producers.append(producer)

    # -- the run ---------------------------------------------------------------------

    async def run(self) -> Report:
        self.broker.start()
        self.postgres.start()
        self.started_pids += [p for p in (self.broker.pid, self.postgres.pid) if p]
        await provision(self.settings)
        await self._setup_budgets()
        for i in range(self.worker_count):
            self.workers.append(WorkerProcess(self.folder / f"worker-{i}.log"))
            self._start_worker(i)
        await self._wait(self._budgets_applied, 120, "the first budgets")
        until = time.time() + self.seconds
        self._start_producers(until)
        await self._faults(until)
        await self._finish()
        return self.report

    async def _setup_budgets(self) -> None:
        recorder = Recorder(self.folder / "records-setup.jsonl")
        emitter = Emitter.from_settings(self.settings)
        recorder.wrap(emitter)
        budgets, usd = self.plan["budgets"], self.plan["usd"]

        def dollars(owner: str) -> Decimal | None:
            return None if usd[owner] is None else Decimal(usd[owner])

        events = [
            node_budget(node, budgets[node], SOURCE, dollars(node)) for node in self.plan["nodes"]
        ]
        events += [
            session_budget(
                s["session"], s["account"], budgets[s["session"]], SOURCE, dollars(s["session"])
            )
            for s in self.plan["sessions"]
        ]
        async with emitter:
            await emitter.emit_many(events)
        recorder.close()
        self.report.events["budgets at the start"] = len(events)

    async def _budgets_applied(self) -> bool:
        expected = self.report.events["budgets at the start"]
        count: int = await self.reader.fetchval("SELECT count(*) FROM usage_events")
        return count >= expected

    async def _faults(self, until: float) -> None:
        names = [name for name, _ in FAULTS]
        weights = [weight for _, weight in FAULTS]
        # Every kind once first (in a seeded order), so that a short run has them all.
        first = self.rng.sample(names, len(names))
        await asyncio.sleep(self.rng.uniform(0.5, 2))
        while time.time() < until - 2:
            fault = first.pop() if first else self.rng.choices(names, weights)[0]
            if fault == "replay-live" and self.report.faults[fault]:
                continue  # once a run is enough
            with (self.folder / "faults.log").open("a") as log:
                log.write(f"{time.time() - until + self.seconds:7.1f} s {fault}\n")
            await getattr(self, "_" + fault.replace("-", "_"))()
            self.report.faults[fault] += 1
            self._supervise()
            await asyncio.sleep(self.rng.uniform(0.5, 3))
        self._supervise()
        for producer in self.producers:
            assert producer.process is not None
            code = await asyncio.to_thread(producer.process.wait, max(until - time.time(), 0) + 400)
            if code != 0:
                self.report.notes.append(
                    f"producer {producer.index} exited with {code}; see {producer.log}"
                )
        if self.api is not None and self.api.process is not None:
            self.api.process.terminate()  # it stops serving, then drains its spool
            code = await asyncio.to_thread(self.api.process.wait, 400)
            if code != 0:
                self.report.notes.append(f"producer api exited with {code}; see {self.api.log}")

    def _supervise(self) -> None:
        """Restart a worker that stopped by itself (as systemd would), noting it."""
        for i, worker in enumerate(self.workers):
            code = worker.exit_code()
            if code is not None:
                self.report.notes.append(f"worker {i} exited with {code}; see {worker.log_path}")
                worker.stop()
                self._start_worker(i)

    async def _worker_kill(self) -> None:
        i = self.rng.randrange(len(self.workers))
        pid = self.workers[i].pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        self.workers[i].stop()  # reaps it
        await asyncio.sleep(self.rng.uniform(0.3, 2))
        self._start_worker(i)

    async def _worker_stop(self) -> None:
        await self._paused(self.workers[self.rng.randrange(len(self.workers))].pid, 1, 9)

    async def _broker_stop(self) -> None:
        await self._paused(self.broker.pid, 1, 6)

    async def _paused(self, pid: int | None, shortest: float, longest: float) -> None:
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(self.rng.uniform(shortest, longest))
        finally:
            os.kill(pid, signal.SIGCONT)

    async def _producer_kill(self) -> None:
        self.producers[self.rng.randrange(len(self.producers))].kill()

    async def _api_kill(self) -> None:
        if self.api is not None:
            self.api.kill()

    async def _postgres_fast(self, sig: signal.Signals = signal.SIGINT) -> None:
        pid = self.postgres.pid
        assert pid is not None
        os.kill(pid, sig)
        await asyncio.to_thread(self.postgres.stop, 30)  # waits for it, then reaps it
        await asyncio.sleep(self.rng.uniform(0.5, 3))
        await asyncio.to_thread(self.postgres.start)
        self.started_pids.append(self.postgres.pid or 0)

    async def _postgres_immediate(self) -> None:
        await self._postgres_fast(signal.SIGQUIT)

    async def _replay_live(self) -> None:
        kafka, db = self.settings.kafka, self.settings.database
        assert kafka.bootstrap_servers is not None
        read = await replay_into(
            kafka.bootstrap_servers, kafka.usage_topic, db.dsn(), db.schema_name
        )
        self.report.notes.append(f"live replay read {read.events:,} events")

    # -- the end ---------------------------------------------------------------------

    async def _finish(self) -> None:
        await self._wait(self.reader.caught_up, 300, "the workers to apply everything")
        run_output = await self.reader.output()
        recorded = read_records(self.folder)
        self.report.invariants = check(recorded, run_output)
        self.report.invariants.append(await self._replay_reproduces())
        outcomes = Counter(recorded.outcomes.values())
        self.report.events.update(
            {
                "sent (distinct)": len(recorded.events),
                **{k: outcomes[k] for k in ("acked", "spooled", "refused", "unknown")},
                "in the ledger": len(run_output.ledger),
                "poison acked": len(recorded.poison),
                "dead letters": len(run_output.dead_letters),
                "reservations decided": len(run_output.decisions),
                "rejected": sum(1 for s, _, _ in run_output.decisions.values() if s == "rejected"),
                "rejected by a USD limit": sum(
                    1
                    for _, reason, _ in run_output.decisions.values()
                    if reason is not None and reason.endswith("usd_limit")
                ),
                "HTTP items answered accepted": len(recorded.claimed),
                "HTTP items answered invalid": len(recorded.invalid),
            }
        )
        components = Counter(row.event["source"]["component"] for row in run_output.ledger)
        for component, count in sorted(components.items()):
            self.report.events[f"in the ledger from {component}"] = count

    async def _replay_reproduces(self) -> Invariant:
        inv = Invariant("a replay reproduces every projection row for row")
        before = await self.reader.snapshot()
        await self._replay_live()
        after = await self.reader.snapshot()
        for table in PROJECTION_TABLES:
            inv.checked += len(before[table])
            if before[table] != after[table]:
                was, now = Counter(before[table]), Counter(after[table])
                gone = list((was - now).elements())[:2]
                new = list((now - was).elements())[:2]
                inv.fail(f"{table}: {len(before[table])} rows, replayed {len(after[table])}; "
                         f"e.g. {gone} became {new}")  # fmt: skip
        return inv

    # -- helpers ---------------------------------------------------------------------

    async def _wait(self, ready: Callable[[], Any], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if await ready():
                    return
            await asyncio.sleep(0.5)
        raise TimeoutError(f"waited {timeout} s for {what}")

    def stop(self) -> None:
        """Stop every process of the run (by PID), and note any left behind."""
        for producer in [*self.producers, *([self.api] if self.api else [])]:
            if producer.process is not None and producer.process.poll() is None:
                producer.process.kill()
                producer.process.wait()
        for worker in self.workers:
            worker.stop()
        for server in (self.postgres, self.broker):
            if server.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(server.pid, signal.SIGCONT)
            server.stop()
        pids = self.started_pids + [
            pid for p in [*self.producers, *([self.api] if self.api else [])] for pid in p.pids
        ]
        left = [pid for pid in pids if pid and alive(pid)]
        if left:
            self.report.notes.append(f"processes left behind: {left}")


@contextlib.asynccontextmanager
async def campaign(
    seconds: float, seed: int, *, producers: int = 3, workers: int = 2, keep: Path | None = None
) -> AsyncIterator[Report]:
    """Run a campaign; yields its report (its processes are stopped on leaving)."""
    with tempfile.TemporaryDirectory(prefix="tq-faults-") as tmp:
        folder = keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        run = _Run(folder, seed, seconds, producers, workers)
        started = time.monotonic()
        try:
            report = await run.run()
        finally:
            run.stop()
        report.notes.append(f"whole run {time.monotonic() - started:.0f} s")
        for note in run.report.notes:
            if note.startswith(("processes left behind", "producer ", "worker ")):
                report.invariants.append(
                    Invariant("no process crashed or was left behind", 1, [note])
                )
        yield report


async def _main(args: argparse.Namespace) -> int:
    async with campaign(args.seconds, args.seed, producers=args.producers, workers=args.workers,
                        keep=Path(args.keep) if args.keep else None) as report:  # fmt: skip
        print_report(report)
        return 0 if report.ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--producers", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", help="a folder to keep the run's logs and records in")
    sys.exit(asyncio.run(_main(parser.parse_args())))


if __name__ == "__main__":
    main()
