"""The report's figures: tidy frames in, one matplotlib Figure (or a reason to skip) out.

Figures draw what analysis computed and the run stored; none runs a model. The palettes,
style and layout helpers they share are :mod:`bench.report.plotkit`.
"""

from __future__ import annotations

import math

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bench.report import plotkit as K
from bench.report.analysis import K2Panels, Order
from bench.report.render import SUPERSCRIPT, fmt_pct
from bench.run.metrics import RESOLVE_FACTOR
from lvm.numerics import DTYPES, dtype_facts

TITLES = {
    "fig1_underflow": "Underflow rate against N",
    "fig2_bias": "Bias, rounding error and Monte Carlo bias against N",
    "fig3_variance": "Variance against N",
    "fig4_loglik": "Why probability space fails: log p(x|z) against each dtype's floor",
    "fig5_throughput": "Throughput against the machine's matrix-product peak",
    "fig6_heatmap": "Underflow rate over N and latent dimension K",
    "fig7_k2": "K = 2: decoded digits, and where the prior samples land",
}
FIGURE_STEMS = tuple(TITLES)


# ----------------------------------------------------------------------------- 1 underflow


def underflow_vs_n(ok: pd.DataFrame, o: Order) -> K.FigureSpec:
    spec = K.FigureSpec("fig1_underflow", TITLES["fig1_underflow"],
                      "Share of the estimates of log p(x) (test digits × repeats) that came out −∞, i.e. "
                      "every term p(x|z_i) rounded to 0, against N. Colour: dtype; line style: likelihood "
                      "parametrization; vertical bars: Wilson 95% intervals. Points of different dtypes "
                      "are spread slightly along N so that equal rates stay visible.")
    d = ok.dropna(subset=["underflow_rate"]).copy()
    keys = [(m, e) for m in o.models for e in o.estimators
            if ((d["model"] == m) & (d["estimator"] == e)).any()]
    if not keys:
        spec.skipped = "no measured cell has an underflow rate."
        return spec
    multi_dev = d["device"].nunique() > 1
    d["variant"] = d["parametrization"] + (" · " + d["device"] if multi_dev else "")
    variants = sorted(d["variant"].unique(), key=lambda v: (v.split(" · ")[0] != "logits", v))
    dashes = {v: K.PARAM_DASHES.get(v.split(" · ")[0], (2, 1)) for v in variants}
    if multi_dev:
        dashes = {v: "" if i == 0 else [(4, 2), (1, 1.5), (6, 2, 1, 2)][(i - 1) % 3]
                  for i, v in enumerate(variants)}
    spread = {dt: 10 ** (0.06 * (i - (len(o.dtypes) - 1) / 2)) for i, dt in enumerate(o.dtypes)}
    d["x"] = d["n_samples"] * d["dtype"].map(spread)
    n_est = sum(1 for e in o.estimators if e in {k[1] for k in keys})
    fig, axes = K.facets(keys, n_est, panel=(2.75, 2.0))
    for (m, e), ax in axes.items():
        sub = d[(d["model"] == m) & (d["estimator"] == e)].sort_values(["dtype", "variant", "x"])
        hue = [dt for dt in o.dtypes if dt in set(sub["dtype"])]
        sns.lineplot(data=sub, x="x", y="underflow_rate", hue="dtype", hue_order=hue, palette=K.DTYPE_COLORS,
                     style="variant", style_order=variants, dashes=dashes, markers=False, estimator=None,
                     errorbar=None, legend=False, ax=ax, lw=1.3)
        for dt, g in sub.groupby("dtype", sort=True):
            ax.errorbar(g["x"], g["underflow_rate"],
                        yerr=[g["underflow_rate"] - g["underflow_ci_low"],
                              g["underflow_ci_high"] - g["underflow_rate"]],
                        fmt=K.ESTIMATOR_MARKERS.get(e, "o"), ms=4.5, color=K.DTYPE_COLORS.get(dt, "k"),
                        elinewidth=0.9, capsize=1.8, lw=0)
        ax.set(xscale="log", ylim=(-0.06, 1.06), xlabel="", ylabel="", title=f"{e} · {m}")
        ax.yaxis.set_major_formatter(mpl.ticker.PercentFormatter(1.0, decimals=0))
    fig.supxlabel(K.N_LABEL, fontsize=9)
    K.ylabel(fig, axes, n_est, "underflow rate\n(% of estimates = −∞)")
    handles = K.dtype_handles(o.dtypes) + [
        Line2D([], [], color="0.3", ls="-" if dashes[v] == "" else (0, dashes[v]), lw=1.3, label=v)
        for v in variants]
    K.legend(fig, handles, ncols=len(handles))
    spec.figure = fig
    return spec


