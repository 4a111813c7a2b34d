"""The report's figures of where the errors come from and what they cost: the log-likelihoods
against each dtype's floor, throughput against the machine's peak, and the K = 2 posteriors
(Figures 4, 5 and 7 of :data:`bench.report.figures.FIGURES`).

Each takes a :class:`bench.run.store.Run` and the run's :class:`bench.report.analysis.Order` and
returns one matplotlib Figure, or the reason it is not drawn; none runs a model. The palettes,
style and layout helpers they share are :mod:`bench.report.plotkit`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bench.report import analysis as A
from bench.report import plotkit as K
from bench.report.analysis import Order
from bench.report.render import fmt_pct
from bench.run.store import Run
from lvm.numerics import DTYPES, dtype_facts

# ----------------------------------------------------------------------------- 4 log-likelihoods


def loglik_distribution(run: Run, o: Order) -> K.FigureSpec:
    loglik = run.loglik
    spec = LOGLIK.spec(
        "Distribution of log p(x|z_i) in nats, computed in float64, over prior draws z_i for "
        "each of the run's test digits (all digits pooled; 80 bins over each panel's range). "
        "Vertical lines: the log of each dtype's smallest positive (subnormal) number; a "
        "term left of its dtype's line cannot be represented in that dtype and rounds to 0 "
        "(to the smallest subnormal if within log 2 of the line), and a probability-space "
        "estimate is −∞ when all its N terms are 0. Panel titles give the share of draws left "
        "of each line.")
    if loglik is None or loglik.empty:
        spec.skipped = "the run has no loglik.csv.gz (the per-draw log-likelihoods), so it cannot be drawn."
        return spec
    models = [m for m in o.models if (loglik["model"] == m).any()]
    models += sorted(set(loglik["model"]) - set(models))
    dtypes = [d for d in DTYPES if d in o.dtypes] or list(DTYPES)
    floors = {d: dtype_facts(d).log_min_subnormal for d in dtypes}
    fig, axes = K.facets(models, 2, panel=(5.0, 2.5), sharex=False, sharey=False)
    for m, ax in axes.items():
        sel = loglik[loglik["model"] == m]
        v = sel["loglik"]
        lo, hi = min(float(v.min()), *floors.values()), max(float(v.max()), *floors.values())
        pad = 0.04 * (hi - lo)
        sns.histplot(x=v, bins=80, binrange=(lo - pad, hi + pad), color="0.35", element="bars",
                     stat="count", ax=ax, edgecolor="none")
        for d in dtypes:
            ax.axvline(floors[d], color=K.DTYPE_COLORS[d], lw=1.6, ls=(0, (5, 2)))
        share = ", ".join(f"{d} {fmt_pct(float(np.mean(v < floors[d])))}" for d in dtypes)
        digits = sel["datapoint"].nunique()
        ax.set(xlim=(lo - pad, hi + pad), xlabel="", ylabel="",
               title=f"{m}: {digits} digits × {len(v) // max(1, digits)} prior draws\n"
                     f"below the floor: {share}")
    fig.supxlabel("log p(x|z), nats (float64)", fontsize=9)
    fig.supylabel("number of prior draws", fontsize=9)
    handles = [Line2D([], [], color=K.DTYPE_COLORS[d], lw=1.6, ls=(0, (5, 2)),
                      label=f"{d} floor: {floors[d]:.1f}".replace("-", "−")) for d in dtypes]
    K.legend(fig, handles)
    spec.figure = fig
    return spec


# ----------------------------------------------------------------------------- 5 throughput


def throughput(run: Run, o: Order) -> K.FigureSpec:
    """:func:`bench.report.analysis.throughput` (GFLOP/s of decoder + data product, median, min and
    max over models per device, estimator and dtype) against meta.json's matmul_peak_gflops."""
    agg, peaks, par = A.throughput(run), run.meta.matmul_peak_gflops, o.parametrization
    fpt = agg["flop_per_term"].dropna() if "flop_per_term" in agg else pd.Series(dtype=float)
    span = "" if fpt.empty or round(fpt.min()) == round(fpt.max()) else f" to {fpt.max():,.0f}"
    per_term = "" if fpt.empty else f" ({fpt.min():,.0f}{span} FLOP per term at the run's B)"
    spec = THROUGHPUT.spec(
        f"Floating-point rate of each estimator at each dtype's largest N, {par} "
        "parametrization: all the FLOP of an estimate, the decoder's matrix products on "
        "each prior draw (shared by the B digits) plus the [B, 784] × [784, N] data product"
        f"{per_term}, over the median time of one estimate; every estimator is credited "
        "with the same work, so the points compare times. Point: median over models "
        "(marker: estimator), whisker: their range, label: the median as a share of the "
        "dtype's peak. Coloured tick: the same machine's n × n matrix-product rate for "
        "that dtype (meta.json matmul_peak_gflops), the roofline; a point above its tick "
        "(float16 on a CPU without float16 arithmetic) ran the estimator's shapes faster "
        "than the square product. Biases, activations and the softplus are not counted: "
        "they are overhead against this roofline.")
    if agg.empty or not np.isfinite(agg["gflops"]).any():
        spec.skipped = "no measured cell has a throughput."
        return spec
    devices = [v for v in o.devices if (agg["device"] == v).any()]
    ests = [e for e in o.estimators if (agg["estimator"] == e).any()]
    dts = [t for t in o.dtypes if (agg["dtype"] == t).any()]
    fig, axes = K.facets(devices, 2, panel=(6.2, 3.2), sharex=False, sharey=True, extra_h=1.2)
    width = 0.8 / len(dts)
    for dev, ax in axes.items():
        sub = agg[agg["device"] == dev]
        for j, dt in enumerate(dts):
            g = sub[sub["dtype"] == dt].set_index("estimator").reindex(ests)
            x = np.arange(len(ests)) - 0.4 + (j + 0.5) * width
            peak = (peaks.get(dev) or {}).get(dt)
            for i, e in enumerate(ests):
                if not np.isfinite(g.loc[e, "gflops"]):
                    continue
                med, lo, hi = g.loc[e, ["gflops", "gflops_min", "gflops_max"]]
                ax.errorbar([x[i]], [med], yerr=[[med - lo], [hi - med]], fmt=K.ESTIMATOR_MARKERS.get(e, "o"),
                            ms=7, color=K.DTYPE_COLORS.get(dt, "k"), mec="k", mew=0.5, ecolor="k",
                            elinewidth=0.8, capsize=2, zorder=3)
                if peak:
                    ax.plot([x[i]], [peak], ls="none", marker="_", ms=width * 55,
                            mew=2.6, color=K.DTYPE_COLORS.get(dt, "k"), zorder=3)
                    ax.annotate(f"{med / peak:.0%}", (x[i], lo), xytext=(0, -6), textcoords="offset points",
                                ha="center", va="top", fontsize=6.5, color="0.25")
        for i in range(1, len(ests)):
            ax.axvline(i - 0.5, color="0.85", lw=0.8, zorder=0)
        ax.set_xticks(np.arange(len(ests)), ests)
        ax.set(yscale="log", xlim=(-0.5, len(ests) - 0.5), title=f"device: {dev}", ylabel="")
        ax.grid(axis="x", visible=False)
    fig.supylabel("GFLOP/s, decoder + data product (log scale)", fontsize=9)
    handles = [Line2D([], [], color=K.DTYPE_COLORS.get(t, "k"), marker="o", mec="k", mew=0.5, ms=7, ls="none",
                      label=t) for t in dts]
    handles += [Line2D([], [], color="0.3", ls="none", marker="_", ms=14, mew=2.6,
                       label="matrix-product peak of the dtype")]
    K.legend(fig, handles)
    spec.figure = fig
    return spec


