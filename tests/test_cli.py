"""`abtest --help` tells a newcomer everything: every option with its help and default, examples, the version."""

from __future__ import annotations

import argparse
from importlib.metadata import version
from pathlib import Path

import pytest

from abtest.bench import store
from abtest.cli import BENCHES, build_parser, main, metrics_line


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_every_option_has_help_with_its_default_and_the_command_has_examples(name: str) -> None:
    command = subcommands()[name]
    text = command.format_help()
    assert "examples:\n  abtest " + name in text
    for action in command._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"abtest {name} {action.dest}: no help text"
        if action.default not in (None, False) and action.option_strings:
            assert f"(default: {action.default})" in " ".join(text.split()), f"abtest {name} {action.dest}"


def test_version_and_top_level_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"abtest {version('ab-router')}"
    assert "examples:" in build_parser().format_help()


def test_every_benchmark_named_in_help_runs_something() -> None:
    assert {"bandit", "report", "store", "router"} <= set(BENCHES) and "export" in subcommands()
    assert all(callable(run) for run in BENCHES.values())


def test_train_prints_metrics_without_float_noise() -> None:
    line = metrics_line({"precision_at_10": 0.17970000000000003, "rmse": None, "users_evaluated": 1000})
    assert line == "precision_at_10=0.1797, rmse=None, users_evaluated=1000"


def test_bench_store_says_the_overload_is_intended_before_that_step(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rows = store.run(tmp_path, rates=(500, 1000), seconds=0.2, overload_from=1000)
    out = capsys.readouterr().out
    notice = out.index("That loss is the intended overload, measured and counted, not a bug.")
    assert out.index("step 1/2, offering 500") < notice < out.index("step 2/2, offering 1,000")
    assert [row["offered_rate"] for row in rows] == [500, 1000]
