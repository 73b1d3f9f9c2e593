"""Regenerate the README's pictures of the page: `make screenshot`.

Starts `tokenquota dev --demo` (as `make run` does) in a temporary data directory on a
free API port, waits until the demo has filled the page (API costs, a refused
reservation, a session past its warning threshold), takes the overview and the most
utilized session with Debian's chromium at 1280x800, writes docs/dashboard.png and
docs/dashboard-session.png, and stops the stack with SIGINT, as Ctrl-C does.
Needs chromium and chromium-driver (`apt-get install chromium chromium-driver`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tokenquota.embedded import free_port

DOCS = Path(__file__).resolve().parent
_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1280,800", "--hide-scrollbars",
)  # fmt: skip


def _get(url: str) -> Any:
    response = httpx.get(url, timeout=5, trust_env=False)
    response.raise_for_status()
    return response.json()


def _filled(api: str) -> bool:
    """The demo shows what the page is for: costs, a refusal, a session past a threshold."""
    try:
        costs = _get(f"{api}/v1/costs?by=model")
        refused = _get(f"{api}/v1/decisions?status=rejected&limit=1")
        alerts = _get(f"{api}/v1/alerts?limit=50")
    except httpx.HTTPError:
        return False
    levels = {alert["level"] for alert in alerts}
    return bool(costs) and bool(refused) and {"warning", "critical"} <= levels


def main() -> None:
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        sys.exit(
            "needs Debian's chromium and chromium-driver: apt-get install chromium chromium-driver"
        )
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="tq-screenshot-") as data:
        env = {**os.environ, "API_PORT": str(port), "TOKENQUOTA_DATA_DIR": data}
        for name in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "TOKENQUOTA_CONFIG"):
            env.pop(name, None)  # the embedded servers, as on a fresh machine
        log = Path(data) / "dev.out"
        with log.open("wb") as out:
            dev = subprocess.Popen(
                [sys.executable, "-m", "tokenquota", "dev", "--demo"],
                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        try:
            deadline = time.monotonic() + 240
            while not _filled(api):
                if dev.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"the demo did not fill the page:\n{log.read_text(errors='replace')}")
                time.sleep(1)
            time.sleep(4)  # two more refreshes of the page's data, the chart included
            options = webdriver.ChromeOptions()
            options.binary_location = chromium
            for flag in _FLAGS:
                options.add_argument(flag)
            driver = webdriver.Chrome(service=Service(driver_path), options=options)
            try:
                driver.get(api + "/")
                WebDriverWait(driver, 20).until(
                    lambda d: d.find_elements(By.CSS_SELECTOR, "[data-session-row]")
                )
                time.sleep(1)
                driver.save_screenshot(str(DOCS / "dashboard.png"))
                busiest = _get(f"{api}/v1/sessions?order=utilization&limit=1")["sessions"][0]
                driver.get(f"{api}/#/session/{busiest['session_id']}")
                WebDriverWait(driver, 20).until(
                    lambda d: d.find_elements(By.CSS_SELECTOR, "[data-window-card]")
                )
                time.sleep(1)
                driver.save_screenshot(str(DOCS / "dashboard-session.png"))
            finally:
                driver.quit()
        finally:
            dev.send_signal(signal.SIGINT)
            try:
                dev.wait(30)
            except subprocess.TimeoutExpired:
                dev.kill()
    print(f"wrote {DOCS / 'dashboard.png'} and {DOCS / 'dashboard-session.png'}")


if __name__ == "__main__":
    main()