# ----------------------------------------------------------------------------- 7 K = 2


def k2_posterior(run: Run, o: Order) -> K.FigureSpec:
    """Decoded digits and one digit's posterior per K = 2 model, from the run's k2.npz arrays."""
    k2 = A.k2_panels(run)
    span = float(next(iter(k2.arrays.values()))["span"]) if k2.arrays else float("nan")
    zero = f"{dtype_facts('float32').log_min_subnormal - math.log(2):.1f}".replace("-", "−")
    n_prior = len(next(iter(k2.arrays.values()))["draws"]) if k2.arrays else 0
    spec = K2.spec(
        f"One row per K = 2 model. Left: test digit 0 of the run. Middle: the decoder's "
        f"pixel means sigmoid(logits) on a 15 × 15 grid of z in [−{span:g}, {span:g}]². "
        f"Right: that digit's posterior log p(z|x) = log p(x|z) + log p(z) + const on a "
        f"grid (float64, relative to its maximum, clipped at −40 nats), with {n_prior} "
        "prior draws z_i (the same as in Figure 4): blue where exp(log p(x|z_i)) computed in "
        f"float32 is non-zero, black × where it rounds to 0 (log p(x|z_i) below about {zero}). "
        "A probability-space float32 estimate is −∞ unless some draw is blue.")
    if not k2.arrays:
        spec.skipped = k2.reason or "the run has no K = 2 model."
        return spec
    fig = Figure(figsize=(8.4, 3.2 * len(k2.arrays) + 0.6), layout="constrained")
    gs = fig.add_gridspec(len(k2.arrays), 3, width_ratios=[0.55, 1, 1.12])
    for r, (name, a) in enumerate(k2.arrays.items()):
        ax0, ax1, ax2 = (fig.add_subplot(gs[r, i]) for i in range(3))
        ax0.imshow(a["digit"].reshape(28, 28), cmap="gray_r", vmin=0, vmax=1)
        ax0.set(xticks=[], yticks=[], title=f"{name}\ntest digit 0")
        ax0.grid(False)
        span = float(a["span"])
        half = span / 14
        ax1.imshow(a["decoded"], cmap="gray_r", vmin=0, vmax=1,
                   extent=(-span - half, span + half, -span - half, span + half))
        ax1.set(xlabel="$z_1$", ylabel="$z_2$", title="decoded means on a grid of z")
        ax1.grid(False)
        lim = float(a["extent"])
        im = ax2.imshow(a["posterior"], cmap=K.POSTERIOR_CMAP, vmin=-40, vmax=0,
                        extent=(-lim, lim, -lim, lim))
        zn, hn = a["draws"], a["hit"]
        ax2.scatter(zn[~hn, 0], zn[~hn, 1], marker="x", s=10, lw=0.7, color="k")
        ax2.scatter(zn[hn, 0], zn[hn, 1], marker="o", s=24, color=K.DTYPE_COLORS["float32"], ec="white",
                    lw=0.6)
        ax2.set(xlabel="$z_1$", ylabel="$z_2$", xlim=(-lim, lim), ylim=(-lim, lim),
                title=f"posterior of digit 0; {int(hn.sum())} of {len(hn)} prior draws\n"
                      "have p(x|z) > 0 in float32")
        ax2.grid(False)
        cb = fig.colorbar(im, ax=ax2, shrink=0.85, pad=0.02)
        cb.set_label("log p(z|x) − max (nats)")
    K.legend(fig, [Line2D([], [], marker="o", ms=6, color=K.DTYPE_COLORS["float32"], mec="white", ls="none",
                         label="prior draw with p(x|z) > 0 in float32"),
                  Line2D([], [], marker="x", ms=5, mew=0.8, color="k", ls="none",
                         label="prior draw with p(x|z) = 0 in float32")])
    spec.figure = fig
    if k2.notes:
        spec.caption += " Not shown: " + "; ".join(k2.notes)
    return spec


LOGLIK = K.Plot("fig4_loglik", "Why probability space fails: log p(x|z) against each dtype's floor",
                loglik_distribution)
THROUGHPUT = K.Plot("fig5_throughput", "Throughput against the machine's matrix-product peak", throughput)
K2 = K.Plot("fig7_k2", "K = 2: decoded digits, and where the prior samples land", k2_posterior)
