"""Measurements held against what theory predicts: tidy tables, findings and a figure (fig9_theory).

Three predictions, each from quantities the run stored per estimate (raw rows):

Underflow of probability space
    p_hat = fl(sum_i fl(p(x|z_i)) / N) is 0 exactly when the sum over N falls below half the
    dtype's smallest subnormal, so the estimate is predicted to be -inf when the float64
    log-space estimate on the very same draws (the replay) lies below log(smallest subnormal / 2).
    With the prior as proposal that sum is dominated by the largest term. A second prediction
    assumes a perfect proposal, every term equal to p(x): -inf when the ground truth lies below
    that floor. Set beside the measured rate and its Wilson 95% interval. Both predictions take
    the terms as float64 computes them: exact where the dtype computes log p(x|z) accurately
    (float32, float64; tests/test_theory.py), while at float16 and bfloat16 the terms' own
    rounding can move them by nats, which the measured rate includes and the prediction does not.

Rounding error of the shifted log-sum-exp
    log_space reduces its log terms x_i in the working dtype as y = a + log sum_i exp(x_i - a),
    a = max_i x_i; log_space_acc32 reduces the same terms in float32, so their difference is the
    reduction's own rounding. Following the rounding error analysis of Blanchard, Higham and
    Higham (2021, IMA J. Numer. Anal. 41(4), "Accurately computing the log-sum-exp and softmax
    functions"), to first order in the unit roundoff u:
        |y_hat - y| <= u (|y| + N + 2 log N)
    assuming: exact inputs x_i (the rounding of the terms themselves is not included: both
    estimators share them); the standard model fl(a op b) = (a op b)(1 + d), |d| <= u, for
    +, -, exp and log; recursive summation of the N shifted exponentials (the worst case of
    any order, gamma_{N-1} ~ (N - 1) u); no underflow or overflow; and the softmax-weighted
    mean of a - x_i bounded by its entropy, log N. The N u term makes the bound vacuous once
    N u >= 1: it bounds every summation order, while pairwise and blocked sums do far better.

Monte Carlo bias of log space
    The delta method gives E[log p_hat] - log p(x) ~ -Var(w) / (2 N E[w]^2). Var(w)/E[w]^2 is
    estimated per digit from the float64 weights of the largest-N float64 log-space cell as
    N / ESS - 1 (mean over repeats), then divided by 2 N for every N. It holds when the weights'
    second moment is well estimated (large ESS) and breaks when a few draws carry all the
    weight (ESS near 1), where the sample variance understates the true one.
"""

from __future__ import annotations

import math

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D

from bench.report import plotkit as K
from bench.report.analysis import Finding, Order
from bench.report.render import fmt_num, fmt_pct, join
from bench.report.sections.protocol import Section, Table
from bench.run.metrics import wilson
from bench.run.store import Run
from lvm.numerics import dtype_facts

STEM, TITLE = "fig9_theory", "Theory against measurement"
GROUP = ["model", "parametrization", "device", "proposal", "estimator", "dtype", "n_samples"]
LOW = ("float16", "bfloat16")  # where log_space and log_space_acc32 reduce differently


def _raw(run: Run) -> pd.DataFrame:
    """The raw estimates of every proposal, every other axis at its default (the cast policy)."""
    raw = run.raw
    if raw is None or raw.empty:
        return pd.DataFrame()
    return run.at("proposal", frame=raw)


def floor(dtype: str) -> float:
    """log of half the smallest subnormal: a mean below it rounds to 0 (round to nearest even)."""
    return dtype_facts(dtype).log_min_subnormal - math.log(2)


def underflow(run: Run) -> pd.DataFrame:
    """Per probability-space cell: measured underflow rate [Wilson 95%] beside the two predictions."""
    raw, ok = _raw(run), run.ok
    if raw.empty or ok.empty:
        return pd.DataFrame()
    prob = set(ok.loc[ok["space"] == "prob", "estimator"])
    r = raw[raw["estimator"].isin(prob)]
    if r.empty:
        return pd.DataFrame()
    fl = r["dtype"].map(floor)
    r = r.assign(measured=np.isneginf(r["estimate"]), from_replay=r["replay_float64"] < fl,
                 if_terms_equal_px=r["truth"] < fl)
    rows = []
    for key, g in r.groupby(GROUP, sort=False):
        k, n = int(g["measured"].sum()), len(g)
        lo, hi = wilson(k, n)
        pred = float(g["from_replay"].mean())
        rows.append({**dict(zip(GROUP, key, strict=True)), "estimates": n, "measured": k / n,
                     "ci_low": lo, "ci_high": hi, "predicted": pred,
                     "predicted_if_terms_equal_px": float(g["if_terms_equal_px"].mean()),
                     "agrees": bool(lo - 1e-12 <= pred <= hi + 1e-12)})
    return pd.DataFrame(rows)


