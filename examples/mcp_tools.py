"""Meter MCP tools: one decorated tool, and server-wide hooks for the rest.

Needs the stack: run `make run`, then, with the addresses it prints,
KAFKA_BOOTSTRAP_SERVERS=... DATABASE_URL=... .venv/bin/python examples/mcp_tools.py
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from _demo import demo_session, settled
from mcp import Client
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import RequestParamsMeta

from tokenquota.producers import close_default_quota, mcp_token_decorator, setup_mcp_token_hooks

server: MCPServer[Any] = MCPServer(name="notes")


@server.tool()
@mcp_token_decorator()
async def summarize(text: str, ctx: Context[Any, Any]) -> str:
    """A metered tool: its arguments and result are counted and settled."""
    return text.split(".")[0] + "."


@server.tool()
async def word_count(text: str) -> int:
    """Metered by the server-wide hooks, without a decorator."""
    return len(text.split())


setup_mcp_token_hooks(server)


def session(session_id: str) -> RequestParamsMeta:
    return cast(RequestParamsMeta, {"tokenquota/session": session_id})


async def main() -> None:
    alice = await demo_session("mcp-alice", 20_000)
    broke = await demo_session("mcp-broke", 5)  # less than the call's own arguments
    async with Client(server) as client:
        text = "Budgets hold. Everything else follows."
        reply = await client.call_tool("summarize", {"text": text}, meta=session(alice))
        print("summarize ->", reply.content[0].text)  # type: ignore[union-attr]
        count = await client.call_tool("word_count", {"text": text}, meta=session(alice))
        print("word_count ->", count.content[0].text)  # type: ignore[union-attr]
        refused = await client.call_tool("summarize", {"text": text}, meta=session(broke))
        print("over budget -> isError:", refused.is_error, "|", refused.content[0].text)  # type: ignore[union-attr]
    print(alice, "used", await settled(alice), "tokens, settled by the worker")
    await close_default_quota()


if __name__ == "__main__":
    asyncio.run(main())
