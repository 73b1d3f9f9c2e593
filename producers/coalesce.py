"""One look-up for many concurrent callers (group commit for reads).

While a look-up is running, the keys that other callers ask for gather; the next look-up
takes all of them at once. A lone caller is looked up at once, on its own; a hundred
concurrent reservations make a few queries instead of a hundred, each of which would
wait for one of the pool's connections.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Generic, TypeVar

from tokenquota.errors import IntegrationError

__all__ = ["Coalescer"]

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


class Coalescer(Generic[_K, _V]):
    """`get(key)` through `lookup(keys)`, one look-up at a time, each for every key asked
    meanwhile (at most `most`). A look-up that raises raises in each of its callers."""

    def __init__(
        self, lookup: Callable[[list[_K]], Awaitable[Mapping[_K, _V]]], most: int = 1000
    ) -> None:
        self._lookup = lookup
        self._most = most
        self._asked: dict[_K, list[asyncio.Future[_V]]] = {}
        self._runner: asyncio.Task[None] | None = None

    async def get(self, key: _K) -> _V:
        """The value of `key`, from the next look-up."""
        future: asyncio.Future[_V] = asyncio.get_running_loop().create_future()
        self._asked.setdefault(key, []).append(future)
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run(), name="tokenquota-coalescer")
        return await future

    def close(self) -> None:
        """Stop looking up; callers still waiting get IntegrationError."""
        if self._runner is not None:
            self._runner.cancel()
        self._fail(IntegrationError("the client closed before the look-up was made"))

    async def _run(self) -> None:
        try:
            while self._asked:
                keys = list(self._asked)[: self._most]
                waiting = {key: self._asked.pop(key) for key in keys}
                try:
                    found = await self._lookup(keys)
                except Exception as exc:  # every caller of this look-up gets it
                    for futures in waiting.values():
                        _reject(futures, exc)
                    continue
                except BaseException:  # cancelled: nobody may wait forever
                    self._asked = {**waiting, **self._asked}
                    raise
                for key, futures in waiting.items():
                    if key in found:
                        _resolve(futures, found[key])
                    else:
                        _reject(futures, KeyError(key))
        finally:
            self._fail(IntegrationError("the look-up was cancelled"))

    def _fail(self, exc: BaseException) -> None:
        asked, self._asked = self._asked, {}
        for futures in asked.values():
            _reject(futures, exc)


def _resolve(futures: list[asyncio.Future[_V]], value: _V) -> None:
    for future in futures:
        if not future.done():  # done: its caller was cancelled
            future.set_result(value)


def _reject(futures: list[asyncio.Future[_V]], exc: BaseException) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(exc)
