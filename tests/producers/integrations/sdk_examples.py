"""The MCP Python SDK's own example servers and clients: the `examples/` tree of its sdist
(the installed wheel ships none), at the installed `mcp` version, downloaded with pip into
build/mcp-sdk and extracted to build/mcp-sdk/mcp-<version>/examples, once per checkout;
the download is locked, as two test workers may ask for it at once.

The story servers (`examples/stories/<name>/server.py`) import `stories._hosting`, and the
story clients `stories._harness`: both run with the examples directory on PYTHONPATH
(`examples_env`). A story server serves stdio by default, `--http --port N` streamable
HTTP; a story client (`python -m stories.<name>.client`) makes its own assertions, prints
OK or FAIL and exits 0 or 1.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib.metadata import version
from pathlib import Path

import pytest

__all__ = ["VERSION", "everything_server", "examples_env", "sdk_examples", "story_server"]

ROOT = Path(__file__).resolve().parents[3] / "build"
SDK = ROOT / "mcp-sdk"
#: The examples must be the installed SDK's: they use its newest APIs.
VERSION = version("mcp")


def sdk_examples() -> Path:
    """The examples directory of the installed SDK's sdist (downloading it first)."""
    examples = SDK / f"mcp-{VERSION}" / "examples"
    SDK.mkdir(parents=True, exist_ok=True)
    with (ROOT / "mcp-sdk.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not examples.is_dir():
            _download(examples)
    return examples


def _download(examples: Path) -> None:
    archive = SDK / f"mcp-{VERSION}.tar.gz"
    if not archive.exists():
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             "--disable-pip-version-check", "-d", str(SDK), f"mcp=={VERSION}"],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        if done.returncode != 0 or not archive.exists():
            pytest.fail(f"pip download mcp=={VERSION} (sdist) failed:\n{done.stderr[-3000:]}")
    prefix = f"mcp-{VERSION}/examples/"
    # Extracted next to its place, then moved there whole: a directory that exists is complete.
    with tempfile.TemporaryDirectory(dir=SDK) as scratch, tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
        if not members:
            pytest.fail(f"{archive} has no {prefix}")
        tar.extractall(scratch, members=members, filter="data")
        examples.parent.mkdir(exist_ok=True)
        shutil.move(str(Path(scratch) / prefix), examples)


def examples_env(*under: str) -> dict[str, str]:
    """The environment a story (or, with `under`, an example under the examples directory,
    such as `servers/simple-pagination`) needs to import its package."""
    root = sdk_examples()
    return {"PYTHONPATH": str(root.joinpath(*under)) if under else str(root)}


def story_server(name: str, server: str = "server") -> list[str]:
    """The command serving the story `name` over stdio (run it with `examples_env()`)."""
    path = sdk_examples() / "stories" / name / f"{server}.py"
    assert path.exists(), f"the SDK's examples have no {path}"
    return [sys.executable, str(path)]


def everything_server(port: int) -> tuple[list[str], dict[str, str]]:
    """The command and environment of the SDK's everything-server, serving streamable HTTP
    on 127.0.0.1:`port` at /mcp."""
    command = [sys.executable, "-m", "mcp_everything_server", "--port", str(port)]
    return command, examples_env("servers", "everything-server")
