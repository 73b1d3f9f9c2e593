"""A spool append cut short by a full disk, for real: a child process whose file-size limit
(RLIMIT_FSIZE, with SIGXFSZ ignored) makes the write stop part-way and fail with EFBIG."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tokenquota.producers.spool import Spool, SpooledMessage

# Runs in the child: one accepted append, one append cut at `limit` bytes past the end of
# the file, the limit lifted, one more accepted append. Prints what it saw as JSON.
_CHILD = """
import json, resource, signal, sys
from pathlib import Path
from tokenquota.errors import IntegrationError
from tokenquota.producers.spool import Spool, SpooledMessage

directory, limit = Path(sys.argv[1]), int(sys.argv[2])
def batch(tag, count, size):
    return [SpooledMessage(b"k%d" % (i % 3), b"%s-%d-" % (tag, i) + b"x" * size)
            for i in range(count)]

spool = Spool(directory, 1 << 30)
spool.append(batch(b"first", 5, 40))
before = spool.size
files_before = sum(p.stat().st_size for p in directory.glob("usage.spool*") if p.is_file())
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
_, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (files_before + limit, hard))
report = {"size_before": before}
try:
    spool.append(batch(b"torn", 50, 400))
except Exception as exc:
    report["error"] = type(exc).__name__
    report["integration_error"] = isinstance(exc, IntegrationError)
    report["message"] = str(exc)
report["size_after_failure"] = spool.size
report["bytes_on_disk_after_failure"] = sum(
    p.stat().st_size for p in directory.glob("usage.spool") if p.is_file()
)
report["bytes_on_disk_before"] = files_before
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
spool.append(batch(b"later", 3, 40))
spool.close()
print(json.dumps(report))
"""


def batch(tag: bytes, count: int, size: int) -> list[SpooledMessage]:
    """The same messages the child builds."""
    return [
        SpooledMessage(b"k%d" % (i % 3), b"%s-%d-" % (tag, i) + b"x" * size) for i in range(count)
    ]


def run_child(directory: Path, limit: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(directory), str(limit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def test_an_append_cut_short_by_a_full_disk_hides_nothing_appended_after_it(
    tmp_path: Path,
) -> None:
    # 3 whole frames of the failed append and part of a fourth fit under the limit.
    run_child(tmp_path, limit=1500)
    reopened = Spool(tmp_path, 1 << 30)
    messages, length = reopened.read()
    assert messages == batch(b"first", 5, 40) + batch(b"later", 3, 40)
    assert length == reopened.size


def test_an_append_cut_short_by_a_full_disk_is_rolled_back_and_reported_not_accepted(
    tmp_path: Path,
) -> None:
    report = run_child(tmp_path, limit=1500)
    assert report.get("integration_error") is True, report
    assert report["error"] == "SpoolWriteError"
    assert "NOT accepted" in report["message"] and "50 event(s)" in report["message"]
    assert report["size_after_failure"] == report["size_before"]
    # Nothing of the failed append stays on disk: not even its whole frames.
    assert report["bytes_on_disk_after_failure"] == report["bytes_on_disk_before"]
