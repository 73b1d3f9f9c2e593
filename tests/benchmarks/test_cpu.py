"""Finding the processes a benchmark started, for its CPU figures."""

from __future__ import annotations

import subprocess
import sys

from benchmarks.cpu import children_running


def test_a_child_is_found_by_a_part_of_its_command_line() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()", "cpu-meter-probe"],
        stdin=subprocess.PIPE,
    )
    try:
        assert [p.pid for p in children_running("cpu-meter-probe")] == [child.pid]
        assert children_running("cpu-meter") == []  # a whole part, not a substring
    finally:
        child.communicate(b"")
    assert children_running("cpu-meter-probe") == []
