"""The proposal axis in the report: prior draws against the trained encoder's q(z|x), side by side.

With the prior as proposal the terms p(x|z_i) of a trained decoder spread over hundreds of nats
and a few draws carry the whole sum (ESS near 1); with an encoder close to the posterior every
weight p(x|z) p(z) / q(z|x) is near p(x), the ESS grows with N and the log-space bias and variance
shrink. The rest of the report reads the prior cells only (:attr:`bench.run.store.Run.ok`); this
module sets the encoder cells beside the prior cells of the same (model, parametrization, device,
estimator, dtype, N): a table, a finding and a figure.
"""

from __future__ import annotations

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D

from bench.report import plotkit as K
from bench.report.analysis import Finding, Order
from bench.report.render import fmt_num, fmt_pct, join
from bench.report.sections.protocol import Section, Table
from bench.run.store import Run
from lvm.axes import PROPOSALS
from lvm.numerics import dtype_facts

TITLE = "Prior or encoder proposal: effective sample size, |bias| and variance against N"
STEM = "fig10_proposal"
GROUP = ["model", "parametrization", "device", "estimator", "dtype", "n_samples"]
VALUES = ["ess", "bias", "bias_se", "bias_resolved", "variance", "underflow_rate", "n_estimates",
          "truth_error"]


def _measured(run: Run) -> pd.DataFrame:
    """Cast cells measured under both proposals."""
    cells = run.at("proposal")
    both = cells.groupby(GROUP)["proposal"].transform("nunique") > 1
    return cells[both]


def table(run: Run) -> pd.DataFrame:
    """One row per cell coordinate measured under both proposals: each metric with a _prior and an
    _encoder column; a bias the ground truth does not resolve is NaN (its flag says so)."""
    d = _measured(run)
    if d.empty:
        return pd.DataFrame()
    d = d.assign(bias=d["bias"].where(d["bias_resolved"] == 1))
    wide = d.pivot_table(index=GROUP, columns="proposal", values=VALUES, aggfunc="first", dropna=False)
    wide.columns = [f"{v}_{p}" for v, p in wide.columns]
    cols = [f"{v}_{p}" for v in VALUES for p in PROPOSALS if f"{v}_{p}" in wide]
    return wide[cols].reset_index()


def display(t: pd.DataFrame) -> pd.DataFrame:
    """The float64 log-space rows (the estimator's statistics alone) and probability space at
    float32 (where the proposal decides underflow), logits parametrization."""
    if t.empty:
        return t
    t = t[(t["parametrization"] == t["parametrization"].iloc[0])
          & (((t["estimator"] == "log_space") & (t["dtype"] == "float64"))
             | (t["estimator"].isin(["prob_space", "prob_space_exp"]) & (t["dtype"] == "float32")))]

    def pair(col: str, fmt) -> list[str]:
        return [f"{fmt(a)} / {fmt(b)}" for a, b in zip(t[f"{col}_prior"], t[f"{col}_encoder"], strict=True)]

    return pd.DataFrame({
        "model": t["model"], "estimator": t["estimator"], "dtype": t["dtype"],
        "N": t["n_samples"].map(lambda n: f"{n:,}"),
        # the ESS of float64 weights: a probability-space row's own (from its dtype's terms, where
        # underflowed terms weigh 0) says how many survived, not how the proposal spreads them
        "ESS, prior / encoder": [p if e == "log_space" else "" for p, e in
                                 zip(pair("ess", fmt_num), t["estimator"], strict=True)],
        "bias (nats), prior / encoder": pair("bias", lambda b: "unresolved" if np.isnan(b) else fmt_num(b)),
        "variance, prior / encoder": pair("variance", fmt_num),
        "underflow, prior / encoder": pair("underflow_rate", fmt_pct)})


