"""report.html in a real headless browser (Debian's Chromium through Playwright): renders, no errors.

A screenshot is always saved in the test's tmp_path; set ``REPORT_SCREENSHOT_DIR`` to also keep a copy,
e.g. ``REPORT_SCREENSHOT_DIR=results python -m pytest tests/report/test_browser.py``.
``CHROMIUM_PATH`` overrides where the browser is (default ``/usr/bin/chromium``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import ConsoleMessage, Error, sync_playwright

from tests.report.store import HandStore, write_reports_in
from tests.report.test_build import HASH_WEIGHTS, fill_two_phases, generated_store

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.mark.parametrize("case", ["two phases", "sample-ratio mismatch"])
def test_report_html_renders_in_chromium_without_errors(tmp_path: Path, case: str) -> None:
    if case == "two phases":
        with HandStore.create(tmp_path / "outcomes.sqlite3") as store:
            fill_two_phases(store)
    else:
        users, ctr = {"model_a": 900, "model_b": 1100}, {"model_a": 0.1, "model_b": 0.1}
        generated_store(tmp_path / "outcomes.sqlite3", users, ctr, HASH_WEIGHTS)
    html_path = next(p for p in write_reports_in(tmp_path, phase=1) if p.suffix == ".html")
    problems: list[str] = []
    requests: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            problems.append(f"console {message.type}: {message.text}")

    def on_page_error(error: Error) -> None:
        problems.append(f"page error: {error}")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"), args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", on_console)
            page.on("pageerror", on_page_error)
            page.on("request", lambda request: requests.append(request.url))
            page.goto(html_path.as_uri(), wait_until="load")

            assert page.title() == "A/B results: rec-ab, phase 1"
            assert "model_b vs model_a" in page.locator("#verdict").inner_text()
            alert = page.locator("#srm-alert")
            if case == "sample-ratio mismatch":
                assert alert.is_visible() and "SAMPLE-RATIO MISMATCH" in alert.inner_text()
                assert "verdict withheld" in page.locator("#verdict").inner_text()
            else:
                assert alert.count() == 0
            # The outcome first, coloured by what it is, with the sentence and the numbers.
            card = page.locator("#outcome .outcome")
            assert card.count() == 1
            outcome = card.get_attribute("data-outcome")
            assert outcome == ("withheld" if case == "sample-ratio mismatch" else "inconclusive"), outcome
            assert f"outcome-{outcome}" in (card.get_attribute("class") or "")
            colour = card.evaluate("e => getComputedStyle(e).backgroundColor")
            assert colour not in ("rgba(0, 0, 0, 0)", "rgb(255, 255, 255)"), colour
            assert "model_b vs model_a" in card.inner_text() and "CTR model_a " in card.inner_text()
            card_box, verdict_box = card.bounding_box(), page.locator("#verdict").bounding_box()
            assert card_box is not None and verdict_box is not None and card_box["y"] < verdict_box["y"]
            nav = page.locator("#phase-nav")
            assert nav.is_visible() and nav.locator("[aria-current]").inner_text() == "phase 1"
            verdict = page.locator("#verdict").inner_text()
            assert "analysis: sequential" in verdict and "planned size:" in verdict and "guardrails:" in verdict
            sections = ("#traffic", "#outcomes", "#comparisons", "#plan", "#guardrails", "#srm", "#offline")
            for section in (*sections, "#exclusions", "#method"):
                assert page.locator(section).is_visible(), section
            page_width = page.locator("#plots").bounding_box()
            assert page_width is not None
            for plot in ("#plot-metrics", "#plot-timeline", "#plot-latency"):
                svg = page.locator(f"{plot} svg")
                assert svg.count() == 1, plot
                box = svg.bounding_box()
                assert box is not None and box["height"] > 100, plot
                assert box["width"] >= 0.98 * page_width["width"], (plot, box, page_width)  # at the page's width
            assert page.locator("#plot-timeline svg path").count() > 2  # the cumulative CTR lines are drawn
            assert page.locator('#plot-timeline svg g[id*="PolyCollection"]').count() == 2  # a band per variant, no gap
            screenshot = tmp_path / f"report-{case.replace(' ', '-')}.png"
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()

    assert problems == []
    assert requests == [html_path.as_uri()]  # self-contained: nothing else was fetched
    assert screenshot.stat().st_size > 10_000
    if keep := os.environ.get("REPORT_SCREENSHOT_DIR"):
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, Path(keep) / screenshot.name)
