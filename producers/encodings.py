"""tiktoken encodings loaded from files on disk, never from the network.

tiktoken downloads its BPE files on first use. Here the `cl100k_base` and
`o200k_base` ranks come from the gzipped copies shipped in the `bpe-openai` wheel;
tiktoken's own constructors supply the split pattern and special tokens, and the
file must have the SHA-256 tiktoken itself expects, so the encoding is byte for
byte the one tiktoken would build online.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.resources
import threading
from collections.abc import Callable
from typing import Any, Literal

import tiktoken
import tiktoken.model
from tiktoken_ext import openai_public

__all__ = ["ENCODING_NAMES", "EncodingName", "encoding_for_model", "get_encoding"]

EncodingName = Literal["cl100k_base", "o200k_base"]
ENCODING_NAMES: tuple[EncodingName, ...] = ("cl100k_base", "o200k_base")

_CONSTRUCTORS: dict[EncodingName, Callable[[], dict[str, Any]]] = {
    "cl100k_base": openai_public.cl100k_base,
    "o200k_base": openai_public.o200k_base,
}
_DATA_PACKAGE = "bpe_openai.data"
_loaded: dict[str, tiktoken.Encoding] = {}
_lock = threading.Lock()


def _ranks_from_package(blobpath: str, expected_hash: str | None = None) -> dict[bytes, int]:
    """Stand-in for tiktoken's `load_tiktoken_bpe`: read the packaged copy of `blobpath`."""
    filename = blobpath.rsplit("/", 1)[-1] + ".gz"
    resource = importlib.resources.files(_DATA_PACKAGE) / filename
    try:
        contents = gzip.decompress(resource.read_bytes())
    except FileNotFoundError:
        raise RuntimeError(
            f"{filename} is missing from the installed bpe-openai package; "
            "reinstall tokenquota's dependencies (tokenquota never downloads encodings)"
        ) from None
    if expected_hash is not None and hashlib.sha256(contents).hexdigest() != expected_hash:
        raise RuntimeError(f"{filename} from bpe-openai does not match tiktoken's hash")
    return {
        base64.b64decode(token): int(rank)
        for token, rank in (line.split() for line in contents.splitlines() if line)
    }


def get_encoding(name: EncodingName) -> tiktoken.Encoding:
    """The tiktoken encoding `name`, built once per process from packaged files."""
    if name not in _CONSTRUCTORS:
        raise ValueError(f"unknown encoding {name!r}; tokenquota ships {', '.join(ENCODING_NAMES)}")
    with _lock:
        encoding = _loaded.get(name)
        if encoding is None:
            # tiktoken's constructor names the URL and hash; the loader it calls is swapped
            # for one reading the package, under the lock, for this one call.
            original = openai_public.load_tiktoken_bpe
            openai_public.load_tiktoken_bpe = _ranks_from_package
            try:
                params = _CONSTRUCTORS[name]()
            finally:
                openai_public.load_tiktoken_bpe = original
            encoding = tiktoken.Encoding(**params)
            _loaded[name] = encoding
        return encoding


def encoding_for_model(model: str) -> tuple[EncodingName, bool]:
    """The encoding for `model`, and whether counting with it is exact.

    OpenAI models use the encoding tiktoken maps them to (o200k for gpt-4o, gpt-4.1,
    the o-series and newer; cl100k for gpt-4 and gpt-3.5). Any other model is
    approximated with o200k_base and reported as inexact.
    """
    try:
        name = tiktoken.model.encoding_name_for_model(model)
    except KeyError:
        return "o200k_base", False
    if name in _CONSTRUCTORS:
        return name, True
    # An encoding not shipped here (o200k_harmony, legacy r50k/p50k): the nearest one.
    return ("o200k_base" if name.startswith("o200k") else "cl100k_base"), False
