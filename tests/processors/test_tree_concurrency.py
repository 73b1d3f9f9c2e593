"""Issue 16's concurrency proof, against the real broker, worker and PostgreSQL: 300
strict reservations from the sessions of one team race from three producer processes
against a team limit smaller than the sum of the session limits, while granted ones
are settled below or above what they reserved, released, or kept.

An oracle written here (plain arithmetic over the ledger in log order, not the fold)
decides every reservation again: the worker accepted exactly what fits, the team never
went past its limit nor any session past its own, every refusal names the level that
refused it; replay from the topic and from the ledger rebuilds every table row for row.

The race is a `Scenario`: what its budgets count is a `Measure` read from the ledger's
payloads, so a variant with other limits (USD, mixed models) is one more parameter.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from tests.processors.tree_producer import BY_SESSION
from tests.projections.test_replay import recreate_topics, replay, with_views
from tests.support import budget, fetch_value, node_budget, settings_env, wait_until
from tokenquota.config import Settings
from tokenquota.producers import TokenQuota
from tokenquota.projections import connect
from tokenquota.projections.ledger_replay import replay_from_ledger
from tokenquota.schemas import BudgetSet, utc_now

pytestmark = pytest.mark.integration

PRODUCER = Path(__file__).with_name("tree_producer.py")
REPO = Path(__file__).parents[2]
TEAM = "acme/research"
PROCESSES, PER_PROCESS, IN_FLIGHT = 3, 100, 25  # 3 x 100 strict reservations, 75 at once

Payload = dict[str, Any]


# -- what a race is ------------------------------------------------------------------


@dataclass(frozen=True)
class Measure:
    """What a scenario's budgets count, as the oracle reads it from ledger payloads."""

    name: str
    #: The BudgetSet giving `limit` to the session (a session id) or, for None, the node.
    budget: Callable[[str, str | None, int], BudgetSet]
    limit: Callable[[Payload], Decimal]  # of a BudgetSet
    reserved: Callable[[Payload], Decimal]  # of a TokenReserved
    used: Callable[[Payload], Decimal]  # of a TokenUsed


def _token_budget(account: str, session: str | None, limit: int) -> BudgetSet:
    # All three windows alike: the hard limit (the total) binds, even across midnight.
    if session is None:
        return node_budget(account, utc_now(), daily=limit, monthly=limit, hard=limit)
    return budget(session, utc_now(), daily=limit, monthly=limit, hard=limit, account=account)


TOKENS = Measure(
    name="tokens",
    budget=_token_budget,
    limit=lambda p: Decimal(p["hard_limit"]),
    reserved=lambda p: Decimal(p["tokens"]),
    used=lambda p: Decimal(p["input_tokens"] + p["output_tokens"]),
)


