"""A minimal HTTP/1.1 keep-alive client for load generation on a shared machine.

On the 2-core machine the load generator's CPU is taken from the system it measures
(agents call the API from other machines). This client does only what the benchmark
needs (one request at a time per connection, bodies with Content-Length) and costs
about a third of aiohttp's CPU per request; benchmarks/api.py shows both.
"""

from __future__ import annotations

import asyncio

__all__ = ["HttpConnection"]


class HttpConnection:
    """One keep-alive connection to `host`:`port`, one request at a time."""

    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None) -> None:
        self.host = host
        self.port = port
        self._extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items()).encode()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        """Connect."""
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        """Disconnect."""
        if self._writer is not None:
            self._writer.close()
            await self._writer.wait_closed()

    async def post(self, path: str, body: bytes = b"") -> tuple[int, bytes]:
        """POST a JSON `body`; (status, response body)."""
        assert self._reader is not None and self._writer is not None, "open() first"
        self._writer.write(
            b"POST %s HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n%s\r\n%s"
            % (path.encode(), self.host.encode(), len(body), self._extra, body)
        )
        status_line = await self._reader.readline()
        if not status_line:
            raise ConnectionError(f"{self.host}:{self.port} closed the connection")
        status = int(status_line.split(b" ", 2)[1])
        length: int | None = None
        while (line := await self._reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            raise ValueError(f"POST {path}: an answer without Content-Length ({status})")
        return status, await self._reader.readexactly(length)
