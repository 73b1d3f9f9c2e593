"""`tokenquota dev`: embedded servers where none are configured, set up, run until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import SecretStr

from .config import Settings
from .embedded import (
    ApiProcess,
    DemoProcess,
    EmbeddedBroker,
    EmbeddedPostgres,
    WorkerProcess,
    embedded_partitions,
    port_in_use,
    port_taken,
)
from .errors import DevStackError
from .provision import ProvisionReport, provision

__all__ = ["DevStack", "OnReady", "run_dev"]


@dataclass
class DevStack:
    """The servers `tokenquota dev` started itself (none for those given by configuration)."""

    settings: Settings
    _started: list[EmbeddedBroker | EmbeddedPostgres | WorkerProcess | ApiProcess | DemoProcess] = (
        field(default_factory=list)
    )
    _demo: DemoProcess | None = None

    def check_api_port(self) -> None:
        """Fail before starting anything when the API's port is taken (a second `make run`)."""
        api = self.settings.api
        if port_in_use(api.host, api.port):
            raise DevStackError(port_taken(api.host, api.port))

    def start(self) -> Settings:
        """Start what is missing; return the settings pointing at the servers in use."""
        data_dir = self.settings.data_dir.resolve()
        kafka, database = self.settings.kafka, self.settings.database
        try:
            if kafka.bootstrap_servers is None:
                broker = EmbeddedBroker(log_path=data_dir / "logs" / "broker.log")
                self._started.append(broker)
                kafka = kafka.model_copy(
                    update={
                        "bootstrap_servers": broker.start(),
                        "partitions": embedded_partitions(kafka),
                    }
                )
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
        worker.start(_servers_env(effective, env))
        return worker

    def start_api(self, effective: Settings, env: dict[str, str]) -> ApiProcess:
        """Start `tokenquota api` on api.host:api.port; return once it answers /healthz.

        Its emitter spools in `<data dir>/api-spool`: a spool serves one process, and the
        commands run next to `make run` use `<data dir>/spool`."""
        data_dir = effective.data_dir.resolve()
        api = ApiProcess(
            log_path=data_dir / "logs" / "api.log",
            host=effective.api.host,
            port=effective.api.port,
        )
        self._started.append(api)
        spool = {"EMITTER_SPOOL_DIR": str(data_dir / "api-spool")}
        api.start({**_servers_env(effective, env), **spool})
        return api

    def start_demo(self, effective: Settings, env: dict[str, str]) -> DemoProcess:
        """Start `tokenquota demo` against the servers in use.

        Its emitter spools in `<data dir>/demo-spool`, a spool of its own."""
        data_dir = effective.data_dir.resolve()
        demo = DemoProcess(log_path=data_dir / "logs" / "demo.log")
        self._started.append(demo)
        self._demo = demo
        spool = {"EMITTER_SPOOL_DIR": str(data_dir / "demo-spool")}
        demo.start({**_servers_env(effective, env), **spool})
        return demo

    def demo_ended(self) -> str | None:
        """Once, when the demo has exited on its own: what to tell (the stack runs on)."""
        demo = self._demo
        code = demo.exit_code() if demo is not None else None
        if demo is None or code is None:
            return None
        self._demo = None
        return (
            f"{demo.name} exited with code {code}; see {demo.log_path}. "
            "The rest of the stack keeps running."
        )

    def crashed(self) -> str | None:
        """A description of a started server that has exited on its own, if any (the
        demo is not one: see `demo_ended`)."""
        for server in self._started:
            if isinstance(server, DemoProcess):
                continue
            code = server.exit_code()
            if code is not None:
                return f"{server.name} exited with code {code}; see {server.log_path}"
        return None

    def stop(self) -> None:
        """Stop every server this stack started, newest first."""
        while self._started:
            self._started.pop().stop()


def _servers_env(effective: Settings, env: dict[str, str]) -> dict[str, str]:
    """`env` plus what makes a child process use the servers in use."""
    return {
        **env,
        "KAFKA_BOOTSTRAP_SERVERS": effective.kafka.bootstrap_servers or "",
        "KAFKA_PARTITIONS": str(effective.kafka.partitions),
        "DATABASE_URL": effective.database.dsn(),
        "DATABASE_SCHEMA": effective.database.schema_name,
    }


#: What `run_dev` hands its `on_ready` callback: the settings in use, what provisioning
#: did, and the processes it started (the API and the demo when asked for).
OnReady = Callable[
    [Settings, ProvisionReport, WorkerProcess, ApiProcess | None, DemoProcess | None], None
]


async def run_dev(
    settings: Settings,
    on_ready: OnReady,
    stop_signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM),
    worker_env: dict[str, str] | None = None,
    *,
    with_api: bool = True,
    with_demo: bool = False,
    on_starting: Callable[[], None] | None = None,
    on_notice: Callable[[str], None] | None = None,
) -> str | None:
    """Run the dev stack (the HTTP API unless `with_api` is false, the demo workload when
    `with_demo`) until a stop signal; return why it stopped early, if it did.

    `on_starting` is called once the API's port is known to be free, before anything
    starts; `on_notice` with what to tell that stops nothing (the demo's exit)."""
    stack = DevStack(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in stop_signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        if with_api:
            stack.check_api_port()
        if on_starting is not None:
            on_starting()
        effective = stack.start()
        report = await provision(effective)
        worker = stack.start_worker(effective, worker_env or {})
        api = stack.start_api(effective, worker_env or {}) if with_api else None
        demo = stack.start_demo(effective, worker_env or {}) if with_demo else None
        on_ready(effective, report, worker, api, demo)
        while not stop.is_set():
            crash = stack.crashed()
            if crash is not None:
                return crash
            notice = stack.demo_ended()
            if notice is not None and on_notice is not None:
                on_notice(notice)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.5)
        return None
    finally:
        for sig in stop_signals:
            loop.remove_signal_handler(sig)
        stack.stop()
