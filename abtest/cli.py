"""`abtest`: the project's one command line - up, train, simulate, report.

abtest up                                  # the whole stack as local processes (router on :8080)
abtest train model_a                       # train and save an artefact, with offline metrics
abtest simulate --url http://localhost:8080 --users 1000 --requests 20000 --concurrency 20 --seed 7
abtest report [--results-dir DIR] [--phase N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from abtest.processes import ServiceError
from recsys.data import DataError
from recsys.training import DEFAULT_SEED, MODEL_NAMES, default_models_dir, trainer


def _results_dir() -> Path:
    return Path(os.environ.get("RESULTS_DIR", "results"))


def _cmd_up(args: argparse.Namespace) -> int:
    from abtest.stack import StackConfig, serve_forever

    config = StackConfig(
        config=args.config,
        router_port=args.port,
        model_ports={"model_a": args.model_a_port, "model_b": args.model_b_port},
        results_dir=args.results_dir,
        models_dir=args.models_dir,
        data_spec=args.data,
    )
    return serve_forever(config)


def _cmd_train(args: argparse.Namespace) -> int:
    from recsys.training import train_and_save

    unknown = sorted(set(args.models) - set(MODEL_NAMES))
    if unknown:
        print(
            f"abtest train: unknown model {', '.join(unknown)}; choose from {', '.join(MODEL_NAMES)}",
            file=sys.stderr,
        )
        return 2
    for name in args.models or MODEL_NAMES:
        model = train_and_save(trainer(name), args.models_dir, data_spec=args.data, seed=args.seed)
        meta = model.metadata
        print(f"{name}: {meta['algorithm']} on {meta['dataset']['spec']} in {meta['training_seconds']}s")
        print(
            "  "
            + ", ".join(
                f"{key}={value:.4f}" if isinstance(value, float) else f"{key}={value}"
                for key, value in meta["metrics"].items()
            )
        )
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from abtest.simulator import SimulationConfig, run_simulation

    config = SimulationConfig(
        url=args.url.rstrip("/"),
        users=args.users,
        requests=args.requests,
        concurrency=args.concurrency,
        seed=args.seed,
        k=args.k,
        max_seconds=args.max_seconds,
        data_spec=args.data,
        progress=not args.quiet,
    )
    summary = run_simulation(config)
    print(summary.text())
    if args.json:
        args.json.write_text(json.dumps(summary.as_dict(), indent=2) + "\n", encoding="utf-8")
    return 0 if summary.exposures else 1


def _cmd_report(args: argparse.Namespace) -> int:
    from router.errors import ConfigError, ReportError, StoreError
    from router.report import NoDataError, write_reports
    from router.store import backend_for, default_store_url, describe_url

    url = os.environ.get("STORE_URL") or default_store_url(args.results_dir)
    try:
        paths = write_reports(backend_for(url), args.results_dir, args.phase)
    except NoDataError as exc:
        hint = "" if args.phase is not None else "; an earlier phase may have data: --phase N"
        print(f"abtest report: {describe_url(url)}: {exc}{hint}", file=sys.stderr)
        return 1
    except (ConfigError, ReportError, StoreError) as exc:
        print(f"abtest report: {describe_url(url)}: {exc}", file=sys.stderr)
        return 2
    markdown = next(path for path in paths if path.suffix == ".md")
    if not args.quiet:
        print(markdown.read_text(encoding="utf-8"), end="")
    print("written: " + ", ".join(str(path) for path in paths))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from abtest.bench import models, router, sensitivity, store

    if args.what in ("models", "all"):
        models.run(args.results_dir, seconds=args.seconds)
    if args.what in ("store", "all"):
        store.run(args.results_dir)
    if args.what in ("router", "all"):
        router.run(
            args.results_dir,
            rounds=args.rounds,
            seconds=args.seconds,
            soak_seconds=args.soak_seconds,
            baseline=args.baseline,
        )
    if args.what in ("sensitivity", "all"):
        sensitivity.run(args.results_dir)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="abtest", description="A/B router for recommender model servers.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="run the whole stack locally (no Docker): models + router")
    from abtest.stack import DEFAULT_CONFIG

    up.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="experiment YAML (router/experiment.yaml)")
    up.add_argument("--port", type=int, default=8080, help="router port (default 8080)")
    up.add_argument("--model-a-port", type=int, default=8001)
    up.add_argument("--model-b-port", type=int, default=8002)
    up.add_argument("--results-dir", type=Path, default=_results_dir(), help="outcomes and reports ($RESULTS_DIR)")
    up.add_argument("--models-dir", type=Path, default=default_models_dir(), help="artefacts ($MODELS_DIR)")
    up.add_argument("--data", help="data spec ($ABTEST_DATA; default: the embedded synthetic set)")
    up.set_defaults(run=_cmd_up)

    train = commands.add_parser("train", help="train model artefacts and print their offline metrics")
    train.add_argument("models", nargs="*", metavar="MODEL", help="model_a and/or model_b (default: both)")
    train.add_argument("--models-dir", type=Path, default=default_models_dir(), help="artefacts ($MODELS_DIR)")
    train.add_argument("--data", help="data spec ($ABTEST_DATA; default: the embedded synthetic set)")
    train.add_argument("--seed", type=int, default=DEFAULT_SEED)
    train.set_defaults(run=_cmd_train)

    simulate = commands.add_parser("simulate", help="send simulated user traffic (with ground-truth clicks)")
    simulate.add_argument("--url", default="http://127.0.0.1:8080", help="the router (default http://127.0.0.1:8080)")
    simulate.add_argument("--users", type=int, default=1000)
    simulate.add_argument("--requests", type=int, default=20_000)
    simulate.add_argument("--concurrency", type=int, default=20)
    simulate.add_argument("--seed", type=int, default=7)
    simulate.add_argument("--k", type=int, default=10)
    simulate.add_argument("--max-seconds", type=float, default=600.0, help="stop after this long at most")
    simulate.add_argument("--data", help="data spec the models were trained on ($ABTEST_DATA)")
    simulate.add_argument("--json", type=Path, help="also write the summary as JSON here")
    simulate.add_argument("--quiet", action="store_true", help="no progress bar")
    simulate.set_defaults(run=_cmd_simulate)

    report = commands.add_parser("report", help="build the A/B results report (report.md, .html, .json)")
    report.add_argument("--results-dir", type=Path, default=_results_dir(), help="where outcomes.sqlite3 is")
    report.add_argument("--phase", type=int, help="which phase (default: the latest)")
    report.add_argument("--quiet", action="store_true", help="only list the files written")
    report.set_defaults(run=_cmd_report)

    bench = commands.add_parser("bench", help="benchmarks: figures printed and written under the results folder")
    bench.add_argument(
        "what",
        choices=["models", "router", "store", "sensitivity", "all"],
        help="models: each model server's cost; router: router vs direct vs nginx (and interleaved); store: "
        "outcome writes/s; sensitivity: users an A/B test and interleaving need to find the better model",
    )
    bench.add_argument("--seconds", type=float, default=5.0, help="length of each load run")
    bench.add_argument("--rounds", type=int, default=3, help="router: alternating rounds per target and level")
    bench.add_argument("--soak-seconds", type=float, default=60.0, help="router: full-load run for the RSS check")
    bench.add_argument(
        "--baseline", type=Path, help="router: also run the router from this checkout (e.g. a git worktree of main)"
    )
    bench.add_argument("--results-dir", type=Path, default=_results_dir())
    bench.set_defaults(run=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (DataError, ServiceError) as exc:
        print(f"abtest: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
