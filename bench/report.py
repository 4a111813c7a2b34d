"""`lvm-bench report RUN`: findings, summary tables, figures and environment of a run.

Writes ``report.md``, a self-contained ``report.html`` (figures inlined as
base64 PNG), ``figures/*.png|svg`` and ``tables/summary.csv|md``. Every
sentence of the findings is computed from the run's own numbers; the output is
byte-identical when regenerated from the same run (only meta.json's timestamps
appear in it).
"""

from __future__ import annotations

import base64
import html
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lvm.numerics import DTYPES, dtype_facts

from . import figures as F
from .config import PARAM_NAMES, ConfigError, validate
from .figures import fmt_pct
from .metrics import wilson
from .store import FORMAT_VERSION, RunError, RunStore, atomic_write

METRICS = ("n_data", "repeats", "n_estimates", "n_finite", "underflow_rate", "underflow_ci_low",
           "underflow_ci_high", "term_underflow_rate", "nonfinite_rate", "nonfinite_term_rate", "bias",
           "bias_se", "rounding_error_mean", "rounding_error_max", "mc_bias", "mc_bias_se", "variance",
           "rmse", "ess", "truth_se_max", "underflow_threshold", "unit_roundoff", "time_median_s",
           "time_iqr_s", "time_runs", "terms_per_s", "estimates_per_s", "peak_memory_mb", "wall_s",
           "latent_dim")
FIGURE_STEMS = tuple(F.TITLES)


@dataclass
class RunData:
    """A loaded run: all rows, the measured (status ok) rows, and what is missing."""

    root: Path
    meta: dict
    cells: pd.DataFrame
    loglik: pd.DataFrame | None
    missing: list[str] = field(default_factory=list)

    @property
    def ok(self) -> pd.DataFrame:
        return self.cells[self.cells["status"] == "ok"]

    @property
    def order(self) -> F.Order:
        return F.Order.of(self.ok, list(self.meta.get("config", {}).get("grid", {}).get("model", [])))


@dataclass
class Finding:
    """One generated sentence and the numbers it was made from."""

    sentence: str
    numbers: dict[str, float]


# ----------------------------------------------------------------------------- loading


