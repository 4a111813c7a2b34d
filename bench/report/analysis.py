"""What the report says about a run, computed from the run alone: findings, summary, environment.

Everything here takes a :class:`bench.run.store.Run` and returns tidy pandas frames, dataclasses
or sentences; :mod:`bench.report.figures` draws the frames and :mod:`bench.report.page` lays the rest out.
Nothing here draws, writes a file or runs a model. Numbers in sentences are formatted with
:mod:`bench.report.render`'s formatters (which import nothing from bench), so that the findings read
exactly as the tables do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from bench.report.render import fmt_num, fmt_pct, fmt_rate
from bench.run.metrics import wilson
from bench.run.store import Meta, Run
from bench.run.timing import estimate_flop
from lvm import zoo
from lvm.axes import DEVICES, DTYPES, ESTIMATORS, PARAMETRIZATIONS
from lvm.errors import InputError

K2_ARRAYS = ("digit", "decoded", "posterior", "extent", "draws", "hit", "span")  # what Figure 7 draws


@dataclass(frozen=True)
class Order:
    """The levels present in a run, in their canonical order."""

    estimators: list[str]
    dtypes: list[str]
    models: list[str]
    parametrizations: list[str]
    devices: list[str]

    @classmethod
    def of(cls, ok: pd.DataFrame, model_order: list[str] | None = None) -> Order:
        def levels(col: str, canon) -> list[str]:
            present = set(ok[col].dropna().astype(str)) if col in ok else set()
            known = [v for v in canon if v in present]
            return known + sorted(present - set(known))

        models = levels("model", model_order or [])
        return cls(levels("estimator", ESTIMATORS), levels("dtype", DTYPES), models,
                   levels("parametrization", PARAMETRIZATIONS), levels("device", DEVICES))

    @property
    def parametrization(self) -> str | None:
        """The one shown where a figure shows one: logits (the exact one) when present."""
        return self.parametrizations[0] if self.parametrizations else None

    @property
    def device(self) -> str | None:
        return self.devices[0] if self.devices else None


def order(run: Run) -> Order:
    """The run's levels; models in the order of its grid."""
    return Order.of(run.ok, list(run.meta.grid.get("model", [])))


@dataclass
class Finding:
    """One generated sentence and the numbers it was made from."""

    sentence: str
    numbers: dict[str, float]


# ----------------------------------------------------------------------------- helpers


def pooled(cells: pd.DataFrame, col: str = "underflow_rate") -> tuple[int, int]:
    """(events, estimates) over cells, from per-cell rates and estimate counts."""
    n = cells["n_estimates"].fillna(0)
    return int((cells[col].fillna(0) * n).round().sum()), int(n.sum())


def _architecture(model: str) -> dict | None:
    try:
        return zoo.parse(model).architecture()
    except InputError:
        return None


def cell_flop(cells: pd.DataFrame) -> pd.Series:
    """FLOP of one estimate per cell (decoder on N draws + data product): the sweep's ``flop``
    column where it holds a number, else :func:`bench.run.timing.estimate_flop` of the model's zoo
    architecture with B = n_data and N = n_samples, so that a run written before the column
    existed is counted the same way; NaN for a model the zoo does not know."""
    archs = {m: _architecture(m) for m in cells["model"].unique()}
    b = pd.to_numeric(cells["n_data"], errors="coerce")
    derived = pd.Series([float(estimate_flop(archs[m], int(bi), int(n))) if archs[m] and np.isfinite(bi)
                         else np.nan for m, bi, n in zip(cells["model"], b, cells["n_samples"], strict=True)],
                        index=cells.index, dtype=float)
    if "flop" not in cells:
        return derived
    return pd.to_numeric(cells["flop"], errors="coerce").fillna(derived)


def cell_gflops(cells: pd.DataFrame) -> pd.Series:
    """GFLOP/s achieved per cell: :func:`cell_flop` over the median time of one estimate."""
    return cell_flop(cells) / pd.to_numeric(cells["time_median_s"], errors="coerce") / 1e9


