"""The whole product on loopback: real model servers, the real router, the simulator, the report.

The report's counts must equal the rows in the outcome store and the simulator's own counts.
"""

from __future__ import annotations

import io
import json
import re
import sqlite3
from pathlib import Path

import httpx
import pytest

from abtest.processes import free_port
from abtest.simulator import SimulationConfig, SimulationSummary, run_simulation
from abtest.stack import RunningStack, StackConfig, running_stack
from tests.report.store import write_reports_in


@pytest.fixture(scope="module")
def stack_config(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> StackConfig:
    return StackConfig(
        router_port=free_port(),
        model_ports={"model_a": free_port(), "model_b": free_port()},
        results_dir=tmp_path_factory.mktemp("results"),
        models_dir=models_dir,
    )


@pytest.fixture(scope="module")
def simulated(stack_config: StackConfig) -> tuple[SimulationSummary, dict[str, int]]:
    """Run 3,000 simulated visits through the stack, then stop it (the router flushes the store)."""
    logs = io.StringIO()
    stack: RunningStack
    with running_stack(stack_config, out=logs) as stack:
        summary = run_simulation(  # README_SIMULATE
            SimulationConfig(
                url=stack_config.router_url, users=400, requests=3000, concurrency=8, seed=11, progress=False
            )
        )
    print(summary.text())
    codes = {name: process.returncode for name, process in stack.processes.items()}
    return summary, codes


def test_stack_serves_both_models_through_the_router(simulated: tuple[SimulationSummary, dict[str, int]]) -> None:
    summary, _ = simulated
    assert summary.statuses == {200: 3000}
    assert set(summary.exposures_by_variant) == {"model_a", "model_b"}
    assert min(summary.exposures_by_variant.values()) > 1000  # the 50/50 hash split really splits
    assert summary.clicks_sent == summary.clicks_accepted > 0


def test_store_holds_exactly_what_the_simulator_sent(
    simulated: tuple[SimulationSummary, dict[str, int]], stack_config: StackConfig
) -> None:
    summary, _ = simulated
    with sqlite3.connect(stack_config.results_dir / "outcomes.sqlite3") as db:
        exposures = dict(db.execute("SELECT variant, COUNT(*) FROM exposures GROUP BY variant").fetchall())
        clicks = dict(db.execute("SELECT variant, COUNT(*) FROM feedback WHERE event = 'click' GROUP BY variant"))
        users = db.execute("SELECT COUNT(DISTINCT user_id) FROM exposures").fetchone()[0]
        phases = db.execute("SELECT COUNT(*) FROM phases").fetchone()[0]
    assert exposures == dict(summary.exposures_by_variant)
    assert clicks == dict(summary.clicks_by_variant)
    assert users == len(summary.users)
    assert phases == 1


def test_report_counts_equal_the_store_and_the_simulator(
    simulated: tuple[SimulationSummary, dict[str, int]], stack_config: StackConfig
) -> None:
    summary, _ = simulated
    paths = write_reports_in(stack_config.results_dir)
    assert sorted(path.name for path in paths) == ["report.html", "report.json", "report.md"]
    report = json.loads((stack_config.results_dir / "report.json").read_text())
    assert report["strategy"] == "hash" and report["unit"] == "user"
    by_variant = {row["name"]: row for row in report["variants"]}
    assert {name: row["exposures"] for name, row in by_variant.items()} == dict(summary.exposures_by_variant)
    assert {name: row["feedback_events"] for name, row in by_variant.items()} == dict(summary.clicks_by_variant)
    assert sum(row["users"] for row in by_variant.values()) == len(summary.users)  # hash: no user in two variants
    assert report["users_in_several_variants"] == 0
    assert report["srm"]["mismatch"] is False
    assert report["exclusions"]["exposures"] == 0
    markdown = (stack_config.results_dir / "report.md").read_text()
    assert "model_b vs model_a" in markdown


def test_simulated_ground_truth_favours_the_model_that_recommends_what_users_like(
    simulated: tuple[SimulationSummary, dict[str, int]],
) -> None:
    # model_b's lists have higher true affinity (tests/models): the simulator must reflect that in clicks
    summary, _ = simulated
    rate = {v: summary.clicks_by_variant[v] / summary.exposures_by_variant[v] for v in summary.exposures_by_variant}
    assert rate["model_b"] > rate["model_a"]


def test_stack_stops_cleanly_on_request(simulated: tuple[SimulationSummary, dict[str, int]]) -> None:
    from abtest.processes import CLEAN_EXIT_CODES

    _, codes = simulated
    assert all(code in CLEAN_EXIT_CODES for code in codes.values()), codes


def test_router_refuses_traffic_after_the_stack_stopped(
    simulated: tuple[SimulationSummary, dict[str, int]], stack_config: StackConfig
) -> None:
    with pytest.raises(httpx.ConnectError):
        httpx.get(stack_config.router_url + "/health", timeout=2)


#: What README.md's "Use it" section documents, line by line: the simulate command is this test's `simulated`.
README_SIMULATE = "abtest simulate --url http://localhost:8080 --users 400 --requests 3000 --concurrency 8 --seed 11"


def readme_block(after: str) -> str:
    """The content of the first fenced block of README.md after the text `after`."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    rest = text[text.index(after) + len(after) :]
    opening = rest.index("```")
    body = rest[rest.index("\n", opening) + 1 :]
    return body[: body.index("```")].rstrip("\n")


def untimed(text: str) -> str:
    """The summary without what depends on the machine: the elapsed time and the request rate."""
    return re.sub(r"in [\d.]+s \(\d+ req/s", "in <t>s (<n> req/s", text)


def test_readme_shows_what_the_documented_simulate_command_prints(
    simulated: tuple[SimulationSummary, dict[str, int]],
) -> None:
    summary, _ = simulated
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert README_SIMULATE in readme  # the command the README documents is the one run here
    assert untimed(readme_block("It prints what it sent and what came back")) == untimed(summary.text())


def test_readme_verdict_is_what_the_report_of_that_run_says(
    simulated: tuple[SimulationSummary, dict[str, int]], stack_config: StackConfig
) -> None:
    write_reports_in(stack_config.results_dir)
    markdown = (stack_config.results_dir / "report.md").read_text()
    section = re.search(r"^## Verdict.*?\n\n(?:- .*\n)+", markdown, re.MULTILINE)
    assert section is not None, markdown
    assert (
        readme_block("For the run above, the verdict section of `abtest report` reads")
        == section.group(0).replace("\n\n", "\n").strip()
    )