def load(run_dir: str | os.PathLike) -> RunData:
    """Read a run for reporting; RunError only when nothing can be reported."""
    root = Path(run_dir)
    if not root.is_dir():
        raise RunError(f"{root}: no such run directory")
    if not (root / "meta.json").exists():
        raise RunError(f"{root} is not a run: meta.json is missing (expected a directory written by "
                       "`lvm-bench run`)")
    meta = RunStore(root).read_meta()
    missing: list[str] = []
    version = meta.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise RunError(f"{root}: results format {version} was written by a newer lvm-bench; this one "
                       f"reads format {FORMAT_VERSION}: upgrade lvm-bench to report it")
    if version != FORMAT_VERSION:
        what = "no format_version (an older results format)" if version is None else \
            f"results format {version!r}"
        missing.append(f"meta.json has {what}, and this lvm-bench writes format {FORMAT_VERSION}: the "
                       "report shows what it can read; rerun the sweep with `lvm-bench run` for a full one")
    path = root / "cells.csv"
    if not path.exists():
        raise RunError(f"{root}: cells.csv is missing, so there is nothing to report (the run finished "
                       f"no cell; continue it with `lvm-bench run --resume --out {root}`)")
    try:
        cells = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise RunError(f"{path}: cannot be read as a table ({e})") from e
    lacking = [c for c in (*PARAM_NAMES, "status") if c not in cells]
    if lacking:
        raise RunError(f"{path}: lacks the column(s) {', '.join(lacking)}; results format "
                       f"{version!r} is not one this lvm-bench reads (format {FORMAT_VERSION})")
    absent = [c for c in METRICS if c not in cells]
    if absent and (cells["status"] == "ok").any():
        missing.append(f"cells.csv lacks the metric column(s) {', '.join(absent)}; what needs them is "
                       "left out")
    for c in METRICS:
        cells[c] = pd.to_numeric(cells[c], errors="coerce") if c in cells else np.nan
    for c in ("space", "reason"):
        if c not in cells:
            cells[c] = np.nan
    cells["n_samples"] = pd.to_numeric(cells["n_samples"], errors="coerce")
    cells = cells.dropna(subset=["n_samples"]).astype({"n_samples": int})
    if cells["space"].isna().any():
        cells["space"] = cells["space"].fillna(cells["estimator"].str.split("_").str[0])
    if cells["latent_dim"].isna().any():
        cells["latent_dim"] = cells["latent_dim"].fillna(
            pd.to_numeric(cells["model"].str.extract(r"-k(\d+)$")[0], errors="coerce"))
    loglik = None
    if (root / "loglik.csv.gz").exists():
        try:
            loglik = pd.read_csv(root / "loglik.csv.gz")
        except Exception as e:  # a truncated gzip raises EOFError, zlib.error, ...
            missing.append(f"loglik.csv.gz cannot be read ({type(e).__name__}); Figure 4 is left out")
        else:
            if not {"model", "datapoint", "loglik"} <= set(loglik):
                missing.append("loglik.csv.gz lacks the columns model, datapoint, loglik; Figure 4 is "
                               "left out")
                loglik = None
    else:
        missing.append("loglik.csv.gz is missing (the per-draw log-likelihoods); Figure 4 is left out")
    if not ((root / "raw.parquet").exists() or (root / "raw.csv.gz").exists()):
        missing.append("the per-estimate file (raw.parquet or raw.csv.gz) is missing; the report does not "
                       "need it, but `lvm-bench compare` and re-analysis do")
    status = meta.get("status")
    if status != "complete":
        missing.append(f"the run's status is {status!r}, not 'complete': its cells may be partial "
                       "(continue it with `lvm-bench run --resume`)")
    missing += _missing_cells(meta, cells)
    return RunData(root, meta, cells, loglik, missing)


def _missing_cells(meta: dict, cells: pd.DataFrame) -> list[str]:
    try:
        expected, _ = validate(meta["config"], "meta.json").cells()
    except (ConfigError, KeyError, TypeError) as e:
        return [f"the grid in meta.json cannot be expanded ({e}); missing cells are not listed"]
    have = {"__".join(str(v) for v in r) for r in cells[list(PARAM_NAMES)].itertuples(index=False)}
    lost = [c.key for c in expected if c.key not in have]
    if not lost:
        return []
    shown = ", ".join(lost[:8]) + (f" and {len(lost) - 8} more" if len(lost) > 8 else "")
    return [f"{len(lost)} of the {len(expected)} cells of the grid are not in cells.csv: {shown}"]


# ----------------------------------------------------------------------------- formatting


def fmt_num(x: float) -> str:
    """Three significant digits (thousands separated, powers of ten as 1.5×10⁻⁵), Unicode minus."""
    if not np.isfinite(x):
        return "n/a"
    a = abs(float(f"{x:.3g}"))
    if a == 0 or 1e-3 <= a < 1e3:
        text = f"{x:.3g}"
    elif 1e3 <= a < 1e6:
        text = f"{x:,.0f}"
    else:
        mant, exp = f"{x:.2e}".split("e")
        text = f"{float(mant):.3g}×10{str(int(exp)).translate(F.SUPERSCRIPT)}"
    return text.replace("-", "−")


def _n(k: int, word: str) -> str:
    return f"{k:,} {word}{'' if k == 1 else 's'}"