def lse_bound(y: np.ndarray, n: np.ndarray, u: float) -> np.ndarray:
    """The first-order forward error bound of the shifted log-sum-exp (module docstring)."""
    return u * (np.abs(y) + n + 2 * np.log(n))


def lse_rounding(run: Run) -> pd.DataFrame:
    """Per (dtype, N): the reduction's observed rounding |log_space - log_space_acc32| beside the bound."""
    raw = _raw(run)
    if raw.empty:
        return pd.DataFrame()
    r = raw[raw["estimator"].isin(["log_space", "log_space_acc32"]) & raw["dtype"].isin(LOW)]
    keys = ["model", "parametrization", "device", "dtype", "n_samples", "repeat", "datapoint"]
    w = r.pivot_table(index=keys, columns="estimator", values="estimate", aggfunc="first")
    if not {"log_space", "log_space_acc32"} <= set(w.columns):
        return pd.DataFrame()
    w = w[np.isfinite(w["log_space"]) & np.isfinite(w["log_space_acc32"])].reset_index()
    n = w["n_samples"].to_numpy(float)
    u = w["dtype"].map(lambda d: dtype_facts(d).unit_roundoff).to_numpy(float)
    w["observed"] = (w["log_space"] - w["log_space_acc32"]).abs()
    w["bound"] = lse_bound(w["log_space_acc32"].to_numpy() + np.log(n), n, u)
    w["ratio"] = w["observed"] / w["bound"]
    out = w.groupby(["dtype", "n_samples"]).agg(
        estimates=("observed", "size"), observed_median=("observed", "median"),
        observed_max=("observed", "max"), bound_median=("bound", "median"),
        ratio_median=("ratio", "median"), ratio_max=("ratio", "max")).reset_index()
    out["within_bound"] = out["ratio_max"] <= 1
    return out


def delta_method(run: Run) -> pd.DataFrame:
    """Per (model, parametrization, device, proposal, N): measured float64 log-space bias beside
    -Var(w) / (2 N E[w]^2), with standard errors."""
    raw, ok = _raw(run), run.at("proposal")
    if raw.empty or ok.empty:
        return pd.DataFrame()
    f64 = raw[(raw["estimator"] == "log_space") & (raw["dtype"] == "float64")]
    cells = ok[(ok["estimator"] == "log_space") & (ok["dtype"] == "float64")]
    rows = []
    for (m, par, dev, prop), g in f64.groupby(["model", "parametrization", "device", "proposal"],
                                              sort=False):
        top = g[g["n_samples"] == g["n_samples"].max()]
        n_top = int(top["n_samples"].iloc[0])
        top = top.assign(c=n_top / top["ess"] - 1)
        per_repeat = top.groupby("repeat")["c"].mean()
        c = float(top.groupby("datapoint")["c"].mean().mean())
        c_se = float(per_repeat.std(ddof=1) / math.sqrt(len(per_repeat))) if len(per_repeat) > 1 else np.nan
        sel = cells[(cells["model"] == m) & (cells["parametrization"] == par) & (cells["device"] == dev)
                    & (cells["proposal"] == prop)]
        for _, cell in sel.sort_values("n_samples").iterrows():
            n = int(cell["n_samples"])
            pred, pred_se = -c / (2 * n), c_se / (2 * n)
            se = math.hypot(cell["mc_bias_se"], pred_se)
            rows.append({"model": m, "parametrization": par, "device": dev, "proposal": prop, "n_samples": n,
                         "ess": cell["ess"], "measured": cell["mc_bias"], "measured_se": cell["mc_bias_se"],
                         "resolved": cell["mc_bias_resolved"] == 1, "predicted": pred,
                         "predicted_se": pred_se, "weights_from_n": n_top,
                         "holds": bool(abs(cell["mc_bias"] - pred) <= 2 * se)})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- findings


