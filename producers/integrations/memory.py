"""Token accounting for memory stores (vector stores, note stores, agent memories).

`integrate_with_memory(storage)` wraps any async store with `store` / `retrieve` /
`search` / `delete`; every operation then emits a TokenUsed event named
`memory.<operation>` whose input tokens are the stored content and the query and
whose output tokens are the results returned. `track_memory_operation` records one
operation by hand. The events name the session's budget tree account: `account=`, else
the `session_scope`'s at the time of the operation.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from tokenquota.schemas import CountedBy, Source, TokenUsed

from ..defaults import current_account, current_session, get_quota
from ..reservations import TokenQuota
from ..token_counter import TokenCounter, payload_text, token_counter

__all__ = [
    "MemoryStorage",
    "TokenAwareMemoryStorage",
    "integrate_with_memory",
    "track_memory_operation",
]

log = logging.getLogger("tokenquota.memory")

SOURCE = Source(component="memory", name="tokenquota")
_QUERY_KEYS = ("query", "text", "q", "query_text")
_CONTENT_KEYS = ("content", "memory", "text", "document")


@runtime_checkable
class MemoryStorage(Protocol):
    """An async memory store. The wrapper passes arguments through unchanged."""

    async def store(self, *args: Any, **kwargs: Any) -> Any:
        """Store a memory."""
        ...

    async def retrieve(self, *args: Any, **kwargs: Any) -> Any:
        """Retrieve memories for a query."""
        ...

    async def search(self, *args: Any, **kwargs: Any) -> Any:
        """Search memories."""
        ...

    async def delete(self, *args: Any, **kwargs: Any) -> Any:
        """Delete a memory."""
        ...


def _text_of(value: Any) -> str:
    """A memory's text: its `content` attribute or key when it has one, else the value."""
    if isinstance(value, Mapping):
        for key in _CONTENT_KEYS:
            if isinstance(value.get(key), str):
                return str(value[key])
    content = getattr(value, "content", None)
    if isinstance(content, str):
        return content
    return payload_text(value)


def _argument(args: tuple[Any, ...], kwargs: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if key in kwargs:
            return kwargs[key]
    return args[0] if args else None


class TokenAwareMemoryStorage:
    """A memory store whose every operation is accounted for (other attributes pass through)."""

    def __init__(
        self,
        storage: MemoryStorage,
        *,
        session_id: str | None = None,
        quota: TokenQuota | None = None,
        counter: TokenCounter | None = None,
        model: str | None = None,
        account: str | None = None,
    ) -> None:
        self.storage = storage
        self.session_id = session_id
        # Checked now; None: the `session_scope`'s at each operation.
        self.account = current_account(account) if account is not None else None
        self._quota = quota
        self._counter = counter or token_counter
        self._model = model

    async def store(self, *args: Any, **kwargs: Any) -> Any:
        """`storage.store(...)`; counts the stored content."""
        content = _text_of(_argument(args, kwargs, _CONTENT_KEYS))
        result = await self.storage.store(*args, **kwargs)
        await self._account("store", content, "", None)
        return result

    async def retrieve(self, *args: Any, **kwargs: Any) -> Any:
        """`storage.retrieve(...)`; counts the query and the memories returned."""
        return await self._read("retrieve", args, kwargs)

    async def search(self, *args: Any, **kwargs: Any) -> Any:
        """`storage.search(...)`; counts the query and the memories returned."""
        return await self._read("search", args, kwargs)

    async def delete(self, *args: Any, **kwargs: Any) -> Any:
        """`storage.delete(...)`; counts the key or content named."""
        target = _argument(args, kwargs, ("content_hash", "memory_id", "id", *_CONTENT_KEYS))
        result = await self.storage.delete(*args, **kwargs)
        await self._account("delete", _text_of(target) if target is not None else "", "", None)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.storage, name)

    async def _read(self, operation: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        query = _argument(args, kwargs, _QUERY_KEYS)
        method = getattr(self.storage, operation)
        result = await method(*args, **kwargs)
        results = result if isinstance(result, list | tuple) else [result]
        await self._account(
            operation,
            "",
            _text_of(query) if query is not None else "",
            [_text_of(r) for r in results],
        )
        return result

    async def _account(
        self, operation: str, content: str, query: str, results: list[str] | None
    ) -> None:
        counts = await self._counter.count_tokens_batch(
            [content, query, *(results or [])], self._model
        )
        input_tokens = int(counts[0]) + int(counts[1])
        output_tokens = sum(int(c) for c in counts[2:])
        by: CountedBy = "tiktoken" if all(c.exact for c in counts) else "estimate"
        log.debug(
            "memory.%s: content %d, query %d, results %d tokens",
            operation,
            counts[0],
            counts[1],
            output_tokens,
        )
        await _emit(
            operation,
            input_tokens,
            output_tokens,
            by,
            session_id=self.session_id,
            quota=self._quota,
            model=self._model or self._counter.default_model,
            account=self.account,
        )


async def _emit(
    operation: str,
    input_tokens: int,
    output_tokens: int,
    counted_by: CountedBy,
    *,
    session_id: str | None,
    quota: TokenQuota | None,
    model: str,
    account: str | None,
) -> None:
    session = current_session(session_id, what=f"memory operation {operation!r}")
    resolved = current_account(account)
    client = await get_quota(quota, source=SOURCE)
    await client.emit(
        TokenUsed(
            session_id=session,
            source=SOURCE,
            account=resolved,
            model=model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            operation=f"memory.{operation}"[:100],
            counted_by=counted_by,
        )
    )


async def integrate_with_memory(
    storage: MemoryStorage,
    *,
    session_id: str | None = None,
    quota: TokenQuota | None = None,
    model: str | None = None,
    account: str | None = None,
) -> TokenAwareMemoryStorage:
    """Wrap `storage` so its operations are accounted to `session_id` (or `session_scope`)
    under `account`, the session's budget tree node (or the `session_scope`'s)."""
    missing = [op for op in ("store", "retrieve", "search", "delete") if not hasattr(storage, op)]
    if missing:
        raise TypeError(
            f"{type(storage).__name__} is not a memory store: it lacks {', '.join(missing)}"
        )
    return TokenAwareMemoryStorage(
        storage, session_id=session_id, quota=quota, model=model, account=account
    )


async def track_memory_operation(
    operation: str,
    content: str,
    tokens_used: int | None = None,
    *,
    session_id: str | None = None,
    quota: TokenQuota | None = None,
    model: str | None = None,
    account: str | None = None,
) -> int:
    """Record a memory operation by hand; returns the tokens recorded.

    Without `tokens_used`, `content` is counted. A count from `token_counter` keeps its
    label; any other number is recorded as an estimate. `account`: the session's budget
    tree node (default: the `session_scope`'s).
    """
    resolved = current_account(account)
    counted_model = model or token_counter.default_model
    if tokens_used is None:
        tokens_used = await token_counter.count_tokens(content, counted_model)
    if isinstance(tokens_used, bool) or not isinstance(tokens_used, int) or tokens_used < 0:
        raise ValueError(f"tokens_used must be a non-negative integer, got {tokens_used!r}")
    by: CountedBy = getattr(tokens_used, "counted_by", "estimate")
    await _emit(
        operation,
        int(tokens_used),
        0,
        by,
        session_id=session_id,
        quota=quota,
        model=counted_model,
        account=resolved,
    )
    return int(tokens_used)
