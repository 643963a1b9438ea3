"""`abtest`: the project's one command line - up, train, simulate, report, export, bench.

abtest up                                  # the whole stack as local processes (router on :8080)
abtest train model_a                       # train and save an artefact, with offline metrics
abtest simulate --url http://localhost:8080 --users 1000 --requests 20000 --concurrency 20 --seed 7
abtest report [--results-dir DIR] [--phase N] [--truth [SPEC]]
abtest export [--phase N] [--format csv|parquet] [--out DIR]             # a phase's rows for notebooks
abtest promote model_c [--weight W] [--config router/experiment.yaml]   # a shadow becomes a variant
abtest bench models|router|store|sensitivity|shadow|bandit|all

`abtest COMMAND --help` shows every option with its default and a few examples. Exit codes: 0 done,
1 done but nothing to show (no exposures, no data), 2 usage or configuration error (nothing was done).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

from abtest.processes import ServiceError
from recsys.data import DataError
from recsys.logs import round_floats
from recsys.training import DEFAULT_SEED, MODEL_NAMES, default_models_dir, trainer

if TYPE_CHECKING:
    from router.report.load import SnapshotSource


def _bench_models(args: argparse.Namespace) -> None:
    from abtest.bench import models

    models.run(args.results_dir, seconds=args.seconds)


def _bench_store(args: argparse.Namespace) -> None:
    from abtest.bench import store

    store.run(args.results_dir, postgres_url=args.store_url)


def _bench_router(args: argparse.Namespace) -> None:
    if args.workers_cpu:
        from abtest.bench import workers

        workers.run(args.results_dir, rounds=args.rounds, seconds=args.seconds)
        return
    from abtest.bench import router

    router.run(
        args.results_dir,
        rounds=args.rounds,
        seconds=args.seconds,
        soak_seconds=args.soak_seconds,
        baseline=args.baseline,
    )


def _bench_shadow(args: argparse.Namespace) -> None:
    from abtest.bench import shadow

    shadow.run(args.results_dir, rounds=args.rounds, seconds=args.seconds)


def _bench_report(args: argparse.Namespace) -> None:
    from abtest.bench import report

    report.run(args.results_dir, sizes=tuple(args.sizes), postgres_url=args.store_url)


def _bench_sensitivity(args: argparse.Namespace) -> None:
    from abtest.bench import sensitivity

    sensitivity.run(args.results_dir)


def _bench_bandit(args: argparse.Namespace) -> None:
    from abtest.bench import bandit

    bandit.run(args.results_dir)


#: Benchmarks by name (`abtest bench NAME`; `all` runs BENCH_ALL in order).
BENCHES: dict[str, Callable[[argparse.Namespace], None]] = {
    "models": _bench_models,
    "store": _bench_store,
    "router": _bench_router,
    "sensitivity": _bench_sensitivity,
    "shadow": _bench_shadow,
    "report": _bench_report,
    "bandit": _bench_bandit,
}
BENCH_ALL = ("models", "store", "router")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's default after its help (except None and flags, whose help says it), examples verbatim."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


def _package_version() -> str:
    try:
        return version("ab-router")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def _results_dir() -> Path:
    return Path(os.environ.get("RESULTS_DIR", "results"))


def _http_url(text: str) -> str:
    from abtest.simulator import check_url

    try:
        return check_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _cmd_up(args: argparse.Namespace) -> int:
    from abtest.stack import StackConfig, StackConfigError, serve_forever

    config = StackConfig(
        config=args.config,
        router_port=args.port,
        model_ports={"model_a": args.model_a_port, "model_b": args.model_b_port},
        results_dir=args.results_dir,
        models_dir=args.models_dir,
        data_spec=args.data,
        strategy=args.strategy,
    )
    try:
        return serve_forever(config)
    except StackConfigError as exc:
        print(f"abtest up: nothing started: {exc}", file=sys.stderr)
        return 2


def metrics_line(metrics: dict[str, object]) -> str:
    """`key=value, ...` with floats rounded (0.1797, not 0.17970000000000003)."""
    return ", ".join(f"{key}={value}" for key, value in round_floats(metrics).items())


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
        print("  " + metrics_line(meta["metrics"]))
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from abtest.simulator import RouterUnreachableError, SimulationConfig, run_simulation

    config = SimulationConfig(
        url=args.url,
        users=args.users,
        requests=args.requests,
        concurrency=args.concurrency,
        seed=args.seed,
        k=args.k,
        max_seconds=args.max_seconds,
        data_spec=args.data,
        progress=not args.quiet,
    )
    try:
        summary = run_simulation(config)
    except RouterUnreachableError as exc:
        print(
            f"abtest simulate: {exc}; nothing was sent. Is the stack up (abtest up, docker compose up)?",
            file=sys.stderr,
        )
        return 2
    print(summary.text())
    if args.json:
        args.json.write_text(json.dumps(summary.as_dict(), indent=2) + "\n", encoding="utf-8")
    return 0 if summary.exposures else 1


def _cmd_report(args: argparse.Namespace) -> int:
    from router.errors import ConfigError, ReportError, StoreError
    from router.report import NoDataError, write_reports
    from router.store import backend_for, default_store_url, describe_url

    url = os.environ.get("STORE_URL") or default_store_url(args.results_dir)
    truth = None
    if args.truth is not None:  # simulation: score shadow and live lists by the data set's ground truth
        from recsys.data import load_dataset
        from recsys.truth import ListAffinity

        truth = ListAffinity(load_dataset(args.truth or None))
    if not args.quiet:
        which = f"phase {args.phase}" if args.phase is not None else "the latest phase"
        print(f"abtest report: building the report of {which} from {describe_url(url)} ...", file=sys.stderr)
    try:
        paths = write_reports(
            backend_for(url),
            args.results_dir,
            args.phase,
            truth=truth,
            truth_name=None if truth is None else truth.description,
        )
    except NoDataError as exc:
        print(f"abtest report: {describe_url(url)}: {exc}{_phase_hint(backend_for(url), args.phase)}", file=sys.stderr)
        return 1
    except (ConfigError, ReportError, StoreError) as exc:
        print(f"abtest report: {describe_url(url)}: {exc}", file=sys.stderr)
        return 2
    markdown = next(path for path in paths if path.suffix == ".md")
    if not args.quiet:
        print(markdown.read_text(encoding="utf-8"), end="")
    print("written: " + ", ".join(str(path) for path in paths))
    return 0


def _phase_hint(store: SnapshotSource, phase: int | None) -> str:
    """'; phase 1 has data: abtest report --phase 1' when an earlier phase (or, for a missing one, any) has data."""
    from router.report import list_phases

    earlier = list_phases(store, phase).earlier_with_data()
    return "" if earlier is None else f"; phase {earlier} has data: abtest report --phase {earlier}"


def _cmd_export(args: argparse.Namespace) -> int:
    from abtest.export import ExportError, export_phase
    from router.errors import ConfigError, ReportError, StoreError
    from router.store import backend_for, default_store_url, describe_url

    url = os.environ.get("STORE_URL") or default_store_url(args.results_dir)
    out = args.out or args.results_dir / "export"
    try:
        written = export_phase(backend_for(url), out, args.phase, formats=args.format)
    except (ConfigError, ExportError, ReportError, StoreError) as exc:
        print(f"abtest export: {describe_url(url)}: {exc}", file=sys.stderr)
        return 2
    for table, (path_list, rows) in written.items():
        print(f"{table}: {rows:,} rows -> {', '.join(str(path) for path in path_list)}")
    return 0


def _cmd_promote(args: argparse.Namespace) -> int:
    from router.errors import ConfigError
    from router.promotion import promote_file

    try:
        done = promote_file(args.config, args.shadow, weight=args.weight)
    except (ConfigError, OSError) as exc:
        print(f"abtest promote: {exc}", file=sys.stderr)
        return 2
    remaining = ", ".join(done.remaining_shadows) or "none"
    print(
        f"{done.shadow} is now a variant with weight {done.weight:g} in {done.path} (shadows left: {remaining}).\n"
        f"The previous file is {done.backup} (comments are not kept in the new one).\n"
        "Apply it: `kill -HUP <router pid>` (or `docker compose kill -s HUP router`), or\n"
        '  curl -X POST -H "Authorization: Bearer $ROUTER_ADMIN_TOKEN" http://127.0.0.1:8080/admin/reload\n'
        "The weights change, so the reload starts a new phase: results before and after are never mixed."
    )
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    names = BENCH_ALL if args.what == "all" else (args.what,)
    for number, name in enumerate(names, 1):
        bench = BENCHES[name]
        if len(names) > 1:
            print(f"\n== abtest bench {name} ({number}/{len(names)}) ==", flush=True)
        bench(args)
    return 0


def _add_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    *,
    help_text: str,
    examples: str,
) -> argparse.ArgumentParser:
    return commands.add_parser(
        name,
        help=help_text,
        description=help_text[0].upper() + help_text[1:] + ".",
        epilog="examples:\n" + examples,
        formatter_class=HelpFormatter,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="abtest",
        description="A/B router for recommender model servers: run the stack, train, simulate traffic, report.",
        epilog=(
            "examples:\n"
            "  abtest up                      # model_a, model_b and the router on http://127.0.0.1:8080\n"
            "  abtest simulate                # 20,000 simulated requests against it\n"
            "  abtest report                  # the A/B verdict\n"
            "  abtest COMMAND --help          # every option of a command, with its default"
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from abtest.stack import DEFAULT_CONFIG

    up = _add_command(
        commands,
        "up",
        help_text="run the whole stack locally (no Docker): both model servers, then the router",
        examples=(
            "  abtest up\n"
            "  abtest up --config my-experiment.yaml --port 9080\n"
            "  abtest up --data movielens        # MovieLens ml-latest-small (pip install 'ab-router[movielens]')\n"
            "  abtest up --strategy thompson     # a bandit phase: traffic moves toward the better model\n"
            "  kill -HUP <pid of abtest up>      # reload the experiment config (forwarded to the router)"
        ),
    )
    up.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help="experiment YAML, checked before anything starts"
    )
    up.add_argument("--port", type=int, default=8080, help="router port")
    up.add_argument("--model-a-port", type=int, default=8001, help="model_a's port")
    up.add_argument("--model-b-port", type=int, default=8002, help="model_b's port")
    up.add_argument("--results-dir", type=Path, default=_results_dir(), help="outcome store and reports ($RESULTS_DIR)")
    up.add_argument("--models-dir", type=Path, default=default_models_dir(), help="model artefacts ($MODELS_DIR)")
    up.add_argument("--data", help="data spec (default: $ABTEST_DATA, else the embedded synthetic set)")
    up.add_argument(
        "--strategy",
        help="override the config's strategy, e.g. thompson or epsilon_greedy for a bandit phase (docs/bandits.md)",
    )
    up.set_defaults(run=_cmd_up)

    train = _add_command(
        commands,
        "train",
        help_text="train model artefacts and print their offline metrics",
        examples=(
            "  abtest train                      # both models, embedded synthetic data\n"
            "  abtest train model_b --seed 1\n"
            "  abtest train --data movielens     # MovieLens ml-latest-small, offline (the movielens extra)\n"
            "  abtest train --data movielens:ml-100k/u.data"
        ),
    )
    train.add_argument("models", nargs="*", metavar="MODEL", help=f"{' and/or '.join(MODEL_NAMES)} (default: all)")
    train.add_argument("--models-dir", type=Path, default=default_models_dir(), help="model artefacts ($MODELS_DIR)")
    train.add_argument("--data", help="data spec (default: $ABTEST_DATA, else the embedded synthetic set)")
    train.add_argument("--seed", type=int, default=DEFAULT_SEED, help="training seed")
    train.set_defaults(run=_cmd_train)

    simulate = _add_command(
        commands,
        "simulate",
        help_text="send simulated user traffic to the router, clicking by the data set's ground truth",
        examples=(
            "  abtest simulate\n"
            "  abtest simulate --url http://localhost:8080 --users 1000 --requests 20000 --concurrency 20 --seed 7\n"
            "  abtest simulate --requests 2000 --json results/simulation.json"
        ),
    )
    simulate.add_argument(
        "--url", type=_http_url, default="http://127.0.0.1:8080", help="the router (http:// or https://)"
    )
    simulate.add_argument("--users", type=int, default=1000, help="simulated users who may visit (at most the data's)")
    simulate.add_argument("--requests", type=int, default=20_000, help="recommendation requests to send")
    simulate.add_argument("--concurrency", type=int, default=20, help="requests in flight at once")
    simulate.add_argument("--seed", type=int, default=7, help="seed of users, visits and clicks")
    simulate.add_argument("--k", type=int, default=10, help="items asked for per request")
    simulate.add_argument("--max-seconds", type=float, default=600.0, help="stop after this long at most")
    simulate.add_argument("--data", help="data spec the models were trained on (default: $ABTEST_DATA or synthetic)")
    simulate.add_argument("--json", type=Path, help="also write the summary as JSON to this file")
    simulate.add_argument("--quiet", action="store_true", help="no progress bar")
    simulate.set_defaults(run=_cmd_simulate)

    report = _add_command(
        commands,
        "report",
        help_text="build the A/B results report (report.md, .html, .json) from the outcome store",
        examples="  abtest report\n  abtest report --phase 1\n  abtest report --results-dir /srv/ab/results --quiet",
    )
    report.add_argument(
        "--results-dir", type=Path, default=_results_dir(), help="where outcomes.sqlite3 is ($RESULTS_DIR)"
    )
    report.add_argument("--phase", type=int, help="which phase (default: the latest)")
    report.add_argument("--quiet", action="store_true", help="only list the files written")
    report.add_argument(
        "--truth",
        nargs="?",
        const="",
        metavar="SPEC",
        help="simulation: score shadow vs live lists by this data set's ground truth ($ABTEST_DATA by default)",
    )
    report.set_defaults(run=_cmd_report)

    export = _add_command(
        commands,
        "export",
        help_text="write a phase's exposures and feedback as CSV and Parquet files, for notebooks",
        examples=(
            "  abtest export                         # the latest phase into results/export/\n"
            "  abtest export --phase 1 --format parquet --out /tmp/ab\n"
            "  python -c \"import pandas; print(pandas.read_parquet('results/export/exposures-phase-1.parquet'))\""
        ),
    )
    export.add_argument(
        "--results-dir", type=Path, default=_results_dir(), help="where outcomes.sqlite3 is ($RESULTS_DIR)"
    )
    export.add_argument("--phase", type=int, help="which phase (default: the latest)")
    export.add_argument(
        "--format",
        choices=["csv", "parquet"],
        action="append",
        help="csv and/or parquet (repeat the option; default: both); columns: docs/export.md",
    )
    export.add_argument("--out", type=Path, help="output folder (default: RESULTS_DIR/export)")
    export.set_defaults(run=_cmd_export)

    promote = _add_command(
        commands,
        "promote",
        help_text="turn a shadow into a variant of the experiment (applied on the next reload: a new phase)",
        examples=(
            "  abtest promote model_c                  # an equal share, written to the file (.bak kept)\n"
            "  abtest promote model_c --weight 10 --config /config/experiment.yaml"
        ),
    )
    promote.add_argument("shadow", help="the shadow's name in the experiment file")
    promote.add_argument("--weight", type=float, help="its weight (default: the mean of the variants' weights)")
    promote.add_argument("--config", type=Path, default=Path("router/experiment.yaml"), help="the experiment file")
    promote.set_defaults(run=_cmd_promote)

    bench = _add_command(
        commands,
        "bench",
        help_text="benchmarks: figures printed and written under the results folder",
        examples=(
            "  abtest bench models               # each model server's cost\n"
            "  abtest bench store                # outcome writes/s; its last step overloads the store on purpose\n"
            "  abtest bench router --rounds 1 --seconds 3 --soak-seconds 0\n"
            "  abtest bench report --store-url postgresql://postgres@127.0.0.1:5432/postgres   # both backends\n"
            "  abtest bench bandit               # Thompson, epsilon-greedy, 50/50: clicks, regret, OPE\n"
            "  abtest bench all"
        ),
    )
    bench.add_argument(
        "what",
        choices=[*(name for name, run in BENCHES.items() if run is not None), "all"],
        help="models: each model server's cost; router: router vs direct vs nginx (and interleaved); store: "
        "outcome writes/s; sensitivity: users an A/B test and interleaving need to find the better model; "
        "shadow: what a shadow costs live traffic; report: the report's time and memory over 1M and 10M exposures",
    )
    bench.add_argument("--seconds", type=float, default=5.0, help="length of each load run")
    bench.add_argument("--rounds", type=int, default=3, help="router: alternating rounds per target and level")
    bench.add_argument("--soak-seconds", type=float, default=60.0, help="router: full-load run for the RSS check")
    bench.add_argument(
        "--baseline", type=Path, help="router: also run the router from this checkout (e.g. a git worktree of main)"
    )
    bench.add_argument(
        "--store-url",
        help="store, report: also measure PostgreSQL; its databases are created next to the one this URL names",
    )
    bench.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[1_000_000, 10_000_000],
        help="report: exposures per generated store (ten per user)",
    )
    bench.add_argument(
        "--workers-cpu",
        action="store_true",
        help="router: instead, router CPU time per 1,000 requests for 1 vs 2 processes on one store (from /proc)",
    )
    bench.add_argument("--results-dir", type=Path, default=_results_dir(), help="where the figures go ($RESULTS_DIR)")
    bench.set_defaults(run=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(arguments)
    try:
        return int(args.run(args))
    except (DataError, ServiceError) as exc:
        print(f"abtest: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