def finding_underflow(run: Run) -> Finding | None:
    t = underflow(run)
    if t.empty:
        return None
    nums = {"cells": len(t), "agree": int(t["agrees"].sum())}
    miss = t.loc[(t["measured"] - t["predicted"]).abs().idxmax()]
    text = (f"Predicted from the float64 log-space estimate on the same draws, probability space's "
            f"underflow rate falls within the measured rate's 95% interval in {nums['agree']} of "
            f"{nums['cells']} cells (largest miss: {miss['estimator']} at {miss['dtype']}, {miss['model']}, "
            f"N = {int(miss['n_samples']):,}: predicted {fmt_pct(miss['predicted'])}, measured "
            f"{fmt_pct(miss['measured'])})")
    enc = t[t["proposal"] == "encoder"]
    if not enc.empty:  # every term near p(x): the truth-based prediction is the one that applies
        e_lo = (enc["predicted_if_terms_equal_px"] >= enc["ci_low"] - 1e-12)
        e_hi = (enc["predicted_if_terms_equal_px"] <= enc["ci_high"] + 1e-12)
        nums["encoder.cells"], nums["encoder.agree"] = len(enc), int((e_lo & e_hi).sum())
        text += (f". With the trained encoder as proposal, the prediction from the ground truth alone (−∞ "
                 f"where log p(x) lies below the dtype's floor) falls within the measured interval in "
                 f"{nums['encoder.agree']} of {len(enc)} cells, and the one from the float64 estimate on "
                 f"the same draws in {int(enc['agrees'].sum())}")
        t = run.at(frame=t)
    big = t[t["n_samples"] == t["n_samples"].max()]
    parts = []
    for dt in ("float32", "bfloat16", "float16"):
        g = big[big["dtype"] == dt]
        if not g.empty:
            a, b = g["measured"].mean(), g["predicted_if_terms_equal_px"].mean()
            nums[f"{dt}.measured"], nums[f"{dt}.if_terms_equal_px"] = float(a), float(b)
            parts.append(f"{dt} {fmt_pct(a)} measured against {fmt_pct(b)} if every term were p(x)")
    if parts:
        text += (f". At N = {int(big['n_samples'].iloc[0]):,}, a proposal that made every term equal to "
                 f"p(x) would underflow only where log p(x) itself is below the floor: {join(parts)}")
    return Finding(text + ".", nums)


def finding_lse(run: Run) -> Finding | None:
    t = lse_rounding(run)
    if t.empty:
        return None
    parts, nums = [], {}
    for dt, g in t[t["observed_max"] > 0].groupby("dtype", sort=False):  # N = 1 has nothing to reduce
        lo, hi = g.loc[g["ratio_median"].idxmin()], g.loc[g["ratio_median"].idxmax()]
        nums[f"{dt}.ratio_median_min"] = float(lo["ratio_median"])
        nums[f"{dt}.ratio_median_max"] = float(hi["ratio_median"])
        nums[f"{dt}.within"] = bool(g["within_bound"].all())
        parts.append(f"from {fmt_num(hi['ratio_median'])} at N = {int(hi['n_samples']):,} to "
                     f"{fmt_num(lo['ratio_median'])} at N = {int(lo['n_samples']):,} at {dt}"
                     + ("" if g["within_bound"].all() else " (some estimates exceed it)"))
    if not parts:
        return None
    return Finding("The log-sum-exp reduction's own rounding (log_space against log_space_acc32 on the "
                   "same terms) sits below the first-order forward error bound u(|y| + N + 2 log N) of the "
                   "shifted formula (Blanchard, Higham and Higham 2021); the median observed share of the "
                   f"bound falls {join(parts)}.", nums)


