"""Helpers shared by the MCP tests: the session `_meta`, result text, payload tokens, and
a server process listening on a port for the length of a test."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from mcp_types import RequestParamsMeta

from tests.support import settings_env, wait_until
from tokenquota.config import Settings
from tokenquota.embedded import port_in_use
from tokenquota.producers.token_counter import TokenCounter, payload_text

__all__ = ["KEY", "listening", "proxy_env", "session_meta", "text_of", "tokens"]

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


@contextlib.asynccontextmanager
async def listening(
    command: Sequence[str], port: int, log: Path, env: Mapping[str, str] | None = None
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`command` (with `env` added to this environment, its output in `log`) started and
    listening on 127.0.0.1:`port`; terminated, by its PID, when the block ends."""
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            *command, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:

        async def up() -> bool:
            assert process.returncode is None, f"{command[0]} exited: see {log}"
            return port_in_use("127.0.0.1", port)

        await wait_until(up, 30, f"{command[0]} listening on port {port}")
        yield process
    finally:
        if process.returncode is None:
            process.terminate()
            await asyncio.wait_for(process.wait(), 15)


def proxy_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a `tokenquota mcp-proxy` on `settings`' servers: its spool in
    the test's own folder (not the checkout's), where no later test can find it."""
    return {
        **settings_env(settings),
        "LOG_LEVEL": "WARNING",
        "EMITTER_SPOOL_DIR": str(settings.spool_dir / "proxies"),
        **extra,
    }
