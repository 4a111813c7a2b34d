"""What the report says about a run, computed from the run alone: findings, summary, environment.

Everything here takes a :class:`bench.store.Run` and returns tidy pandas frames, dataclasses
or sentences; :mod:`bench.figures` draws the frames and :mod:`bench.report` lays the rest out.
Nothing here draws, writes a file or runs a model. Numbers in sentences are formatted with
:mod:`bench.render`'s formatters (which import nothing from bench), so that the findings read
exactly as the tables do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from lvm import zoo
from lvm.errors import InputError
from lvm.numerics import DTYPES, dtype_facts

from .config import DEVICES, ESTIMATORS
from .metrics import wilson
from .render import fmt_num, fmt_pct, fmt_rate, join, plural
from .store import Meta, Run
from .timing import estimate_flop

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
                   levels("parametrization", ("logits", "probs")), levels("device", DEVICES))

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


def _pooled(cells: pd.DataFrame, col: str = "underflow_rate") -> tuple[int, int]:
    """(events, estimates) over cells, from per-cell rates and estimate counts."""
    n = cells["n_estimates"].fillna(0)
    return int((cells[col].fillna(0) * n).round().sum()), int(n.sum())


def _dtypes(cells: pd.DataFrame) -> list[str]:
    return [d for d in DTYPES if (cells["dtype"] == d).any()]


def _median_rounding(cells: pd.DataFrame, est: str, dt: str) -> float:
    v = cells.loc[(cells["estimator"] == est) & (cells["dtype"] == dt), "rounding_error_mean"].dropna()
    return float(v.median()) if len(v) else float("nan")


def _slope(g: pd.DataFrame, col: str) -> float:
    v = g[np.isfinite(g[col]) & (g[col] != 0)]
    if v["n_samples"].nunique() < 3:
        return float("nan")
    return float(np.polyfit(np.log(v["n_samples"]), np.log(v[col].abs()), 1)[0])


def _architecture(model: str) -> dict | None:
    try:
        return zoo.parse(model).architecture()
    except InputError:
        return None


def cell_flop(cells: pd.DataFrame) -> pd.Series:
    """FLOP of one estimate per cell (decoder on N draws + data product): the sweep's ``flop``
    column where it holds a number, else :func:`bench.timing.estimate_flop` of the model's zoo
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


# ----------------------------------------------------------------------------- findings


def finding_prob_underflow(run: Run) -> Finding | None:
    ok = run.ok
    est = next((e for e in ("prob_space", "prob_space_exp") if (ok["estimator"] == e).any()), None)
    if est is None:
        return None
    cells = ok[(ok["estimator"] == est) & ok["n_estimates"].notna()]
    parts, nums = [], {}
    for dt in _dtypes(cells):
        g = cells[cells["dtype"] == dt]
        k, n = _pooled(g)
        per_n = [a / b for a, b in (_pooled(h) for _, h in g.groupby("n_samples")) if b]
        rate, low = k / n, min(per_n)
        nums[f"{dt}.rate"], nums[f"{dt}.min_over_n"] = rate, low
        extra = f" (at least {fmt_pct(low)} at every N)" if 0 < low and fmt_pct(low) != fmt_pct(rate) else ""
        parts.append(f"{fmt_pct(rate)}{' of its estimates' if not parts else ''} at {dt}{extra}")
    ns = sorted(cells["n_samples"].unique())
    return Finding(f"Probability space ({est}) returned −∞ for {join(parts)}, over N from {ns[0]} to "
                   f"{ns[-1]} and {plural(cells['model'].nunique(), 'model')}.", nums)


def finding_log_underflow(run: Run) -> Finding | None:
    ok = run.ok
    cells = ok[(ok["space"] == "log") & ok["n_estimates"].notna()]
    if cells.empty:
        return None
    k, n = _pooled(cells)
    dts = ", ".join(_dtypes(cells))
    if k == 0:
        return Finding(f"Log space never underflowed: none of its {n:,} estimates ({dts}; N up to "
                       f"{cells['n_samples'].max()}) was −∞.", {"underflows": 0, "estimates": n})
    worst = cells.loc[cells["underflow_rate"].idxmax()]
    return Finding(f"Log space underflowed on {k:,} of its {n:,} estimates ({fmt_pct(k / n)}); the worst "
                   f"cell was {worst['estimator']} at {worst['dtype']}, N = {worst['n_samples']}, "
                   f"{worst['model']} ({fmt_pct(worst['underflow_rate'])}).",
                   {"underflows": k, "estimates": n, "worst_rate": float(worst["underflow_rate"])})


