"""Token counting: offline encodings equal to tiktoken's, model map, messages, cache."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
from collections.abc import Sequence
from typing import Any

import bpe_openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenquota.producers.encodings import encoding_for_model, get_encoding
from tokenquota.producers.token_counter import TokenCounter, Tokens, cache_key

# Token ids published in tiktoken's own test suite and README.
KNOWN = [
    ("cl100k_base", "hello world", [15339, 1917]),
    ("o200k_base", "hello world", [24912, 2375]),
    ("cl100k_base", "tiktoken is great!", [83, 1609, 5963, 374, 2294, 0]),
]


@pytest.mark.parametrize(("name", "text", "ids"), KNOWN)
def test_known_strings_encode_to_tiktokens_ids(name: str, text: str, ids: list[int]) -> None:
    encoding = get_encoding(name)  # type: ignore[arg-type]
    assert encoding.encode_ordinary(text) == ids
    assert TokenCounter(cache_size=0).count(
        text, "gpt-4" if name == "cl100k_base" else "gpt-4o"
    ) == len(ids)


@settings(max_examples=200, deadline=None)
@given(
    st.text(st.characters(exclude_categories=["Cs"]), max_size=300),  # Cs: lone surrogates
    st.sampled_from(["cl100k_base", "o200k_base"]),
)
def test_round_trip_and_an_independent_tokenizer_agree(text: str, name: str) -> None:
    encoding = get_encoding(name)  # type: ignore[arg-type]
    ids = encoding.encode_ordinary(text)
    assert encoding.decode(ids) == text
    # bpe-openai is a separate (Rust) implementation over the same files.
    assert ids == bpe_openai.get_encoding(name).encode_ordinary(text)


def test_encodings_load_without_any_network_access(tmp_path: object) -> None:
    script = textwrap.dedent(
        """
        import socket
        def refuse(*args, **kwargs):
            raise OSError("network access attempted")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        from tokenquota.producers.encodings import get_encoding
        print(get_encoding("cl100k_base").encode_ordinary("hello world"),
              get_encoding("o200k_base").encode_ordinary("hello world"))
        """
    )
    env = {"TIKTOKEN_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[15339, 1917] [24912, 2375]"


@pytest.mark.parametrize(
    ("model", "encoding", "exact"),
    [
        ("gpt-4o", "o200k_base", True),
        ("gpt-4o-mini", "o200k_base", True),
        ("gpt-4.1", "o200k_base", True),
        ("o3-mini", "o200k_base", True),
        ("gpt-5", "o200k_base", True),
        ("gpt-4", "cl100k_base", True),
        ("gpt-3.5-turbo", "cl100k_base", True),
        ("claude-sonnet-4-5", "o200k_base", False),
        ("gemini-2.5-pro", "o200k_base", False),
    ],
)
def test_models_map_to_encodings_and_other_vendors_are_estimates(
    model: str, encoding: str, exact: bool
) -> None:
    assert encoding_for_model(model) == (encoding, exact)
    count = TokenCounter(cache_size=0).count("some text", model)
    assert count.counted_by == ("tiktoken" if exact else "estimate")
    assert count.exact is exact


def test_chat_messages_add_the_openai_framing_and_count_tool_calls() -> None:
    counter = TokenCounter(cache_size=0)
    enc = get_encoding("o200k_base")
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "name": "ann", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "4 degrees, rain"},
    ]

    def n(text: str) -> int:
        return len(enc.encode_ordinary(text))

    expected = 3 + 4 * 3  # reply priming, per-message framing
    expected += n("system") + n("You are terse.")
    expected += n("user") + 1 + n("ann") + n("Weather in Oslo?")
    expected += n("assistant") + n("weather") + n('{"city":"Oslo"}')
    expected += n("tool") + n("c1") + n("4 degrees, rain")
    count = counter.count_messages(messages, "gpt-4o")
    assert count == expected
    assert count.counted_by == "tiktoken"


def test_an_image_part_makes_the_message_count_an_estimate() -> None:
    parts = [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "x"}},
    ]
    count = TokenCounter(cache_size=0).count_messages(
        [{"role": "user", "content": parts}], "gpt-4o"
    )
    assert count.counted_by == "estimate"
    assert count > len(get_encoding("o200k_base").encode_ordinary("what is this"))


def test_the_cache_is_bounded_and_keyed_by_content() -> None:
    counter = TokenCounter(cache_size=2)
    counter.count("alpha")
    counter.count("beta")
    counter.count("alpha")  # a hit: alpha becomes the most recent
    counter.count("gamma")  # evicts beta
    assert len(counter.cache) == 2
    name = "o200k_base"
    assert counter.cache.get(cache_key(name, "alpha")) is not None
    assert counter.cache.get(cache_key(name, "beta")) is None
    assert TokenCounter(cache_size=0).count("alpha") == counter.count("alpha")


def test_a_batch_hit_counts_as_recent_use_in_the_cache() -> None:
    counter = TokenCounter(cache_size=2)
    counter.count_many(["alpha", "beta"])
    counter.count_many(["alpha", "gamma"])  # alpha is a hit, so gamma evicts beta
    assert counter.cache.get(cache_key("o200k_base", "alpha")) is not None
    assert counter.cache.get(cache_key("o200k_base", "beta")) is None
    assert counter.cache.get(cache_key("o200k_base", "gamma")) is not None


def test_long_texts_are_keyed_by_a_digest_and_still_counted_exactly() -> None:
    counter = TokenCounter(cache_size=10)
    long_text, other = "word " * 2000, "word " * 1999 + "term "
    assert isinstance(cache_key("o200k_base", long_text)[1], bytes)  # no copy of the text
    assert cache_key("o200k_base", "short")[1] == "short"
    encoding = get_encoding("o200k_base")
    for text in (long_text, other, long_text):
        assert counter.count(text) == len(encoding.encode_ordinary(text))
    assert len(counter.cache) == 2


async def test_batches_match_single_counts_in_order() -> None:
    counter = TokenCounter(cache_size=10)
    texts = ["one", "two words", "", "three more words", "one"]
    counts = await counter.count_tokens_batch(texts, model="gpt-4")
    assert counts == [await counter.count_tokens(t, model="gpt-4") for t in texts]
    assert all(isinstance(c, Tokens) and c.counted_by == "tiktoken" for c in counts)


class _GatedCounter(TokenCounter):
    """Counts only once the event loop has opened its gate: a count that blocked the
    loop could never see the gate open."""

    def __init__(self) -> None:
        super().__init__(cache_size=0)
        self.gate = threading.Event()
        self.threads: list[int] = []
        self.waited_for_the_loop: list[bool] = []

    def _through_the_gate(self) -> None:
        self.threads.append(threading.get_ident())
        self.waited_for_the_loop.append(self.gate.wait(timeout=30))

    def count(self, text: str, model: str | None = None) -> Tokens:
        self._through_the_gate()
        return super().count(text, model)

    def count_many(self, texts: Sequence[str], model: str | None = None) -> list[Tokens]:
        self._through_the_gate()
        return super().count_many(texts, model)


async def test_a_large_text_is_counted_off_the_event_loop() -> None:
    big = "the quick brown fox jumps over the lazy dog " * 60_000  # about 2.6 MB
    loop_thread = threading.get_ident()
    expected = len(get_encoding("o200k_base").encode_ordinary(big))
    for count_on in ("count_tokens", "count_tokens_batch"):
        counter = _GatedCounter()

        async def open_gate(counter: _GatedCounter = counter) -> None:
            counter.gate.set()  # runs only if the loop is free while the count waits

        opener = asyncio.create_task(open_gate())
        if count_on == "count_tokens":
            counted = [await counter.count_tokens(big, model="gpt-4o")]
        else:
            counted = await counter.count_tokens_batch([big, "small"], model="gpt-4o")
        await opener
        assert counted[0] == expected
        assert counter.waited_for_the_loop == [True], f"{count_on} blocked the event loop"
        assert loop_thread not in counter.threads


async def test_a_small_text_is_counted_on_the_event_loop() -> None:
    counter = _GatedCounter()
    counter.gate.set()
    assert await counter.count_tokens("small", model="gpt-4o") == 1
    assert counter.threads == [threading.get_ident()]
