"""Run the grid: one cell = R seeded repeats of one estimator on B test digits.

Every cell is a pure function of (config, cell coordinates): its draws come
from seeds derived from the root seed and the (model, N, repeat) coordinates,
so the order and place cells run in never change their numbers. All
estimators and dtypes of a (model, N, repeat) share the same draws (common
random numbers), and the float64 log-space estimate on those draws is the
"replay" that separates rounding error from Monte Carlo error.
"""

from __future__ import annotations

import contextlib
import platform
import time
import zlib
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import lvm
from lvm import zoo
from lvm.data import load as load_data
from lvm.numerics import dtype_facts, parse_dtype

from . import environment
from .config import ESTIMATORS, PARAM_NAMES, Cell, Config
from .metrics import summarize
from .store import RunError, RunStore, atomic_write
from .timing import Measurement, PeakMemory, matmul_peak_gflops, timed

LOGLIK_SAMPLES = 512
TIMING_COLUMNS = ("time_median_s", "time_iqr_s", "terms_per_s", "estimates_per_s",
                  "peak_memory_mb", "host", "wall_s")


def draw_seed(root: int, model: str, n_samples: int, repeat: int) -> int:
    """Seed of one repeat's draws: shared by every estimator, dtype and device."""
    ss = np.random.SeedSequence([root, zlib.crc32(model.encode()), n_samples, repeat])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> 1)


def device_skip_reason(device: str) -> str | None:
    if device == "cuda" and not torch.cuda.is_available():
        return "CUDA is not available on this machine"
    if device == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        return "MPS is not available on this machine"
    return None


def estimate(model, x, cell: Cell, seed: int) -> lvm.Estimate:
    """Run the cell's estimator once with the given draw seed."""
    info = ESTIMATORS[cell.estimator]
    kw = {"dtype": cell.dtype, "device": cell.device, "seed": seed}
    if info["space"] == "prob":
        return lvm.prob_space(model, x, cell.n_samples, form=info["form"], **kw)
    return lvm.log_space(model, x, cell.n_samples, accumulate_dtype=info["accumulate"], **kw)


class Context:
    """Per-process caches: data, models, ground truth and float64 replays."""

    def __init__(self, config: Config, cache_dir: str | None = None):
        self.config = config
        self.cache_dir = cache_dir
        run = config.run
        self.dataset = load_data(run["dataset"], run["split"], seed=0)
        if run["n_data"] > len(self.dataset.x):
            raise RunError(f"run.n_data = {run['n_data']} exceeds the {len(self.dataset.x)} digits "
                           f"of {run['dataset']}/{run['split']}")
        self.x = self.dataset.x[: run["n_data"]]
        self._models: dict[tuple[str, str], lvm.BernoulliLVM] = {}
        self._truth: dict[str, dict] = {}
        self._replay: dict[tuple, np.ndarray] = {}

    def model(self, name: str, parametrization: str) -> lvm.BernoulliLVM:
        key = (name, parametrization)
        if key not in self._models:
            base = zoo.get(name, cache_dir=self.cache_dir)
            self._models[key] = base.with_output(parametrization)
        return self._models[key]

    def truth(self, name: str) -> dict:
        """Ground truth for the model's exact (logits) likelihood, cached on disk too."""
        if name not in self._truth:
            run = self.config.run
            t0 = time.perf_counter()
            ref = lvm.log_marginal(self.model(name, "logits"), self.x, run["reference"],
                                   n_samples=run["reference_samples"], seed=run["seed"],
                                   cache_dir=self.cache_dir)
            self._truth[name] = {"log_px": ref.log_px.numpy(), "se": ref.se.numpy(),
                                 "method": ref.method, "seconds": time.perf_counter() - t0,
                                 "meta": ref.meta}
        return self._truth[name]

    def replay(self, cell: Cell, repeat: int, seed: int) -> np.ndarray:
        key = (cell.model, cell.parametrization, cell.n_samples, repeat)
        if key not in self._replay:
            m = self.model(cell.model, cell.parametrization)
            est = lvm.log_space(m, self.x, cell.n_samples, dtype="float64", seed=seed)
            self._replay[key] = est.log_px.numpy()
        return self._replay[key]

    def loglik_sample(self, name: str, n: int = LOGLIK_SAMPLES) -> pd.DataFrame:
        """float64 log p(x_b|z_i) for n prior draws per digit: what Figure 4 plots."""
        m = self.model(name, "logits")
        g = torch.Generator().manual_seed(draw_seed(self.config.run["seed"], name, n, -1 % 2**31))
        with torch.no_grad():
            ll = m.log_likelihood(self.x, m.sample_prior(n, g), torch.float64).numpy()
        B = ll.shape[0]
        return pd.DataFrame({"model": name, "datapoint": np.repeat(np.arange(B), n),
                             "sample": np.tile(np.arange(n), B), "loglik": ll.ravel()})

    def model_identity(self) -> dict:
        return {f"{n}/{p}": m.fingerprint() for (n, p), m in sorted(self._models.items())}


