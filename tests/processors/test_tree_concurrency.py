"""Issue 16's concurrency proof, against the real broker, worker and PostgreSQL: 300
strict reservations from the sessions of one team race from three producer processes
against a team limit smaller than the sum of the session limits, while granted ones
are settled below or above what they reserved, released, or kept.

An oracle written here (plain arithmetic over the ledger in log order, not the fold)
decides every reservation again: the worker accepted exactly what fits, the team never
went past its limit nor any session past its own, every refusal names the level that
refused it and explains it with that level's state; replay from the topic and from the
ledger rebuilds every table row for row.

The race is a `Scenario`: what its budgets count is a `Measure` read from the ledger's
payloads. Two are run: tokens, and the same for a USD limit with mixed models
(gpt-4o, gpt-4o-mini, claude-haiku-4-5, priced by genai-prices), where a reservation
holds its price from its acceptance until the ApiCost that bills it (above or below
the price), its release or its expiry, but not its settlement in tokens.
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
from tokenquota.producers.integrations.pricing import price_reservation
from tokenquota.projections import connect
from tokenquota.projections.ledger_replay import replay_from_ledger
from tokenquota.schemas import BudgetSet, utc_now

pytestmark = pytest.mark.integration

PRODUCER = Path(__file__).with_name("tree_producer.py")
REPO = Path(__file__).parents[2]
TEAM = "acme/research"
PROCESSES, PER_PROCESS, IN_FLIGHT = 3, 100, 25  # 3 x 100 strict reservations, 75 at once
ZERO = Decimal(0)

Payload = dict[str, Any]
Row = Any  # a reservations row (asyncpg.Record)


# -- what a race is ------------------------------------------------------------------


@dataclass(frozen=True)
class Measure:
    """What a scenario's budgets count, as the oracle reads it from ledger payloads."""

    name: str
    #: The BudgetSet giving `limit` to the session (a session id) or, for None, the node.
    budget: Callable[[str, str | None, Decimal], BudgetSet]
    limit: Callable[[Payload], Decimal]  # of a BudgetSet
    reserved: Callable[[Payload], Decimal]  # of a TokenReserved
    #: What a TokenUsed or ApiCost (its type, its payload) counts as used, and whether
    #: it ends the hold of the reservation it names.
    counted: Callable[[str, Payload], tuple[Decimal, bool]]
    #: What a reservation (its row) still holds; None: nothing.
    holding: Callable[[Row], Decimal | None]
    #: A refusal as its row explains it, and as the refusing level's limit, used and
    #: held explain it.
    explained: Callable[[Row], tuple[Decimal, ...]]
    explain: Callable[[Decimal, Decimal, Decimal], tuple[Decimal, ...]]
    reasons: frozenset[str]  # a refusal's reason
    errors: frozenset[str]  # what reserve() raises for a refusal
    priced: bool = False  # reservations carry a price (and are billed)


def _token_budget(account: str, session: str | None, limit: Decimal) -> BudgetSet:
    # All three windows alike: the hard limit (the total) binds, even across midnight.
    tokens = int(limit)
    if session is None:
        return node_budget(account, utc_now(), daily=tokens, monthly=tokens, hard=tokens)
    return budget(session, utc_now(), daily=tokens, monthly=tokens, hard=tokens, account=account)


TOKENS = Measure(
    name="tokens",
    budget=_token_budget,
    limit=lambda p: Decimal(p["hard_limit"]),
    reserved=lambda p: Decimal(p["tokens"]),
    counted=lambda kind, p: (
        (Decimal(p["input_tokens"] + p["output_tokens"]), True)
        if kind == "TokenUsed"
        else (ZERO, False)
    ),
    holding=lambda r: Decimal(r["tokens"]) if r["status"] == "accepted" else None,
    explained=lambda r: (Decimal(r["limit_tokens"]), Decimal(r["available_tokens"])),
    explain=lambda limit, used, held: (limit, max(ZERO, limit - used - held)),
    reasons=frozenset({"daily_limit", "monthly_limit", "hard_limit"}),
    errors=frozenset({"TokenQuotaExceededError", "TokenBudgetExhaustedError"}),
)

