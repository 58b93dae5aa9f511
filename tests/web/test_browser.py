"""The page in real headless Chromium (Debian's /usr/bin/chromium) against real workers.

It loads, search finds an endpoint, a registration made after the page loaded shows up
without a reload, and a ``<script>`` user agent renders as text. A screenshot is saved under
``test-artifacts/``.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from playwright.async_api import expect

from .conftest import SCRIPT_UA, Cluster

pytestmark = [pytest.mark.browser, pytest.mark.integration]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture
async def page():  # type: ignore[no-untyped-def]
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium); no browser is downloaded")
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        try:
            context = await browser.new_context(viewport={"width": 1400, "height": 1000})
            yield await context.new_page()
        finally:
            await browser.close()


async def test_page_search_live_update_and_escaping(web_cluster: Cluster, page) -> None:  # type: ignore[no-untyped-def]
    problems: list[str] = []
    page.on("dialog", lambda d: problems.append(f"dialog: {d.message}"))
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)

    url = web_cluster.workers[1].url
    await page.goto(f"{url}/")
    rows = page.locator("#rows tr")
    await rows.first.wait_for(timeout=15_000)
    assert await rows.count() == 100  # server-side paging: one page of 10,001
    await expect(page.locator("#range")).to_have_text(re.compile(r"^1–100 of 100\d\d$"), timeout=10_000)
    await page.locator(".node[data-node='node1']").wait_for(timeout=10_000)

    # the page's own script runs under the strict CSP (it would fail on eval or inline code)
    assert await page.locator("#status").text_content() != "connecting…"

    # search
    await page.fill("#q", "10042")
    await page.locator("#rows tr[data-endpoint='PJSIP/10042']").wait_for(timeout=10_000)
    await expect(rows).to_have_count(1, timeout=10_000)
    ua_cell = page.locator("#rows tr[data-endpoint='PJSIP/10042'] td.ua")
    assert await ua_cell.text_content() == SCRIPT_UA  # the markup is shown as text
    assert await page.locator("#rows img, #rows script").count() == 0
    assert await page.title() != "pwned"

    # the row's detail lists its contact, escaped the same way
    await page.click("#rows tr[data-endpoint='PJSIP/10042']")
    await page.locator("#detail-rows tr").first.wait_for(timeout=10_000)
    assert SCRIPT_UA in (await page.locator("#detail-rows").text_content() or "")

    # live update: a phone registering after the page loaded appears without reload
    await page.fill("#q", "77777")
    await expect(rows).to_have_count(0, timeout=10_000)
    feeder = web_cluster.feeder
    await feeder.send([feeder.contact("PJSIP/77777", "node2", ip="10.77.0.7", ua="Late Phone <b>1</b>")])
    web_cluster.expected["PJSIP/77777"] = {"node": "node2", "ip": "10.77.0.7", "ua": "Late Phone <b>1</b>",
                                           "device": "UNKNOWN"}
    row = page.locator("#rows tr[data-endpoint='PJSIP/77777']")
    await row.wait_for(timeout=20_000)
    cells = await row.locator("td").all_text_contents()
    assert cells[0] == "PJSIP/77777" and cells[1] == "node2" and cells[2] == "10.77.0.7:5060/udp"
    assert cells[3] == "REGISTERED" and cells[6] == "Late Phone <b>1</b>"

    await page.fill("#q", "")
    await expect(rows).to_have_count(100, timeout=10_000)
    # A few polls: each node's line of the chart gets some points.
    await page.wait_for_function(
        "() => { const lines = document.querySelectorAll('#chart polyline');"
        " return lines.length > 0 && [...lines].every("
        "   (l) => (l.getAttribute('points') || '').trim().split(/\\s+/).length >= 3); }",
        timeout=20_000,
    )
    assert await page.locator("#chart polyline").count() == 3
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "web-page.png"), full_page=False)
    assert problems == []


async def test_page_with_token(kafka, topics, procs, tmp_path, http, page) -> None:  # type: ignore[no-untyped-def]
    """``/?token=`` once: the page keeps it in sessionStorage, drops it from the address bar,
    and gets data; without it the page asks for a token instead of showing rows."""
    from .conftest import Cluster, Feeder, wait_ready, wait_total

    token = "page-token-1"
    cluster = Cluster(kafka, topics, procs, Feeder(kafka, topics), [], token=token)
    w = cluster.start_worker("wp", tmp_path / "wp", token=token)
    feeder = cluster.feeder
    await feeder.send([feeder.heartbeat("node0"), feeder.contact("PJSIP/5001", "node0", ip="10.5.0.1")])
    await wait_ready(http, [w], topics.partitions)
    await wait_total(http, cluster, 1)

    await page.goto(f"{w.url}/")
    await expect(page.locator("#token-form")).to_be_visible(timeout=10_000)
    assert await page.locator("#rows tr").count() == 0

    await page.goto(f"{w.url}/?token={token}")
    await page.locator("#rows tr[data-endpoint='PJSIP/5001']").wait_for(timeout=10_000)
    assert "token" not in page.url
    assert await page.evaluate("sessionStorage.getItem('astreg.token')") == token
    await expect(page.locator("#token-form")).to_be_hidden()
