"""Count tokens offline with tiktoken's encodings: texts, batches and chat messages.

Run: .venv/bin/python examples/count_tokens.py   (no stack needed)
"""

from __future__ import annotations

import asyncio

from tokenquota.producers import token_counter


async def main() -> None:
    text = "Budgets hold when every token is counted once."
    for model in ("gpt-4o", "gpt-4", "claude-sonnet-4-5"):
        count = await token_counter.count_tokens(text, model=model)
        print(f"{model:>18}: {int(count)} tokens ({count.counted_by})")
    batch = await token_counter.count_tokens_batch(["one", "two words", "three more words"])
    print("batch:", [int(c) for c in batch])
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "How many tokens is this chat?"},
    ]
    print("chat prompt:", int(token_counter.count_messages(messages, "gpt-4o")), "tokens")


if __name__ == "__main__":
    asyncio.run(main())