@dataclass(frozen=True)
class Scenario:
    """One race: the team's limit, one limit per session (their sum is larger), the
    sizes asked and the models settled with (cycled through the plan)."""

    measure: Measure
    team_limit: int
    session_limits: tuple[int, ...]
    sizes: tuple[int, ...]
    models: tuple[str, ...]

    def session(self, i: int) -> tuple[str, str]:
        return f"tree-u{i}", f"{TEAM}/u{i}"

    def budgets(self) -> list[BudgetSet]:
        events = [self.measure.budget(TEAM, None, self.team_limit)]
        for i, limit in enumerate(self.session_limits):
            session, account = self.session(i)
            events.append(self.measure.budget(account, session, limit))
        return events

    def plan(self, process: int) -> list[Payload]:
        """Process `process`'s reservations: every session, varied sizes, and each granted
        one settled below (half) or above (+20 %) what it reserved, released, or kept."""
        steps = []
        for k in range(PER_PROCESS):
            g = process * PER_PROCESS + k
            s, turn = g % len(self.session_limits), g // len(self.session_limits)
            session, account = self.session(s)
            tokens = self.sizes[(turn + s) % len(self.sizes)]
            close, used_in, used_out = [
                ("settle", tokens // 3, tokens // 6),
                ("settle", tokens, tokens // 5),
                ("release", 0, 0),
                ("keep", 0, 0),
            ][(turn + 2 * s) % 4]
            steps.append(
                {
                    "session": session,
                    "account": account,
                    "tokens": tokens,
                    "close": close,
                    "input": used_in,
                    "output": used_out,
                    "model": self.models[g % len(self.models)],
                }
            )
        return steps


SCENARIOS = {
    "tokens": Scenario(
        measure=TOKENS,
        team_limit=8_000,
        session_limits=tuple(400 + 300 * i for i in range(10)),  # 17,500 in all
        sizes=(60, 90, 140, 200, 260, 330, 410),
        models=("gpt-4o", "claude-sonnet-4"),
    ),
}


# -- the oracle ----------------------------------------------------------------------


class LedgerRow(NamedTuple):
    partition: int
    offset: int
    event_type: str
    payload: Payload


@dataclass
class Level:
    """A session or a tree node, as the oracle counts it."""

    limit: Decimal | None = None
    used: Decimal = Decimal(0)
    held: Decimal = Decimal(0)
    #: Usage beyond what its reservations held: counted, never refused, so the only
    #: way past the limit.
    overage: Decimal = Decimal(0)

    @property
    def committed(self) -> Decimal:
        """Used and held, but the usage beyond reservations."""
        return self.used + self.held - self.overage


@dataclass
class Oracle:
    """Decides each reservation of the ledger again, greedily in log order: accepted iff
    it fits its session and every node above with a limit (used + held + asked <= limit),
    else refused by the session or the nearest node that has no room. Its holds follow
    the worker's actual decisions, so each decision is judged on the state the worker's
    own earlier decisions left."""

    measure: Measure
    levels: dict[str, Level] = field(default_factory=dict)
    expected: dict[uuid.UUID, str] = field(default_factory=dict)
    offsets: dict[uuid.UUID, int] = field(default_factory=dict)
    open: dict[uuid.UUID, tuple[tuple[str, ...], Decimal]] = field(default_factory=dict)
    breaches: list[str] = field(default_factory=list)

    def level(self, key: str) -> Level:
        return self.levels.setdefault(key, Level())

    @staticmethod
    def path(payload: Payload) -> tuple[str, ...]:
        """The session, then its nodes from the nearest up to the tenant."""
        parts = payload["account"].split("/")
        nodes = ["/".join(parts[:n]) for n in range(len(parts), 0, -1)]
        return (f"session:{payload['session_id']}", *nodes)

    def walk(self, ledger: list[LedgerRow], actual: dict[uuid.UUID, str]) -> None:
        for row in ledger:
            p = row.payload
            if row.event_type == "BudgetSet":
                key = p["account"] if p.get("target") == "account" else self.path(p)[0]
                self.level(key).limit = self.measure.limit(p)
            elif row.event_type == "TokenReserved":
                self.reserved(row, p, actual)
            elif row.event_type == "TokenUsed":
                self.used(p)
            for key, level in self.levels.items():
                if level.limit is not None and level.committed > level.limit:
                    self.breaches.append(
                        f"offset {row.offset}: {key} holds {level.held} and used {level.used} "
                        f"({level.overage} over its reservations) under a limit of {level.limit}"
                    )

    def reserved(self, row: LedgerRow, p: Payload, actual: dict[uuid.UUID, str]) -> None:
        rid, asked, path = uuid.UUID(p["reservation_id"]), self.measure.reserved(p), self.path(p)
        assert self.level(path[0]).limit is not None, f"{path[0]} reserved without a budget"
        verdict = "accepted"
        for key in path:
            level = self.level(key)
            if level.limit is not None and level.used + level.held + asked > level.limit:
                verdict = BY_SESSION if key == path[0] else key
                break
        self.expected[rid], self.offsets[rid] = verdict, row.offset
        if actual[rid] != "accepted":
            return
        self.open[rid] = (path, asked)
        for key in path:
            level = self.level(key)
            level.held += asked
            if level.limit is not None and level.used + level.held > level.limit:
                self.breaches.append(
                    f"offset {row.offset}: accepting {asked} took {key} to {level.used} used + "
                    f"{level.held} held, past its limit of {level.limit}"
                )

    def used(self, p: Payload) -> None:
        amount, path = self.measure.used(p), self.path(p)
        for key in path:
            self.level(key).used += amount
        rid = p.get("reservation_id")
        if rid is not None and uuid.UUID(rid) in self.open:
            held_path, held = self.open.pop(uuid.UUID(rid))
            for key in held_path:
                level = self.level(key)
                level.held -= held
                level.overage += max(Decimal(0), amount - held)


# -- the processes -------------------------------------------------------------------


async def producer(
    settings: Settings, tmp_path: Path, name: str, plan: list[Payload]
) -> asyncio.subprocess.Process:
    """Start a producer process on `plan`; wait until it is connected and ready to race."""
    plan_file = tmp_path / f"plan-{name}.json"
    plan_file.write_text(json.dumps(plan))
    env = {
        **os.environ,
        **settings_env(settings),
        "EMITTER_SPOOL_DIR": str(tmp_path / f"spool-{name}"),
        "PYTHONPATH": str(REPO),
        # What is tested is which reservations win, not how fast (a loaded 2-core machine).
        "RESERVATIONS_DECISION_TIMEOUT": "90",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(PRODUCER),
        f"--plan={plan_file}",
        f"--name={name}",
        f"--concurrency={IN_FLIGHT}",
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 60)
    assert line == b"ready\n", line
    return process


async def outcome(process: asyncio.subprocess.Process) -> dict[str, Any]:
    stdout, stderr = await asyncio.wait_for(process.communicate(b"go\n"), 100)
    assert process.returncode == 0, stderr.decode()[-3000:]
    result: dict[str, Any] = json.loads(stdout.decode().strip().splitlines()[-1])
    return result


async def read_back(settings: Settings) -> tuple[list[LedgerRow], list[Any], list[Any]]:
    """The tree's ledger rows in log order, every reservation, the tree's budget rows."""
    conn = await connect(settings.database.dsn(), settings.database.schema_name)
    try:
        ledger = [
            LedgerRow(
                r["kafka_partition"], r["kafka_offset"], r["event_type"], json.loads(r["payload"])
            )
            for r in await conn.fetch(
                """SELECT kafka_partition, kafka_offset, event_type, payload FROM usage_events
                    WHERE payload ? 'account' ORDER BY kafka_partition, kafka_offset"""
            )
        ]
        reservations = await conn.fetch("SELECT * FROM reservations")
        budgets = await conn.fetch(
            """SELECT account AS level, tokens_used_total, reservations_accepted,
                      reservations_rejected FROM account_budgets
               UNION ALL
               SELECT 'session:' || session_id, tokens_used_total, reservations_accepted,
                      reservations_rejected FROM session_token_budgets WHERE account IS NOT NULL"""
        )
    finally:
        await conn.close()
    return ledger, reservations, budgets


# -- the test ------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", list(SCENARIOS.values()), ids=list(SCENARIOS))
async def test_concurrent_reservations_of_a_team_take_exactly_what_fits_and_replay_alike(
    scenario: Scenario, pipeline_settings: Settings, start_worker: Any, tmp_path: Path
) -> None:
    settings = pipeline_settings
    assert scenario.team_limit < sum(scenario.session_limits)
    worker = start_worker()
    budgets = scenario.budgets()
    async with TokenQuota(settings) as quota:
        await asyncio.gather(*(quota.emit(event) for event in budgets))

        async def budgets_applied() -> bool:
            ids = [event.event_id for event in budgets]
            sql = "SELECT count(*) FROM usage_events WHERE event_id = ANY($1::uuid[])"
            return bool(await fetch_value(settings.database, sql, ids) == len(ids))

        await wait_until(budgets_applied, 60, "the budgets", [worker])

    processes = [
        await producer(settings, tmp_path, f"p{n}", scenario.plan(n)) for n in range(PROCESSES)
    ]
    results = await asyncio.gather(*(outcome(process) for process in processes))

    granted = {uuid.UUID(rid) for r in results for rid in r["accepted"]}
    refused: Counter[str] = sum((Counter(r["refused"]) for r in results), Counter())
    closed: int = sum(r["closed"] for r in results)
    assert len(granted) + refused.total() == PROCESSES * PER_PROCESS, results

    async def all_closed() -> bool:  # every settlement and release applied
        sql = "SELECT count(*) FROM usage_events WHERE event_type = 'TokenUsed'"
        return bool(await fetch_value(settings.database, sql) == closed)

    await wait_until(all_closed, 60, f"{closed} settlements and releases", [worker])
    ledger, reservations, budget_rows = await read_back(settings)

    # The whole tree is decided in one partition, in log order.
    assert {row.partition for row in ledger} == {ledger[0].partition}
    racers = {r.payload["source"]["name"] for r in ledger if r.event_type == "TokenReserved"}
    assert racers == {f"p{n}" for n in range(PROCESSES)}  # each process took part
    assert [row.offset for row in ledger] == sorted({row.offset for row in ledger})
    assert all(r["status"] != "expired" and r["reason"] != "expired" for r in reservations)
    actual = {
        r["reservation_id"]: "accepted"
        if r["status"] != "rejected"
        else (r["refused_by"] or BY_SESSION)
        for r in reservations
    }
    assert {rid for rid, verdict in actual.items() if verdict == "accepted"} == granted

    oracle = Oracle(scenario.measure)
    oracle.walk(ledger, actual)
    # (a) No acceptance took the team or a session past its limit, nor did anything
    # after it (but the usage beyond a reservation, which is counted, never refused).
    assert not oracle.breaches, "\n".join(oracle.breaches[:20])
    # (b) Exactly what fits was accepted: every decision is the oracle's, in log order;
    # (c) and every refusal names the level that refused it.
    wrong = [
        f"offset {oracle.offsets[rid]}: the worker said {actual[rid]}, the oracle {want}"
        for rid, want in oracle.expected.items()
        if actual[rid] != want
    ]
    assert not wrong, f"{len(wrong)} decisions differ:\n" + "\n".join(wrong[:20])
    assert oracle.expected.keys() == actual.keys()
    in_log = Counter(actual.values())
    assert in_log["accepted"] == len(granted) > 0, in_log
    assert in_log[TEAM] == refused[TEAM] > 0, (in_log, refused)  # the team refused some...
    assert refused[BY_SESSION] > 0, refused  # ...and sessions their own share (some at once)
    assert set(refused) <= {TEAM, BY_SESSION}, refused
    # The stored counters are a recount from the ledger and the decisions.
    stored = {
        r["level"]: (r["tokens_used_total"], r["reservations_accepted"], r["reservations_rejected"])
        for r in budget_rows
    }
    assert stored == recount(ledger, actual)
    # What is still held is what the oracle holds: the kept reservations.
    kept = {r["reservation_id"] for r in reservations if r["status"] == "accepted"}
    assert kept == oracle.open.keys() and oracle.level(TEAM).held > 0

    # Replay, from the topic and then from the ledger alone, rebuilds every row.
    worker.stop()
    live = await with_views(settings)
    await replay(settings)
    assert await with_views(settings) == live
    await recreate_topics(settings.kafka)
    await replay_from_ledger(settings.database.dsn(), settings.database.schema_name)
    assert await with_views(settings) == live


def recount(ledger: list[LedgerRow], actual: dict[uuid.UUID, str]) -> dict[str, tuple[int, ...]]:
    """Per session and node: tokens used, reservations accepted, and rejected (a session
    counts all of its own, a node those it refused)."""
    counts: dict[str, list[int]] = {}
    for row in ledger:
        p = row.payload
        path = Oracle.path(p)
        if row.event_type == "BudgetSet":  # its session and nodes have rows from here on
            for key in path[1:] if p.get("target") == "account" else path:
                counts.setdefault(key, [0, 0, 0])
            continue
        for key in path:
            tally = counts.setdefault(key, [0, 0, 0])
            if row.event_type == "TokenUsed":
                tally[0] += p["input_tokens"] + p["output_tokens"]
                continue
            verdict = actual[uuid.UUID(p["reservation_id"])]
            if verdict == "accepted":
                tally[1] += 1
            elif key.startswith("session:") or verdict == key:
                tally[2] += 1
    return {key: tuple(tally) for key, tally in counts.items()}