def fmt_rate(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{x:,.0f}"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _pooled(cells: pd.DataFrame, col: str = "underflow_rate") -> tuple[int, int]:
    """(events, estimates) over cells, from per-cell rates and estimate counts."""
    n = cells["n_estimates"].fillna(0)
    return int((cells[col].fillna(0) * n).round().sum()), int(n.sum())


def _dtypes(cells: pd.DataFrame) -> list[str]:
    return [d for d in DTYPES if (cells["dtype"] == d).any()]


# ----------------------------------------------------------------------------- findings


def finding_prob_underflow(d: RunData) -> Finding | None:
    ok = d.ok
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
    return Finding(f"Probability space ({est}) returned −∞ for {_join(parts)}, over N from {ns[0]} to "
                   f"{ns[-1]} and {_n(cells['model'].nunique(), 'model')}.", nums)


def finding_log_underflow(d: RunData) -> Finding | None:
    cells = d.ok[(d.ok["space"] == "log") & d.ok["n_estimates"].notna()]
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


def _median_rounding(cells: pd.DataFrame, est: str, dt: str) -> float:
    v = cells.loc[(cells["estimator"] == est) & (cells["dtype"] == dt), "rounding_error_mean"].dropna()
    return float(v.median()) if len(v) else float("nan")


def finding_rounding(d: RunData) -> Finding | None:
    nums = {dt: _median_rounding(d.ok, "log_space", dt) for dt in DTYPES if dt != "float64"}
    nums = {k: v for k, v in nums.items() if np.isfinite(v)}
    if not nums:
        return None
    parts = [f"{fmt_num(v)} nats at {dt}" for dt, v in nums.items()]
    return Finding(f"From rounding alone, log space (log_space) is off by {_join(parts)} (median over its "
                   "cells of the mean |estimate − float64 estimate on the same draws|).", nums)


def finding_acc32(d: RunData) -> Finding | None:
    parts, nums = [], {}
    for dt in ("float16", "bfloat16"):
        a, b = _median_rounding(d.ok, "log_space", dt), _median_rounding(d.ok, "log_space_acc32", dt)
        if np.isfinite(a) and np.isfinite(b):
            nums[f"{dt}.log_space"], nums[f"{dt}.log_space_acc32"] = a, b
            parts.append(f"at {dt} from {fmt_num(a)} to {fmt_num(b)} nats")
    if not parts:
        return None
    return Finding(f"Accumulating the sum in float32 (log_space_acc32) changes the median rounding error "
                   f"{_join(parts)}.", nums)


def _slope(g: pd.DataFrame, col: str) -> float:
    v = g[np.isfinite(g[col]) & (g[col] != 0)]
    if v["n_samples"].nunique() < 3:
        return float("nan")
    return float(np.polyfit(np.log(v["n_samples"]), np.log(v[col].abs()), 1)[0])


def finding_slopes(d: RunData) -> Finding | None:
    o = d.order
    cells = d.ok[(d.ok["estimator"] == "log_space") & (d.ok["dtype"] == "float64")
                 & (d.ok["parametrization"] == o.parametrization) & (d.ok["device"] == o.device)]
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
                   f"{_n(len(per), 'model')}; a 1/N decay has slope −1).", nums)


def _throughput(d: RunData) -> pd.DataFrame:
    """Median over models of terms/s at each (device, estimator, dtype)'s largest N."""
    c = d.ok[(d.ok["parametrization"] == d.order.parametrization) & (d.ok["terms_per_s"] > 0)]
    c = c[c["n_samples"] == c.groupby(["device", "estimator", "dtype"])["n_samples"].transform("max")]
    return c.groupby(["device", "estimator", "dtype"], as_index=False).agg(
        terms_per_s=("terms_per_s", "median"), n_samples=("n_samples", "max"))


def finding_fastest(d: RunData) -> Finding | None:
    t = _throughput(d)
    parts, nums = [], {}
    for dev in d.order.devices:
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


def finding_peak(d: RunData) -> Finding | None:
    t = _throughput(d)
    peaks = d.meta.get("matmul_peak_gflops") or {}
    parts, nums = [], {}
    for dev in d.order.devices:
        for dt in ("float32", "float64"):
            row = t[(t["device"] == dev) & (t["estimator"] == "log_space") & (t["dtype"] == dt)]
            peak = (peaks.get(dev) or {}).get(dt)
            if row.empty or not peak:
                continue
            rate = float(row["terms_per_s"].iloc[0])
            gf = rate * F.DATA_FLOP_PER_TERM / 1e9
            nums |= {f"{dev}.terms_per_s": rate, f"{dev}.gflops": gf, f"{dev}.peak_gflops": float(peak)}
            parts.append(f"at {dt} on {dev} it evaluated {fmt_rate(rate)} terms/s, {fmt_num(gf)} GFLOP/s in "
                         f"the data product, {fmt_pct(gf / peak)} of that machine's {dt} matrix-product peak "
                         f"({fmt_num(peak)} GFLOP/s)")
            break
    if not parts:
        return None
    return Finding(f"Counting {F.DATA_FLOP_PER_TERM:,} FLOP a term, log space used little of the hardware: "
                   f"{'; '.join(parts)}.", nums)


