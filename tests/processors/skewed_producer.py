"""A producer process for the log-clock test: strict reservations, each settled in full,
from a client whose clock is off by `--skew` seconds (injected; the machine's is not
touched). Prints what it was granted and refused as JSON.

    python tests/processors/skewed_producer.py --session S --name N --skew 90000 \
        --count 60 --tokens 100 [--first-use 1]

It starts racing when a line arrives on stdin, so that two of them start at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import datetime, timedelta

from tokenquota import TokenQuotaExceededError, load_settings
from tokenquota.producers import TokenQuota
from tokenquota.schemas import Source, TokenUsed, utc_now


async def run(args: argparse.Namespace) -> dict[str, int]:
    skew = timedelta(seconds=args.skew)

    def clock() -> datetime:
        return utc_now() + skew

    source = Source(component="sdk", name=args.name)
    counts = {"accepted": 0, "refused": 0}
    async with TokenQuota(load_settings(), source=source, clock=clock) as quota:
        if args.first_use:
            # The opener: usage dated ahead by this client's clock.
            await quota.emit(
                TokenUsed(
                    session_id=args.session,
                    source=source,
                    occurred_at=clock(),
                    model="gpt-4o",
                    input_tokens=args.first_use,
                    output_tokens=0,
                    operation="first",
                    counted_by="provider",
                )
            )
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        turns = asyncio.Semaphore(args.concurrency)

        async def one() -> None:
            async with turns:
                try:
                    held = await quota.reserve(args.session, args.tokens)
                except TokenQuotaExceededError:
                    counts["refused"] += 1
                    return
                counts["accepted"] += 1
                await held.settle(args.tokens, 0, "gpt-4o", operation="race")

        await asyncio.gather(*(one() for _ in range(args.count)))
        await quota.emitter.flush(30)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--session", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--skew", type=float, default=0.0)
    parser.add_argument("--count", type=int, default=60)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--first-use", type=int, default=0)
    print(json.dumps(asyncio.run(run(parser.parse_args()))), flush=True)


if __name__ == "__main__":
    main()
