"""The dashboard page in a real browser (headless chromium): it shows what the projections
hold (the budget tree's nodes too), updates itself while open, marks thresholds in words
as well as colours, changes a budget for an admin, asks for a token when the API has
tokens, and turns red when no worker runs. Screenshots land in
build/test-artifacts/browser/."""

from __future__ import annotations

import asyncio
import uuid
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.api.browser import ARTIFACTS, browser, serve_app, wait_for
from tests.support import budget, node_budget, used, wait_until
from tokenquota.api import hash_token
from tokenquota.config import Settings
from tokenquota.dashboard import AsyncTokenDashboard
from tokenquota.producers import TokenQuota
from tokenquota.schemas import ApiCost, Source, utc_now
from tokenquota.sections import ApiSettings, ApiToken, WorkerSettings

pytestmark = pytest.mark.integration

_SOURCE = Source(component="external_api", name="page-test")

# What the page shows of a session's windows and the overview's cards, read in the page.
_READ_BARS = """
const out = {};
for (const row of document.querySelectorAll('[data-session-row]')) {
  const bars = {};
  for (const bar of row.querySelectorAll('.bar')) {
    bars[bar.dataset.window] = {
      used: bar.dataset.used, limit: bar.dataset.limit, remaining: bar.dataset.remaining,
      pct: bar.querySelector('.pct').textContent, state: bar.querySelector('.state').textContent,
      level: bar.dataset.level,
    };
  }
  out[row.dataset.sessionRow] = bars;
}
return out;
"""
_READ_CARDS = """
const out = {};
for (const card of document.querySelectorAll('.card')) {
  out[card.dataset.metric] = card.querySelector('.value').textContent;
}
return out;
"""
_READ_SESSION = """
const out = {};
for (const card of document.querySelectorAll('[data-window-card]')) {
  const f = (name) => card.querySelector(`[data-field="${name}"]`).textContent;
  const bar = card.querySelector('.bar');
  out[card.dataset.windowCard] = {
    used: f('used'), limit: f('limit'), remaining: f('remaining'),
    pct: bar.querySelector('.pct').textContent, state: bar.querySelector('.state').textContent,
  };
}
return out;
"""

# The budget tree panel: each node's row as the page shows it.
_READ_TREE = """
const out = [];
for (const row of document.querySelectorAll('#tree-body [data-account]')) {
  const bar = row.querySelector('.bar');
  const text = (field) => row.querySelector(`[data-field="${field}"]`).textContent
    .replace(/\\s+/g, ' ').trim();
  out.push({
    account: row.dataset.account, depth: Number(row.dataset.depth),
    indent: parseFloat(row.querySelector('td.node').style.paddingLeft),
    pct: bar ? bar.querySelector('.pct').textContent : null,
    state: bar ? bar.querySelector('.state').textContent : null,
    noLimit: row.querySelector('.no-limit') !== null,
    usedLimit: text('used-limit'), held: text('held'), cost: text('cost-month'),
  });
}
return out;
"""


def _int(text: str) -> int:
    return int(text.replace(",", ""))


def _usd(value: Decimal) -> str:
    """As the page writes dollars: 4 decimals below $1, else 2, thousands separated."""
    digits = 4 if 0 < abs(value) < 1 else 2
    return f"${value:,.{digits}f}"


def _pct(utilization: Decimal) -> str:
    """As the page writes a utilization: a percentage with one decimal, half up."""
    return f"{(utilization * 100).quantize(Decimal('0.1'), ROUND_HALF_UP)}%"


async def _js(driver: WebDriver, script: str) -> Any:
    return await asyncio.to_thread(driver.execute_script, script)