def finding_nonfinite(d: RunData) -> Finding | None:
    cells = d.ok[d.ok["n_estimates"].notna()]
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


def finding_loglik(d: RunData) -> Finding | None:
    ll = d.loglik
    if ll is None or ll.empty:
        return None
    v = ll["loglik"].to_numpy()
    f32, f64 = dtype_facts("float32").log_min_subnormal, dtype_facts("float64").log_min_subnormal
    per = int(ll.groupby(["model", "datapoint"]).size().max())
    nums = {"min": float(v.min()), "max": float(v.max()), "below_float32": float(np.mean(v < f32)),
            "below_float64": float(np.mean(v < f64)), "draws_per_digit": per}
    return Finding(f"Over {per} prior draws per digit and {_n(ll['model'].nunique(), 'model')}, log p(x|z) "
                   "ranged "
                   f"from {fmt_num(nums['min'])} to {fmt_num(nums['max'])} nats: "
                   f"{fmt_pct(nums['below_float32'])} of the draws lie below the log of float32's "
                   f"smallest positive number ({f32:.1f}), so their p(x|z) is 0 in float32 (or one "
                   f"subnormal), and {fmt_pct(nums['below_float64'])} below float64's ({f64:.1f})."
                   .replace("-", "−"), nums)


FINDINGS: tuple[Callable[[RunData], Finding | None], ...] = (
    finding_loglik, finding_prob_underflow, finding_log_underflow, finding_rounding, finding_acc32,
    finding_slopes, finding_nonfinite, finding_fastest, finding_peak)


def findings(d: RunData) -> list[Finding]:
    """Every finding that the run's data supports, in a fixed order."""
    return [f for f in (fn(d) for fn in FINDINGS) if f is not None]


# ----------------------------------------------------------------------------- tables


def summary_table(d: RunData) -> pd.DataFrame:
    """One row per (estimator, dtype): underflow, rounding, bias at the largest N, throughput."""
    ok, o = d.ok, d.order
    t = _throughput(d)
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


