"""Put any stdio MCP server behind `tokenquota mcp-proxy` and call it as a client would.

The upstream is examples/plain_mcp_server.py, which knows nothing of tokenquota.
Needs the stack: run `make run`, then, with the addresses it prints,
KAFKA_BOOTSTRAP_SERVERS=... DATABASE_URL=... .venv/bin/python examples/mcp_proxy.py
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from _demo import demo_session, settled
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from tokenquota.producers import close_default_quota

UPSTREAM = Path(__file__).with_name("plain_mcp_server.py")


async def main() -> None:
    session = await demo_session("ide", 20_000)
    # What an IDE's mcpServers entry runs: the proxy, the session, then the real server.
    upstream = [sys.executable, str(UPSTREAM), "--stdio"]
    proxy = StdioServerParameters(
        command=sys.executable,
        args=["-m", "tokenquota", "mcp-proxy", "--session", session, "--", *upstream],
        env={**os.environ, "LOG_LEVEL": "WARNING"},
    )
    async with Client(proxy, cache=None) as client:
        tools = [tool.name for tool in (await client.list_tools()).tools]
        print("tools served through the proxy:", tools)
        reply = await client.call_tool("reverse", {"text": "metered"})
        print("reverse ->", reply.content[0].text)  # type: ignore[union-attr]
    print(session, "used", await settled(session), "tokens")
    await close_default_quota()


if __name__ == "__main__":
    asyncio.run(main())