def finding_delta(run: Run) -> Finding | None:
    t = delta_method(run)
    t = t[t["resolved"]] if not t.empty else t
    if t.empty:
        return None
    holds, breaks = t[t["holds"]], t[~t["holds"]]
    nums = {"resolved": len(t), "holds": len(holds)}
    text = (f"The delta method's −Var(w)/(2N E[w]²) matches the resolved float64 log-space bias within 2 "
            f"standard errors in {len(holds)} of {len(t)} cells")
    if len(holds):
        nums["holds.ess_median"] = float(holds["ess"].median())
        text += f" (median ESS {fmt_num(holds['ess'].median())})"
    if len(breaks):
        nums["breaks.ess_median"] = float(breaks["ess"].median())
        z = (breaks["measured"] - breaks["predicted"]).abs() / np.hypot(breaks["measured_se"],
                                                                         breaks["predicted_se"])
        worst = breaks.loc[z.idxmax()]
        text += (f"; where it fails the median ESS is {fmt_num(breaks['ess'].median())} (the largest miss: "
                 f"{worst['model']} at N = {int(worst['n_samples']):,}, ESS {fmt_num(worst['ess'])}: "
                 f"measured {fmt_num(worst['measured'])} ± {fmt_num(worst['measured_se'])}, predicted "
                 f"{fmt_num(worst['predicted'])} nats)")
    return Finding(text + ".", nums)


# ----------------------------------------------------------------------------- figure


def figure(run: Run, o: Order) -> K.FigureSpec:
    spec = K.FigureSpec(STEM, TITLE,
                        "Left: probability space's underflow rate per cell, predicted from the float64 "
                        "estimate on the same draws against measured (bars: Wilson 95% interval; the "
                        "diagonal is agreement). Middle: the log-sum-exp reduction's rounding "
                        "(|log_space − log_space_acc32|, median per N, solid; max, dotted) against the "
                        "first-order bound u(|y| + N + 2 log N) (dashed). Right: float64 log-space bias, "
                        "measured (solid, filled where the ground truth resolves it) against the delta "
                        "method's −Var(w)/(2N E[w]²) (dashed), per model, as magnitudes.")
    u, r, d = underflow(run), lse_rounding(run), delta_method(run)
    panels = [p for p, t in (("underflow", u), ("lse", r), ("delta", d)) if not t.empty]
    if not panels:
        spec.skipped = "the run has no raw estimates to hold against theory."
        return spec
    fig, axes = K.facets(panels, 3, panel=(3.3, 2.8), sharex=False, sharey=False)
    dtypes = [dt for dt in o.dtypes if dt in set(u.get("dtype", [])) | set(r.get("dtype", []))]
    if "underflow" in axes:
        ax = axes["underflow"]
        for dt, g in u.groupby("dtype"):
            ax.errorbar(g["predicted"], g["measured"],
                        yerr=[g["measured"] - g["ci_low"], g["ci_high"] - g["measured"]],
                        fmt="o", ms=3.5, lw=0.7, color=K.DTYPE_COLORS.get(dt, "k"), alpha=0.8)
        ax.plot([0, 1], [0, 1], color="0.5", lw=0.8, ls=":")
        ax.set(xlabel="predicted underflow rate", ylabel="measured underflow rate",
               title="underflow: predicted vs measured")
        for a in (ax.xaxis, ax.yaxis):
            a.set_major_formatter(mpl.ticker.PercentFormatter(1.0, decimals=0))
    if "lse" in axes:
        ax = axes["lse"]
        for dt, g in r[r["observed_max"] > 0].groupby("dtype"):  # N = 1: nothing to reduce
            c = K.DTYPE_COLORS.get(dt, "k")
            ax.plot(g["n_samples"], g["observed_median"], color=c, marker="o", ms=3.5)
            ax.plot(g["n_samples"], g["observed_max"], color=c, ls=":")
            ax.plot(g["n_samples"], g["bound_median"], color=c, ls="--")
        ax.set(xscale="log", yscale="log", xlabel=K.N_LABEL, ylabel="nats", title="log-sum-exp rounding")
    if "delta" in axes:
        ax = axes["delta"]
        pal = dict(zip(o.models, sns.color_palette("colorblind", len(o.models)), strict=False))
        for (m, prop), g in d[d["parametrization"] == o.parametrization].groupby(["model", "proposal"]):
            c = pal.get(m, "k")
            label = m if prop == "prior" else f"{m}, {prop}"
            ax.plot(g["n_samples"], g["measured"].abs(), color=c, lw=1.1, label=label,
                    alpha=1.0 if prop == "prior" else 0.55)
            ax.scatter(g["n_samples"], g["measured"].abs(), s=14, color=c,
                       marker="o" if prop == "prior" else "s",
                       facecolors=[c if ok else "none" for ok in g["resolved"]], zorder=3)
            ax.plot(g["n_samples"], g["predicted"].abs(), color=c, ls="--", lw=1.0)
        ax.set(xscale="log", yscale="log", xlabel=K.N_LABEL, ylabel="|bias|, nats",
               title="Monte Carlo bias vs delta method")
        ax.legend(fontsize=7, frameon=False)
    handles = K.dtype_handles(dtypes) + [Line2D([], [], color="0.3", ls="--", label="theory"),
                                         Line2D([], [], color="0.3", marker="o", mfc="none", ls="none",
                                                label="unresolved")]
    K.legend(fig, handles, ncols=len(handles))
    spec.figure = fig
    return spec


