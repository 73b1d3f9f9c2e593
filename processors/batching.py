"""How the worker cuts batches: fetches taken as they arrive, decoded ahead, and applied
all together once the transaction before them has committed (group commit)."""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

__all__ = ["Backlog", "take_ready"]

_T = TypeVar("_T")


async def take_ready(queue: asyncio.Queue[list[_T]], most: int, linger: float) -> list[_T]:
    """Wait for one fetch, then take the fetches queued behind it while fewer than `most`
    items are taken (a fetch is never split, so a batch may exceed `most` by one fetch).

    With `linger` > 0, a batch that is not full waits that long once for more fetches.
    """
    items = list(await queue.get())
    if linger > 0 and len(items) < most:
        await asyncio.sleep(linger)
    while len(items) < most and not queue.empty():
        items.extend(queue.get_nowait())
    return items


class Backlog(Generic[_T]):
    """Decoded batches waiting for the applier, which takes all of them at once.

    Whatever arrived while a transaction ran goes into the next one together, so an
    event waits for at most the transaction in progress and its own, never for a batch
    cut before it arrived. `put` waits while `most` items are already waiting.
    """

    def __init__(self, most: int) -> None:
        self._most = most
        self._waiting: list[_T] = []
        self._size = 0
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    async def put(self, batch: _T, size: int) -> None:
        """Add a batch of `size` items, once there is room."""
        await self._room.wait()
        self._waiting.append(batch)
        self._size += size
        self._arrived.set()
        if self._size >= self._most:
            self._room.clear()

    async def take(self) -> list[_T]:
        """Every waiting batch, in the order put (waits for the first)."""
        await self._arrived.wait()
        batches, self._waiting = self._waiting, []
        self._size = 0
        self._arrived.clear()
        self._room.set()
        return batches
