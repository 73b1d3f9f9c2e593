"""Memory of the long-running processes under a stream of bad input.

`tokenquota api` and `tokenquota worker` run as their own processes on the benchmark's
servers. Each round sends the API a fixed set of bad requests (bodies that are no JSON,
truncated, invalid UTF-8, nested 100,000 deep, numbers of 400 digits, keys given twice,
arrays of 5,000 invalid events, wrong types, unknown sessions) and writes the same
number of poison messages (no JSON, truncated events, keys given twice, wrong types) to
the usage topic for the worker, plus one good event so the worker is seen to go on. After
each round: every request was answered 4xx, the worker has dead-lettered every poison
message, and the resident memory (VmRSS) of both processes is read. The first rounds warm
caches up; the growth from the middle of the run to its end says whether memory grows
with the bad input (it must not: the target is under 1 KiB per bad input).

Run: .venv/bin/python -m benchmarks.bad_input_memory [--rounds R] [--per-round N]
Starts an embedded broker and PostgreSQL unless KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL
are set.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer
from rich.console import Console
from rich.table import Table

from benchmarks.report import machine
from benchmarks.servers import pipeline, settings_env
from tokenquota.config import Settings
from tokenquota.embedded import ApiProcess, WorkerProcess, free_port
from tokenquota.kafka_probe import partition_highwaters
from tokenquota.projections import connect
from tokenquota.schemas import Source, TokenUsed, encode

__all__ = ["main"]

SOURCE = Source(component="sdk", name="bench")
#: The target: resident memory growth per bad input, from the middle round to the last.
TARGET_BYTES_PER_INPUT = 1024


def rss_bytes(pid: int) -> int:
    """The resident memory of process `pid` (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _used(session: str, tokens: int = 1) -> TokenUsed:
    return TokenUsed(
        session_id=session, source=SOURCE, model="gpt-4o", operation="bench",
        input_tokens=tokens, output_tokens=0, counted_by="provider",
    )  # fmt: skip


def _good(session: str) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(encode(_used(session, 3)))
    return payload


def bad_requests(rng: random.Random) -> list[tuple[str, str, bytes]]:
    """(method, path, body) of requests the API must refuse with a 4xx."""
    event = json.dumps(_good("bad-input")).encode()
    many_invalid = json.dumps([{**_good("bad"), "input_tokens": -1} for _ in range(5_000)])
    requests: list[tuple[str, str, bytes]] = [
        ("POST", "/v1/events", b"not json"),
        ("POST", "/v1/events", b"[" + event[: rng.randint(1, len(event) - 1)]),
        ("POST", "/v1/events", b'[{"session_id": "\xff\xfe"}]'),
        ("POST", "/v1/events", b"[" * 100_000 + b"]" * 100_000),
        ("POST", "/v1/events", b'[{"input_tokens": 1' + b"0" * 400 + b"}]"),
        ("POST", "/v1/events", b"[" + event[:-1] + b', "input_tokens": 5}]'),
        ("POST", "/v1/events", many_invalid.encode()),
        ("POST", "/v1/reservations", b'{"session_id": "x", "tokens": -5, "tokens": 10}'),
        ("POST", "/v1/reservations", b'{"session_id": "x", "tokens": true}'),
        ("POST", "/v1/reservations", b'{"session_id": "' + b"x" * 300 + b'", "tokens": 1}'),
        ("PUT", "/v1/sessions/x/budget", b'{"daily_limit": "a lot"}'),
        ("PUT", "/v1/accounts/a//b/budget", b'{"daily_limit": 1}'),
        ("GET", f"/v1/sessions/unknown-{rng.getrandbits(64):x}", b""),
    ]
    return requests


def poison(rng: random.Random) -> list[bytes]:
    """Messages the worker must dead-letter."""
    event = encode(_used("poison"))
    return [
        b"not json",
        event[: rng.randint(1, len(event) - 1)],
        event[:-1] + b', "input_tokens": 2}',
        json.dumps({**json.loads(event), "input_tokens": "many"}).encode(),
        rng.randbytes(200),
    ]


async def _dead_letters(settings: Settings) -> int:
    ends = await partition_highwaters(settings.kafka, settings.kafka.dlq_topic, timeout=10)
    return sum(ends.values())


async def _applied(settings: Settings, session: str) -> int:
    db = settings.database
    conn = await connect(db.dsn(), db.schema_name)
    try:
        value = await conn.fetchval(
            "SELECT tokens_used_total FROM session_token_budgets WHERE session_id = $1", session
        )
    finally:
        await conn.close()
    return int(value or 0)


async def run(rounds: int, per_round: int) -> None:
    """Send the rounds and print the table."""
    rng = random.Random(7)
    async with pipeline(partitions=4, worker=False) as (settings, servers):
        folder = settings.data_dir.parent
        worker = WorkerProcess(folder / "worker.log")
        api = ApiProcess(folder / "api.log", port=free_port())
        env = {**settings_env(settings), "API_RATE_LIMIT": "1000000", "API_RATE_BURST": "1000000"}
        worker_pid = worker.start(env)
        url = await asyncio.to_thread(api.start, env)
        api_pid = api.pid
        assert api_pid is not None
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
        await producer.start()
        rows: list[tuple[int, int, int, int, float]] = []
        sent = 0
        try:
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                for index in range(rounds):
                    started = time.perf_counter()
                    requests = bad_requests(rng)
                    for i in range(per_round):
                        method, path, body = requests[i % len(requests)]
                        answer = await client.request(method, path, content=body)
                        if not 400 <= answer.status_code < 500 and not (
                            path == "/v1/events" and answer.status_code == 200
                        ):
                            raise AssertionError(f"{method} {path}: {answer.status_code}")
                        if answer.status_code == 200 and answer.json()["accepted"]:
                            raise AssertionError(f"{path} accepted a bad event")
                    messages = poison(rng)
                    for i in range(per_round):
                        await producer.send(settings.kafka.usage_topic, messages[i % 5])
                    await producer.send_and_wait(
                        settings.kafka.usage_topic,
                        encode(_used("good")),
                    )
                    poisoned = per_round * (index + 1)
                    sent += 2 * per_round
                    deadline = time.monotonic() + 120
                    while (await _dead_letters(settings) < poisoned) or (
                        await _applied(settings, "good") < index + 1
                    ):
                        if time.monotonic() > deadline:
                            raise TimeoutError("the worker did not dead-letter the round")
                        await asyncio.sleep(0.2)
                    rows.append(
                        (index + 1, sent, rss_bytes(api_pid), rss_bytes(worker_pid),
                         time.perf_counter() - started)
                    )  # fmt: skip
        finally:
            await producer.stop()
            api.stop()
            worker.stop()
    _print(rows, per_round, servers)


def _print(rows: list[tuple[int, int, int, int, float]], per_round: int, servers: str) -> None:
    table = Table(title="resident memory under bad input (per process)")
    for column in ("round", "bad inputs so far", "API MiB", "worker MiB", "seconds"):
        table.add_column(column, justify="right")
    for index, sent, api, worker, seconds in rows:
        table.add_row(str(index), f"{sent:,}", f"{api / 2**20:.1f}", f"{worker / 2**20:.1f}",
                      f"{seconds:.1f}")  # fmt: skip
    console = Console()
    console.print(table)
    middle, last = rows[len(rows) // 2], rows[-1]
    inputs = last[1] - middle[1]
    for name, at in (("API", 2), ("worker", 3)):
        grown = last[at] - middle[at]
        per_input = grown / inputs if inputs else 0.0
        verdict = "met" if per_input < TARGET_BYTES_PER_INPUT else "NOT met"
        console.print(
            f"{name}: {grown / 2**20:+.1f} MiB from round {middle[0]} to {last[0]} "
            f"({inputs:,} bad inputs): {per_input:,.0f} bytes each; target < "
            f"{TARGET_BYTES_PER_INPUT} bytes: {verdict}"
        )
    console.print(f"conditions: {per_round} bad requests and {per_round} poison messages a "
                  f"round; {servers}; {machine()}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=500)
    args = parser.parse_args()
    asyncio.run(run(args.rounds, args.per_round))


if __name__ == "__main__":
    main()