# ----------------------------------------------------------------------------- 2 bias


BIAS_COLUMNS = [("abs_bias", "|bias|: |mean(estimate − truth)|"),
                ("rounding_error_mean", "rounding error:\nmean |estimate − float64 replay|"),
                ("abs_mc_bias", "|Monte Carlo bias|:\n|mean(float64 replay − truth)|")]


def bias_vs_n(ok: pd.DataFrame, o: Order) -> K.FigureSpec:
    par, dev = o.parametrization, o.device
    spec = K.FigureSpec("fig2_bias", TITLES["fig2_bias"],
                      f"Log-log, {par} parametrization on {dev}. Left: total error of the estimate against "
                      "the ground truth; middle: the part due to rounding alone, the distance from the "
                      "float64 log-space estimate on the very same prior draws (the float64 replay); "
                      "right: the Monte Carlo part, the replay's own bias, which depends on the draws and "
                      "not on the dtype (one black line). Colour: dtype; marker: estimator; dotted grey: "
                      "a 1/N slope for reference where 1/N is the expected rate (rounding error is set by "
                      "the dtype and does not fall with N). Zero values (the float64 log-space estimate is "
                      "the replay itself) and cells where every estimate underflowed cannot be drawn on a "
                      "log scale and are left out; standard errors are in cells.csv (bias_se, mc_bias_se). "
                      "A bias within 10x of the ground truth's own error is unresolved: it is drawn as a "
                      "hollow downward triangle at 10x that error (the bias lies below it), never as a "
                      "number, and lines join resolved cells only.")
    d = ok[(ok["parametrization"] == par) & (ok["device"] == dev)].copy()
    d["abs_bias"] = d["bias"].abs()
    d["abs_mc_bias"] = d["mc_bias"].abs()
    d["unresolved_at"] = RESOLVE_FACTOR * d["truth_error"]
    models = [m for m in o.models
              if any(not K.positive(d[d["model"] == m], c).empty for c, _ in BIAS_COLUMNS)]
    if not models:
        spec.skipped = f"no {par} cell on {dev} has a finite, non-zero bias or rounding error."
        return spec
    keys = [(m, c) for m in models for c, _ in BIAS_COLUMNS]
    fig, axes = K.facets(keys, 3, panel=(3.4, 2.15), sharey=False)
    for (m, c), ax in axes.items():
        sub = K.positive(d[d["model"] == m], c)
        flag = RESOLVED.get(c)
        if flag:
            _unresolved(ax, d[(d["model"] == m) & (d[flag] == 0) & np.isfinite(d[c])], c)
            sub = sub[sub[flag] == 1]
        if c == "abs_mc_bias":
            line = sub.groupby("n_samples", as_index=False)[c].first()
            sns.lineplot(data=line, x="n_samples", y=c, color="k", marker="o", ms=4, ax=ax, lw=1.3)
        elif not sub.empty:
            K.lines_by_dtype_and_estimator(ax, sub, c, o)
        else:
            ax.text(0.5, 0.5, "no finite, non-zero values", ha="center", va="center",
                    transform=ax.transAxes, color="0.4")
        if c != "rounding_error_mean":  # rounding error is set by the dtype, not by N
            K.ref_slope(ax, sub, c)
        ax.set(xscale="log", yscale="log", xlabel="", ylabel="")
        col = [cc for cc, _ in BIAS_COLUMNS].index(c)
        if m == models[0]:
            ax.set_title(BIAS_COLUMNS[col][1])
        if col == 0:
            ax.set_ylabel(f"{m}\nnats")
    fig.supxlabel(K.N_LABEL, fontsize=9)
    handles = (K.dtype_handles(o.dtypes) + K.marker_handles(o.estimators)
               + [Line2D([], [], color="k", marker="o", ms=4, label="float64 replay"), K.REF_HANDLE,
                  Line2D([], [], color="0.3", marker="v", mfc="none", ls="none", label="unresolved (below)")])
    K.legend(fig, handles, ncols=min(len(handles), 6))
    spec.figure = fig
    return spec


RESOLVED = {"abs_bias": "bias_resolved", "abs_mc_bias": "mc_bias_resolved"}