class threads:
    """Run a block with ``n`` torch threads: cells' numbers must not depend on the machine's
    core count (a matmul's rounding depends on how it is split), and timings stay clean."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        self.saved = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.saved)


def run_cell(ctx: Context, cell: Cell) -> tuple[dict, pd.DataFrame]:
    """Measure one cell: (summary row, one raw row per datapoint and repeat)."""
    with threads(ctx.config.run["threads"]):
        return _run_cell(ctx, cell)


def _run_cell(ctx: Context, cell: Cell) -> tuple[dict, pd.DataFrame]:
    run = ctx.config.run
    t_start = time.perf_counter()
    model = ctx.model(cell.model, cell.parametrization)
    truth = ctx.truth(cell.model)
    seeds = [draw_seed(run["seed"], cell.model, cell.n_samples, r) for r in range(run["repeats"])]
    dev = torch.device(cell.device)
    peak = PeakMemory(dev)
    for w in range(run["warmup"]):
        with peak if w == 0 else contextlib.nullcontext():
            estimate(model, ctx.x, cell, seeds[0])
    times, ests = Measurement(), []
    for r, seed in enumerate(seeds):
        with peak if (run["warmup"] == 0 and r == 0) else contextlib.nullcontext():
            est, seconds = timed(lambda s=seed: estimate(model, ctx.x, cell, s), dev)
        times.times.append(seconds)
        ests.append(est)
    replay = np.stack([ctx.replay(cell, r, s) for r, s in enumerate(seeds)])
    values = np.stack([e.log_px.numpy() for e in ests])
    zero = np.stack([e.n_zero_terms.numpy() for e in ests])
    nonfinite = np.stack([e.n_nonfinite_terms.numpy() for e in ests])
    ess = np.stack([e.ess.numpy() for e in ests])
    B = values.shape[1]
    facts = dtype_facts(cell.dtype)
    row = {**cell.coords(), "status": "ok", "reason": "", "n_data": B, "repeats": len(seeds),
           **summarize(values, replay, truth["log_px"], truth["se"], zero, nonfinite, ess,
                       cell.n_samples),
           "truth_method": truth["method"], "truth_se_max": float(np.max(truth["se"])),
           "underflow_threshold": facts.log_min_subnormal, "unit_roundoff": facts.unit_roundoff,
           "time_median_s": times.median, "time_iqr_s": times.iqr, "time_runs": len(times.times),
           "terms_per_s": B * cell.n_samples / times.median, "estimates_per_s": B / times.median,
           "peak_memory_mb": peak.peak / 2**20, "host": platform.node(),
           "wall_s": time.perf_counter() - t_start}
    raw = pd.DataFrame({
        **{k: [getattr(cell, k)] * (B * len(seeds)) for k in
           ("estimator", "dtype", "n_samples", "model", "parametrization", "device")},
        "repeat": np.repeat(np.arange(len(seeds)), B),
        "datapoint": np.tile(np.arange(B), len(seeds)),
        "estimate": values.ravel(), "replay_float64": replay.ravel(),
        "truth": np.tile(truth["log_px"], len(seeds)),
        "zero_terms": zero.ravel(), "nonfinite_terms": nonfinite.ravel(), "ess": ess.ravel(),
        "time_s": np.repeat(times.times, B),
    })
    return row, raw


def skipped_row(cell: Cell, reason: str, run: dict) -> dict:
    return {**cell.coords(), "status": "skipped", "reason": reason, "n_data": run["n_data"],
            "repeats": run["repeats"]}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def matmul_peaks(devices: list[str], n_threads: int) -> dict:
    """The machine's n x n matrix-product rate per device and dtype (GFLOP/s), at the cells' threads."""
    out = {}
    with threads(n_threads):
        for d in devices:
            if device_skip_reason(d) is None:
                out[d] = {name: round(matmul_peak_gflops(parse_dtype(name), d), 2)
                          for name in ("float16", "bfloat16", "float32", "float64")}
    return out


def run(config: Config, out: str | Path, *, resume: bool = False, force: bool = False,
        progress: bool = True, cache_dir: str | None = None, executor=None) -> pd.DataFrame:
    """Run (or resume) the sweep into ``out``; return the cells table."""
    store = RunStore(out)
    store.prepare(resume=resume, force=force)
    cells, excluded = config.cells()
    order = [c.key for c in cells]
    meta = {}
    if resume:
        meta = store.read_meta()
        if meta.get("config") != config.to_dict():
            raise RunError(f"--resume: the config differs from the one {store.root} was started with; "
                           "resume with the same config or start a new --out")
    if executor is None:
        from .executors import LocalExecutor

        executor = LocalExecutor()
    reasons = {d: executor.skip_reason(d) for d in config.grid["device"]}
    done = store.done()
    skipped = [skipped_row(c, reasons[c.device], config.run) for c in cells if reasons[c.device]]
    skip_keys = {c.key for c in cells if reasons[c.device]}
    todo = [c for c in cells if c.key not in done and c.key not in skip_keys]
    ctx = Context(config, cache_dir=cache_dir)
    meta.update({
        "config": config.to_dict(), "config_source": config.source,
        "seeds": {"root": config.run["seed"],
                  "draws": "SeedSequence([root, crc32(model), n_samples, repeat]); blocks of "
                           f"{lvm.estimators.BLOCK} draws from SeedSequence([seed, block])",
                  "binarization": 0},
        "dataset": ctx.dataset.identity, "n_cells": len(cells), "excluded_cells": excluded,
        "skipped_cells": len(skipped), "status": "running",
    })
    meta.setdefault("started", _now())
    meta.setdefault("environment", environment.describe(exclude=store.root))
    meta.setdefault("matmul_peak_gflops", matmul_peaks(config.grid["device"], config.run["threads"]))
    meta.setdefault("segments", []).append({"started": _now(), "cells_todo": len(todo)})
    store.write_meta(meta)
    t0 = time.perf_counter()
    if not (store.root / "loglik.csv.gz").exists():
        ll = pd.concat([ctx.loglik_sample(m) for m in config.grid["model"]], ignore_index=True)
        atomic_write(store.root / "loglik.csv.gz", lambda p: ll.to_csv(p, index=False, compression="gzip"))
    for name in config.grid["model"]:  # ground truth first, once, before any cell is timed
        ctx.truth(name)
    meta["executor"] = executor.name
    failed: list[dict] = getattr(executor, "failed", [])
    try:
        for key, row, raw in executor.map(ctx, todo, progress=progress):
            store.write_part(key, row, raw)
    finally:
        failed_rows = [{k: v for k, v in f.items() if k != "traceback"} for f in failed]
        table = store.write_tables(order, skipped + failed_rows)
        meta["segments"][-1].update({"ended": _now(), "seconds": round(time.perf_counter() - t0, 1)})
        meta["truth"] = {k: {kk: v[kk] for kk in ("method", "seconds", "meta")}
                         | {"se_max": float(np.max(v["se"]))} for k, v in ctx._truth.items()}
        meta.setdefault("models", {}).update(ctx.model_identity())
        complete = store.done() >= set(order) - skip_keys
        meta["status"] = "complete" if complete else "failed" if failed else "interrupted"
        meta["failed_cells"] = failed
        ran = table[table["status"] == "ok"] if "status" in table else table.iloc[:0]
        meta["placement"] = {Cell(*(r[p] for p in PARAM_NAMES)).key:
                             {"host": r.get("host"), "worker": r.get("worker"), "device": r["device"]}
                             for r in ran.to_dict("records")}
        meta["ended"] = _now()
        meta["wall_seconds"] = round(sum(s.get("seconds", 0) for s in meta["segments"]), 1)
        store.write_meta(meta)
    return table
