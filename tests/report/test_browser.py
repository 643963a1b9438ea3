"""report.html in a real headless browser (Debian's Chromium through Playwright): renders, no errors.

A screenshot is always saved in the test's tmp_path; set ``REPORT_SCREENSHOT_DIR`` to also keep a copy,
e.g. ``REPORT_SCREENSHOT_DIR=results python -m pytest tests/report/test_browser.py``.
``CHROMIUM_PATH`` overrides where the browser is (default ``/usr/bin/chromium``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from playwright.sync_api import ConsoleMessage, Error, sync_playwright

from router.report import write_reports
from tests.report.store import OutcomeStore
from tests.report.test_build import fill_two_phases

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def test_report_html_renders_in_chromium_without_errors(tmp_path: Path) -> None:
    with OutcomeStore.create(tmp_path / "outcomes.sqlite3") as store:
        fill_two_phases(store)
    html_path = next(p for p in write_reports(tmp_path, phase=1) if p.suffix == ".html")
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
            for section in ("#traffic", "#outcomes", "#comparisons", "#srm", "#offline", "#exclusions", "#method"):
                assert page.locator(section).is_visible(), section
            for plot in ("#plot-metrics", "#plot-timeline", "#plot-latency"):
                svg = page.locator(f"{plot} svg")
                assert svg.count() == 1, plot
                box = svg.bounding_box()
                assert box is not None and box["width"] > 300 and box["height"] > 100, plot
            assert page.locator("#plot-timeline svg path").count() > 2  # the cumulative CTR lines are drawn
            screenshot = tmp_path / "report.png"
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()

    assert problems == []
    assert requests == [html_path.as_uri()]  # self-contained: nothing else was fetched
    assert screenshot.stat().st_size > 10_000
    if keep := os.environ.get("REPORT_SCREENSHOT_DIR"):
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, Path(keep) / "report.png")
