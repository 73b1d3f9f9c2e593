"""MCP servers and clients nobody here wrote, from the npm registry: installed at pinned
versions into build/npm (npm's cache in build/npm-cache), never globally, once per
checkout; the install is locked, as two test workers may ask for it at once."""

from __future__ import annotations

import fcntl
import json
import shutil
import subprocess
from pathlib import Path

import pytest

__all__ = ["PACKAGES", "npm_bin"]

ROOT = Path(__file__).resolve().parents[3] / "build"
PREFIX = ROOT / "npm"
#: Pinned: what the tests compare against must not move under them.
PACKAGES = {
    "@modelcontextprotocol/server-everything": "2026.8.31",
    "@modelcontextprotocol/server-memory": "2026.8.31",
    # its --cli mode: a third-party MCP client (warns that it wants node >= 22.19; works on 20)
    "@modelcontextprotocol/inspector": "2.12.0",
}


def _installed() -> bool:
    for name, version in PACKAGES.items():
        manifest = PREFIX / "node_modules" / name / "package.json"
        if not manifest.exists() or json.loads(manifest.read_text())["version"] != version:
            return False
    return True


def npm_bin(name: str) -> Path:
    """The path of an installed package's executable `name` (installing them first)."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.fail("these tests need Node.js and npm (Debian: apt-get install nodejs npm)")
    ROOT.mkdir(exist_ok=True)
    with (ROOT / "npm.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _installed():
            specs = [f"{name}@{version}" for name, version in PACKAGES.items()]
            done = subprocess.run(
                [npm, "install", "--prefix", str(PREFIX), "--cache", str(ROOT / "npm-cache"),
                 "--no-audit", "--no-fund", "--no-save", *specs],
                capture_output=True, text=True, timeout=300, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                pytest.fail(f"npm install {' '.join(specs)} failed:\n{done.stderr[-3000:]}")
    path = PREFIX / "node_modules" / ".bin" / name
    assert path.exists(), f"{name} is not in {path.parent}"
    return path
