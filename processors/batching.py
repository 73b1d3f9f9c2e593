"""How the worker cuts batches: fetches taken as they arrive, decoded ahead, and applied
all together once the transaction before them has committed (group commit)."""

from __future__ import annotations

import asyncio
from collections.abc import Sized
from typing import Generic, TypeVar

__all__ = ["Backlog", "take_ready"]

_T = TypeVar("_T")
_F = TypeVar("_F", bound=Sized)


async def take_ready(queue: asyncio.Queue[_F], most: int, linger: float) -> list[_F]:
    """Wait for one fetch, then take the fetches queued behind it while fewer than `most`
    items are taken (a fetch is never split, so a batch may exceed `most` by one fetch).
    The fetches taken, in order.

    With `linger` > 0, a batch that is not full waits that long once for more fetches.
    """
    fetches = [await queue.get()]
    size = len(fetches[0])
    if linger > 0 and size < most:
        await asyncio.sleep(linger)
    while size < most and not queue.empty():
        fetches.append(queue.get_nowait())
        size += len(fetches[-1])
    return fetches


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
