"""Token counting with tiktoken: texts, batches, chat messages and tool payloads.

Counts for OpenAI models equal tiktoken's; for any other model they are an
o200k_base approximation and carry `counted_by="estimate"`. A text's count is
cached by its content: the text itself up to 4,096 characters, a BLAKE2b digest of it
beyond (LRU, `performance.cache_size` entries).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Self

from tokenquota.config import Settings, load_settings
from tokenquota.schemas import CountedBy

from .encodings import EncodingName, encoding_for_model, get_encoding

__all__ = ["DEFAULT_MODEL", "CacheKey", "TokenCounter", "Tokens", "cache_key", "token_counter"]

#: (encoding name, the text itself or a digest of it)
CacheKey = tuple[str, str | bytes]

#: The model assumed when a caller names none.
DEFAULT_MODEL = "gpt-4o"

# The OpenAI chat format's framing, as in OpenAI's cookbook: each message costs three
# tokens beyond its content, a name one more, and every reply is primed with three.
_TOKENS_PER_MESSAGE = 3
_TOKENS_PER_NAME = 1
_REPLY_PRIMING = 3

# Above this many characters the work moves to a thread, off the event loop.
_THREAD_THRESHOLD = 32_768


class Tokens(int):
    """A token count that says how it was obtained (`tiktoken` exact, or `estimate`)."""

    counted_by: CountedBy

    def __new__(cls, value: int, counted_by: CountedBy = "tiktoken") -> Self:
        count = super().__new__(cls, value)
        count.counted_by = counted_by
        return count

    @property
    def exact(self) -> bool:
        """True when the count equals what the model's own tokenizer gives."""
        return self.counted_by != "estimate"

    def __repr__(self) -> str:
        return f"Tokens({int(self)}, counted_by={self.counted_by!r})"


class _LRU:
    """A thread-safe LRU map from (encoding, content digest) to a count."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._data: OrderedDict[CacheKey, int] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: CacheKey) -> int | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def get_many(self, keys: Sequence[CacheKey]) -> list[int | None]:
        with self._lock:  # once for the batch, not once per text
            data = self._data
            values = [data.get(key) for key in keys]
            for key, value in zip(keys, values, strict=True):
                if value is not None:
                    data.move_to_end(key)
            return values

    def put(self, key: CacheKey, value: int) -> None:
        self.put_many([(key, value)])

    def put_many(self, items: Sequence[tuple[CacheKey, int]]) -> None:
        if self.size <= 0:
            return
        with self._lock:
            data = self._data
            for key, value in items:
                data[key] = value
                data.move_to_end(key)
            while len(data) > self.size:
                data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


#: Texts up to this many characters are their own cache key (exact, and no hashing
#: beyond the dict's own); longer ones are keyed by a digest, so the cache holds no copy.
_TEXT_KEY_MAX = 4096


def cache_key(encoding: str, text: str) -> CacheKey:
    """The cache key of `text` under `encoding`."""
    if len(text) <= _TEXT_KEY_MAX:
        return encoding, text
    return encoding, hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def payload_text(value: Any) -> str:
    """The text a tool argument or result is counted as: strings as they are, the rest as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))