def display_underflow(t: pd.DataFrame) -> pd.DataFrame:
    """The underflow table at each model's largest N (all N are in tables/theory_underflow.csv)."""
    if t.empty:
        return t
    t = t[t["n_samples"] == t.groupby(["model", "proposal"])["n_samples"].transform("max")]
    return _with_proposal(t, {
        "model": t["model"], "parametrization": t["parametrization"], "estimator": t["estimator"],
        "dtype": t["dtype"], "N": t["n_samples"].map(lambda n: f"{n:,}"),
        "measured [95% CI]": [f"{fmt_pct(m)} [{fmt_pct(a)}, {fmt_pct(b)}]"
                              for m, a, b in zip(t["measured"], t["ci_low"], t["ci_high"], strict=True)],
        "predicted": t["predicted"].map(fmt_pct),
        "if every term were p(x)": t["predicted_if_terms_equal_px"].map(fmt_pct)})


def _with_proposal(t: pd.DataFrame, columns: dict) -> pd.DataFrame:
    """A display table, with a proposal column after the model's where a proposal other than the
    prior was measured."""
    if (t["proposal"] != "prior").any():
        at = list(columns).index("model") + 1
        items = list(columns.items())
        columns = dict(items[:at] + [("proposal", t["proposal"])] + items[at:])
    return pd.DataFrame(columns)


def display_lse(t: pd.DataFrame) -> pd.DataFrame:
    if t.empty:
        return t
    return pd.DataFrame({
        "dtype": t["dtype"], "N": t["n_samples"].map(lambda n: f"{n:,}"),
        "observed median (nats)": t["observed_median"].map(fmt_num),
        "observed max (nats)": t["observed_max"].map(fmt_num),
        "bound, median (nats)": t["bound_median"].map(fmt_num),
        "observed / bound, max": t["ratio_max"].map(fmt_num)})


def display_delta(t: pd.DataFrame) -> pd.DataFrame:
    if t.empty:
        return t
    return _with_proposal(t, {
        "model": t["model"], "parametrization": t["parametrization"],
        "N": t["n_samples"].map(lambda n: f"{n:,}"), "ESS": t["ess"].map(fmt_num),
        "measured bias (nats)": [f"{fmt_num(m)} ± {fmt_num(s)}" + ("" if ok else " (unresolved)")
                                 for m, s, ok in zip(t["measured"], t["measured_se"], t["resolved"],
                                                     strict=True)],
        "delta method (nats)": [f"{fmt_num(p)} ± {fmt_num(s)}"
                                for p, s in zip(t["predicted"], t["predicted_se"], strict=True)]})


SECTION = Section(
    STEM, TITLE, figure, heading="Theory against measurement",
    intro="Each prediction is set beside what the run measured; how each is made and what it assumes is in "
          "bench/report/sections/theory.py. Machine-readable, at every N: tables/theory_*.csv.",
    compares=None,
    tables=(Table("theory_underflow", underflow, display_underflow,
                  "Underflow of probability space: predicted and measured (each model's largest N)"),
            Table("theory_lse", lse_rounding, display_lse,
                  "Rounding of the log-sum-exp reduction against its forward error bound"),
            Table("theory_delta", delta_method, display_delta,
                  "Float64 log-space bias against the delta method")),
    findings=(finding_underflow, finding_lse, finding_delta))