def finding_rounding(run: Run) -> Finding | None:
    nums = {dt: _median_rounding(run.ok, "log_space", dt) for dt in DTYPES if dt != "float64"}
    nums = {k: v for k, v in nums.items() if np.isfinite(v)}
    if not nums:
        return None
    parts = [f"{fmt_num(v)} nats at {dt}" for dt, v in nums.items()]
    return Finding(f"From rounding alone, log space (log_space) is off by {join(parts)} (median over its "
                   "cells of the mean |estimate − float64 estimate on the same draws|).", nums)


def finding_acc32(run: Run) -> Finding | None:
    parts, nums = [], {}
    for dt in ("float16", "bfloat16"):
        a, b = _median_rounding(run.ok, "log_space", dt), _median_rounding(run.ok, "log_space_acc32", dt)
        if np.isfinite(a) and np.isfinite(b):
            nums[f"{dt}.log_space"], nums[f"{dt}.log_space_acc32"] = a, b
            parts.append(f"at {dt} from {fmt_num(a)} to {fmt_num(b)} nats")
    if not parts:
        return None
    return Finding(f"Accumulating the sum in float32 (log_space_acc32) changes the median rounding error "
                   f"{join(parts)}.", nums)


def finding_slopes(run: Run) -> Finding | None:
    ok, o = run.ok, order(run)
    cells = ok[(ok["estimator"] == "log_space") & (ok["dtype"] == "float64")
               & (ok["parametrization"] == o.parametrization) & (ok["device"] == o.device)]
    per = {m: (_slope(g, "mc_bias"), _slope(g, "variance")) for m, g in cells.groupby("model")}
    bias = [b for b, _ in per.values() if np.isfinite(b)]
    var = [v for _, v in per.values() if np.isfinite(v)]
    if not bias or not var:
        return None
    nums = {"mc_bias_slope": float(np.median(bias)), "variance_slope": float(np.median(var)),
            "models": len(per)}
    return Finding("In float64 log space, the fitted log-log slope against N is "
                   f"{fmt_num(nums['mc_bias_slope'])} "
                   f"for |Monte Carlo bias| and {fmt_num(nums['variance_slope'])} for variance (median over "
                   f"{plural(len(per), 'model')}; a 1/N decay has slope −1).", nums)


def finding_fastest(run: Run) -> Finding | None:
    t = throughput(run)
    parts, nums = [], {}
    for dev in order(run).devices:
        g = t[t["device"] == dev]
        if g.empty:
            continue
        best = g.loc[g["terms_per_s"].idxmax()]
        nums[f"{dev}.best"] = float(best["terms_per_s"])
        parts.append(f"on {dev} it was {best['estimator']} at {best['dtype']} with "
                     f"{fmt_rate(best['terms_per_s'])} terms/s (N = {best['n_samples']})")
    if not parts:
        return None
    return Finding(f"The fastest estimator at its largest N (median over models): {'; '.join(parts)}.", nums)


def finding_peak(run: Run) -> Finding | None:
    """log space's FLOP rate (decoder + data product, :func:`cell_gflops`) as a share of the
    machine's matrix-product peak of the dtype (meta.json matmul_peak_gflops)."""
    t = throughput(run)
    peaks = run.meta.matmul_peak_gflops
    parts, nums = [], {}
    for dev in order(run).devices:
        for dt in ("float32", "float64"):
            row = t[(t["device"] == dev) & (t["estimator"] == "log_space") & (t["dtype"] == dt)]
            peak = (peaks.get(dev) or {}).get(dt)
            if row.empty or not peak or not np.isfinite(row["gflops"].iloc[0]):
                continue
            r = row.iloc[0]
            gf = float(r["gflops"])
            nums |= {f"{dev}.terms_per_s": float(r["terms_per_s"]), f"{dev}.gflops": gf,
                     f"{dev}.peak_gflops": float(peak), f"{dev}.fraction": gf / peak,
                     f"{dev}.flop_per_term": float(r["flop_per_term"])}
            parts.append(f"at {dt} on {dev} it evaluated {fmt_rate(r['terms_per_s'])} terms/s at "
                         f"{r['flop_per_term']:,.0f} FLOP a term, {fmt_num(gf)} GFLOP/s: "
                         f"{fmt_pct(gf / peak)} of that machine's {dt} matrix-product peak "
                         f"({fmt_num(peak)} GFLOP/s)")
            break
    if not parts:
        return None
    return Finding("Counting all the floating-point work of an estimate, the decoder on each prior draw "
                   "(shared by the B digits) plus the data product, log space's share of the hardware: "
                   f"{'; '.join(parts)}.", nums)