def environment_rows(meta: dict) -> list[tuple[str, str]]:
    env = meta.get("environment") or {}
    hw, git, run = env.get("hardware") or {}, env.get("git") or {}, (meta.get("config") or {}).get("run", {})
    ds, seeds = meta.get("dataset") or {}, meta.get("seeds") or {}
    gpus = ", ".join(f"{g.get('name')} ({g.get('memory_gb')} GB)" for g in hw.get("gpus") or []) or "none"
    dirty = {True: " (dirty: uncommitted changes)", False: " (clean)"}.get(git.get("dirty"), "")
    rows = [("run", f"{run.get('name', '?')} (config {meta.get('config_source', '?')})"),
            ("status", f"{meta.get('status', '?')}; started {meta.get('started', '?')}, ended "
                       f"{meta.get('ended', '?')}, {meta.get('wall_seconds', '?')} s of sweep"),
            ("git revision", f"{git.get('revision') or 'unknown'}{dirty}"),
            ("versions", ", ".join(f"{k} {v}" for k, v in sorted((env.get("versions") or {}).items()))),
            ("hardware", f"{hw.get('cpu', '?')}, {hw.get('cpu_count', '?')} CPUs, "
                         f"{hw.get('torch_threads', '?')} torch threads; GPUs: {gpus}"
                         + (f"; CUDA {hw['cuda']}, driver {hw.get('gpu_driver')}" if hw.get("cuda") else "")),
            ("platform", str(hw.get("platform", "?"))),
            ("dataset", f"{ds.get('name', '?')}/{ds.get('split', '?')}, first {run.get('n_data', '?')} of "
                        f"{ds.get('n', '?')} digits, {ds.get('binarize', '?')} binarization "
                        f"(seed {ds.get('seed', '?')}), sha256 {ds.get('sha256', '?')}"),
            ("seeds", f"root {seeds.get('root', '?')}; draws: {seeds.get('draws', '?')}"),
            ("protocol", f"{run.get('repeats', '?')} repeats per cell after {run.get('warmup', '?')} "
                         f"warm-up run(s); ground truth: {run.get('reference', '?')} "
                         f"({run.get('reference_samples', '?')} samples where sampled)"),
            ("executor", str(meta.get("executor", "?")))]
    for name, t in sorted((meta.get("truth") or {}).items()):
        rows.append((f"truth: {name}", f"{t.get('method', '?')}, max standard error "
                                       f"{fmt_num(float(t.get('se_max', float('nan'))))} nats"))
    for key, fp in sorted((meta.get("models") or {}).items()):
        rows.append((f"model: {key}", f"fingerprint {str(fp)[:16]}"))
    for dev, p in sorted((meta.get("matmul_peak_gflops") or {}).items()):
        rows.append((f"matmul peak: {dev}", ", ".join(f"{k} {v:g} GFLOP/s" for k, v in sorted(p.items()))))
    return rows


# ----------------------------------------------------------------------------- figures


def k2_entries(d: RunData) -> list[dict]:
    """The K = 2 models of the run, loaded from the zoo and checked against the run's fingerprints."""
    o = d.order
    kdim = d.ok.groupby("model")["latent_dim"].first()
    names = [m for m in o.models if kdim.get(m) == 2]
    if not names:
        return []
    try:
        from lvm import zoo
        from lvm.data import load as load_data

        from .sweep import LOGLIK_SAMPLES, draw_seed
    except ImportError as e:
        return [{"name": n, "skip": f"{n}: the model zoo cannot be imported ({e})"} for n in names]
    run, ds = (d.meta.get("config") or {}).get("run", {}), d.meta.get("dataset") or {}
    try:
        data = load_data(run["dataset"], run["split"], seed=int(ds.get("seed") or 0))
    except (KeyError, ValueError, OSError) as e:
        return [{"name": n, "skip": f"{n}: the run's test digits cannot be loaded here ({e})"} for n in names]
    if data.identity.get("sha256") != ds.get("sha256"):
        here = str(data.identity.get("sha256", ""))[:12]
        return [{"name": n, "skip": f"{n}: the data loaded here (sha256 {here}) "
                 f"differ from the run's ({str(ds.get('sha256'))[:12]})"} for n in names]
    x = data.x[: int(run.get("n_data", 1))]
    out = []
    for n in names:
        try:
            if zoo.is_trained(n) and not (zoo.shipped_path(n).is_file() or zoo.cache_path(n).is_file()):
                out.append({"name": n, "skip": f"{n}: no trained checkpoint on this machine (shipped or "
                            "cached), and the report does not train models"})
                continue
            model = zoo.get(n, progress=False)
        except (ValueError, OSError, RuntimeError) as e:
            out.append({"name": n, "skip": f"{n}: the zoo cannot load it ({e})"})
            continue
        want = (d.meta.get("models") or {}).get(f"{n}/logits")
        if model.fingerprint() != want:
            out.append({"name": n, "skip": f"{n}: the zoo's model here (fingerprint "
                        f"{model.fingerprint()[:12]}) is not the one the run measured ({str(want)[:12]})"})
            continue
        seed = draw_seed(int((d.meta.get("seeds") or {}).get("root", run.get("seed", 0))), n,
                         LOGLIK_SAMPLES, -1 % 2**31)
        out.append({"name": n, "model": model, "x": x, "seed": seed})
    return out


