"""The fault campaign's client processes (`benchmarks.faults`): started again after a kill."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

__all__ = ["ProducerProcess", "alive"]


class ProducerProcess:
    """A fault_load (or fault_api) process: started again after a kill, on the same spool
    and records."""

    def __init__(
        self,
        index: int,
        env: dict[str, str],
        args: list[str],
        log: Path,
        module: str = "benchmarks.fault_load",
    ) -> None:
        self.index, self.env, self.args, self.log, self.module = index, env, args, log, module
        self.restarts = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.pids: list[int] = []

    def start(self) -> None:
        restart = ["--restart", str(self.restarts)] if self.module.endswith("fault_load") else []
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module, *self.args, *restart],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        self.pids.append(self.process.pid)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        self.restarts += 1
        self.start()


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        status = Path(f"/proc/{pid}/stat").read_text().split()[2]
        return status != "Z"
    return True
