"""The HTTP API under load: event ingest and strict reservations, beside the direct calls.

`tokenquota api` runs as its own process (uvicorn, as in production) on the benchmark's
servers; the clients run in this process (one connection per concurrent caller).

- Ingest: the same TokenUsed events sent as JSON arrays of 500 to `POST /v1/events`
  (every answer checked: all accepted and acked by the broker), beside the bare
  baseline, `Emitter.emit_many` called with the same chunks of 500 in this process.
  The worker is not running yet, so both sides have the machine to themselves.
- Reservations: concurrent callers, one session each, each reserving 10 tokens (strict)
  with `POST /v1/reservations` and releasing them, beside the same callers calling
  `TokenQuota.reserve()` and `release()` directly. The worker runs (it decides). The
  target is read on callers that never pause (the machine saturated), sending through
  a minimal HTTP/1.1 client (benchmarks/http_client.py): agents call the API from other
  machines, and here the load generator's CPU is taken from what it measures; the same
  callers through aiohttp are the row below it. The HTTP callers start within the first
  `--ramp` seconds (0.1): started at one instant, the first round is one burst of 100
  simultaneous requests that no later round has (`--ramp 0` measures it). A row has the
  HTTP callers pausing about `--think` seconds between rounds, as agents do while the
  model answers. A last table has each process's CPU time per round.

Run: .venv/bin/python -m benchmarks.api [--events N] [--callers C] [--rounds R] [--think S]
Starts an embedded broker and PostgreSQL unless KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL
are set; `tokenquota api` and `tokenquota worker` are started in any case.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from urllib.parse import urlsplit

import aiohttp
from rich.console import Console
from rich.table import Table

from benchmarks.cpu import CpuMeter
from benchmarks.http_client import HttpConnection
from benchmarks.report import percentile_ms
from benchmarks.servers import default_partitions, pipeline, settings_env
from benchmarks.workload import wait_applied
from tokenquota.config import ReservationSettings, Settings
from tokenquota.embedded import ApiProcess, WorkerProcess, free_port
from tokenquota.gc_settings import bulk_gc
from tokenquota.kafka_probe import partition_highwaters
from tokenquota.producers import Emitter, TokenQuota
from tokenquota.projections import connect
from tokenquota.schemas import BudgetSet, Event, Source, TokenUsed, encode

SOURCE = Source(component="sdk", name="bench")
TARGET_ROW = "POST /v1/reservations (strict)"
INSIDE_ROW = "  the same, inside the API (mean, its histogram)"
AIOHTTP_ROW = "  the same, from aiohttp (a heavier load generator)"
DIRECT_ROW = "TokenQuota.reserve() (strict, direct)"
PACED_ROW = "POST /v1/reservations, callers pausing ~{think:g} s between rounds"
BATCH = 500
#: The issue's targets.
INGEST_EVENTS_PER_S = 10_000
RESERVE_P99_MS = 150.0


def _client(url: str, connections: int) -> aiohttp.ClientSession:
    """An HTTP client of `connections` keep-alive connections. aiohttp rather than httpx:
    httpx's pool costs more CPU per request than the API itself at 100 callers, and the
    load generator shares the machine's two cores with what it measures."""
    return aiohttp.ClientSession(
        base_url=url,
        connector=aiohttp.TCPConnector(limit=connections),
        timeout=aiohttp.ClientTimeout(total=120),
    )


def usage_events(count: int, sessions: int) -> list[Event]:
    """`count` TokenUsed events round-robin over `sessions` sessions."""
    return [
        TokenUsed(
            session_id=f"ingest-{i % sessions}",
            source=SOURCE,
            model="gpt-4o",
            input_tokens=i % 4000,
            output_tokens=i % 700,
            operation="chat",
            counted_by="provider",
        )
        for i in range(count)
    ]


def budget(session: str) -> BudgetSet:
    """Limits the benchmark never reaches."""
    return BudgetSet(
        session_id=session, source=SOURCE, daily_limit=10**9, monthly_limit=10**9,
        hard_limit=10**9, warning_threshold=Decimal("0.8"), critical_threshold=Decimal("0.95"),
    )  # fmt: skip


