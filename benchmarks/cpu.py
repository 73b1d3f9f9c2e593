"""CPU time of every process a benchmark runs, by role: where a figure's cost went.

The servers run as children of the benchmark (the embedded broker and PostgreSQL, the
worker, the API), so the benchmark process and its descendants are the whole stack.
"""

from __future__ import annotations

from collections.abc import Mapping

import psutil

__all__ = ["CpuMeter", "children_running"]


def children_running(word: str) -> list[psutil.Process]:
    """This process's descendants whose command line has `word` as one of its parts."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if word in child.cmdline():
                found.append(child)
        except psutil.Error:
            continue
    return found


class CpuMeter:
    """Snapshots of user + system CPU seconds per role: this process (the load generator),
    named children (by PID), and the embedded broker and PostgreSQL (by process name)."""

    def __init__(self, roles: Mapping[int, str]) -> None:
        self._roles = dict(roles)

    def snapshot(self) -> dict[str, float]:
        """CPU seconds used so far, per role (processes that ended meanwhile are left out)."""
        seconds: dict[str, float] = {}
        me = psutil.Process()
        for process in [me, *me.children(recursive=True)]:
            try:
                role = self._role(process)
                times = process.cpu_times()
            except psutil.Error:
                continue
            seconds[role] = seconds.get(role, 0.0) + times.user + times.system
        return seconds

    def _role(self, process: psutil.Process) -> str:
        if process.pid == psutil.Process().pid:
            return "load generator"
        if process.pid in self._roles:
            return self._roles[process.pid]
        name = process.name()
        if name.startswith("tansu"):
            return "broker"
        if name.startswith("postgres"):
            return "PostgreSQL"
        parent = process.parent()
        if parent is not None and parent.pid in self._roles:
            return self._roles[parent.pid]
        return "other"

    @staticmethod
    def used(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
        """CPU seconds per role between two snapshots."""
        return {role: after[role] - before.get(role, 0.0) for role in after}
