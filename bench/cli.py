"""`lvm-bench` command line: run, report, compare, diagnose, train, models.

One parser; each verb's work is a typed function that this module only calls, as asv's commands
do: run -> :func:`bench.run.sweep.run`, report -> :func:`bench.report.page.write_report`,
compare -> :func:`bench.compare.run`, diagnose -> :func:`bench.diagnose.run`, train ->
:func:`lvm.zoo.train_models`, models -> :func:`lvm.zoo.names`. Nothing heavy is imported
before a verb runs (``--help`` loads neither torch nor pandas).

The same flag means the same thing in every verb: ``--out`` is where a verb writes, ``--format``
is text, markdown or json. An old spelling still works and prints one line on stderr naming the
new one: compare's ``--output`` (now ``--out``), ``--k`` (now ``--se-threshold``: K is the latent
dimension everywhere else) and ``--format table`` (now ``text``).

Exit codes: 0 success, 1 a regression (compare), an unsafe setting (diagnose --expect), a
failed cell (run) or SystemExit raised by code a verb called, 2 bad input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
from pathlib import Path

# The grid's axes (lvm.axes.AXES, which imports torch) and their flags on `run`.
AXIS_FLAGS = {"estimator": "estimator", "dtype": "dtype", "n_samples": "n-samples", "model": "model",
              "parametrization": "parametrization", "device": "device", "precision": "precision",
              "proposal": "proposal", "engine": "engine"}
FORMATS = ("text", "markdown", "json")


def _deprecated(prog: str, old: str, new: str) -> None:
    print(f"{prog}: warning: {old} is deprecated; use {new}", file=sys.stderr)


class _Renamed(argparse.Action):
    """The old spelling of a flag: stores into the new flag's value and names the new spelling."""

    def __init__(self, option_strings, dest, *, new: str, **kw):
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kw)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        _deprecated(parser.prog, option_string, self.new)
        setattr(namespace, self.dest, values)


def _compare_format(value: str) -> str:
    if value == "table":
        _deprecated("lvm-bench compare", "--format table", "--format text")
        return "text"
    return value


def _listed(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]  # "," is []