async def ingest_http(client: aiohttp.ClientSession, chunks: list[list[Event]]) -> float:
    """Seconds to POST every chunk (bodies encoded beforehand), checking each answer."""
    bodies = [b"[" + b",".join(encode(event) for event in chunk) + b"]" for chunk in chunks]
    headers = {"content-type": "application/json"}
    start = time.perf_counter()
    for body, chunk in zip(bodies, chunks, strict=True):
        async with client.post("/v1/events", data=body, headers=headers) as response:
            response.raise_for_status()
            answer = await response.json()
        if answer["accepted"] != len(chunk) or any(
            r["delivery"] != "acked" for r in answer["results"]
        ):
            raise RuntimeError(f"POST /v1/events did not ack every event: {answer}")
    return time.perf_counter() - start


async def ingest_direct(settings: Settings, chunks: list[list[Event]]) -> float:
    """Seconds for Emitter.emit_many over the same chunks."""
    spool = settings.data_dir / "bench-spool"
    async with Emitter(settings.kafka, settings.emitter, spool) as emitter:
        await emitter.emit_many(chunks[0][:10])  # connected and warm, as the API's is
        start = time.perf_counter()
        for chunk in chunks:
            deliveries = await emitter.emit_many(chunk)
            if any(d != "acked" for d in deliveries):
                raise RuntimeError("the Emitter spooled events: the broker did not ack")
        return time.perf_counter() - start


#: POST a JSON body to a path: (status, response body).
Post = Callable[[str, bytes], Awaitable[tuple[int, bytes]]]
_JSON = {"content-type": "application/json"}


def aiohttp_post(client: aiohttp.ClientSession) -> Post:
    """`Post` through an aiohttp session."""

    async def post(path: str, body: bytes) -> tuple[int, bytes]:
        async with client.post(path, data=body, headers=_JSON) as response:
            return response.status, await response.read()

    return post


async def reserve_http(
    post: Post, session: str, rounds: int, think: float = 0.0, ramp: float = 0.0
) -> list[float]:
    """Latency of each strict reservation over HTTP (each released after). The caller
    starts after a random 0 to `ramp` seconds; with `think`, it pauses a random 0 to 2 x
    `think` seconds after each round, as an agent waits for the model it reserved for
    (both seeded by the session: the same run each time)."""
    pauses = random.Random(session)
    times = []
    body = json.dumps({"session_id": session, "tokens": 10, "mode": "strict"}).encode()
    if ramp:
        await asyncio.sleep(pauses.uniform(0, ramp))
    for _ in range(rounds):
        start = time.perf_counter()
        status, answer = await post("/v1/reservations", body)
        times.append(time.perf_counter() - start)
        if status != 201:
            raise RuntimeError(f"reservation refused: {status} {answer!r}")
        reservation = json.loads(answer)["reservation_id"]
        status, answer = await post(f"/v1/reservations/{reservation}/release", b"")
        if status != 200:
            raise RuntimeError(f"release refused: {status} {answer!r}")
        if think:
            await asyncio.sleep(pauses.uniform(0, 2 * think))
    return times


async def reserve_direct(
    quota: TokenQuota, session: str, rounds: int, ramp: float = 0.0
) -> list[float]:
    """Latency of each strict reserve() (each released after), starting as reserve_http."""
    times = []
    if ramp:
        await asyncio.sleep(random.Random(session).uniform(0, ramp))
    for _ in range(rounds):
        start = time.perf_counter()
        held = await quota.reserve(session, 10, mode="strict")
        times.append(time.perf_counter() - start)
        await held.release()
    return times


async def _server_seconds(client: aiohttp.ClientSession) -> tuple[float, int]:
    """(sum of seconds, count) of the API's granted reservations, from its /metrics."""
    async with client.get("/metrics") as response:
        text = await response.text()
    route = 'method="POST",route="/v1/reservations",status="201"'
    values = {"sum": 0.0, "count": 0.0}
    for line in text.splitlines():
        for key in values:
            if line.startswith(f"http_request_duration_seconds_{key}{{{route}}}"):
                values[key] = float(line.rsplit(" ", 1)[1])
    return values["sum"], int(values["count"])


