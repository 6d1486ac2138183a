"""Command line: list | prepare | run | status | report (docs/design.md, "Command line")."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmark.errors import user_errors

EPILOG = "Docs: README.md and docs/. Exit status 2 means bad input (the message says what to fix)."


def listing_data_root(arg: str | None) -> Path:
    """`benchmark.train.data.data_root`, without importing torch (a test checks they agree)."""
    return Path(arg or os.environ.get("BENCH_DATA_ROOT") or "data")


def cmd_list(args: argparse.Namespace) -> int:
    """Read from the sources (benchmark.catalog), so the list prints without torch."""
    from benchmark.catalog import catalog

    found = catalog()
    what = args.what
    if what in (None, "methods"):
        print("methods:")
        width = max(len(name) for name in found.methods)
        for name, doc in found.methods.items():
            print(f"  {name:{width}s} {doc}")
    if what in (None, "datasets"):
        print("datasets:")
        root = listing_data_root(args.data_root)
        for name, entry in found.datasets.items():
            state = (
                "prepared"
                if (root / name / "meta.json").is_file()
                else ("generated on first use" if entry.generated else "not prepared")
            )
            print(f"  {name:10s} {entry.description} [{state}]")
    if what in (None, "encoders"):
        print("encoders:")
        for name in found.encoders:
            print(f"  {name}")
        print("fusion heads:")
        for name in found.fusions:
            print(f"  {name}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from benchmark.train.config import parse_overrides
    from benchmark.train.data import data_root, prepare_dataset

    options = parse_overrides(args.set or [])
    if args.recipe is not None:
        options["recipe"] = args.recipe
    if args.workers is not None:
        options["workers"] = args.workers
    ds = prepare_dataset(
        args.dataset,
        data_root(args.data_root),
        Path(args.raw) if args.raw else None,
        options,
        Path(args.out) if args.out else None,
    )
    counts = ", ".join(f"{k} {v}" for k, v in ds.meta["splits"].items())
    print(
        f"prepared {ds.name} in {ds.root}: {counts}; modalities "
        + ", ".join(f"{m} {list(s.shape)} {s.dtype}" for m, s in ds.modalities.items())
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from benchmark.launch.grid import done_before_generating, launch, plan_grid
    from benchmark.train.config import parse_overrides
    from benchmark.train.data import data_root
    from benchmark.train.runstore import results_root

    overrides = parse_overrides(args.set or [])
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.device is not None:
        overrides["device"] = args.device
    root, results = data_root(args.data_root), results_root(args.results)
    grid = (args.method, args.dataset, args.seeds, overrides, root)
    done = None
    if not (args.restart or args.rerun_stale):
        done = done_before_generating(*grid, results)
    if done is not None:
        configs, summaries, note = done
        print(note, file=sys.stderr)
        print_summaries(configs, summaries, results)
        return 0
    configs = plan_grid(*grid)
    summaries = launch(
        configs,
        args.launcher,
        results,
        root,
        args.profile,
        wait=args.wait,
        restart=args.restart,
        rerun_stale=args.rerun_stale,
    )
    if summaries:
        print_summaries(configs, summaries, results)
        if any(s is None for s in summaries):
            return 1
    return 0


def print_summaries(configs: Sequence[Any], summaries: Sequence[Any], results: Path) -> None:
    """The run table: per run, its best-val epoch and test accuracy of every head."""
    # columns as wide as the longest name (g_blending, reconboost, a prepared dir...)
    mw = max(8, *(len(cfg.method) for cfg in configs))
    dw = max(10, *(len(cfg.dataset) for cfg in configs))
    header = f"{'method':{mw}s} {'dataset':{dw}s} {'seed':>4s} {'best':>4s}"
    print(f"{header}  test accuracy at the best-val epoch")
    for cfg, s in zip(configs, summaries, strict=True):
        row = f"{cfg.method:{mw}s} {cfg.dataset:{dw}s} {cfg.seed:4d}"
        if s is None:  # a submitted run that failed (reported above with its log)
            print(f"{row} {'-':>4s}  not finished")
            continue
        if s.get("status") == "busy":
            print(f"{row} {'-':>4s}  being trained by {s['holder']} since {s['since']}")
            continue
        accs = "  ".join(f"{h} {100 * s[f'test/{h}/acc']:.2f}" for h in s["heads"])
        older = f"  (done with older code ({s['older_code']}))" if "older_code" in s else ""
        print(f"{row} {s['best_epoch']:4d}  {accs}{older}")
    print(f"runs in {results / 'runs'}")


def cmd_status(args: argparse.Namespace) -> int:
    from benchmark.launch.submissions import SUBMISSIONS, dump_json, format_status, grid_statuses
    from benchmark.train.runstore import results_root, store_line

    results = results_root(args.results)
    statuses = grid_statuses(results)
    if args.json:
        print(dump_json(statuses))
        return 0
    if not statuses:
        print(
            f"no submissions under {results / SUBMISSIONS} "
            "(grids run with --launcher slurm or --launcher local are listed here)"
        )
    else:
        print(format_status(statuses, args.log_lines))
    line = store_line(results)
    if line:
        print(line)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from benchmark.report.build import main as report_main
    from benchmark.train.runstore import results_root

    return report_main(results_root(args.results), args)


def cmd_speed(args: argparse.Namespace) -> int:
    from benchmark.speed.measure import format_table, measure, write_json
    from benchmark.train.config import parse_overrides
    from benchmark.train.data import data_root
    from methods import list_methods

    overrides = parse_overrides(args.set or [])
    for key in ("batch_size", "device", "workers"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    report = measure(
        args.dataset,
        data_root(args.data_root),
        args.methods or list_methods(),
        overrides,
        steps=args.steps,
        warmup=args.warmup,
        repeats=args.repeats,
    )
    print(format_table(report))
    if args.json:
        write_json(report, Path(args.json))
        print(f"wrote {args.json}")
    synced = [name for name, m in report.methods.items() if m.host_sync]
    if synced:
        print(f"host sync inside update: {', '.join(synced)}", file=sys.stderr)
        return 1
    return 0


def add_speed_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "speed", help="samples/s of the loader, of each method's step and end to end"
    )
    p.add_argument("--dataset", default="synth", help="dataset name or prepared dir (synth)")
    p.add_argument("--methods", nargs="+", metavar="M", help="methods to time (default: all)")
    p.add_argument("--batch-size", type=int, help="override the dataset's batch size")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per measurement (20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before timing (5)")
    p.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="rounds of timing, each method once per round; the median is reported with its "
        "spread (5)",
    )
    p.add_argument("--workers", type=int, help="loader worker processes (default auto)")
    p.add_argument("--json", metavar="FILE", help="also write the measurements as JSON")
    p.add_argument(
        "--set", nargs="*", metavar="KEY=VALUE", help="run settings (encoder, crop_size, ...)"
    )
    p.add_argument("--data-root", help="prepared datasets (default ./data or $BENCH_DATA_ROOT)")
    p.set_defaults(func=cmd_speed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmark",
        description="imbalance-bench: multimodal imbalance methods under one harness",
        epilog=EPILOG,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list methods, datasets, encoders")
    p.add_argument("what", nargs="?", choices=["methods", "datasets", "encoders"])
    p.add_argument("--data-root", help="prepared datasets (default ./data or $BENCH_DATA_ROOT)")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser(
        "prepare", help="turn a raw release (or a generator) into the prepared format"
    )
    p.add_argument("dataset", help="registered dataset name (see `list datasets`)")
    p.add_argument("--raw", help="the release's directory, in the layout docs/datasets.md gives")
    p.add_argument("--data-root", help="where prepared datasets live (default ./data)")
    p.add_argument("--out", help="write here instead of <data-root>/<dataset>")
    p.add_argument("--recipe", help="preprocessing recipe, where references disagree")
    p.add_argument("--workers", type=int, help="parallel processes (default: all cores)")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="dataset options (knobs)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("run", help="train a grid of methods x datasets x seeds")
    p.add_argument("--method", nargs="+", required=True, help="method name(s), see `list methods`")
    p.add_argument("--dataset", nargs="+", required=True, help="dataset name(s) or prepared dir(s)")
    p.add_argument(
        "--seeds", nargs="+", type=int, default=[0], help="seeds, one run each (default 0)"
    )
    p.add_argument("--epochs", type=int, help="override the dataset's epochs")
    p.add_argument(
        "--set",
        nargs="*",
        metavar="KEY=VALUE",
        help="override run settings or hyper-parameters (JSON values)",
    )
    p.add_argument(
        "--launcher",
        choices=["inline", "local", "slurm"],
        default="inline",
        help="inline: one after another in this process (default); local: submitit "
        "processes on this machine; slurm: a Slurm job array (see --profile)",
    )
    p.add_argument("--profile", help="Slurm profile name (slurm/<name>.yaml)")
    p.add_argument(
        "--wait", action="store_true", help="with local/slurm: follow progress until done"
    )
    p.add_argument("--results", help="results directory (default ./results or $BENCH_RESULTS)")
    p.add_argument("--data-root", help="prepared datasets (default ./data or $BENCH_DATA_ROOT)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument(
        "--restart",
        action="store_true",
        help="discard the partial state of unfinished or damaged runs and train them from "
        "scratch (finished runs stay)",
    )
    p.add_argument(
        "--rerun-stale",
        action="store_true",
        help="train again the runs that were finished with older code",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "status", help="per submitted grid: runs done, running, pending, failed, missing"
    )
    p.add_argument("--results", help="results directory (default ./results or $BENCH_RESULTS)")
    p.add_argument("--log-lines", type=int, default=6, help="log lines shown per failed run")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("report", help="tables and figures from results/ (make figures)")
    p.add_argument("--results", help="results directory (default ./results or $BENCH_RESULTS)")
    p.add_argument("--out", help="where tables/ and figures/ go (default: the results directory)")
    p.add_argument("--datasets", nargs="+", metavar="D", help="only these datasets")
    p.add_argument("--methods", nargs="+", metavar="M", help="only these methods")
    p.add_argument(
        "--metric",
        nargs="+",
        choices=["acc", "f1", "map"],
        help="table metrics (default acc f1 map); the first is shown per head, in the "
        "forgetting table and in the figures",
    )
    p.add_argument(
        "--select",
        choices=["best_val", "last"],
        default="best_val",
        help="score each run at its best-val epoch (default) or its last epoch",
    )
    p.add_argument(
        "--paper",
        help="published numbers (*.csv; default <results>/paper, else the checkout's)",
    )
    p.add_argument("--no-figures", action="store_true", help="write the tables only")
    p.add_argument(
        "--readme",
        metavar="PATH",
        nargs="+",
        help="rewrite the `<!-- results:begin NAME -->` blocks of these Markdown files from the "
        "tables (default: README.md and docs/*.md beside the results directory, those that "
        "have such blocks)",
    )
    p.set_defaults(func=cmd_report)
    add_speed_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except user_errors() as exc:  # evaluated only when an exception is raised
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
