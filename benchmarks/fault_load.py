"""One producer process of the fault campaign (`benchmarks.faults` starts and kills these).

It drives a TokenQuota client with a seeded mix until a deadline: strict and optimistic
reservations racing for the campaign's shared sessions (some priced in USD), settled
below or above what they held, released, or left to expire; unreserved usage, some dated
in the past or the future; ApiCosts; budget changes (token and USD limits); events
re-sent on purpose; poison messages. Its role adds more: "hooks" also calls tools through
the MCP meter, runs orchestrator tasks and records memory operations; "http" also sends
event arrays to the HTTP API's ingest (some items invalid) and reserves, settles and
releases through it. Every event handed to the emitter is recorded before it is sent,
and what became of it after (acked, spooled, refused by a full spool, or unknown), one
JSON line each, flushed at once: a producer killed mid-send leaves a record the oracle
can still read. What the HTTP API answered is recorded too (each item accepted, with its
delivery, or invalid). A restarted producer first re-sends what its predecessor spooled
(its data directory is the same), then goes on; at the deadline it waits until its spool
is empty.

Run: python -m benchmarks.fault_load --index I --seed S --until EPOCH --plan PLAN.json
     --records RECORDS.jsonl [--role sdk|hooks|http] [--api URL] [--restart N]
     (servers and schema from the environment)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import time
from collections.abc import Iterable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import httpx
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from tokenquota.config import Settings
from tokenquota.errors import IntegrationError, TokenQuotaExceededError
from tokenquota.producers import TokenQuota
from tokenquota.producers.emitter import Delivery, Emitter
from tokenquota.producers.integrations.mcp_hooks import McpMeter
from tokenquota.producers.integrations.memory import track_memory_operation
from tokenquota.producers.integrations.orchestrator import route_with_token_budget
from tokenquota.producers.spool import SpoolFullError, SpoolWriteError
from tokenquota.schemas import (
    ApiCost,
    BudgetSet,
    Event,
    Source,
    TokenUsed,
    encode,
    utc_now,
)

__all__ = ["ROLES", "Recorder", "main", "node_budget", "session_budget"]

#: Concurrent callers in one producer process.
CALLERS = 8
#: (operation, weight) of every role's mix.
MIX = (
    ("strict", 30), ("optimistic", 12), ("used", 22), ("cost", 6), ("budget", 4),
    ("duplicate", 6), ("poison", 1), ("past", 4), ("future", 4),
)  # fmt: skip
#: The mix of each producer role: the client alone, its hooks too, the HTTP API too.
ROLES: dict[str, tuple[tuple[str, int], ...]] = {
    "sdk": MIX,
    "hooks": (*MIX, ("mcp", 30), ("task", 20), ("memory", 10)),
    "http": (*MIX, ("ingest", 25), ("http_reserve", 40)),
}
#: How long a caller whose reservation was refused waits before its next operation (s).
REFUSED_PAUSE = 0.2
#: What a reserved token is priced at (USD), and the share of reservations priced.
PRICE = Decimal("0.00002")
PRICED = 0.5


class Recorder:
    """Writes each event an emitter is handed, then its outcome, as JSON lines."""

    def __init__(self, path: Path) -> None:
        self._file: IO[str] = path.open("a", buffering=1)  # a line at a time
        #: Events this process sent that were acked or spooled (to re-send on purpose).
        self.sent: list[Event] = []

    def wrap(self, emitter: Emitter) -> None:
        """Record everything `emitter.emit_many` (and so `emit`) is handed."""
        send = emitter.emit_many

        async def emit_many(events: Iterable[Event], *, linger: bool = True) -> list[Delivery]:
            batch = list(events)
            for event in batch:
                self.line({"k": "e", "id": str(event.event_id), "ev": encode(event).decode()})
            try:
                outcomes = await send(batch, linger=linger)
            except (SpoolFullError, SpoolWriteError):
                self._outcomes(batch, "refused")
                raise
            except BaseException as exc:
                self._outcomes(batch, "unknown", f"{type(exc).__name__}: {exc}"[:200])
                raise
            for event, outcome in zip(batch, outcomes, strict=True):
                self.line({"k": "o", "id": str(event.event_id), "o": outcome})
            self.sent.extend(batch)
            del self.sent[:-200]
            return outcomes

        emitter.emit_many = emit_many  # type: ignore[method-assign]

    def _outcomes(self, events: list[Event], outcome: str, why: str = "") -> None:
        for event in events:
            self.line({"k": "o", "id": str(event.event_id), "o": outcome, "why": why})

    def line(self, record: dict[str, Any]) -> None:
        """Append one record."""
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")

    def close(self) -> None:
        """Close the file."""
        self._file.close()


class _ToolFailedError(Exception):
    """A tool or task of the load that fails on purpose (its tokens are released)."""


class _RefusedError(Exception):
    """The HTTP API refused a reservation (409 or 429)."""


class _Caller:
    def __init__(
        self,
        quota: TokenQuota,
        recorder: Recorder,
        poison: AIOKafkaProducer,
        plan: dict[str, Any],
        rng: random.Random,
        source: Source,
        role: str = "sdk",
        api: httpx.AsyncClient | None = None,
    ) -> None:
        self.quota, self.recorder, self.poison_producer = quota, recorder, poison
        self.sessions: list[dict[str, Any]] = plan["sessions"]
        self.nodes: list[str] = plan["nodes"]
        self.topic: str = plan["topic"]
        self.started: float = plan["started"]
        self.rng, self.source, self.role, self.api = rng, source, role, api
        self.meter = McpMeter(quota.settings, quota=quota, server_name=source.name)
        self.counts: dict[str, int] = {}

    async def run(self, until: float) -> None:
        names = [name for name, _ in ROLES[self.role]]
        weights = [weight for _, weight in ROLES[self.role]]
        while time.time() < until:
            op = self.rng.choices(names, weights)[0]
            try:
                await getattr(self, f"_{op}")()
                outcome = op
            except (TokenQuotaExceededError, _RefusedError):
                outcome = f"{op}: refused"
                # As a refused client backs off. Without it a caller refused by the
                # client's pre-check (nothing emitted, no decision awaited) went again at
                # once, so once budgets were spent the load became a flood of usage that
                # kept them spent, and long runs decided almost no reservations.
                await asyncio.sleep(REFUSED_PAUSE)
            except _ToolFailedError:
                outcome = f"{op}: failed on purpose"
            except (
                IntegrationError, SpoolFullError, SpoolWriteError, TimeoutError, httpx.HTTPError
            ):  # fmt: skip
                outcome = f"{op}: failed"
                await asyncio.sleep(0.2)  # a server is away: do not spin
            self.counts[outcome] = self.counts.get(outcome, 0) + 1

    def _session(self) -> tuple[str, str | None]:
        chosen = self.rng.choice(self.sessions)
        return chosen["session"], chosen["account"]

    async def _strict(self, mode: str = "strict") -> None:
        session, account = self._session()
        tokens = self.rng.randint(10, 150)
        priced = self.rng.random() < PRICED
        held = await self.quota.reserve(
            session, tokens, mode=mode,  # type: ignore[arg-type]
            ttl=self.rng.choice([1.0, 3.0, 20.0]), account=account,
            reserved_usd=tokens * PRICE if priced else None,
            price_source="bench" if priced else None,
        )  # fmt: skip
        await asyncio.sleep(self.rng.random() * 0.1)  # the call
        tokens = held.event.tokens
        fate = self.rng.random()
        if fate < 0.55:
            inp = self.rng.randint(0, tokens)
            await held.settle(inp, self.rng.randint(0, tokens - inp), "gpt-4o")
        elif fate < 0.7:
            await held.settle(tokens, self.rng.randint(1, 80), "gpt-4o")  # above it
        elif fate < 0.85:
            await held.release()
        else:
            return  # left to expire
        if self.rng.random() < (0.8 if priced else 0.3):
            cost = self.rng.randint(1, 2 * tokens) * PRICE
            await held.cost(cost, "bench", api="openai", model="gpt-4o",
                            input_tokens=tokens, output_tokens=0)  # fmt: skip

    async def _optimistic(self) -> None:
        await self._strict("optimistic")

    async def _used(self, shift: timedelta = timedelta(0)) -> None:
        session, account = self._session()
        await self.quota.emit(
            TokenUsed(
                session_id=session, source=self.source, account=account,
                occurred_at=utc_now() + shift, model="gpt-4o", operation="llm_call",
                input_tokens=self.rng.randint(0, 60), output_tokens=self.rng.randint(0, 30),
                counted_by="provider",
            )
        )  # fmt: skip

    async def _past(self) -> None:
        await self._used(-timedelta(days=2, minutes=self.rng.randint(0, 600)))

    async def _future(self) -> None:
        await self._used(timedelta(hours=1))  # beyond the clock skew allowed: counted now

    async def _cost(self) -> None:
        session, account = self._session()
        await self.quota.emit(
            ApiCost(
                session_id=session, source=self.source, account=account, occurred_at=utc_now(),
                api="openai", model="gpt-4o", input_tokens=10, output_tokens=5,
                cost_usd=Decimal(self.rng.randint(1, 500)) / 10_000, price_source="bench",
            )
        )  # fmt: skip

    async def _budget(self) -> None:
        # Budgets grow with the run (as usage does), so that a long run keeps deciding
        # near its limits instead of refusing everything once the first ones are spent.
        elapsed = time.time() - self.started
        grown = int(elapsed * 150)
        limit = self.rng.randint(1_500, 6_000) + grown
        usd = usd_limit(self.rng, elapsed)
        if self.nodes and self.rng.random() < 0.3:
            node = self.rng.choice(self.nodes)
            await self.quota.emit(node_budget(node, limit + 2 * grown, self.source, usd))
            return
        session, account = self._session()
        await self.quota.emit(session_budget(session, account, limit, self.source, usd))

    async def _duplicate(self) -> None:
        if self.recorder.sent:
            await self.quota.emitter.emit(self.rng.choice(self.recorder.sent))

    async def _mcp(self) -> None:
        session, account = self._session()
        words = " ".join(self.rng.choice(_WORDS) for _ in range(self.rng.randint(1, 40)))
        failing = self.rng.random() < 0.1

        async def tool() -> str:
            await asyncio.sleep(self.rng.random() * 0.05)
            if failing:
                raise _ToolFailedError("the tool failed")
            return words * self.rng.randint(1, 3)

        await self.meter.meter(
            session, "search", {"query": words}, tool, lambda out: (out, True), account=account
        )

    async def _task(self) -> None:
        session, account = self._session()
        failing = self.rng.random() < 0.1
        usage = {"input_tokens": self.rng.randint(0, 80), "output_tokens": self.rng.randint(0, 40)}

        async def task(prompt: str) -> dict[str, Any]:
            await asyncio.sleep(self.rng.random() * 0.05)
            if failing:
                raise _ToolFailedError("the task failed")
            return {"answer": prompt[::-1], "usage": usage}

        await route_with_token_budget(
            session, task, " ".join(self.rng.choices(_WORDS, k=8)), quota=self.quota,
            estimated_tokens=self.rng.randint(20, 140), account=account, model="gpt-4o",
        )  # fmt: skip

    async def _memory(self) -> None:
        session, account = self._session()
        content = " ".join(self.rng.choices(_WORDS, k=self.rng.randint(1, 30)))
        await track_memory_operation(
            self.rng.choice(["memory.store", "memory.search"]), content,
            session_id=session, quota=self.quota, account=account, model="gpt-4o",
        )  # fmt: skip

    async def _ingest(self) -> None:
        assert self.api is not None
        items: list[bytes] = []
        ids: list[str] = []
        for _ in range(self.rng.randint(1, 4)):
            session, account = self._session()
            event: Event
            if self.rng.random() < 0.3:
                event = ApiCost(
                    session_id=session, source=self.source, account=account,
                    occurred_at=utc_now(), api="openai", model="gpt-4o", input_tokens=10,
                    output_tokens=5, cost_usd=self.rng.randint(1, 400) * PRICE,
                    price_source="bench",
                )  # fmt: skip
            else:
                event = TokenUsed(
                    session_id=session, source=self.source, account=account,
                    occurred_at=utc_now(), model="gpt-4o", operation="ingest",
                    input_tokens=self.rng.randint(0, 60), output_tokens=self.rng.randint(0, 30),
                    counted_by="provider",
                )  # fmt: skip
            raw = encode(event)
            if self.rng.random() < 0.1:  # invalid: the API must answer it and never send it
                payload = json.loads(raw)
                payload["input_tokens" if "input_tokens" in payload else "cost_usd"] = -5
                raw = json.dumps(payload).encode()
            items.append(raw)
            ids.append(str(event.event_id))
        response = await self.api.post("/v1/events", content=b"[" + b",".join(items) + b"]")
        if response.status_code != 200:
            raise IntegrationError(f"ingest answered {response.status_code}: {response.text}")
        for result in response.json()["results"]:
            event_id = ids[result["index"]]
            if result["status"] == "accepted":
                self.recorder.line({"k": "h", "id": event_id, "o": result["delivery"]})
            else:
                self.recorder.line({"k": "x", "id": event_id})

    async def _http_reserve(self) -> None:
        assert self.api is not None
        session, account = self._session()
        tokens = self.rng.randint(10, 150)
        body: dict[str, Any] = {
            "session_id": session, "tokens": tokens, "ttl": self.rng.choice([1.0, 3.0, 20.0]),
            "mode": self.rng.choice(["strict", "strict", "optimistic"]),
        }  # fmt: skip
        if account is not None:
            body["account"] = account
        if self.rng.random() < PRICED:
            body["model"] = "gpt-4o"  # priced by the API (genai-prices): held in USD
        answer = await self.api.post("/v1/reservations", json=body)
        if answer.status_code in (409, 429):
            raise _RefusedError(answer.text)
        if answer.status_code != 201:
            raise IntegrationError(f"reserve answered {answer.status_code}: {answer.text}")
        rid = answer.json()["reservation_id"]
        await asyncio.sleep(self.rng.random() * 0.1)  # the call
        fate = self.rng.random()
        if fate < 0.6:
            inp = self.rng.randint(0, tokens)
            settle = {"input_tokens": inp, "output_tokens": self.rng.randint(0, tokens - inp + 40),
                      "model": "gpt-4o"}  # fmt: skip
            closed = await self.api.post(f"/v1/reservations/{rid}/settle", json=settle)
        elif fate < 0.85:
            closed = await self.api.post(f"/v1/reservations/{rid}/release")
        else:
            return  # left to expire
        if closed.status_code not in (200, 409):  # 409: expired before it was settled
            raise IntegrationError(f"closing answered {closed.status_code}: {closed.text}")

    async def _poison(self) -> None:
        session, _ = self._session()
        value = f"not an event {self.rng.getrandbits(64):016x} {{".encode()
        self.recorder.line({"k": "p", "v": value.hex()})
        try:
            await asyncio.wait_for(
                self.poison_producer.send_and_wait(self.topic, value, key=session.encode()), 5
            )
        except (KafkaError, OSError) as exc:
            raise IntegrationError(f"poison not sent: {exc}") from None
        self.recorder.line({"k": "pa", "v": value.hex()})


_WORDS = ("budget", "token", "agent", "tool", "reserve", "ledger", "replay", "kafka", "naïve",
          "数据", "🙂", "settle")  # fmt: skip


def usd_limit(rng: random.Random, elapsed: float) -> Decimal | None:
    """A total USD limit for a budget (or none, for about half of them), growing with
    the run like the token limits; one in ten is tight (a few priced reservations), so
    that even a short run meets USD refusals however its faults fall."""
    draw = rng.random()
    if draw < 0.5:
        return None
    if draw < 0.6:
        return Decimal(rng.randint(2, 10)) / 1_000
    return (Decimal(rng.randint(40, 400)) + Decimal(int(elapsed * 8))) / 1_000


def session_budget(
    session: str, account: str | None, limit: int, source: Source, usd: Decimal | None = None
) -> BudgetSet:
    """The campaign's budget of a session: every token window `limit` (so the hard one
    binds), and a total USD limit `usd` when given."""
    return BudgetSet(
        session_id=session, account=account, source=source, daily_limit=limit,
        monthly_limit=limit, hard_limit=limit, total_usd_limit=usd,
        warning_threshold=Decimal("0.8"), critical_threshold=Decimal("0.95"),
    )  # fmt: skip


def node_budget(account: str, limit: int, source: Source, usd: Decimal | None = None) -> BudgetSet:
    """The campaign's budget of a tree node: every token window `limit`, total USD `usd`."""
    return BudgetSet(
        session_id="*", account=account, target="account", source=source,
        daily_limit=limit, monthly_limit=limit, hard_limit=limit, total_usd_limit=usd,
        warning_threshold=Decimal("0.8"), critical_threshold=Decimal("0.95"),
    )  # fmt: skip