#: Token limits no USD race reaches.
UNBOUND = 1_000_000_000
USD_WINDOWS = ("daily_usd_limit", "monthly_usd_limit", "total_usd_limit")


def _usd_budget(account: str, session: str | None, limit: Decimal) -> BudgetSet:
    # The team's limit is monthly (a window that resets: see the month guard in the
    # test), each session's a total.
    if session is None:
        return node_budget(
            account, utc_now(), daily=UNBOUND, monthly=UNBOUND, hard=UNBOUND,
            usd=(None, str(limit), None),
        )  # fmt: skip
    return budget(
        session, utc_now(), daily=UNBOUND, monthly=UNBOUND, hard=UNBOUND, account=account,
        usd=(None, None, str(limit)),
    )  # fmt: skip


def _usd_counted(kind: str, p: Payload) -> tuple[Decimal, bool]:
    """An ApiCost's cost is spent and ends its reservation's hold; a TokenUsed spends
    nothing and ends it only as a release (0 tokens): a settled call keeps its price
    held until it is billed."""
    if kind == "ApiCost":
        return Decimal(p["cost_usd"]), True
    return ZERO, p["input_tokens"] + p["output_tokens"] == 0


USD = Measure(
    name="usd",
    budget=_usd_budget,
    limit=lambda p: min(Decimal(p[w]) for w in USD_WINDOWS if p.get(w) is not None),
    reserved=lambda p: Decimal(p["reserved_usd"]),
    counted=_usd_counted,
    holding=lambda r: r["usd_held"],
    explained=lambda r: (r["limit_usd"], r["used_usd"], r["held_usd"]),
    explain=lambda limit, used, held: (limit, used, held),
    reasons=frozenset({"monthly_usd_limit", "total_usd_limit"}),
    errors=frozenset({"UsdBudgetExceededError"}),
    priced=True,
)