async def run(args: argparse.Namespace) -> None:
    events = usage_events(args.events, args.sessions)
    chunks = [events[i : i + BATCH] for i in range(0, len(events), BATCH)]
    callers = [f"caller-{i}" for i in range(args.callers)]
    direct_callers = [f"direct-{i}" for i in range(args.callers)]
    async with pipeline(partitions=args.partitions, worker=False) as (base, servers):
        settings = base.model_copy(
            update={"reservations": ReservationSettings(decision_timeout=60)}
        )
        api = ApiProcess(settings.data_dir.parent / "api.log", port=free_port())
        # The rate limit out of the way: the benchmark is one caller at a time on one key.
        url = api.start(
            {**settings_env(settings), "API_RATE_LIMIT": "1000000", "API_RATE_BURST": "1000000"}
        )
        try:
            async with _client(url, 1) as client:
                direct_s = await ingest_direct(settings, chunks)
                http_s = await ingest_http(client, chunks)
            async with Emitter(
                settings.kafka, settings.emitter, settings.data_dir / "budgets"
            ) as emitter:
                await emitter.emit_many([budget(s) for s in callers + direct_callers])
            worker = WorkerProcess(settings.data_dir.parent / "worker.log")
            worker.start(settings_env(settings))
            meter = CpuMeter({api.pid or 0: "API", worker.pid or 0: "worker"})
            try:
                reserves, cpu = await _reservations(
                    settings, url, callers, direct_callers, args, meter
                )
            finally:
                worker.stop()
        finally:
            api.stop()
    print_tables(args, http_s, direct_s, reserves)
    print_cpu(cpu)
    Console(width=120).print(
        f"conditions: ingest of {args.events:,} TokenUsed events over {args.sessions:,} "
        f"sessions in requests of {BATCH} events, one after the other on one connection, "
        f"each answer parsed and checked (the direct side: emit_many of the same chunks); "
        f"reservations by {args.callers} concurrent callers, one session each, "
        f"{args.rounds} strict reservations of 10 tokens per caller, each released after, "
        f"with no pause but in the last row (a random 0-{2 * args.think:g} s after each "
        f"round) (HTTP: a keep-alive connection per caller, each warmed by one reservation, "
        f"every caller (the direct ones too) starting within the first {args.ramp:g} s "
        f"(seeded random offsets), "
        f"through the minimal client but in the aiohttp row; the rows run in the order "
        f"minimal unpaced, aiohttp unpaced, paced, direct); "
        f"`tokenquota api` (uvicorn, 1 process) and `tokenquota worker` in their own "
        f"processes, the clients in one, with its start-up objects frozen out of garbage "
        f"collection as the API's and the worker's are; "
        f"{args.partitions} partitions; {servers}; python {platform.python_version()}, "
        f"{os.cpu_count()} cores"
    )


async def _reservations(
    settings: Settings,
    url: str,
    callers: list[str],
    direct_callers: list[str],
    args: argparse.Namespace,
    meter: CpuMeter,
) -> tuple[dict[str, list[float]], dict[str, dict[str, float]]]:
    """Latencies per path, and the CPU seconds each process spent per round on it."""
    kafka = settings.kafka
    conn = await connect(settings.database.dsn(), settings.database.schema_name)
    try:
        # Wait until the worker has applied everything so far (ingest and budgets).
        highwater = sum((await partition_highwaters(kafka, kafka.usage_topic)).values())
        await wait_applied(conn, settings.database.schema_name, kafka.usage_topic,
                           highwater, 300, "worker catching up")  # fmt: skip
        # The catch-up wrote a few hundred MB; flushed now, their writeback does not slow
        # the commits of the measured rounds (a 60-75 ms COMMIT was seen without this).
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()
    samples: dict[str, list[float]] = {}
    cpu: dict[str, dict[str, float]] = {}
    rounds = len(callers) * args.rounds

    async def measured(name: str, runs: Awaitable[list[list[float]]]) -> None:
        before = meter.snapshot()
        samples[name] = [t for ts in await runs for t in ts]
        cpu[name] = {role: s / rounds for role, s in meter.used(before, meter.snapshot()).items()}

    def each(posts: list[Post], think: float = 0.0) -> Awaitable[list[list[float]]]:
        return asyncio.gather(
            *(
                reserve_http(p, s, args.rounds, think, args.ramp)
                for p, s in zip(posts, callers, strict=True)
            )
        )

    parts = urlsplit(url)
    # Opened now: a connection idle while the worker caught up would have passed
    # uvicorn's keep-alive timeout.
    lean = [HttpConnection(parts.hostname or "127.0.0.1", parts.port or 80) for _ in callers]
    await asyncio.gather(*(connection.open() for connection in lean))
    try:
        async with (
            TokenQuota(settings, source=SOURCE) as quota,
            _client(url, len(callers)) as client,
        ):
            warm = await quota.reserve(direct_callers[0], 1)
            await warm.release()
            leans: list[Post] = [connection.post for connection in lean]
            aiohttps = [aiohttp_post(client)] * len(callers)
            for posts in (leans, aiohttps):  # every connection warmed by one reservation
                await asyncio.gather(
                    *(reserve_http(p, s, 1) for p, s in zip(posts, callers, strict=True))
                )
            # The load generator shares the machine with what it measures: frozen out of
            # garbage collection as the API and the worker are, so that its own full
            # collections (tens of ms with 100 callers) are not counted as the API's.
            with bulk_gc():
                before = await _server_seconds(client)
                await measured(TARGET_ROW, each(leans))
                after = await _server_seconds(client)
                await measured(AIOHTTP_ROW, each(aiohttps))
                await measured(PACED_ROW.format(think=args.think), each(leans, args.think))
                await measured(
                    DIRECT_ROW,
                    asyncio.gather(
                        *(reserve_direct(quota, s, args.rounds, args.ramp) for s in direct_callers)
                    ),
                )
    finally:
        await asyncio.gather(*(connection.close() for connection in lean))
    server_mean = (after[0] - before[0]) / max(after[1] - before[1], 1)
    samples[INSIDE_ROW] = [server_mean]
    order = (TARGET_ROW, INSIDE_ROW, AIOHTTP_ROW, DIRECT_ROW, PACED_ROW.format(think=args.think))
    return {name: samples[name] for name in order}, cpu