def throughput(run: Run) -> pd.DataFrame:
    """Throughput over models at each (device, estimator, dtype)'s largest N, shown parametrization.

    Columns: device, estimator, dtype, terms_per_s (the median over models), gflops (the
    median over models of :func:`cell_gflops`: decoder + data product), gflops_min,
    gflops_max, flop_per_term (median over models of FLOP / (B N)), n_samples.
    """
    ok = run.ok
    c = ok[(ok["parametrization"] == order(run).parametrization) & (ok["terms_per_s"] > 0)]
    c = c[c["n_samples"] == c.groupby(["device", "estimator", "dtype"])["n_samples"].transform("max")]
    c = c.assign(gflops=cell_gflops(c), flop_per_term=cell_flop(c) / (c["n_data"] * c["n_samples"]))
    return c.groupby(["device", "estimator", "dtype"], as_index=False).agg(
        terms_per_s=("terms_per_s", "median"), gflops=("gflops", "median"), gflops_min=("gflops", "min"),
        gflops_max=("gflops", "max"), flop_per_term=("flop_per_term", "median"),
        n_samples=("n_samples", "max"))


# ----------------------------------------------------------------------------- summary


def resolved_bias_at_largest_n(g: pd.DataFrame) -> float:
    """Mean bias at the group's largest N over the cells whose bias the ground truth resolves."""
    top = g[(g["n_samples"] == g["n_samples"].max()) & (g["bias_resolved"] == 1)]["bias"].dropna()
    return top.mean() if len(top) else np.nan


def bias_display(t: pd.DataFrame) -> list[str]:
    return [f"{fmt_num(b) if np.isfinite(b) else 'none resolved'} (N = {n})"
            for b, n in zip(t["bias_at_largest_n"], t["largest_n"], strict=True)]


def summary_table(run: Run) -> pd.DataFrame:
    """One row per (estimator, dtype): underflow, rounding, bias at the largest N, throughput."""
    ok, o = run.ok, order(run)
    t = throughput(run)
    rows = []
    for est in o.estimators:
        for dt in o.dtypes:
            g = ok[(ok["estimator"] == est) & (ok["dtype"] == dt)]
            if g.empty:
                continue
            k, n = pooled(g)
            nf, _ = pooled(g, "nonfinite_rate")
            lo, hi = wilson(k, n)
            row = {"estimator": est, "dtype": dt, "cells": len(g), "estimates": n,
                   "underflow_rate": k / n if n else np.nan, "underflow_ci_low": lo, "underflow_ci_high": hi,
                   "nonfinite_rate": nf / n if n else np.nan,
                   "rounding_error_median": g["rounding_error_mean"].median(),
                   "largest_n": int(g["n_samples"].max()),
                   "bias_at_largest_n": resolved_bias_at_largest_n(g)}
            for dev in o.devices:
                r = t[(t["device"] == dev) & (t["estimator"] == est) & (t["dtype"] == dt)]
                row[f"terms_per_s_{dev}"] = float(r["terms_per_s"].iloc[0]) if len(r) else np.nan
            rows.append(row)
    return pd.DataFrame(rows)


def summary_display(s: pd.DataFrame) -> pd.DataFrame:
    """The summary with units and formatted numbers, for Markdown and HTML."""
    if s.empty:
        return s
    out = pd.DataFrame({"estimator": s["estimator"], "dtype": s["dtype"], "cells": s["cells"].map(str)})
    out["underflow rate [95% CI]"] = [f"{fmt_pct(r)} [{fmt_pct(a)}, {fmt_pct(b)}]" for r, a, b in
                                      zip(s["underflow_rate"], s["underflow_ci_low"], s["underflow_ci_high"],
                                          strict=True)]
    out["NaN/+∞ rate"] = s["nonfinite_rate"].map(fmt_pct)
    out["median rounding error (nats)"] = s["rounding_error_median"].map(fmt_num)
    out["bias at largest N (nats)"] = bias_display(s)
    for c in s.columns:
        if c.startswith("terms_per_s_"):
            out[f"terms/s, {c.removeprefix('terms_per_s_')}"] = s[c].map(fmt_rate)
    return out


# ----------------------------------------------------------------------------- environment


def shown(value) -> str:
    """A value of meta.json as text, or "?" where the run does not record it."""
    return "?" if value is None else str(value)


def _truth_check(m: dict) -> str:
    """How a ground truth was checked, as meta.json records it (empty for older runs)."""
    if "convergence" in m:
        last = m["convergence"][-1] if m["convergence"] else {}
        return (f"; refined to {shown(m.get('max_points_per_axis'))} points per axis, last refinement "
                f"changed it by at most {fmt_num(float(last.get('max_abs_diff', float('nan'))))} nats")
    if "cross_check_max_abs_z" in m:
        return (f"; two proposals, largest |difference| / SE {fmt_num(m['cross_check_max_abs_z'])}, "
                f"{shown(m.get('cross_check_disagree'))} digit(s) beyond 3 SE")
    return ""


