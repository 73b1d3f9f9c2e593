"""A plain MCP server with no tokenquota inside, to put behind `tokenquota mcp-proxy`.

Serve it over stdio: python examples/plain_mcp_server.py --stdio
(examples/mcp_proxy.py and the tests run it behind the proxy).
"""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

server: MCPServer = MCPServer(name="upstream-notes", instructions="Notes for tests.")


@server.tool()
async def reverse(text: str) -> str:
    """Reverse a text."""
    return text[::-1]


@server.tool()
async def fail(reason: str) -> str:
    """Always fails with `reason`."""
    raise ValueError(reason)


@server.resource("notes://readme", mime_type="text/plain")
def readme() -> str:
    """The readme note."""
    return "read me first"


@server.prompt()
def summarize(topic: str) -> str:
    """Ask for a summary."""
    return f"Summarize {topic} in one line."


if __name__ == "__main__":
    import sys

    if "--stdio" in sys.argv:
        server.run("stdio")
    else:
        print("usage: python examples/plain_mcp_server.py --stdio  (an MCP server on stdio)")
