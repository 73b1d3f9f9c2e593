"""Helpers shared by the MCP tests: the session `_meta`, result text, payload tokens."""

from __future__ import annotations

from typing import Any, cast

from mcp_types import RequestParamsMeta

from tokenquota.producers.token_counter import TokenCounter, payload_text

__all__ = ["KEY", "session_meta", "text_of", "tokens"]

KEY = "tokenquota/session"


def session_meta(session: str) -> RequestParamsMeta:
    """A request `_meta` naming `session`."""
    return cast(RequestParamsMeta, {KEY: session})


def tokens(value: Any) -> int:
    """What the hooks count for a tool payload (arguments or result)."""
    return int(TokenCounter(cache_size=0).count(payload_text(value), "gpt-4o"))


def text_of(result: Any) -> str:
    """The text content of a tool result."""
    return "\n".join(block.text for block in result.content if block.type == "text")