def finding(run: Run) -> Finding | None:
    """At the largest N measured under both: ESS, bias and variance of float64 log space per
    model, and probability space's float32 underflow, prior against encoder."""
    t = table(run)
    if t.empty:
        return None
    nums: dict[str, float] = {}
    parts = []
    f64 = t[(t["estimator"] == "log_space") & (t["dtype"] == "float64")]
    for m, g in f64.groupby("model", sort=False):
        g = g[g["parametrization"] == g["parametrization"].iloc[0]]
        r = g.loc[g["n_samples"].idxmax()]
        n = int(r["n_samples"])
        for v in ("ess", "bias", "variance"):
            for p in PROPOSALS:
                nums[f"{m}.{v}_{p}"] = float(r[f"{v}_{p}"])
        bias = ", ".join(f"{p} {'unresolved' if np.isnan(r[f'bias_{p}']) else fmt_num(r[f'bias_{p}'])}"
                         for p in PROPOSALS)
        parts.append(f"{m} at N = {n:,}: ESS {fmt_num(r['ess_encoder'])} with the encoder against "
                     f"{fmt_num(r['ess_prior'])} with the prior, variance over repeats "
                     f"{fmt_num(r['variance_encoder'])} against {fmt_num(r['variance_prior'])}, bias "
                     f"({bias}) nats")
    if not parts:
        return None
    text = "With the trained encoder as proposal, float64 log space: " + join(parts)
    prob = t[t["estimator"].isin(["prob_space", "prob_space_exp"]) & (t["dtype"] == "float32")]
    if not prob.empty:
        big = prob[prob["n_samples"] == prob["n_samples"].max()]
        a, b = big["underflow_rate_encoder"].mean(), big["underflow_rate_prior"].mean()
        floor = dtype_facts("float32").log_min_subnormal
        nums["float32.underflow_encoder"], nums["float32.underflow_prior"] = float(a), float(b)
        text += (f". Probability space at float32 and N = {int(big['n_samples'].iloc[0]):,} underflowed on "
                 f"{fmt_pct(a)} of estimates with the encoder against {fmt_pct(b)} with the prior: every "
                 f"term is near p(x), so only digits with log p(x) below {fmt_num(floor)} nats still "
                 "fail (see Theory against measurement)")
    return Finding(text + ".", nums)


def figure(run: Run, o: Order) -> K.FigureSpec:
    spec = K.FigureSpec(STEM, TITLE,
                        "Float64 log space, logits, per model with a trained encoder: effective sample size "
                        "(Σw)²/Σw² (left), |bias| against the ground truth where the truth resolves it "
                        "(middle; an unresolved bias is not drawn) and variance over repeats (right), "
                        "against N. Solid: prior draws; dashed: the encoder's q(z|x).")
    t = table(run)
    d = t[(t["estimator"] == "log_space") & (t["dtype"] == "float64")] if not t.empty else t
    if d.empty:
        spec.skipped = "no cell was measured under both the prior and the encoder proposal."
        return spec
    d = d[d["parametrization"] == d["parametrization"].iloc[0]]
    models = [m for m in o.models if m in set(d["model"])] or sorted(set(d["model"]))
    pal = dict(zip(models, sns.color_palette("colorblind", len(models)), strict=False))
    fig, axes = K.facets(["ess", "bias", "variance"], 3, panel=(3.1, 2.5), sharex=True, sharey=False)
    dashes = {"prior": "-", "encoder": "--"}
    for m, g in d.groupby("model"):
        g = g.sort_values("n_samples")
        for p in PROPOSALS:
            c = pal.get(m, "k")
            for col, ax in axes.items():  # an unresolved bias is NaN here: not drawn
                ax.plot(g["n_samples"], g[f"{col}_{p}"].abs(), color=c, ls=dashes[p], lw=1.2, marker="o",
                        ms=3.5)
    axes["ess"].set(xscale="log", yscale="log", ylabel="ESS", title="effective sample size")
    axes["bias"].set(xscale="log", yscale="log", ylabel="|bias|, nats", title="|bias| vs truth")
    axes["variance"].set(xscale="log", yscale="log", ylabel="nats²", title="variance over repeats")
    ess_axis = axes["ess"].yaxis  # ESS spans 1 to N: plain numbers at 1, 2, 5, 10, ...
    ess_axis.set_major_locator(mpl.ticker.LogLocator(base=10, subs=(1, 2, 5)))
    ess_axis.set_major_formatter(mpl.ticker.FormatStrFormatter("%g"))
    ess_axis.set_minor_formatter(mpl.ticker.NullFormatter())
    fig.supxlabel("N, draws per estimate (log scale)", fontsize=9)
    handles = [Line2D([], [], color=pal[m], lw=1.5, label=m) for m in models] + [
        Line2D([], [], color="0.3", ls=ls, label=p) for p, ls in dashes.items()]
    K.legend(fig, handles, ncols=len(handles))
    spec.figure = fig
    return spec


SECTION = Section(
    STEM, TITLE, figure, heading="Proposal: the prior or the trained encoder",
    intro="With the prior as proposal the estimators average p(x|z_i) over z_i ~ N(0, I); with the "
          "encoder, the weights p(x|z_i) p(z_i) / q(z_i|x) over z_i ~ q(z|x) of the model's own trained "
          "encoder (the IWAE evaluation protocol). Every other table and figure of this report reads the "
          "prior cells; here both, for float64 log space and float32 probability space (biases the ground "
          "truth does not resolve are marked). Machine-readable, every estimator, dtype and N: "
          "tables/proposal.csv.",
    compares="proposal", tables=(Table("proposal", table, display),), findings=(finding,))
