"""Call quality in the API row and on the page (real worker, real alerter, headless Chromium).

One worker serves the page with ``--quality-url`` pointing at ``astreg alerts run``'s figures;
RTCP samples of PJSIP/1006 make its row carry jitter/loss figures and the detail panel show
them with a small jitter chart.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import expect

from astreg.proc import ProcessGroup, astreg_argv
from astreg.settings import KafkaSettings, TopicSettings
from schemas.models import ContactStatus, Source
from tests.support.alerts import Feeder, alerter_env, free_port, wait_until

from .conftest import Cluster, wait_ready

pytestmark = [pytest.mark.browser, pytest.mark.integration]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


async def test_quality_figures_in_the_api_row_and_on_the_page(
    kafka: KafkaSettings, topics: TopicSettings, procs: ProcessGroup, tmp_path: Path
) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed; no browser is downloaded")
    port = free_port()
    procs.start("alerter", astreg_argv("alerts", "run"),
                env=alerter_env(kafka, topics, alert_metrics_port=port, alert_quality_window_s=300))
    procs.env["ASTREG_QUALITY_URL"] = f"http://127.0.0.1:{port}"
    cluster = Cluster(kafka, topics, procs, None, [])  # type: ignore[arg-type]
    worker = cluster.start_worker("w1", tmp_path / "w1")
    async with Feeder(kafka, topics) as feed:
        await feed.send(feed.node("node1"), feed.contact("node1", "PJSIP/1006", ContactStatus.REACHABLE, Source.LIVE))
        await feed.send(*(feed.rtcp("node1", "PJSIP/1006", jitter_ms=j, loss=0.02) for j in (6.0, 8.0, 10.0)))
        async with aiohttp.ClientSession() as http:
            await wait_ready(http, [worker], topics.partitions)

            async def row() -> dict | None:  # type: ignore[type-arg]
                async with http.get(f"{worker.url}/api/v1/endpoints/PJSIP%2F1006") as r:
                    body = await r.json() if r.status == 200 else None
                return body if body and body.get("quality") else None

            found = await wait_until(row, 60, "the row with its quality")
    q = found["quality"]
    assert q["jitter_mean_ms"] == 8.0 and q["jitter_last_ms"] == 10.0 and q["samples"] == 3
    assert q["loss_mean"] == pytest.approx(0.02) and q["node"] == "node1"
    assert [p["jitter_ms"] for p in q["points"]] == [6.0, 8.0, 10.0]

    from playwright.async_api import async_playwright

    problems: list[str] = []
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM,
                                          args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = await browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            await page.goto(f"{worker.url}/")
            await page.fill("#q", "1006")
            target = page.locator("#rows tr[data-endpoint='PJSIP/1006']")
            await target.wait_for(timeout=15_000)
            await target.click()
            await expect(page.locator("#quality")).to_be_visible(timeout=10_000)
            await expect(page.locator("#quality-figures")).to_contain_text("mean 8.0 ms", timeout=10_000)
            assert "loss mean 2.0 %" in (await page.locator("#quality-figures").text_content() or "")
            points = await page.locator("#quality-chart polyline").get_attribute("points")
            assert points is not None and len(points.split()) == 3
        finally:
            await browser.close()
    assert problems == []
