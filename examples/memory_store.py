"""Account a memory store's operations: wrap it once, use it as before.

Needs the stack: run `make run`, then, with the addresses it prints,
KAFKA_BOOTSTRAP_SERVERS=... DATABASE_URL=... .venv/bin/python examples/memory_store.py
"""

from __future__ import annotations

import asyncio

from _demo import demo_session, settled

from tokenquota.producers import (
    close_default_quota,
    integrate_with_memory,
    session_scope,
    token_counter,
    track_memory_operation,
)


class ListMemory:
    """Any async store with store / retrieve / search / delete will do."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    async def store(self, content: str) -> bool:
        self.notes.append(content)
        return True

    async def retrieve(self, query: str, n_results: int = 3) -> list[str]:
        return [n for n in self.notes if query in n][:n_results]

    async def search(self, query: str) -> list[str]:
        return [n for n in self.notes if query.lower() in n.lower()]

    async def delete(self, content: str) -> bool:
        self.notes.remove(content)
        return True


async def main() -> None:
    session = await demo_session("memory", 10_000)
    memory = await integrate_with_memory(ListMemory(), session_id=session)
    await memory.store("The budget for March is 300k tokens.")
    print("retrieve ->", await memory.retrieve("budget"))
    with session_scope(session):
        summary = "March budget: 300k."
        tokens = await token_counter.count_tokens(summary)
        await track_memory_operation("consolidate", summary, tokens)
    print(session, "used", await settled(session), "tokens over store, retrieve, consolidate")
    await close_default_quota()


if __name__ == "__main__":
    asyncio.run(main())