def print_tables(
    args: argparse.Namespace, http_s: float, direct_s: float, reserves: dict[str, list[float]]
) -> None:
    """The ingest table, then the reservations table."""
    console = Console(width=120)
    ingest = Table(title="api: event ingest, events/s")
    for column in ("path", "seconds", "events/s", "ratio", "target", "met"):
        ingest.add_column(column, justify="left" if column == "path" else "right")
    rate = args.events / http_s
    ingest.add_row(
        f"POST /v1/events ({BATCH} per request)", f"{http_s:.1f}", f"{rate:,.0f}",
        f"{direct_s / http_s:.2f}", f">= {INGEST_EVENTS_PER_S:,}/s",
        "yes" if rate >= INGEST_EVENTS_PER_S else "NO",
    )  # fmt: skip
    ingest.add_row(
        f"Emitter.emit_many ({BATCH} per call)", f"{direct_s:.1f}",
        f"{args.events / direct_s:,.0f}", "1.00", "", "",
    )  # fmt: skip
    console.print(ingest)
    table = Table(title=f"api: strict reservations at {args.callers} concurrent callers (ms)")
    for column in ("path", "samples", "p50", "p99", "max", "target", "met"):
        table.add_column(column, justify="left" if column == "path" else "right")
    for name, samples in reserves.items():
        # The target is read strictly: callers that never pause.
        http = name == TARGET_ROW
        p99 = percentile_ms(samples, 0.99)
        table.add_row(
            name, f"{len(samples):,}", f"{percentile_ms(samples, 0.5):.1f}", f"{p99:.1f}",
            f"{max(samples) * 1000:.1f}", f"p99 <= {RESERVE_P99_MS:.0f}" if http else "",
            ("yes" if p99 <= RESERVE_P99_MS else "NO") if http else "",
        )  # fmt: skip
    console.print(table)


def print_cpu(cpu: dict[str, dict[str, float]]) -> None:
    """CPU milliseconds per round (a reservation and its release), per process."""
    roles = ["API", "worker", "load generator", "broker", "PostgreSQL"]
    table = Table(title="api: CPU per round (reserve + release), ms, by process")
    table.add_column("path")
    for role in [*roles, "all"]:
        table.add_column(role, justify="right")
    for name, used in cpu.items():
        cells = [f"{used.get(role, 0.0) * 1000:.2f}" for role in roles]
        table.add_row(name, *cells, f"{sum(used.values()) * 1000:.2f}")
    Console(width=140).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--sessions", type=int, default=1_000)
    parser.add_argument("--callers", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument(
        "--partitions", type=int, default=default_partitions(), help="default: as `tokenquota dev`"
    )
    parser.add_argument(
        "--think", type=float, default=0.5, help="mean pause of the paced callers (seconds)"
    )
    parser.add_argument(
        "--ramp",
        type=float,
        default=0.1,
        help="the HTTP callers start within this many seconds (0: all at one instant)",
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
