"""`lvm-bench` command line: run, report, compare, diagnose, train, models.

Exit codes: 0 success, 1 a regression (compare), 2 bad input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

AXIS_FLAGS = {"estimator": "estimator", "dtype": "dtype", "n_samples": "n-samples", "model": "model",
              "parametrization": "parametrization", "device": "device", "precision": "precision",
              "proposal": "proposal"}


def _terminated(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _run(args: argparse.Namespace) -> int:
    from bench.run.config import Cell, load_config
    from bench.run.sweep import run

    overrides = list(args.set or [])
    for axis in AXIS_FLAGS:
        value = getattr(args, axis)
        if value is not None:
            overrides.append(f"grid.{axis}={value}")
    for key in ("seed", "repeats", "n_data", "dataset"):
        value = getattr(args, key)
        if value is not None:
            overrides.append(f"run.{key}={value}")
    config = load_config(args.config, overrides)
    out = Path(args.out or Path("results") / config.run["name"])
    cells, excluded = config.cells()
    print(f"lvm-bench run: {len(cells)} cells ({len(excluded)} excluded, reasons in meta.json) -> {out}",
          file=sys.stderr)
    from bench.run.executors import make_executor

    executor = make_executor(args.executor, args.scheduler, args.workers)
    previous = signal.signal(signal.SIGTERM, _terminated)  # SIGTERM ends a run as Ctrl-C does
    try:
        table = run(config, out, resume=args.resume, force=args.force, progress=not args.no_progress,
                    cache_dir=args.cache_dir, executor=executor)
    finally:
        signal.signal(signal.SIGTERM, previous)
        getattr(executor, "close", lambda: None)()
    failed = table[table["status"] == "failed"] if "status" in table else table.iloc[:0]
    for r in failed.to_dict("records"):
        print(f"FAILED {Cell.of(r).label}: {r['reason']}", file=sys.stderr)
    ok = int((table["status"] == "ok").sum()) if "status" in table else 0
    print(f"wrote {out}/cells.csv: {ok} cells measured, {len(table) - ok - len(failed)} skipped, "
          f"{len(failed)} failed", file=sys.stderr)
    if args.report:
        from bench.report.page import write_report

        path = write_report(out)
        print(f"wrote {path}", file=sys.stderr)
    return 1 if len(failed) else 0


def _train(args: argparse.Namespace) -> int:
    from lvm import zoo

    zoo.train_models(args.names or None, out_dir=args.out, seed=args.seed, steps=args.steps,
                     progress=not args.no_progress)
    return 0


def _models(args: argparse.Namespace) -> int:
    from lvm import zoo

    for name in zoo.names():
        print(name)
    return 0


def _report(args: argparse.Namespace) -> int:
    from bench.report.page import write_report

    path = write_report(args.run, out=args.out)
    print(f"wrote {path}", file=sys.stderr)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from bench.compare import main as compare_main

    return compare_main(args)


def _diagnose(args: argparse.Namespace) -> int:
    import json

    from bench.diagnose import diagnose
    from bench.run.config import ESTIMATORS
    from lvm.numerics import DTYPES
    from lvm.shared import PRECISIONS

    def listed(value, default):
        return [v.strip() for v in value.split(",") if v.strip()] if value else list(default)

    try:
        ns = [int(v) for v in listed(args.n_samples, ["1000"])]
    except ValueError as e:
        from lvm.errors import InputError

        raise InputError(f"--n-samples {args.n_samples!r}; accepted: comma-separated positive "
                         "integers") from e
    result = diagnose(args.model, data=args.data, n_data=args.n_data, dtypes=listed(args.dtype, DTYPES),
                      estimators=listed(args.estimator, ESTIMATORS),
                      precisions=listed(args.precision, PRECISIONS),
                      n_samples=ns, seed=args.seed, cache_dir=args.cache_dir,
                      truth=False if args.no_truth else None)
    print(json.dumps(result.to_json(), indent=2) if args.format == "json" else result.text())
    if args.expect:
        return 0 if result.verdict(args.expect) else 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lvm-bench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a sweep into results/<run>/")
    r.add_argument("--config", default="quick", help="built-in config name or TOML path (default: quick)")
    r.add_argument("--out", help="run directory (default: results/<config run.name>)")
    r.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    r.add_argument("--force", action="store_true", help="replace a run already in --out")
    r.add_argument("--report", action="store_true", help="write the report when the run ends")
    r.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override any config key; lists are comma-separated (repeatable)")
    for axis, flag in AXIS_FLAGS.items():
        r.add_argument(f"--{flag}", dest=axis, metavar="A,B,...", help=f"override grid.{axis}")
    r.add_argument("--seed", type=int)
    r.add_argument("--repeats", type=int)
    r.add_argument("--n-data", dest="n_data", type=int)
    r.add_argument("--dataset")
    r.add_argument("--cache-dir", help="where models and ground truth are cached "
                   "(default: $LVM_CACHE_DIR or ~/.cache/lvm-bench)")
    r.add_argument("--executor", default="local", choices=("local", "dask"),
                   help="local: in-process, one cell at a time (default); dask: a dask.distributed cluster")
    r.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                   help="with --executor dask: an existing scheduler (default: start a LocalCluster)")
    r.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes (default 2)")
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(func=_run)

    rep = sub.add_parser("report", help="write tables, figures and findings for a run")
    rep.add_argument("run", help="a run directory, e.g. results/baseline")
    rep.add_argument("--out", help="report directory (default: the run directory)")
    rep.set_defaults(func=_report)

    c = sub.add_parser("compare", help="compare a run against a baseline; exit 1 on a regression")
    c.add_argument("baseline")
    c.add_argument("new")
    c.add_argument("--k", type=float, default=4.0, help="standard errors that count as a change")
    c.add_argument("--throughput-factor", type=float, default=1.25,
                   help="slow-down factor that counts as a throughput regression")
    c.add_argument("--min-time", dest="min_time", type=float, default=0.01,
                   help="seconds: cells whose median timed run is shorter are not judged on throughput")
    c.add_argument("--format", choices=("table", "markdown", "json"), default="table")
    c.add_argument("--output", help="also write the report to this file")
    c.set_defaults(func=_compare)

    d = sub.add_parser("diagnose", help="is this model's estimate safe in each dtype? a verdict table")
    d.add_argument("--model", required=True, help="a zoo name, package.module:factory, or a decoder file")
    d.add_argument("--data", default="mnist-5k", help="mnist-5k (default), mnist, a .npy/.npz/IDX file or "
                   "package.module:factory")
    d.add_argument("--n-data", dest="n_data", type=int, default=32, help="digits (default 32)")
    d.add_argument("--dtype", metavar="A,B,...", help="default: all four")
    d.add_argument("--estimator", metavar="A,B,...", help="default: the four built-in estimators")
    d.add_argument("--precision", metavar="A,B,...", help="cast, autocast (default: both)")
    d.add_argument("--n-samples", dest="n_samples", metavar="N,...", help="default: 1000")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--no-truth", action="store_true", help="skip the quadrature check at K <= 2")
    d.add_argument("--format", choices=("text", "json"), default="text")
    d.add_argument("--expect", metavar="DTYPE/ESTIMATOR/PRECISION",
                   help="exit 0 when this setting is safe, 1 when it is not (a gate for your CI)")
    d.add_argument("--cache-dir", help="where models and ground truth are cached")
    d.set_defaults(func=_diagnose)

    t = sub.add_parser("train", help="train named models (decoders, and encoders for vae/iwae) into a "
                       "checkpoint directory")
    t.add_argument("names", nargs="*", help="model names (default: all trainable)")
    t.add_argument("--out", help="checkpoint directory (default: the model cache)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--steps", type=int, help="override the recipe's step count")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=_train)

    m = sub.add_parser("models", help="list the named models")
    m.set_defaults(func=_models)
    return p


def main(argv: list[str] | None = None) -> int:
    """Exit 2 with its message on bad input (:class:`lvm.errors.InputError`, the one project
    error class); any other exception is a bug and keeps its traceback (exit 1)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from lvm.errors import InputError

    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted; finished cells are saved: continue with --resume", file=sys.stderr)
        return 130
    except InputError as e:
        print(f"lvm-bench {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