def _unresolved(ax, cells: pd.DataFrame, c: str) -> None:
    """Hollow triangles at 10x the truth's error for biases the truth cannot resolve."""
    cells = cells[cells["unresolved_at"] > 0]
    if c == "abs_mc_bias":
        cells = cells.groupby("n_samples", as_index=False)["unresolved_at"].first().assign(dtype="")
    for _, r in cells.iterrows():
        ax.plot(r["n_samples"], r["unresolved_at"], marker="v", ms=6, mfc="none", ls="none", mew=0.9,
                mec=K.DTYPE_COLORS.get(r["dtype"], "k"), zorder=3)


# ----------------------------------------------------------------------------- 3 variance


def variance_vs_n(ok: pd.DataFrame, o: Order) -> K.FigureSpec:
    par, dev = o.parametrization, o.device
    spec = K.FigureSpec("fig3_variance", TITLES["fig3_variance"],
                      f"Variance of the estimate of log p(x) across repeats (nats², mean over test digits), "
                      f"log-log, {par} parametrization on {dev}. Colour: dtype; marker: estimator; dotted "
                      "grey: a 1/N slope for reference. Cells where fewer than two repeats of a digit were "
                      "finite have no variance and are left out.")
    d = K.positive(ok[(ok["parametrization"] == par) & (ok["device"] == dev)], "variance")
    models = [m for m in o.models if (d["model"] == m).any()]
    if not models:
        spec.skipped = f"no {par} cell on {dev} has a finite variance."
        return spec
    ncol = 4 if len(models) != 5 else 3
    fig, axes = K.facets(models, ncol, panel=(3.0, 2.4), sharey=False)
    floored = False
    for m, ax in axes.items():
        sub = d[d["model"] == m].copy()
        floor = sub["variance"].max() * 10.0 ** -K.FLOOR_DECADES
        low = sub["variance"] < floor
        sub["variance"] = sub["variance"].clip(lower=floor)
        K.lines_by_dtype_and_estimator(ax, sub, "variance", o)
        for _, r in sub[low].iterrows():
            ax.plot(r["n_samples"], floor, marker="v", ms=8, color=K.DTYPE_COLORS.get(r["dtype"], "k"),
                    mec="k", mew=0.6, ls="none", zorder=4, clip_on=False)
            floored = True
        K.ref_slope(ax, sub[~low], "variance")
        ax.set(xscale="log", yscale="log", xlabel="", ylabel="", title=m)
    fig.supxlabel(K.N_LABEL, fontsize=9)
    K.ylabel(fig, axes, ncol, "variance of the estimate\n(nats², log scale)")
    handles = K.dtype_handles(o.dtypes) + K.marker_handles(o.estimators) + [K.REF_HANDLE]
    if floored:
        handles.append(Line2D([], [], color="0.6", marker="v", ms=8, mec="k", mew=0.6, ls="none",
                              label=f"below 10{str(-K.FLOOR_DECADES).translate(SUPERSCRIPT)} × the panel's "
                                    "largest (drawn there)"))
        spec.caption += (f" ▼: variances more than {K.FLOOR_DECADES} decades below the panel's largest, "
                         "drawn "
                         "at that floor so the scale stays readable; these are estimates that rounded to "
                         "(nearly) the same number in every repeat.")
    K.legend(fig, handles, ncols=min(len(handles), 5))
    spec.figure = fig
    return spec


# ----------------------------------------------------------------------------- 4 log-likelihoods


