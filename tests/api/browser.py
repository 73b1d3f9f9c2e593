"""A real browser for the page's tests: Debian's chromium driven through chromium-driver
(WebDriver, via selenium), headless, and the app served over TCP by uvicorn in the test's
event loop. Nothing is downloaded: without chromium the tests fail in CI (CI=true) with
the command that installs it, and are skipped with it elsewhere."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TypeVar

import pytest
import uvicorn
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tokenquota.api import create_app
from tokenquota.config import Settings
from tokenquota.embedded import free_port

__all__ = ["ARTIFACTS", "INSTALL", "browser", "serve_app", "wait_for"]

#: Where the browser tests save their screenshots (`make test` prints it).
ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts" / "browser"
INSTALL = "apt-get install chromium chromium-driver"
_CHROMIUM = ("chromium", "chromium-browser")
_DRIVER = ("chromedriver",)
# As the machine's notes advise: no sandbox as root, and no background connections (this
# machine's network refuses them, and a browser test must not depend on the internet).
_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
)  # fmt: skip

T = TypeVar("T")


def _which(names: tuple[str, ...]) -> str | None:
    return next((found for name in names if (found := shutil.which(name))), None)


@contextmanager
def browser(width: int = 1280, height: int = 800) -> Iterator[WebDriver]:
    """A headless chromium of the machine's (fail in CI, skip elsewhere, when missing)."""
    binary, driver_path = _which(_CHROMIUM), _which(_DRIVER)
    if binary is None or driver_path is None:
        missing = " and ".join(
            name for name, path in (("chromium", binary), ("chromedriver", driver_path)) if not path
        )
        message = (
            f"the browser tests need Debian's chromium and chromium-driver ({missing} not "
            f"found): {INSTALL}"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
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


@asynccontextmanager
async def serve_app(settings: Settings, spool_dir: Path) -> AsyncIterator[str]:
    """`create_app(settings)` served on 127.0.0.1 on a free port, its emitter spooling in
    `spool_dir` (a spool serves one emitter); yields its URL."""
    emitter = settings.emitter.model_copy(update={"spool_dir": spool_dir})
    settings = settings.model_copy(update={"emitter": emitter})
    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(30):
            while not server.started:
                if task.done():
                    task.result()
                    raise AssertionError("uvicorn stopped before it started")
                await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


async def wait_for(
    driver: WebDriver, condition: Callable[[WebDriver], T], timeout: float, what: str
) -> T:
    """`condition` true in the page within `timeout` seconds (WebDriver's wait, run in a
    thread so that the served app keeps answering)."""

    def wait() -> T:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition, what)

    return await asyncio.to_thread(wait)
