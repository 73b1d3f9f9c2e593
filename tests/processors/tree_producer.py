"""A producer process for the budget tree concurrency test: strict reservations of the
sessions of one budget tree, as a plan (a JSON file) lists them, up to `--concurrency`
in flight at once, priced when the plan gives a price; each granted one is then settled
with the plan's usage (below or above what it reserved) and, with a cost, billed (an
ApiCost naming it), or released, or kept, as the plan says. Prints as JSON what was
granted, who refused the rest and with which error, and how many events closed them.

    python tests/processors/tree_producer.py --plan plan.json --name N [--concurrency 25]

A plan entry: {"session", "account", "tokens", "close": "settle" | "release" | "keep",
"input", "output", "model"}, and for a priced one "usd" and "price_source" (its price)
and optionally "cost" (what its settled call is billed, as a string). It starts racing
when a line arrives on stdin, so that several of them start at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from decimal import Decimal
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
    errors: Counter[str] = Counter()
    sent: Counter[str] = Counter()  # TokenUsed and ApiCost events that closed grants
    source = Source(component="sdk", name=args.name)
    async with TokenQuota(load_settings(), source=source) as quota:
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        turns = asyncio.Semaphore(args.concurrency)

        async def one(step: dict[str, Any]) -> None:
            async with turns:
                try:
                    held = await quota.reserve(
                        step["session"],
                        step["tokens"],
                        account=step["account"],
                        ttl=args.ttl,
                        reserved_usd=Decimal(step["usd"]) if "usd" in step else None,
                        price_source=step.get("price_source"),
                    )
                except TokenQuotaExceededError as refusal:
                    refused[refusal.refused_by or BY_SESSION] += 1
                    errors[type(refusal).__name__] += 1
                    return
                accepted.append(str(held.reservation_id))
                if step["close"] == "keep":
                    return  # it holds its tokens (and dollars) until it expires
                if step["close"] == "release":
                    await held.release()
                    sent["TokenUsed"] += 1
                    return
                await held.settle(step["input"], step["output"], step["model"])
                sent["TokenUsed"] += 1
                if "cost" in step:  # billed; without a cost its dollars stay held
                    await held.cost(
                        Decimal(step["cost"]),
                        step["price_source"],
                        api="chat",
                        model=step["model"],
                        input_tokens=step["input"],
                        output_tokens=step["output"],
                    )
                    sent["ApiCost"] += 1

        await asyncio.gather(*(one(step) for step in plan))
        await quota.emitter.flush(30)
    return {
        "accepted": accepted,
        "refused": dict(refused),
        "errors": dict(errors),
        "sent": dict(sent),
    }


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