def loglik_distribution(loglik: pd.DataFrame | None, o: Order, dtypes: list[str]) -> K.FigureSpec:
    spec = K.FigureSpec("fig4_loglik", TITLES["fig4_loglik"],
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
    dtypes = [d for d in DTYPES if d in dtypes] or list(DTYPES)
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


def throughput(agg: pd.DataFrame, o: Order, peaks: dict) -> K.FigureSpec:
    """``agg``: :func:`bench.report.analysis.throughput` (GFLOP/s of decoder + data product, median,
    min and max over models per device, estimator and dtype); ``peaks``: meta.json's
    matmul_peak_gflops."""
    par = o.parametrization
    fpt = agg["flop_per_term"].dropna() if "flop_per_term" in agg else pd.Series(dtype=float)
    span = "" if fpt.empty or round(fpt.min()) == round(fpt.max()) else f" to {fpt.max():,.0f}"
    per_term = "" if fpt.empty else f" ({fpt.min():,.0f}{span} FLOP per term at the run's B)"
    spec = K.FigureSpec("fig5_throughput", TITLES["fig5_throughput"],
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


# ----------------------------------------------------------------------------- 6 heatmap


def underflow_heatmap(ok: pd.DataFrame, o: Order) -> K.FigureSpec:
    spec = K.FigureSpec("fig6_heatmap", TITLES["fig6_heatmap"],
                      "Share of estimates equal to −∞ for each N (columns) and model (rows, sorted by "
                      "latent dimension K), per estimator (rows of panels) and dtype (columns of panels, "
                      "title in the dtype's colour); mean over parametrizations and devices. Hatched: "
                      "not measured. Panels with no measured cell are left out.")
    d = ok.dropna(subset=["underflow_rate"])
    if d.empty:
        spec.skipped = "no measured cell has an underflow rate."
        return spec
    kdim = d.groupby("model")["latent_dim"].first()
    models = sorted(d["model"].unique(), key=lambda m: (kdim.get(m, 0), o.models.index(m)
                                                        if m in o.models else 99, m))
    ns = sorted(d["n_samples"].unique())
    ests = [e for e in o.estimators if (d["estimator"] == e).any()]
    dts = [t for t in o.dtypes if (d["dtype"] == t).any()]
    present = {(e, t) for e, t in d[["estimator", "dtype"]].drop_duplicates().itertuples(index=False)}
    annotate = len(models) * len(ns) <= 48
    pw, ph = max(2.2, 0.42 * len(ns) + 0.9), max(1.5, 0.3 * len(models) + 0.8)
    fig = Figure(figsize=(pw * len(dts) + 2.2, ph * len(ests) + 0.9), layout="constrained")
    gs = fig.add_gridspec(len(ests), len(dts))
    cmap = sns.color_palette("rocket_r", as_cmap=True).with_extremes(bad="white")
    axes = []
    for r, e in enumerate(ests):
        first_in_row = True
        for c, t in enumerate(dts):
            if (e, t) not in present:
                continue
            ax = fig.add_subplot(gs[r, c])
            sub = d[(d["estimator"] == e) & (d["dtype"] == t)]
            grid = sub.pivot_table(index="model", columns="n_samples", values="underflow_rate",
                                   aggfunc="mean").reindex(index=models, columns=ns)
            grid.index = [f"K={kdim.get(m, '?')} {m.rsplit('-k', 1)[0]}" for m in models]
            sns.heatmap(grid, ax=ax, vmin=0, vmax=1, cmap=cmap, cbar=False, annot=annotate, fmt=".0%",
                        annot_kws={"fontsize": 7}, linewidths=0.5, linecolor="white", square=False)
            for (i, j), v in np.ndenumerate(grid.to_numpy()):
                if np.isnan(v):
                    ax.add_patch(mpl.patches.Rectangle((j, i), 1, 1, fill=False, hatch="///", ec="0.75",
                                                       lw=0))
            ax.set_title(f"{e} · {t}", color=K.DTYPE_COLORS.get(t, "k"), fontweight="bold")
            ax.set_xlabel("")
            ax.set_ylabel("")
            ax.tick_params(axis="x", rotation=0)
            ax.tick_params(axis="y", rotation=0)
            if not first_in_row:
                ax.set_yticklabels([])
            first_in_row = False
            axes.append(ax)
    sm = mpl.cm.ScalarMappable(norm=mpl.colors.Normalize(0, 1), cmap=cmap)
    cb = fig.colorbar(sm, ax=axes, shrink=0.6, aspect=30, pad=0.01)
    cb.set_label("underflow rate (share of estimates = −∞)")
    cb.ax.yaxis.set_major_formatter(mpl.ticker.PercentFormatter(1.0, decimals=0))
    fig.supxlabel("N, prior samples per estimate", fontsize=9)
    fig.supylabel("model (K = latent dimension)", fontsize=9)
    spec.figure = fig
    return spec


# ----------------------------------------------------------------------------- 7 K = 2


def k2_posterior(k2: K2Panels) -> K.FigureSpec:
    """Decoded digits and one digit's posterior per K = 2 model, from the run's k2.npz arrays."""
    span = float(next(iter(k2.arrays.values()))["span"]) if k2.arrays else float("nan")
    zero = f"{dtype_facts('float32').log_min_subnormal - math.log(2):.1f}".replace("-", "−")
    n_prior = len(next(iter(k2.arrays.values()))["draws"]) if k2.arrays else 0
    spec = K.FigureSpec("fig7_k2", TITLES["fig7_k2"],
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