async def run(args: argparse.Namespace) -> None:
    plan = json.loads(Path(args.plan).read_text())  # noqa: ASYNC240 - before anything runs
    settings = Settings()
    source = Source(component="sdk", name=f"fault-load-{args.index}")
    recorder = Recorder(Path(args.records))
    quota = TokenQuota(settings, source=source)
    recorder.wrap(quota.emitter)
    poison = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all")
    api = httpx.AsyncClient(base_url=args.api, timeout=15) if args.api else None
    try:
        while True:  # PostgreSQL or the broker may be away (a fault) when it starts
            try:
                await quota.start()
                await poison.start()
                break
            except (IntegrationError, KafkaError, OSError):
                if time.time() > args.until + 300:
                    raise
                await asyncio.sleep(0.5)
        callers = [
            _Caller(quota, recorder, poison, plan,
                    random.Random(f"{args.seed}/{args.index}/{args.restart}/{i}"), source,
                    args.role, api)
            for i in range(CALLERS)
        ]  # fmt: skip
        await asyncio.gather(*(caller.run(args.until) for caller in callers))
        await quota.emitter.flush(timeout=300)  # the spool too
        counts: dict[str, int] = {}
        for caller in callers:
            for op, n in caller.counts.items():
                counts[op] = counts.get(op, 0) + n
        recorder.line({"k": "done", "counts": counts})
    finally:
        with contextlib.suppress(Exception):
            await poison.stop()
        if api is not None:
            await api.aclose()
        await quota.close()
        recorder.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--until", type=float, required=True, help="epoch seconds")
    parser.add_argument("--plan", required=True)
    parser.add_argument("--records", required=True)
    parser.add_argument("--restart", type=int, default=0)
    parser.add_argument("--role", choices=sorted(ROLES), default="sdk")
    parser.add_argument("--api", help="the HTTP API's URL (role http)")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
