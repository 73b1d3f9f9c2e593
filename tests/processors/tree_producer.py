"""A producer process for the budget tree concurrency test: strict reservations of the
sessions of one budget tree, as a plan (a JSON file) lists them, up to `--concurrency`
in flight at once; each granted one is then settled with the plan's usage (below or
above what it reserved), released, or kept, as the plan says. Prints what was granted
and who refused the rest as JSON.

    python tests/processors/tree_producer.py --plan plan.json --name N [--concurrency 25]

A plan entry: {"session", "account", "tokens", "close": "settle" | "release" | "keep",
"input", "output", "model"}. It starts racing when a line arrives on stdin, so that
several of them start at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from tokenquota import TokenQuotaExceededError, load_settings
from tokenquota.producers import TokenQuota
from tokenquota.schemas import Source

#: How refusals by the session's own budget are counted (they name no node).
BY_SESSION = "session"


async def run(args: argparse.Namespace, plan: list[dict[str, Any]]) -> dict[str, Any]:
    accepted: list[str] = []
    refused: Counter[str] = Counter()
    closed = 0
    source = Source(component="sdk", name=args.name)
    async with TokenQuota(load_settings(), source=source) as quota:
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        turns = asyncio.Semaphore(args.concurrency)

        async def one(step: dict[str, Any]) -> None:
            nonlocal closed
            async with turns:
                try:
                    held = await quota.reserve(
                        step["session"], step["tokens"], account=step["account"], ttl=args.ttl
                    )
                except TokenQuotaExceededError as refusal:
                    refused[refusal.refused_by or BY_SESSION] += 1
                    return
                accepted.append(str(held.reservation_id))
                if step["close"] == "settle":
                    await held.settle(step["input"], step["output"], step["model"])
                elif step["close"] == "release":
                    await held.release()
                else:
                    return  # kept: it holds its tokens until it expires
                closed += 1

        await asyncio.gather(*(one(step) for step in plan))
        await quota.emitter.flush(30)
    return {"accepted": accepted, "refused": dict(refused), "closed": closed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--plan", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--concurrency", type=int, default=25)
    parser.add_argument("--ttl", type=float, default=600.0)
    args = parser.parse_args()
    plan = json.loads(Path(args.plan).read_text())
    print(json.dumps(asyncio.run(run(args, plan))), flush=True)


if __name__ == "__main__":
    main()
