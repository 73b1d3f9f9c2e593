"""`tokenquota dev`: embedded servers where none are configured, set up, run until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import SecretStr

from .config import Settings
from .embedded import EmbeddedBroker, EmbeddedPostgres, WorkerProcess
from .provision import ProvisionReport, provision

__all__ = ["DevStack", "run_dev"]


@dataclass
class DevStack:
    """The servers `tokenquota dev` started itself (none for those given by configuration)."""

    settings: Settings
    _started: list[EmbeddedBroker | EmbeddedPostgres | WorkerProcess] = field(default_factory=list)

    def start(self) -> Settings:
        """Start what is missing; return the settings pointing at the servers in use."""
        data_dir = self.settings.data_dir.resolve()
        kafka, database = self.settings.kafka, self.settings.database
        try:
            if kafka.bootstrap_servers is None:
                broker = EmbeddedBroker(log_path=data_dir / "logs" / "broker.log")
                self._started.append(broker)
                kafka = kafka.model_copy(update={"bootstrap_servers": broker.start()})
            if not database.is_configured:
                postgres = EmbeddedPostgres(
                    data_dir=data_dir / "postgres", log_path=data_dir / "logs" / "postgres.log"
                )
                self._started.append(postgres)
                database = database.model_copy(update={"url": SecretStr(postgres.start())})
        except BaseException:
            self.stop()
            raise
        return self.settings.model_copy(update={"kafka": kafka, "database": database})

    def start_worker(self, effective: Settings, env: dict[str, str]) -> WorkerProcess:
        """Start `tokenquota worker` against the servers in use."""
        worker = WorkerProcess(log_path=effective.data_dir.resolve() / "logs" / "worker.log")
        self._started.append(worker)
        worker.start(
            {
                **env,
                "KAFKA_BOOTSTRAP_SERVERS": effective.kafka.bootstrap_servers or "",
                "DATABASE_URL": effective.database.dsn(),
                "DATABASE_SCHEMA": effective.database.schema_name,
            }
        )
        return worker

    def crashed(self) -> str | None:
        """A description of a started server that has exited on its own, if any."""
        for server in self._started:
            code = server.exit_code()
            if code is not None:
                return f"{server.name} exited with code {code}; see {server.log_path}"
        return None

    def stop(self) -> None:
        """Stop every server this stack started, newest first."""
        while self._started:
            self._started.pop().stop()


async def run_dev(
    settings: Settings,
    on_ready: Callable[[Settings, ProvisionReport, WorkerProcess], None],
    stop_signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM),
    worker_env: dict[str, str] | None = None,
) -> str | None:
    """Run the dev stack until a stop signal; return why it stopped early, if it did."""
    stack = DevStack(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in stop_signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        effective = stack.start()
        report = await provision(effective)
        worker = stack.start_worker(effective, worker_env or {})
        on_ready(effective, report, worker)
        while not stop.is_set():
            crash = stack.crashed()
            if crash is not None:
                return crash
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.5)
        return None
    finally:
        for sig in stop_signals:
            loop.remove_signal_handler(sig)
        stack.stop()
