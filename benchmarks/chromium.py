"""Headless chromium for the benchmarks: Debian's chromium driven through chromium-driver
(WebDriver, via selenium), with the flags of the page's browser tests. Nothing is
downloaded; without chromium the benchmark stops with the command that installs it."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

__all__ = ["INSTALL", "chromium", "chromium_version"]

INSTALL = "apt-get install chromium chromium-driver"
_CHROMIUM = ("chromium", "chromium-browser")
_DRIVER = ("chromedriver",)
# No sandbox as root, and no background connections (the browser must not depend on the
# internet, nor spend the benchmark's CPU on updates and sync).
_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--no-proxy-server",
)  # fmt: skip


def _binaries() -> tuple[str, str]:
    binary = next((found for name in _CHROMIUM if (found := shutil.which(name))), None)
    driver = next((found for name in _DRIVER if (found := shutil.which(name))), None)
    if binary is None or driver is None:
        raise SystemExit(f"this benchmark needs Debian's chromium and chromium-driver: {INSTALL}")
    return binary, driver


def chromium_version() -> str:
    """What `chromium --version` says, e.g. "Chromium 150.0.7871.100 built on Debian..."."""
    binary, _ = _binaries()
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip() or "chromium (version unknown)"


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 800) -> Iterator[webdriver.Chrome]:
    """A headless chromium with a fresh profile (selenium's temporary directory)."""
    binary, driver_path = _binaries()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in _FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={width},{height}")
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()
