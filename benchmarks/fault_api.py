"""The fault campaign's HTTP API process (`benchmarks.faults` starts and kills it).

It serves the real API app (`api.create_app`) on 127.0.0.1 with its emitter recorded
like a producer's (`fault_load.Recorder`): every event it emits for an ingest, a
reservation, a settlement or a release is written down before it is sent, and its
outcome after. PostgreSQL may be away when it starts (a fault): it tries again until
it serves. On SIGTERM it stops serving, then sends what it left spooled (a restarted
process on the same data directory does the same first).

Run: python -m benchmarks.fault_api --port PORT --records RECORDS.jsonl
     (servers and schema from the environment)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Generator
from pathlib import Path
from typing import Any

import uvicorn

from api import app as api_app
from benchmarks.fault_load import Recorder
from tokenquota.config import Settings
from tokenquota.producers import TokenQuota
from tokenquota.producers.emitter import Emitter

__all__ = ["main"]


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handlers: SIGTERM is this process's to handle."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _recording(recorder: Recorder) -> type[TokenQuota]:
    class RecordedTokenQuota(TokenQuota):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            recorder.wrap(self.emitter)

    return RecordedTokenQuota


async def serve(port: int, records: Path) -> None:
    """Serve until SIGTERM, then drain the spool."""
    settings = Settings()
    recorder = Recorder(records)
    api_app.TokenQuota = _recording(recorder)  # type: ignore[attr-defined]  # the app's client
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    try:
        while not stopping.is_set():
            config = uvicorn.Config(
                api_app.create_app(settings), host="127.0.0.1", port=port, log_level="warning",
                lifespan="on",
            )  # fmt: skip
            server = _Server(config)
            serving = asyncio.create_task(server.serve())
            stop = asyncio.create_task(stopping.wait())
            await asyncio.wait([serving, stop], return_when=asyncio.FIRST_COMPLETED)
            server.should_exit = True
            with contextlib.suppress(BaseException):
                await serving
            stop.cancel()
            if not stopping.is_set():
                await asyncio.sleep(0.5)  # it could not start (PostgreSQL away): again
        async with Emitter.from_settings(settings) as emitter:
            await emitter.flush(timeout=300)
    finally:
        recorder.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--records", required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.port, Path(args.records)))


if __name__ == "__main__":
    main()