def build_figures(d: RunData) -> list[F.FigureSpec]:
    """All seven figures (drawn or with the reason they are not)."""
    ok, o = d.ok, d.order
    if ok.empty:
        return [F.FigureSpec(s, t, "", skipped="the run has no measured cell.") for s, t in F.TITLES.items()]
    from .sweep import LOGLIK_SAMPLES

    return [F.underflow_vs_n(ok, o), F.bias_vs_n(ok, o), F.variance_vs_n(ok, o),
            F.loglik_distribution(d.loglik, o, o.dtypes),
            F.throughput(ok, o, d.meta.get("matmul_peak_gflops") or {}),
            F.underflow_heatmap(ok, o), F.k2_posterior(k2_entries(d), LOGLIK_SAMPLES)]


# ----------------------------------------------------------------------------- rendering


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1180px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}
h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.86em;margin:.8em 0}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:left;vertical-align:top}
th{background:#f2f2f2}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td:first-child{white-space:nowrap}
figure{margin:1.2em 0}
figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.9em;color:#444;max-width:62em}
.note{background:#fff6e0;border-left:4px solid #e69f00;padding:.5em 1em}
.skip{color:#666;font-style:italic}
code{background:#f4f4f4;padding:0 .2em}
"""


TEXT_COLUMNS = ("estimator", "dtype", "", "value")  # left-aligned; every other column is numeric


def table_markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    rows = [[str(v).replace("|", "\\|") for v in r] for r in df.itertuples(index=False)]
    lines = ["| " + " | ".join(cols) + " |",
             "|" + "|".join("---" if c in TEXT_COLUMNS else "---:" for c in cols) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def table_html(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    cls = ["" if c in TEXT_COLUMNS else ' class="num"' for c in df.columns]
    body = "".join("<tr>" + "".join(f"<td{k}>{html.escape(str(v))}</td>" for k, v in zip(cls, r, strict=True))
                   + "</tr>" for r in df.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render(blocks: list[tuple], fig_dir: Path) -> tuple[str, str]:
    """(Markdown, HTML) of the report's blocks: h1/h2/h3, p, note, ul, table, figure."""
    md, ht = [], []
    for kind, *a in blocks:
        if kind in ("h1", "h2", "h3"):
            md.append("#" * int(kind[1]) + " " + a[0])
            ht.append(f"<{kind}>{html.escape(a[0])}</{kind}>")
        elif kind in ("p", "note"):
            md.append(("> **Note:** " if kind == "note" else "") + a[0])
            ht.append(f"<p class=\"{kind}\">{html.escape(a[0])}</p>")
        elif kind == "ul":
            md.append("\n".join(f"- {i}" for i in a[0]))
            ht.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in a[0]) + "</ul>")
        elif kind == "table":
            md.append(table_markdown(a[0]))
            ht.append(table_html(a[0]))
        elif kind == "figure":
            spec: F.FigureSpec = a[0]
            if spec.figure is None:
                text = f"Not drawn: {spec.skipped}"
                md.append(f"*{text}*")
                ht.append(f"<p class=\"skip\">{html.escape(text)}</p>")
                continue
            png = fig_dir / f"{spec.name}.png"
            md.append(f"![{spec.title}](figures/{spec.name}.png)\n\n*{spec.caption}* "
                      f"([SVG](figures/{spec.name}.svg))")
            w, h = (int(round(v * F.DPI)) for v in spec.figure.get_size_inches())
            b64 = base64.b64encode(png.read_bytes()).decode("ascii")
            ht.append(f"<figure><img alt=\"{html.escape(spec.title)}\" width=\"{w}\" height=\"{h}\" "
                      f"src=\"data:image/png;base64,{b64}\"><figcaption>{html.escape(spec.caption)}"
                      "</figcaption></figure>")
    title = html.escape(blocks[0][1])
    page = (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{title}</title>\n"
            f"<style>{CSS}</style>\n</head>\n<body>\n" + "\n".join(ht) + "\n</body>\n</html>\n")
    return "\n\n".join(md) + "\n", page


def _blocks(d: RunData, found: list[Finding], summary: pd.DataFrame,
            specs: list[F.FigureSpec]) -> list[tuple]:
    run = (d.meta.get("config") or {}).get("run", {})
    ok, cells = d.ok, d.cells
    counts = cells["status"].value_counts()
    b: list[tuple] = [("h1", f"lvm-bench report: {run.get('name', d.root.name)}")]
    rows = ", ".join(f"{counts[s]:,} {s}" for s in sorted(counts.index))
    b.append(("p", f"{_n(len(ok), 'measured cell')} (rows of cells.csv: {rows}), each on "
                   f"{run.get('n_data', '?')} test digits × {run.get('repeats', '?')} "
                   "repeats. Errors are in nats; ground truth is log p(x) from quadrature or a large "
                   "importance-sampling run (see Environment)."))
    if d.missing:
        b.append(("note", "This run is incomplete or partly unreadable; see “What is missing” below."))
    b += [("h2", "Findings"), ("ul", [f.sentence for f in found] or ["No measured cell: nothing to find."])]
    b += [("h2", "Summary by estimator and dtype")]
    if summary.empty:
        b.append(("p", "No measured cell."))
    else:
        b.append(("p", "Underflow rate: share of all estimates that were −∞, pooled over N, models, "
                       "parametrizations and devices, with its Wilson 95% interval. Median rounding error: "
                       "median over cells of the mean |estimate − float64 estimate on the same draws|. Bias "
                       "at the largest N: mean over models and parametrizations of mean(estimate − truth). "
                       "Throughput: median over models of terms p(x_b|z_i) per second at the largest N. "
                       "Machine-readable: tables/summary.csv."))
        b.append(("table", summary_display(summary)))
    b.append(("h2", "Figures"))
    for i, s in enumerate(specs, 1):
        b += [("h3", f"Figure {i}. {s.title}"), ("figure", s)]
    b.append(("h2", "What is measured and what is missing"))
    skipped = cells[cells["status"] != "ok"]
    items = [f"{n:,} cell(s) {st}: {r if isinstance(r, str) and r else 'no reason recorded'}"
             for (st, r), n in skipped.groupby(["status", skipped["reason"].fillna("")]).size().items()]
    excluded = pd.Series([e.get("reason", "?") for e in d.meta.get("excluded_cells") or []], dtype=object)
    items += [f"{n:,} cell(s) excluded by the grid's rules: {r}"
              for r, n in excluded.value_counts().sort_index().items()]
    b.append(("ul", items + d.missing or ["Nothing: every cell of the grid was measured."]))
    b += [("h2", "Environment"), ("table", pd.DataFrame(environment_rows(d.meta), columns=["", "value"]))]
    return b


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the report of ``run_dir`` into ``out`` (default: the run); return report.html's path."""
    d = load(run_dir)
    out = Path(out) if out is not None else d.root
    fig_dir, tab_dir = out / "figures", out / "tables"
    try:
        fig_dir.mkdir(parents=True, exist_ok=True)
        tab_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"--out {out}: cannot create ({e.strerror})") from e
    with F.style(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        specs = build_figures(d)
        for s in specs:
            if s.figure is not None:
                F.save(s.figure, fig_dir / s.name)
    for stem in FIGURE_STEMS:  # a figure a previous report drew but this one cannot: remove it
        if not any(s.name == stem and s.figure is not None for s in specs):
            for ext in (".png", ".svg"):
                (fig_dir / f"{stem}{ext}").unlink(missing_ok=True)
    summary = summary_table(d)
    atomic_write(tab_dir / "summary.csv", lambda p: summary.to_csv(p, index=False, float_format="%.6g"))
    disp = summary_display(summary)
    text = table_markdown(disp) + "\n" if not disp.empty else "No measured cell.\n"
    atomic_write(tab_dir / "summary.md", lambda p: p.write_text(text))
    md, page = render(_blocks(d, findings(d), summary, specs), fig_dir)
    atomic_write(out / "report.md", lambda p: p.write_text(md))
    atomic_write(out / "report.html", lambda p: p.write_text(page))
    return out / "report.html"