def finding_nonfinite(run: Run) -> Finding | None:
    cells = run.ok[run.ok["n_estimates"].notna()]
    if cells.empty:
        return None
    k, n = _pooled(cells, "nonfinite_rate")
    if k == 0:
        return Finding(f"No estimate was NaN or +∞ in any of the {len(cells):,} measured cells.",
                       {"nonfinite": 0, "estimates": n})
    worst = cells.loc[cells["nonfinite_rate"].idxmax()]
    return Finding(f"{k:,} of {n:,} estimates were NaN or +∞ (overflow); most in {worst['estimator']} at "
                   f"{worst['dtype']}, N = {worst['n_samples']}, {worst['model']} "
                   f"({fmt_pct(worst['nonfinite_rate'])}).", {"nonfinite": k, "estimates": n})


def finding_loglik(run: Run) -> Finding | None:
    ll = run.loglik
    if ll is None or ll.empty:
        return None
    v = ll["loglik"].to_numpy()
    f32, f64 = dtype_facts("float32").log_min_subnormal, dtype_facts("float64").log_min_subnormal
    per = int(ll.groupby(["model", "datapoint"]).size().max())
    nums = {"min": float(v.min()), "max": float(v.max()), "below_float32": float(np.mean(v < f32)),
            "below_float64": float(np.mean(v < f64)), "draws_per_digit": per}
    return Finding(f"Over {per} prior draws per digit and {plural(ll['model'].nunique(), 'model')}, "
                   "log p(x|z) ranged "
                   f"from {fmt_num(nums['min'])} to {fmt_num(nums['max'])} nats: "
                   f"{fmt_pct(nums['below_float32'])} of the draws lie below the log of float32's "
                   f"smallest positive number ({f32:.1f}), so their p(x|z) is 0 in float32 (or one "
                   f"subnormal), and {fmt_pct(nums['below_float64'])} below float64's ({f64:.1f})."
                   .replace("-", "−"), nums)


FINDINGS: tuple[Callable[[Run], Finding | None], ...] = (
    finding_loglik, finding_prob_underflow, finding_log_underflow, finding_rounding, finding_acc32,
    finding_slopes, finding_nonfinite, finding_fastest, finding_peak)


def findings(run: Run) -> list[Finding]:
    """Every finding that the run's data supports, in a fixed order."""
    return [f for f in (fn(run) for fn in FINDINGS) if f is not None]


# ----------------------------------------------------------------------------- summary


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
            k, n = _pooled(g)
            nf, _ = _pooled(g, "nonfinite_rate")
            lo, hi = wilson(k, n)
            top = g[g["n_samples"] == g["n_samples"].max()]["bias"].dropna()
            row = {"estimator": est, "dtype": dt, "cells": len(g), "estimates": n,
                   "underflow_rate": k / n if n else np.nan, "underflow_ci_low": lo, "underflow_ci_high": hi,
                   "nonfinite_rate": nf / n if n else np.nan,
                   "rounding_error_median": g["rounding_error_mean"].median(),
                   "largest_n": int(g["n_samples"].max()),
                   "bias_at_largest_n": top.mean() if len(top) else np.nan}
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
    out["bias at largest N (nats)"] = [f"{fmt_num(b)} (N = {n})" for b, n in
                                       zip(s["bias_at_largest_n"], s["largest_n"], strict=True)]
    for c in s.columns:
        if c.startswith("terms_per_s_"):
            out[f"terms/s, {c.removeprefix('terms_per_s_')}"] = s[c].map(fmt_rate)
    return out


# ----------------------------------------------------------------------------- environment


def shown(value) -> str:
    """A value of meta.json as text, or "?" where the run does not record it."""
    return "?" if value is None else str(value)


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
                         f"({shown(run.get('reference_samples'))} samples where sampled)"),
            ("executor", meta.executor)]
    for name, t in sorted(meta.truth.items()):
        rows.append((f"truth: {name}", f"{shown(t.get('method'))}, max standard error "
                                       f"{fmt_num(float(t.get('se_max', float('nan'))))} nats"))
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