def environment_rows(meta: Meta) -> list[tuple[str, str]]:
    """(what, value) rows describing where, when and how the run was made."""
    hw, git, run, ds, seeds = meta.hardware, meta.git, meta.run, meta.dataset, meta.seeds
    gpus = ", ".join(f"{g.get('name')} ({g.get('memory_gb')} GB)" for g in hw.get("gpus") or []) or "none"
    dirty = {True: " (dirty: uncommitted changes)", False: " (clean)"}.get(git.get("dirty"), "")
    rows = [("run", f"{shown(run.get('name'))} (config {shown(meta.config_source)})"),
            ("status", f"{shown(meta.status)}; started {shown(meta.started)}, ended {shown(meta.ended)}, "
                       f"{shown(meta.wall_seconds)} s of sweep"),
            ("git revision", f"{git.get('revision') or 'unknown'}{dirty}"),
            ("versions", ", ".join(f"{k} {v}" for k, v in sorted(meta.versions.items()))),
            ("hardware", f"{shown(hw.get('cpu'))}, {shown(hw.get('cpu_count'))} CPUs, "
                         f"{shown(hw.get('torch_threads'))} torch threads; GPUs: {gpus}"
                         + (f"; CUDA {hw['cuda']}, driver {hw.get('gpu_driver')}" if hw.get("cuda") else "")),
            ("platform", shown(hw.get("platform"))),
            ("dataset", f"{shown(ds.get('name'))}/{shown(ds.get('split'))}, first {shown(run.get('n_data'))} "
                        f"of {shown(ds.get('n'))} digits, {shown(ds.get('binarize'))} binarization "
                        f"(seed {shown(ds.get('seed'))}), sha256 {shown(ds.get('sha256'))}"),
            ("seeds", f"root {shown(seeds.get('root'))}; draws: {shown(seeds.get('draws'))}"),
            ("protocol", f"{shown(run.get('repeats'))} repeats per cell after {shown(run.get('warmup'))} "
                         f"warm-up run(s); ground truth: {shown(run.get('reference'))} "
                         f"(where sampled: to {shown(run.get('reference_se'))} nats or "
                         f"{shown(run.get('reference_samples'))} draws per proposal)"),
            ("executor", meta.executor)]
    for name, t in sorted(meta.truth.items()):
        rows.append((f"truth: {name}", f"{shown(t.get('method'))}, max error "
                                       f"{fmt_num(float(t.get('se_max', float('nan'))))} nats"
                                       + _truth_check(t.get("meta") or {})))
    for key, fp in sorted(meta.models.items()):
        rows.append((f"model: {key}", f"fingerprint {str(fp)[:16]}"))
    for dev, p in sorted(meta.matmul_peak_gflops.items()):
        rows.append((f"matmul peak: {dev}", ", ".join(f"{k} {v:g} GFLOP/s" for k, v in sorted(p.items()))))
    return rows


# ----------------------------------------------------------------------------- Figure 7


@dataclass
class K2Panels:
    """Figure 7's input: the stored arrays of each K = 2 model to draw (in the run's model order),
    the K = 2 models left out with why (``notes``), and why nothing is drawn (``reason``)."""

    arrays: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    reason: str | None = None


def k2_panels(run: Run) -> K2Panels:
    """The K = 2 models of the run with their arrays from k2.npz (written by the sweep)."""
    kdim = run.ok.groupby("model")["latent_dim"].first()
    names = [m for m in order(run).models if kdim.get(m) == 2]
    stored = run.k2
    if stored is None and (run.root / "k2.npz").exists():
        return K2Panels(reason="k2.npz cannot be read (see “What is missing”).")
    if stored is None:
        return K2Panels(reason="the run has no k2.npz (Figure 7's arrays)." if names else
                        "the run has no K = 2 model.")
    names += sorted(set(stored) - set(names))
    if not names:
        return K2Panels(reason="the run has no K = 2 model.")
    out = K2Panels()
    for n in names:
        lacking = [k for k in K2_ARRAYS if k not in stored.get(n, {})]
        if not lacking:
            out.arrays[n] = stored[n]
        elif n not in stored:
            out.notes.append(f"{n}: k2.npz holds no arrays for it")
        else:
            out.notes.append(f"{n}: k2.npz lacks its {', '.join(lacking)}")
    if not out.arrays:
        out.reason = "; ".join(out.notes)
    return out