def _terminated(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


# A dask scheduler address: [tcp|tls|ucx|ws|wss://]HOST:PORT (HOST a name, an IPv4 or a bracketed IPv6).
SCHEDULER = re.compile(r"(?:(?:tcp|tls|ucx|ws|wss)://)?(?:\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):\d{1,5}/?")


def _check_executor_flags(args: argparse.Namespace) -> None:
    """--scheduler and --workers, before the config is read (dask's own parser raises a bare
    ValueError deep in the connection for an address without a port)."""
    from lvm.errors import InputError

    if args.scheduler is not None and not SCHEDULER.fullmatch(args.scheduler):
        raise InputError(f"--scheduler {args.scheduler!r} is not a scheduler address; accepted: "
                         "tcp://HOST:PORT (tls://, ucx://, ws://, wss:// or no scheme also)")
    if args.workers < 1:
        raise InputError(f"--workers {args.workers} is invalid; accepted: a positive integer")


def _stamp(path: Path) -> tuple | None:
    """What tells a file rewritten (atomic writes replace it: a new inode), or None when absent."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _user_exit(e: SystemExit) -> str:
    """Where a SystemExit raised inside a verb came from: the innermost frame of its traceback."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code if tb else None
    where = f" in {code.co_name} ({code.co_filename}:{tb.tb_lineno})" if tb else ""
    return f"SystemExit({e.code!r}) raised{where}"


def _run(args: argparse.Namespace) -> int:
    from bench.run.config import Cell, load_config
    from bench.run.executors import make_executor
    from bench.run.sweep import run

    _check_executor_flags(args)
    overrides = list(args.set or [])
    for section, keys in (("grid", AXIS_FLAGS), ("run", ("seed", "repeats", "n_data", "dataset"))):
        overrides += [f"{section}.{k}={getattr(args, k)}" for k in keys if getattr(args, k) is not None]
    config = load_config(args.config, overrides)
    out = Path(args.out or Path("results") / config.run["name"])
    cells, excluded = config.runnable()  # a grid of nothing: exit 2 before anything is written
    print(f"lvm-bench run: {len(cells)} cells ({len(excluded)} excluded, reasons in meta.json) -> {out}",
          file=sys.stderr)
    executor = make_executor(args.executor, args.scheduler, args.workers)
    previous = signal.signal(signal.SIGTERM, _terminated)  # SIGTERM ends a run as Ctrl-C does
    before = _stamp(out / "meta.json")
    try:
        table = run(config, out, resume=args.resume, force=args.force, progress=not args.no_progress,
                    cache_dir=args.cache_dir, executor=executor)
    except KeyboardInterrupt:
        saved = (f"finished cells are saved: continue with --resume --out {out}"
                 if _stamp(out / "meta.json") != before else f"nothing was written to {out}")
        print(f"lvm-bench run: interrupted; {saved}", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        getattr(executor, "close", lambda: None)()
    failed = table[table["status"] == "failed"] if "status" in table else table.iloc[:0]
    for r in failed.to_dict("records"):
        print(f"FAILED {Cell.of(r).label}: {r['reason']}", file=sys.stderr)
    ok = int((table["status"] == "ok").sum()) if "status" in table else 0
    counts = f"{ok} cells measured, {len(table) - ok - len(failed)} skipped, {len(failed)} failed"
    if table.attrs.get("previous_run") == "restored":
        print(f"lvm-bench run: --force: no cell was measured ({counts}); the run that was in {out} is "
              "kept as it was", file=sys.stderr)
        return 1
    print(f"wrote {out}/cells.csv: {counts}", file=sys.stderr)
    if args.report:
        from bench.report.page import write_report

        print(f"wrote {write_report(out)}", file=sys.stderr)
    return 1 if len(failed) else 0


def _report(args: argparse.Namespace) -> int:
    from bench.report.page import write_report

    print(f"wrote {write_report(args.run, out=args.out)}", file=sys.stderr)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from bench import compare

    return compare.run(args.baseline, args.new, se_threshold=args.se_threshold,
                       throughput_factor=args.throughput_factor, min_time=args.min_time, fmt=args.format,
                       out=args.out)


def _diagnose(args: argparse.Namespace) -> int:
    from bench import diagnose
    from lvm.errors import InputError

    try:
        ns = None if args.n_samples is None else [int(v) for v in _listed(args.n_samples)]
    except ValueError as e:
        raise InputError(f"--n-samples {args.n_samples!r}; accepted: comma-separated positive "
                         "integers") from e
    lists = {"dtypes": _listed(args.dtype), "estimators": _listed(args.estimator),
             "precisions": _listed(args.precision), "n_samples": ns, "proposals": _listed(args.proposal)}
    return diagnose.run(args.model, data=args.data, n_data=args.n_data, seed=args.seed,
                        cache_dir=args.cache_dir, truth=False if args.no_truth else None, fmt=args.format,
                        expect=args.expect, **{k: v for k, v in lists.items() if v is not None})


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
    c.add_argument("--se-threshold", dest="se_threshold", type=float, default=4.0, metavar="SE",
                   help="standard errors that count as a change (default 4)")
    c.add_argument("--k", dest="se_threshold", type=float, action=_Renamed, new="--se-threshold")
    c.add_argument("--throughput-factor", type=float, default=1.25,
                   help="slow-down factor that counts as a throughput regression (default 1.25)")
    c.add_argument("--min-time", dest="min_time", type=float, default=0.01,
                   help="seconds: cells whose median timed run is shorter are not judged on throughput")
    c.add_argument("--format", type=_compare_format, choices=FORMATS, default="text",
                   help="text (default), markdown (a pull-request comment) or json")
    c.add_argument("--out", help="also write the report to this file")
    c.add_argument("--output", dest="out", action=_Renamed, new="--out")
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
    d.add_argument("--proposal", metavar="A,B", help="prior, encoder (default: both when the model has "
                   "an encoder, else prior)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--no-truth", action="store_true", help="skip the quadrature check at K <= 2")
    d.add_argument("--format", choices=FORMATS, default="text", help="text (default), markdown or json")
    d.add_argument("--expect", metavar="DTYPE/ESTIMATOR/PRECISION[/PROPOSAL]",
                   help="exit 0 when this setting is safe (precise and reliable), 1 when it is not "
                   "(a gate for your CI)")
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
    error class); 1 with one line when code a verb called raised SystemExit (a factory's
    ``sys.exit(0)`` must not read as success); any other exception is a bug and keeps its
    traceback (exit 1)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from lvm.errors import InputError

    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"lvm-bench {args.command}: interrupted", file=sys.stderr)
        return 130
    except InputError as e:
        lines = (line.strip() for line in str(e).splitlines())  # one line, whatever the cause's text
        print(f"lvm-bench {args.command}: error: {' '.join(line for line in lines if line)}", file=sys.stderr)
        return 2
    except SystemExit as e:  # argparse exits above, in parse_args: this one is code a verb called
        print(f"lvm-bench {args.command}: error: {_user_exit(e)}: code the verb called (a model factory, "
              "an outside estimator or data) ended the process; that is a failure of that code, not a "
              "success", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
