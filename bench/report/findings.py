"""The report's findings: one generated sentence each, computed from the run alone.

Each ``finding_*`` takes a :class:`bench.run.store.Run` and returns a :class:`Finding` (the
sentence and the numbers it was made from) or None when the run lacks what it needs; the
helpers and frames they rest on live in :mod:`bench.report.analysis`. The sections' findings
(:data:`bench.report.sections.SECTIONS`) come after the run's own, in the sections' order.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from bench.report.analysis import Finding, order, pooled, throughput
from bench.report.render import fmt_num, fmt_pct, fmt_rate, join, plural
from bench.report.sections import SECTIONS
from bench.run.store import Run
from lvm.numerics import DTYPES, dtype_facts


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


def finding_prob_underflow(run: Run) -> Finding | None:
    ok = run.ok
    est = next((e for e in ("prob_space", "prob_space_exp") if (ok["estimator"] == e).any()), None)
    if est is None:
        return None
    cells = ok[(ok["estimator"] == est) & ok["n_estimates"].notna()]
    parts, nums = [], {}
    for dt in _dtypes(cells):
        g = cells[cells["dtype"] == dt]
        k, n = pooled(g)
        per_n = [a / b for a, b in (pooled(h) for _, h in g.groupby("n_samples")) if b]
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
    k, n = pooled(cells)
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
    per = {m: (_slope(g[g["mc_bias_resolved"] == 1], "mc_bias"), _slope(g, "variance"))
           for m, g in cells.groupby("model")}
    bias = [b for b, _ in per.values() if np.isfinite(b)]
    var = [v for _, v in per.values() if np.isfinite(v)]
    if not bias or not var:
        return None
    nums = {"mc_bias_slope": float(np.median(bias)), "variance_slope": float(np.median(var)),
            "models": len(per)}
    return Finding("In float64 log space, the fitted log-log slope against N is "
                   f"{fmt_num(nums['mc_bias_slope'])} "
                   f"for |Monte Carlo bias| and {fmt_num(nums['variance_slope'])} for variance (median over "
                   f"{plural(len(per), 'model')}; a 1/N decay has slope −1; the bias slope uses only the "
                   "cells whose bias the ground truth resolves).", nums)


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
    k, n = pooled(cells, "nonfinite_rate")
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


def _along_k(run: Run, estimator: str, dtype: str, col: str) -> tuple[int, dict[str, pd.DataFrame]]:
    """The cells of one estimator and dtype at their largest N, per model family with more than
    one K (shown parametrization and device), sorted by K: (N, {family: cells})."""
    ok, o = run.ok, order(run)
    if "latent_dim" not in ok or "state" not in ok:
        return 0, {}
    c = ok[(ok["estimator"] == estimator) & (ok["dtype"] == dtype)
           & (ok["parametrization"] == o.parametrization) & (ok["device"] == o.device) & ok[col].notna()]
    if c.empty:
        return 0, {}
    n = int(c["n_samples"].max())
    c = c[c["n_samples"] == n]
    return n, {f: g.sort_values("latent_dim") for f, g in c.groupby("state") if g["latent_dim"].nunique() > 1}


def finding_k_underflow(run: Run) -> Finding | None:
    """How probability space's underflow at the largest N moves with the latent dimension K."""
    est = next((e for e in ("prob_space_exp", "prob_space") if (run.ok["estimator"] == e).any()), None)
    parts, nums = [], {}
    for dt in ("float32", "float64"):
        n, fams = _along_k(run, est, dt, "underflow_rate") if est else (0, {})
        for fam, g in fams.items():
            by_k = list(zip(g["latent_dim"], g["underflow_rate"], strict=True))
            series = [f"{fmt_pct(r)} at K = {k}" for k, r in by_k]
            nums |= {f"{dt}.{fam}.k{k}": float(r) for k, r in by_k}
            parts.append(f"{fam} decoders at {dt} (N = {n:,}): {join(series)}")
    if not parts:
        return None
    return Finding(f"Against the latent dimension K, the share of estimates that probability space ({est}) "
                   f"returned as −∞ at its largest N: {'; '.join(parts)}.", nums)


def finding_k_bias(run: Run) -> Finding | None:
    """How the float64 log-space (Monte Carlo) bias at the largest N moves with K."""
    n, fams = _along_k(run, "log_space", "float64", "mc_bias")
    if not fams:
        return None
    parts, nums = [], {}
    for fam, g in fams.items():
        series = []
        for k, b, se, ok, err in zip(g["latent_dim"], g["mc_bias"], g["mc_bias_se"], g["mc_bias_resolved"],
                                     g["truth_error"], strict=True):
            if ok == 1:
                series.append(f"{fmt_num(b)} ± {fmt_num(se)} nats at K = {k}")
                nums[f"{fam}.k{k}"] = float(b)
            else:
                series.append(f"unresolved at K = {k} (the truth's error is {fmt_num(err)} nats)")
        if any(ok == 1 for ok in g["mc_bias_resolved"]):
            parts.append(f"{fam} decoders {join(series)}")
    if not parts:
        return None
    return Finding(f"The float64 log-space bias at N = {n:,} (estimate − ground truth, ± its standard "
                   f"error) moves with the latent dimension K: {'; '.join(parts)}.", nums)


FINDINGS: tuple[Callable[[Run], Finding | None], ...] = (
    finding_loglik, finding_prob_underflow, finding_log_underflow, finding_rounding, finding_acc32,
    finding_slopes, finding_k_underflow, finding_k_bias, *(f for s in SECTIONS for f in s.findings),
    finding_nonfinite, finding_fastest, finding_peak)


def findings(run: Run) -> list[Finding]:
    """Every finding that the run's data supports, in a fixed order."""
    return [f for f in (fn(run) for fn in FINDINGS) if f is not None]