class TokenCounter:
    """Counts tokens for a model; caches counts by content hash.

    `cache_size=None` takes `performance.cache_size` from the settings on first use
    (`performance.enable_caching=false` turns the cache off).
    """

    def __init__(self, cache_size: int | None = None, default_model: str = DEFAULT_MODEL) -> None:
        self.default_model = default_model
        self._cache: _LRU | None = None if cache_size is None else _LRU(cache_size)
        self._cache_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenCounter:
        """A counter with the configured cache."""
        performance = settings.performance
        return cls(performance.cache_size if performance.enable_caching else 0)

    @property
    def cache(self) -> _LRU:
        """The count cache (built from the settings on first use)."""
        if self._cache is None:
            with self._cache_lock:
                if self._cache is None:
                    performance = load_settings().performance
                    self._cache = _LRU(performance.cache_size if performance.enable_caching else 0)
        return self._cache

    def _encoding(self, model: str | None) -> tuple[EncodingName, CountedBy]:
        name, exact = encoding_for_model(model or self.default_model)
        return name, "tiktoken" if exact else "estimate"

    def count(self, text: str, model: str | None = None) -> Tokens:
        """Tokens in `text` for `model` (synchronous; prefer `count_tokens` in async code)."""
        name, by = self._encoding(model)
        key = cache_key(name, text)
        cached = self.cache.get(key)
        if cached is None:
            cached = len(get_encoding(name).encode_ordinary(text))
            self.cache.put(key, cached)
        return Tokens(cached, by)

    def count_many(self, texts: Sequence[str], model: str | None = None) -> list[Tokens]:
        """Tokens in each text; texts not cached are encoded in one tiktoken batch."""
        name, by = self._encoding(model)
        cache = self.cache
        keys = [cache_key(name, text) for text in texts]
        counts = cache.get_many(keys)
        missing = [i for i, count in enumerate(counts) if count is None]
        if missing:
            # Lengths at once, so the token lists are gone before anything else is
            # allocated: a GC pass while millions of ids are alive costs a quarter of the time.
            encoding = get_encoding(name)
            lengths = [
                len(ids) for ids in encoding.encode_ordinary_batch([texts[i] for i in missing])
            ]
            for i, length in zip(missing, lengths, strict=True):
                counts[i] = length
            cache.put_many([(keys[i], length) for i, length in zip(missing, lengths, strict=True)])
        return [Tokens(count or 0, by) for count in counts]

    async def count_tokens(self, text: str, model: str | None = None) -> Tokens:
        """Tokens in `text` for `model`; a large text is counted in a thread."""
        if len(text) > _THREAD_THRESHOLD:
            return await asyncio.to_thread(self.count, text, model)
        return self.count(text, model)

    async def count_tokens_batch(
        self, texts: Iterable[str], model: str | None = None
    ) -> list[Tokens]:
        """Tokens in each of `texts`, in order; large batches are counted in a thread."""
        batch = list(texts)
        if sum(len(text) for text in batch) > _THREAD_THRESHOLD:
            return await asyncio.to_thread(self.count_many, batch, model)
        return self.count_many(batch, model)

    def count_messages(
        self, messages: Iterable[Mapping[str, Any]], model: str | None = None
    ) -> Tokens:
        """Prompt tokens of OpenAI-format chat messages, framing included.

        Text content parts, names, tool calls (name and arguments) and tool results are
        counted as text; image and audio parts are not, so a message holding one makes
        the count an estimate.
        """
        _, by = self._encoding(model)
        texts: list[str] = []
        total = _REPLY_PRIMING
        for message in messages:
            total += _TOKENS_PER_MESSAGE
            for key, value in message.items():
                if key == "name":
                    total += _TOKENS_PER_NAME
                    texts.append(str(value))
                elif key in ("role", "content") and isinstance(value, str):
                    texts.append(value)
                elif key == "content" and isinstance(value, list):
                    for part in value:
                        text = part.get("text") if isinstance(part, Mapping) else None
                        if isinstance(text, str):
                            texts.append(text)
                        elif part is not None:
                            by = "estimate"
                elif key == "tool_calls" and isinstance(value, list):
                    for call in value:
                        function = call.get("function", {}) if isinstance(call, Mapping) else {}
                        texts.append(str(function.get("name", "")))
                        texts.append(payload_text(function.get("arguments", "")))
                elif key in ("tool_call_id", "function_call") and value is not None:
                    texts.append(payload_text(value))
        total += sum(self.count_many(texts, model))
        return Tokens(total, by)

    def count_payload(self, value: Any, model: str | None = None) -> Tokens:
        """Tokens of a tool's arguments or result, counted as text (JSON for structures)."""
        return self.count(payload_text(value), model)


#: The process-wide counter the hooks use; its cache size comes from the settings.
token_counter = TokenCounter()