async def _shot(driver: WebDriver, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(driver.save_screenshot, str(ARTIFACTS / f"{name}.png"))


def _cost(session: str, model: str, usd: str, account: str | None = None) -> ApiCost:
    return ApiCost(
        session_id=session, source=_SOURCE, occurred_at=utc_now(), api="openai", model=model,
        input_tokens=100, output_tokens=20, cost_usd=Decimal(usd), price_source="test",
        account=account,
    )  # fmt: skip


async def test_the_page_shows_the_projections_and_follows_new_events(
    pipeline_settings: Settings, start_worker: Any, tmp_path: Path
) -> None:
    start_worker()
    tag = uuid.uuid4().hex[:6]
    hot, calm = f"page-hot-{tag}", f"page-calm-{tag}"
    # A team of a tenant without limits: 2,000 tokens a day and $1.00 a month.
    tenant, team, coder = f"page-{tag}", f"page-{tag}/team", f"page-coder-{tag}"
    team_daily, team_usd, team_used, team_cost = 2_000, Decimal("1.00"), 1_700, Decimal("0.3")
    now = utc_now()
    async with (
        TokenQuota(pipeline_settings) as quota,
        AsyncTokenDashboard(pipeline_settings) as dashboard,
    ):
        for event in (
            budget(hot, now, daily=1_000, monthly=10_000, hard=100_000),
            budget(calm, now, daily=50_000, monthly=500_000, hard=5_000_000),
            used(hot, 850, now),  # 85%: past the warning threshold (80%)
            used(calm, 1_234, now),
            _cost(calm, "gpt-4o", "0.75"),
            node_budget(team, now, daily=team_daily, monthly=20_000, hard=200_000,
                        usd=(None, str(team_usd), None)),
            used(coder, team_used, now, account=f"{team}/coder"),
            _cost(coder, "gpt-4o-mini", str(team_cost), account=f"{team}/coder"),
        ):  # fmt: skip
            await quota.emit(event)

        async def applied() -> bool:
            known = await dashboard.session_known(hot) and await dashboard.session_known(calm)
            if not known:
                return False
            hot_now = await dashboard.get_session_metrics(hot)
            calm_now = await dashboard.get_session_metrics(calm)
            nodes = await dashboard.account_tree(tenant)
            return (
                hot_now.windows["daily"].used == 850
                and calm_now.cost_usd == Decimal("0.75")
                and [n.cost_usd_month for n in nodes[1:2]] == [team_cost]
            )

        await wait_until(applied, 60, "the events applied")

        async with serve_app(pipeline_settings, tmp_path / "api-spool") as url:
            with browser() as driver:
                await asyncio.to_thread(driver.get, url + "/")
                await wait_for(
                    driver,
                    lambda d: d.find_elements(By.CSS_SELECTOR, f'[data-session-row="{hot}"]'),
                    20,
                    "the sessions table",
                )
                await _js(driver, "window.__sameDocument = true;")

                # The overview's numbers are the projections'.
                overview = await dashboard.get_system_overview()
                cards = await _js(driver, _READ_CARDS)
                assert _int(cards["tokens_today"]) == overview.tokens_today
                assert _int(cards["tokens_month"]) == overview.tokens_month
                assert _int(cards["sessions_active_today"]) == overview.sessions_active_today
                assert cards["cost_usd_today"] == _usd(overview.cost_usd_today)
                bars = await _js(driver, _READ_BARS)
                for session in (hot, calm):
                    report = await dashboard.get_session_metrics(session)
                    for name, window in report.windows.items():
                        shown = bars[session][name]
                        assert (_int(shown["used"]), _int(shown["limit"])) == (
                            window.used,
                            window.limit,
                        )
                        assert _int(shown["remaining"]) == window.remaining
                        assert shown["pct"] == _pct(window.utilization)
                assert (bars[hot]["daily"]["state"], bars[calm]["daily"]["state"]) == (
                    "warning",
                    "ok",
                )
                cost_rows = await _js(
                    driver,
                    "return [...document.querySelectorAll('#costs-body .hbar')]"
                    ".map(b => [b.dataset.name, b.dataset.cost]);",
                )
                assert ["gpt-4o", "0.75"] in cost_rows

                # The budget tree: the team indented under its tenant, its bar at its
                # fullest window (1,700 of 2,000 tokens today: 85%, past the warning
                # threshold; $0.30 of $1.00 this month is less), the tenant unlimited.
                row = f'#tree-body [data-account="{team}"]'
                await wait_for(
                    driver, lambda d: d.find_elements(By.CSS_SELECTOR, row), 20, "the budget tree"
                )
                rows = await _js(driver, _READ_TREE)
                shown_tree = {n["account"]: n for n in rows}
                order = [n["account"] for n in rows]
                assert order.index(tenant) < order.index(team) < order.index(f"{team}/coder")
                top, node = shown_tree[tenant], shown_tree[team]
                assert (top["depth"], node["depth"]) == (1, 2) and node["indent"] > top["indent"]
                assert (top["noLimit"], top["pct"]) == (True, None)
                assert "no limit" in top["usedLimit"]
                assert not node["noLimit"]
                assert node["pct"] == _pct(Decimal(team_used) / Decimal(team_daily))
                assert node["state"] == "warning"
                assert node["usedLimit"] == f"{team_used:,} / {team_daily:,} tokens today"
                assert (node["held"], node["cost"]) == ("0", _usd(team_cost))
                await _shot(driver, "overview")

                # An event emitted while the page is open appears without a reload.
                await quota.emit(used(hot, 100, utc_now()))  # 950: critical (95%)
                await wait_for(
                    driver,
                    lambda d: (
                        d.execute_script(_READ_BARS).get(hot, {}).get("daily", {}).get("used")
                        == "950"
                    ),
                    20,
                    "the new usage on the page",
                )
                assert await _js(driver, "return window.__sameDocument === true;")
                bars = await _js(driver, _READ_BARS)
                assert bars[hot]["daily"]["state"] == "critical"

                # The session page: its windows as the projection holds them.
                link = f'#sessions-body a[data-session="{hot}"]'
                await asyncio.to_thread(lambda: driver.find_element(By.CSS_SELECTOR, link).click())
                await wait_for(
                    driver,
                    lambda d: d.find_elements(By.CSS_SELECTOR, '[data-window-card="daily"]'),
                    20,
                    "the session page",
                )
                report = await dashboard.get_session_metrics(hot)
                shown = await _js(driver, _READ_SESSION)
                for name, window in report.windows.items():
                    assert _int(shown[name]["used"]) == window.used
                    assert _int(shown[name]["remaining"]) == window.remaining
                    assert shown[name]["pct"] == _pct(window.utilization)
                assert shown["daily"]["state"] == "critical"
                available = await _js(
                    driver, "return document.getElementById('available').textContent;"
                )
                assert _int(available.split()[0]) == report.available_tokens
                await _shot(driver, "session")

                # Without tokens the caller is an admin: the form changes the budget.
                form = "#budget-form input[name=daily_limit]"
                await wait_for(
                    driver, lambda d: d.find_elements(By.CSS_SELECTOR, form), 10, "the form"
                )

                def change_limit() -> None:
                    field = driver.find_element(By.CSS_SELECTOR, form)
                    field.clear()
                    field.send_keys("2000")
                    driver.find_element(By.CSS_SELECTOR, "#budget-form button").click()

                await asyncio.to_thread(change_limit)
                await wait_for(
                    driver,
                    lambda d: "applied" in d.find_element(By.ID, "budget-result").text,
                    30,
                    "the budget change",
                )
                report = await dashboard.get_session_metrics(hot)
                assert report.limits.daily_limit == 2_000
                await wait_for(
                    driver,
                    lambda d: d.execute_script(_READ_SESSION)["daily"]["limit"] == "2,000",
                    20,
                    "the new limit on the page",
                )

                # A phone's width: nothing wider than the screen but the scrolling tables.
                await asyncio.to_thread(driver.set_window_size, 390, 844)
                await asyncio.to_thread(driver.get, url + "/")
                await wait_for(
                    driver,
                    lambda d: d.find_elements(By.CSS_SELECTOR, f'[data-session-row="{hot}"]'),
                    20,
                    "the sessions table at a phone's width",
                )
                wide = await _js(
                    driver, "return document.documentElement.scrollWidth - window.innerWidth;"
                )
                assert wide <= 1
                await _shot(driver, "overview-phone")


async def test_with_tokens_the_page_asks_for_one_and_shows_a_stopped_worker_in_red(
    pipeline_settings: Settings, tmp_path: Path
) -> None:
    """No worker runs here: the page must say so, in red and in words."""
    settings = pipeline_settings.model_copy(
        update={
            "api": ApiSettings(
                tokens=(ApiToken(name="viewer", role="read", sha256=hash_token("read-secret")),)
            ),
            "worker": WorkerSettings(group_id=f"nobody-{uuid.uuid4().hex[:6]}"),
        }
    )
    async with TokenQuota(settings) as quota:
        await quota.emit(used(f"page-{uuid.uuid4().hex[:6]}", 10, utc_now()))  # waiting, unread
    async with serve_app(settings, tmp_path / "api-spool") as url:
        with browser() as driver:
            await asyncio.to_thread(driver.get, url + "/")
            await wait_for(
                driver, lambda d: d.find_element(By.ID, "token-dialog").is_displayed(), 20,
                "the token prompt",
            )  # fmt: skip
            assert "read-secret" not in await _js(driver, "return location.href;")

            def give_token() -> None:
                driver.find_element(By.ID, "token-input").send_keys("read-secret")
                driver.find_element(By.ID, "token-submit").click()

            await asyncio.to_thread(give_token)
            banner = await wait_for(
                driver,
                lambda d: d.find_elements(By.ID, "worker-down"),
                30,
                "the worker-down banner",
            )
            assert "Worker down" in await asyncio.to_thread(lambda: banner[0].text)
            pill = await _js(driver, "return document.getElementById('health-pill').textContent;")
            assert pill == "pipeline: down"
            assert "read-secret" not in await _js(driver, "return location.href;")
            await _shot(driver, "worker-down")
