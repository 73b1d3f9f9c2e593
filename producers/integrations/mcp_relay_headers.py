"""The HTTP headers a streamable HTTP MCP server expects with each message, which a
client over stdio never sends: the relay adds them as the SDK's own client would.

- Handshake era (`initialize`, up to 2025-11-25): `MCP-Protocol-Version`, as
  `initialize` agreed it, on every message after it.
- 2026-07-28 era (each request says its version in `_meta`): per request
  `MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name` (the tool, prompt or resource a
  request names) and, for a tool whose schema marks arguments with `x-mcp-header`,
  an `Mcp-Param-*` header per such argument, from the tool's schema as the server
  listed it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mcp.shared.inbound import (
    MCP_METHOD_HEADER,
    MCP_NAME_HEADER,
    MCP_PROTOCOL_VERSION_HEADER,
    NAME_BEARING_METHODS,
    encode_header_value,
    find_invalid_x_mcp_header,
    mcp_param_headers,
    x_mcp_header_map,
)
from mcp_types import PROTOCOL_VERSION_META_KEY, JSONRPCMessage, JSONRPCRequest

__all__ = ["UpstreamHeaders"]


class UpstreamHeaders:
    """What to send with each message to a streamable HTTP upstream."""

    def __init__(self) -> None:
        #: The version `initialize` agreed (handshake era); None before or without it.
        self.protocol_version: str | None = None
        self._param_maps: dict[str, dict[tuple[str, ...], str]] = {}

    def answered(self, request: JSONRPCRequest, result: Mapping[str, Any]) -> None:
        """Learn from the server's `result` to `request`: the agreed version, the tools'
        `x-mcp-header` arguments."""
        if request.method == "initialize":
            version = result.get("protocolVersion")
            self.protocol_version = version if isinstance(version, str) else None
        elif request.method == "tools/list" and isinstance(result.get("tools"), list):
            for tool in result["tools"]:
                if not isinstance(tool, Mapping) or not isinstance(tool.get("name"), str):
                    continue
                schema = tool.get("inputSchema")
                if find_invalid_x_mcp_header(schema) is None:
                    self._param_maps[tool["name"]] = x_mcp_header_map(schema)
                else:  # a client drops such a tool: it is not called with headers
                    self._param_maps.pop(tool["name"], None)

    def of(self, message: JSONRPCMessage) -> dict[str, str] | None:
        """The headers to send `message` with (None: none)."""
        params = message.params if isinstance(message, JSONRPCRequest) else None
        meta = params.get("_meta") if params is not None else None
        version = meta.get(PROTOCOL_VERSION_META_KEY) if isinstance(meta, Mapping) else None
        if not isinstance(message, JSONRPCRequest) or not isinstance(version, str):
            if self.protocol_version is None:
                return None
            return {MCP_PROTOCOL_VERSION_HEADER: self.protocol_version}
        assert params is not None
        headers = {MCP_PROTOCOL_VERSION_HEADER: version, MCP_METHOD_HEADER: message.method}
        name_key = NAME_BEARING_METHODS.get(message.method)
        name = params.get(name_key) if name_key is not None else None
        if isinstance(name, str):
            headers[MCP_NAME_HEADER] = encode_header_value(name)
        if message.method == "tools/call" and isinstance(name, str):
            arguments = params.get("arguments")
            header_map = self._param_maps.get(name)
            if header_map and isinstance(arguments, Mapping):
                headers.update(mcp_param_headers(header_map, arguments))
        return headers
