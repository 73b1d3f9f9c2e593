"""`count_tokens_batch` against bare tiktoken on the same texts, cold and warm cache.

Run: .venv/bin/python -m benchmarks.token_counting [--texts N] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import time
from collections.abc import Coroutine

from rich.console import Console
from rich.table import Table

from tokenquota.producers.encodings import get_encoding
from tokenquota.producers.token_counter import TokenCounter

WORDS = (
    "budget",
    "token",
    "agent",
    "reserve",
    "settle",
    "replay",
    "ledger",
    "session",
    "window",
    "limit",
    "model",
    "prompt",
    "completion",
    "tool",
    "memory",
    "search",
    "store",
    "retrieve",
    "Kafka",
    "PostgreSQL",
    "exact",
    "concurrent",
    "the",
    "a",
    "of",
    "to",
    "and",
    "in",
    "is",
    "that",
    "for",
    "it",
    "with",
    "as",
    "on",
    "be",
    "at",
    "by",
    "this",
    "from",
    "or",
    "an",
    "are",
)


def _texts(count: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for i in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(20, 400))]
        texts.append(f"#{i} " + " ".join(words) + rng.choice([".", "?", "!\n"]))
    return texts


def _timed(work: Coroutine[object, object, object]) -> float:
    start = time.perf_counter()
    asyncio.run(work)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--texts", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", default="gpt-4o")
    args = parser.parse_args()

    texts = _texts(args.texts)
    encoding = get_encoding("o200k_base")
    tokens = sum(len(t) for t in encoding.encode_ordinary_batch(texts))

    def bare() -> float:
        start = time.perf_counter()
        encoding.encode_ordinary_batch(texts)
        return time.perf_counter() - start

    cold, warm, baseline = float("inf"), float("inf"), float("inf")
    for _ in range(args.rounds):
        baseline = min(baseline, bare())
        counter = TokenCounter(cache_size=args.texts)
        cold = min(cold, _timed(counter.count_tokens_batch(texts, args.model)))
        warm = min(warm, _timed(counter.count_tokens_batch(texts, args.model)))

    table = Table(
        title="token counting: count_tokens_batch vs bare tiktoken (tokens/s, best of rounds)"
    )
    for column in ("cache", "tokenquota", "bare tiktoken", "ratio"):
        table.add_column(column, justify="left" if column == "cache" else "right")
    for name, seconds in (("cold", cold), ("warm", warm)):
        table.add_row(
            name,
            f"{tokens / seconds:,.0f}",
            f"{tokens / baseline:,.0f}",
            f"{baseline / seconds:.2f}",
        )
    console = Console()
    console.print(table)
    console.print(
        f"conditions: {args.texts:,} texts, {tokens:,} tokens "
        f"({sum(map(len, texts)) / len(texts):.0f} chars each on average), model {args.model} "
        f"(o200k_base), cache {args.texts:,} entries, {args.rounds} rounds, "
        f"tiktoken's batch encoder on both sides, python {platform.python_version()}, "
        f"{os.cpu_count()} cores"
    )


if __name__ == "__main__":
    main()
