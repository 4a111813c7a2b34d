"""The report's figures of the estimates' errors: underflow, bias and variance against N, and
underflow over N and the latent dimension K (Figures 1, 2, 3 and 6 of :data:`bench.report.figures.FIGURES`).

Each takes a :class:`bench.run.store.Run` and the run's :class:`bench.report.analysis.Order` and
returns one matplotlib Figure, or the reason it is not drawn; none runs a model. The palettes,
style and layout helpers they share are :mod:`bench.report.plotkit`.
"""

from __future__ import annotations

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bench.report import plotkit as K
from bench.report.analysis import Order
from bench.report.render import SUPERSCRIPT
from bench.run.metrics import RESOLVE_FACTOR
from bench.run.store import Run

# ----------------------------------------------------------------------------- 1 underflow


def underflow_vs_n(run: Run, o: Order) -> K.FigureSpec:
    spec = UNDERFLOW.spec(
        "Share of the estimates of log p(x) (test digits × repeats) that came out −∞, i.e. "
        "every term p(x|z_i) rounded to 0, against N. Colour: dtype; line style: likelihood "
        "parametrization; vertical bars: Wilson 95% intervals. Points of different dtypes "
        "are spread slightly along N so that equal rates stay visible.")
    d = run.ok.dropna(subset=["underflow_rate"]).copy()
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


def bias_vs_n(run: Run, o: Order) -> K.FigureSpec:
    ok, par, dev = run.ok, o.parametrization, o.device
    spec = BIAS.spec(
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


def variance_vs_n(run: Run, o: Order) -> K.FigureSpec:
    ok, par, dev = run.ok, o.parametrization, o.device
    spec = VARIANCE.spec(
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


# ----------------------------------------------------------------------------- 6 heatmap


def underflow_heatmap(run: Run, o: Order) -> K.FigureSpec:
    spec = HEATMAP.spec(
        "Share of estimates equal to −∞ for each N (columns) and model (rows, sorted by "
        "latent dimension K), per estimator (rows of panels) and dtype (columns of panels, "
        "title in the dtype's colour); mean over parametrizations and devices. Hatched: "
        "not measured. Panels with no measured cell are left out.")
    d = run.ok.dropna(subset=["underflow_rate"])
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


UNDERFLOW = K.Plot("fig1_underflow", "Underflow rate against N", underflow_vs_n)
BIAS = K.Plot("fig2_bias", "Bias, rounding error and Monte Carlo bias against N", bias_vs_n)
VARIANCE = K.Plot("fig3_variance", "Variance against N", variance_vs_n)
HEATMAP = K.Plot("fig6_heatmap", "Underflow rate over N and latent dimension K", underflow_heatmap)