#: How a granted reservation is closed: (close, input, output, what its bill is of its
#: price: None for no bill), by what the scenario calls it.
CLOSES: dict[str, Callable[[int], tuple[str, int, int, Decimal | None]]] = {
    "below": lambda tokens: ("settle", tokens // 3, tokens // 6, Decimal("0.5")),
    "above": lambda tokens: ("settle", tokens, tokens // 5, Decimal("1.2")),
    "unbilled": lambda tokens: ("settle", tokens // 3, tokens // 6, None),
    "release": lambda tokens: ("release", 0, 0, None),
    "keep": lambda tokens: ("keep", 0, 0, None),
}


@dataclass(frozen=True)
class Scenario:
    """One race: the team's limit, one limit per session (their sum is larger), the
    sizes asked, the models (cycled through the plan) and how grants are closed."""

    measure: Measure
    team_limit: Decimal
    session_limits: tuple[Decimal, ...]
    sizes: tuple[int, ...]
    models: tuple[str, ...]
    closes: tuple[str, ...] = ("below", "above", "release", "keep")

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
        one settled below (half) or above (+20 %) what it reserved, released, or kept;
        priced, a settled one is billed half or 120 % of its price, or not at all."""
        steps = []
        for k in range(PER_PROCESS):
            g = process * PER_PROCESS + k
            s, turn = g % len(self.session_limits), g // len(self.session_limits)
            session, account = self.session(s)
            tokens = self.sizes[(turn + s) % len(self.sizes)]
            kind = self.closes[(turn + 2 * s) % len(self.closes)]
            close, used_in, used_out, billed = CLOSES[kind](tokens)
            model = self.models[g % len(self.models)]
            step: Payload = {
                "session": session,
                "account": account,
                "tokens": tokens,
                "close": close,
                "input": used_in,
                "output": used_out,
                "model": model,
            }
            if self.measure.priced:
                # The prompt at the input price, the output it may write at the output's.
                price = price_reservation(model, tokens * 2 // 3, tokens - tokens * 2 // 3)
                assert price is not None, model
                step |= {"usd": str(price.usd), "price_source": price.source}
                if billed is not None:
                    step["cost"] = str((price.usd * billed).quantize(Decimal("1e-10")))
            steps.append(step)
        return steps

    def asked(self) -> Decimal:
        """What all of the plans' reservations ask, in the measure."""
        steps = [step for n in range(PROCESSES) for step in self.plan(n)]
        return sum((Decimal(s["usd" if self.measure.priced else "tokens"]) for s in steps), ZERO)


SCENARIOS = {
    "tokens": Scenario(
        measure=TOKENS,
        team_limit=Decimal(8_000),
        session_limits=tuple(Decimal(400 + 300 * i) for i in range(10)),  # 17,500 in all
        sizes=(60, 90, 140, 200, 260, 330, 410),
        models=("gpt-4o", "claude-sonnet-4"),
    ),
    # The 300 would cost about $1.64; the sessions may spend $0.65 in all, the team $0.25.
    "usd": Scenario(
        measure=USD,
        team_limit=Decimal("0.25"),
        session_limits=tuple(Decimal("0.02") + Decimal("0.01") * i for i in range(10)),
        sizes=(600, 900, 1400, 2000, 2600, 3300, 4100),
        models=("gpt-4o", "gpt-4o-mini", "claude-haiku-4-5"),
        closes=("below", "above", "release", "keep", "unbilled"),
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
    used: Decimal = ZERO
    held: Decimal = ZERO
    #: Usage beyond what its reservations held: counted, never refused, so the only
    #: way past the limit.
    overage: Decimal = ZERO

    @property
    def committed(self) -> Decimal:
        """Used and held, but the usage beyond reservations."""
        return self.used + self.held - self.overage


@dataclass
class Oracle:
    """Decides each reservation of the ledger again, greedily in log order: accepted iff
    it fits its session and every node above with a limit (asked <= limit - used - held,
    and that room is above 0), else refused by the session or the nearest node that has
    no room. Its holds follow the worker's actual decisions, so each decision is judged
    on the state the worker's own earlier decisions left."""

    measure: Measure
    levels: dict[str, Level] = field(default_factory=dict)
    expected: dict[uuid.UUID, str] = field(default_factory=dict)
    offsets: dict[uuid.UUID, int] = field(default_factory=dict)
    #: Each refusal explained by the state of the level that refused it.
    explanations: dict[uuid.UUID, tuple[Decimal, ...]] = field(default_factory=dict)
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
            elif row.event_type in ("TokenUsed", "ApiCost"):
                self.counted(row.event_type, p)
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
            if level.limit is None:
                continue
            room = level.limit - level.used - level.held
            if asked > room or room <= 0:
                verdict = BY_SESSION if key == path[0] else key
                self.explanations[rid] = self.measure.explain(level.limit, level.used, level.held)
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

    def counted(self, kind: str, p: Payload) -> None:
        (amount, closes), path = self.measure.counted(kind, p), self.path(p)
        for key in path:
            self.level(key).used += amount
        rid = p.get("reservation_id")
        if closes and rid is not None and uuid.UUID(rid) in self.open:
            held_path, held = self.open.pop(uuid.UUID(rid))
            for key in held_path:
                level = self.level(key)
                level.held -= held
                level.overage += max(ZERO, amount - held)


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


async def read_back(settings: Settings) -> tuple[list[LedgerRow], list[Row], list[Row]]:
    """The tree's ledger rows in log order, every reservation, the tree's budget rows."""
    conn = await connect(settings.database.dsn(), settings.database.schema_name)
    try:
        ledger = [
            LedgerRow(
                r["kafka_partition"],
                r["kafka_offset"],
                r["event_type"],
                json.loads(r["payload"], parse_float=Decimal),
            )
            for r in await conn.fetch(
                """SELECT kafka_partition, kafka_offset, event_type, payload FROM usage_events
                    WHERE payload ? 'account' ORDER BY kafka_partition, kafka_offset"""
            )
        ]
        reservations = await conn.fetch("SELECT * FROM reservations")
        budgets = await conn.fetch(
            """SELECT account AS level, tokens_used_total, usd_used_total, usd_used_month,
                      usd_used_today,
                      (SELECT COALESCE(sum(reservations_accepted), 0) FROM account_usage_daily u
                        WHERE u.account = b.account) AS reservations_accepted,
                      (SELECT COALESCE(sum(reservations_refused), 0) FROM account_usage_daily u
                        WHERE u.account = b.account) AS reservations_rejected
                 FROM account_budgets b
               UNION ALL
               SELECT 'session:' || session_id, tokens_used_total, usd_used_total,
                      usd_used_month, usd_used_today, reservations_accepted,
                      reservations_rejected
                 FROM session_token_budgets WHERE account IS NOT NULL"""
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
    measure = scenario.measure
    assert scenario.team_limit < sum(scenario.session_limits) < scenario.asked()
    started = utc_now()
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
    errors: Counter[str] = sum((Counter(r["errors"]) for r in results), Counter())
    sent: Counter[str] = sum((Counter(r["sent"]) for r in results), Counter())
    assert len(granted) + refused.total() == PROCESSES * PER_PROCESS, results
    assert set(errors) <= measure.errors, errors  # a USD refusal is UsdBudgetExceededError
    assert (sent["ApiCost"] > 0) == measure.priced, sent

    async def all_closed() -> bool:  # every settlement, release and bill applied
        sql = "SELECT count(*) FROM usage_events WHERE event_type = $1"
        for kind in ("TokenUsed", "ApiCost"):
            if await fetch_value(settings.database, sql, kind) != sent[kind]:
                return False
        return True

    await wait_until(all_closed, 60, f"{sent.total()} settlements, releases, bills", [worker])
    ledger, reservations, budget_rows = await read_back(settings)
    if measure.priced and utc_now().month != started.month:
        pytest.skip("the team's monthly USD window reset during the race")

    # The whole tree is decided in one partition, in log order.
    assert {row.partition for row in ledger} == {ledger[0].partition}
    racers = {r.payload["source"]["name"] for r in ledger if r.event_type == "TokenReserved"}
    assert racers == {f"p{n}" for n in range(PROCESSES)}  # each process took part
    assert [row.offset for row in ledger] == sorted({row.offset for row in ledger})
    assert all(r["status"] != "expired" and r["reason"] != "expired" for r in reservations)
    rows = {r["reservation_id"]: r for r in reservations}
    actual = {
        rid: "accepted" if r["status"] != "rejected" else (r["refused_by"] or BY_SESSION)
        for rid, r in rows.items()
    }
    assert {rid for rid, verdict in actual.items() if verdict == "accepted"} == granted

    oracle = Oracle(measure)
    oracle.walk(ledger, actual)
    # (a) No acceptance took the team or a session past its limit, nor did anything
    # after it (but the usage beyond a reservation, which is counted, never refused).
    assert not oracle.breaches, "\n".join(oracle.breaches[:20])
    # (b) Exactly what fits was accepted: every decision is the oracle's, in log order;
    # (c) and every refusal names the level that refused it, for a window of the
    # measure, with that level's limit, used and held as the oracle counts them.
    wrong = [
        f"offset {oracle.offsets[rid]}: the worker said {actual[rid]}, the oracle {want}"
        for rid, want in oracle.expected.items()
        if actual[rid] != want
    ]
    assert not wrong, f"{len(wrong)} decisions differ:\n" + "\n".join(wrong[:20])
    assert oracle.expected.keys() == actual.keys()
    unexplained = [
        f"offset {oracle.offsets[rid]}: {r['reason']} {measure.explained(r)}, "
        f"the oracle {oracle.explanations[rid]}"
        for rid, r in rows.items()
        if r["status"] == "rejected"
        and (r["reason"] not in measure.reasons or measure.explained(r) != oracle.explanations[rid])
    ]
    assert not unexplained, f"{len(unexplained)} refusals:\n" + "\n".join(unexplained[:20])
    in_log = Counter(actual.values())
    assert in_log["accepted"] == len(granted) > 0, in_log
    assert in_log[TEAM] == refused[TEAM] > 0, (in_log, refused)  # the team refused some...
    assert refused[BY_SESSION] > 0, refused  # ...and sessions their own share (some at once)
    assert set(refused) <= {TEAM, BY_SESSION}, refused
    # The stored counters are a recount from the ledger and the decisions.
    stored = {
        r["level"]: (
            r["tokens_used_total"],
            r["usd_used_total"],
            r["reservations_accepted"],
            r["reservations_rejected"],
        )
        for r in budget_rows
    }
    assert stored == recount(ledger, actual)
    # Every USD window counts the same spend (a race within one month; a day, at least
    # unless it crossed midnight).
    windows = ["usd_used_month"] + (
        ["usd_used_today"] if utc_now().date() == started.date() else []
    )
    assert all(r[w] == r["usd_used_total"] for r in budget_rows for w in windows)
    # Each reservation keeps what its bills cost.
    bills: dict[uuid.UUID, Decimal] = {}
    for row in ledger:
        if row.event_type == "ApiCost":
            rid = uuid.UUID(row.payload["reservation_id"])
            bills[rid] = bills.get(rid, ZERO) + Decimal(row.payload["cost_usd"])
    assert {
        rid: r["settled_usd"] for rid, r in rows.items() if r["settled_usd"] is not None
    } == bills
    # What is still held is what the oracle holds: the kept reservations (and, in
    # dollars, the settled ones not billed).
    holding = {rid: measure.holding(r) for rid, r in rows.items() if measure.holding(r) is not None}
    assert holding == {rid: held for rid, (_, held) in oracle.open.items()}
    assert oracle.level(TEAM).held > 0
    assert any(rows[rid]["status"] == "settled" for rid in holding) == measure.priced
    assert oracle.level(TEAM).overage > 0  # some grants used (or cost) more than they held

    # Replay, from the topic and then from the ledger alone, rebuilds every row.
    worker.stop()
    live = await with_views(settings)
    await replay(settings)
    assert await with_views(settings) == live
    await recreate_topics(settings.kafka)
    await replay_from_ledger(settings.database.dsn(), settings.database.schema_name)
    assert await with_views(settings) == live


def recount(ledger: list[LedgerRow], actual: dict[uuid.UUID, str]) -> dict[str, tuple[Any, ...]]:
    """Per session and node: tokens used, dollars spent, reservations accepted, and
    rejected (a session counts all of its own, a node those it refused)."""
    counts: dict[str, list[Any]] = {}
    for row in ledger:
        p = row.payload
        path = Oracle.path(p)
        if row.event_type == "BudgetSet":  # its session and nodes have rows from here on
            for key in path[1:] if p.get("target") == "account" else path:
                counts.setdefault(key, [0, ZERO, 0, 0])
            continue
        for key in path:
            tally = counts.setdefault(key, [0, ZERO, 0, 0])
            if row.event_type == "TokenUsed":
                tally[0] += p["input_tokens"] + p["output_tokens"]
            elif row.event_type == "ApiCost":
                tally[1] += Decimal(p["cost_usd"])
            elif (verdict := actual[uuid.UUID(p["reservation_id"])]) == "accepted":
                tally[2] += 1
            elif key.startswith("session:") or verdict == key:
                tally[3] += 1
    return {key: tuple(tally) for key, tally in counts.items()}
