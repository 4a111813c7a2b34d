"""The report's figures: tidy tables in, one matplotlib Figure (or a reason to skip) out.

Every figure gives each dtype the same Okabe-Ito colour (``DTYPE_COLORS``), each
estimator the same marker and each likelihood parametrization the same line
style. Figures are built on ``matplotlib.figure.Figure`` (no pyplot state) with
seaborn's axes-level functions, inside ``style()`` so that fonts, sizes and SVG
ids are fixed and the files are byte-stable.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from lvm.numerics import DTYPES, dtype_facts

from .config import DEVICES, ESTIMATORS

# Okabe & Ito (2008) colour-blind-safe colours, one per dtype, in every figure.
POSTERIOR_CMAP = mpl.colors.ListedColormap(mpl.colormaps["Greys"](np.linspace(0.0, 0.55, 256)))
DTYPE_COLORS = {"float16": "#D55E00", "bfloat16": "#CC79A7", "float32": "#0072B2", "float64": "#009E73"}
ESTIMATOR_MARKERS = {"prob_space": "o", "prob_space_exp": "s", "log_space": "^", "log_space_acc32": "D"}
PARAM_DASHES = {"logits": "", "probs": (4, 2)}
DATA_FLOP_PER_TERM = 2 * 784  # one log-likelihood term: a length-784 dot product in the data matmul
DPI = 110
TITLES = {
    "fig1_underflow": "Underflow rate against N",
    "fig2_bias": "Bias, rounding error and Monte Carlo bias against N",
    "fig3_variance": "Variance against N",
    "fig4_loglik": "Why probability space fails: log p(x|z) against each dtype's floor",
    "fig5_throughput": "Throughput against the machine's matrix-product peak",
    "fig6_heatmap": "Underflow rate over N and latent dimension K",
    "fig7_k2": "K = 2: decoded digits, and where the prior samples land",
}
FLOOR_DECADES = 8
SUPERSCRIPT = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")
N_LABEL = "N, prior samples per estimate (log scale)"


@dataclass
class FigureSpec:
    """One figure of the report: drawn (``figure``) or not (``skipped`` says why)."""

    name: str
    title: str
    caption: str
    figure: Figure | None = None
    skipped: str | None = None


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


@contextlib.contextmanager
def style() -> Iterator[None]:
    """Fixed fonts, sizes and SVG hash salt for every figure."""
    rc = {**sns.axes_style("whitegrid"), "svg.hashsalt": "lvm-bench", "svg.fonttype": "path",
          "font.family": "DejaVu Sans", "font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9,
          "legend.fontsize": 8.5, "xtick.labelsize": 8, "ytick.labelsize": 8, "figure.dpi": DPI,
          "savefig.dpi": DPI, "grid.alpha": 0.5, "axes.titleweight": "normal"}
    with mpl.rc_context(rc):
        yield


def save(fig: Figure, stem: Path) -> list[Path]:
    """Write ``stem``.png and ``stem``.svg without dates or version strings."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    png, svg = stem.with_suffix(".png"), stem.with_suffix(".svg")
    fig.savefig(png, format="png", dpi=DPI, metadata={"Date": None, "Software": None})
    fig.set_layout_engine("none")  # keep the layout the PNG computed: the SVG matches it, and faster
    fig.savefig(svg, format="svg", metadata={"Date": None, "Creator": None})
    return [png, svg]


# ----------------------------------------------------------------------------- helpers


def fmt_pct(p: float) -> str:
    """A share as a percentage that never rounds a non-zero share to 0% or a partial one to 100%."""
    if not np.isfinite(p):
        return "n/a"
    v = 100 * p
    if v in (0, 100) or 1 <= v <= 99:
        return f"{v:.0f}%"
    return f"{math.ceil(v * 10) / 10:g}%" if v < 1 else f"{math.floor(v * 10) / 10:g}%"


def _facets(keys: list, ncol: int, panel: tuple[float, float] = (2.9, 2.2), *, sharex: bool = True,
            sharey: bool = True, extra_h: float = 0.8) -> tuple[Figure, dict]:
    """A wrapped grid with one axes per key (no empty panels); inner tick labels hidden."""
    n = len(keys)
    ncol = max(1, min(ncol, n))
    nrow = math.ceil(n / ncol)
    narrow = panel[0] * ncol < 4  # too narrow for a legend above: it goes to the right
    fig = Figure(figsize=(panel[0] * ncol + 0.7 + 2.4 * narrow, panel[1] * nrow + extra_h * (not narrow)),
                 layout="constrained")
    fig.legend_right = narrow
    gs = fig.add_gridspec(nrow, ncol)
    axes, first = {}, None
    for i, k in enumerate(keys):
        r, c = divmod(i, ncol)
        ax = fig.add_subplot(gs[r, c], sharex=first if sharex else None, sharey=first if sharey else None)
        first = first or ax
        if sharey and c > 0:
            ax.tick_params(labelleft=False)
        if sharex and i + ncol < n:
            ax.tick_params(labelbottom=False)
        axes[k] = ax
    return fig, axes


def _dtype_handles(dtypes: list[str]) -> list[Line2D]:
    return [Line2D([], [], color=DTYPE_COLORS.get(d, "k"), lw=2, label=d) for d in dtypes]


def _marker_handles(estimators: list[str]) -> list[Line2D]:
    return [Line2D([], [], color="0.3", marker=ESTIMATOR_MARKERS.get(e, "o"), ls="none", label=e)
            for e in estimators]


def _legend(fig: Figure, handles: list, ncols: int | None = None) -> None:
    """One legend for the figure: above the panels, or at their right when the figure is narrow."""
    if getattr(fig, "legend_right", False):
        fig.legend(handles=handles, loc="outside right upper", ncols=1, frameon=False, handlelength=2.4)
        return
    fig.legend(handles=handles, loc="outside upper center", ncols=ncols or min(len(handles), 6),
               frameon=False, handlelength=2.4, columnspacing=1.4)


def _ylabel(fig: Figure, axes: dict, ncol: int, text: str) -> None:
    """One y label for the figure when it is tall, else one per row (two lines) that fits a row."""
    ncol = max(1, min(ncol, len(axes)))
    if math.ceil(len(axes) / ncol) >= 3:
        fig.supylabel(text.replace("\n", " "), fontsize=9)
        return
    for i, ax in enumerate(axes.values()):
        if i % ncol == 0:
            ax.set_ylabel(text)


def _ref_slope(ax, sub: pd.DataFrame, y: str) -> None:
    """A grey 1/N line through the geometric mean of the values at the smallest N."""
    v = sub[(sub[y] > 0) & np.isfinite(sub[y])]
    if v.empty or v["n_samples"].nunique() < 2:
        return
    n0, n1 = v["n_samples"].min(), v["n_samples"].max()
    c = float(np.exp(np.log(v.loc[v["n_samples"] == n0, y]).mean())) * n0
    ax.plot([n0, n1], [c / n0, c / n1], color="0.45", ls=(0, (1.5, 1.5)), lw=1.3, zorder=1)


REF_HANDLE = Line2D([], [], color="0.45", ls=(0, (1.5, 1.5)), lw=1.3, label="∝ 1/N reference")


def _positive(d: pd.DataFrame, col: str) -> pd.DataFrame:
    return d[np.isfinite(d[col]) & (d[col] > 0)]


# ----------------------------------------------------------------------------- 1 underflow


def underflow_vs_n(ok: pd.DataFrame, o: Order) -> FigureSpec:
    spec = FigureSpec("fig1_underflow", TITLES["fig1_underflow"],
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
    dashes = {v: PARAM_DASHES.get(v.split(" · ")[0], (2, 1)) for v in variants}
    if multi_dev:
        dashes = {v: "" if i == 0 else [(4, 2), (1, 1.5), (6, 2, 1, 2)][(i - 1) % 3]
                  for i, v in enumerate(variants)}
    spread = {dt: 10 ** (0.06 * (i - (len(o.dtypes) - 1) / 2)) for i, dt in enumerate(o.dtypes)}
    d["x"] = d["n_samples"] * d["dtype"].map(spread)
    n_est = sum(1 for e in o.estimators if e in {k[1] for k in keys})
    fig, axes = _facets(keys, n_est, panel=(2.75, 2.0))
    for (m, e), ax in axes.items():
        sub = d[(d["model"] == m) & (d["estimator"] == e)].sort_values(["dtype", "variant", "x"])
        hue = [dt for dt in o.dtypes if dt in set(sub["dtype"])]
        sns.lineplot(data=sub, x="x", y="underflow_rate", hue="dtype", hue_order=hue, palette=DTYPE_COLORS,
                     style="variant", style_order=variants, dashes=dashes, markers=False, estimator=None,
                     errorbar=None, legend=False, ax=ax, lw=1.3)
        for dt, g in sub.groupby("dtype", sort=True):
            ax.errorbar(g["x"], g["underflow_rate"],
                        yerr=[g["underflow_rate"] - g["underflow_ci_low"],
                              g["underflow_ci_high"] - g["underflow_rate"]],
                        fmt=ESTIMATOR_MARKERS.get(e, "o"), ms=4.5, color=DTYPE_COLORS.get(dt, "k"),
                        elinewidth=0.9, capsize=1.8, lw=0)
        ax.set(xscale="log", ylim=(-0.06, 1.06), xlabel="", ylabel="", title=f"{e} · {m}")
        ax.yaxis.set_major_formatter(mpl.ticker.PercentFormatter(1.0, decimals=0))
    fig.supxlabel(N_LABEL, fontsize=9)
    _ylabel(fig, axes, n_est, "underflow rate\n(% of estimates = −∞)")
    handles = _dtype_handles(o.dtypes) + [
        Line2D([], [], color="0.3", ls="-" if dashes[v] == "" else (0, dashes[v]), lw=1.3, label=v)
        for v in variants]
    _legend(fig, handles, ncols=len(handles))
    spec.figure = fig
    return spec


# ----------------------------------------------------------------------------- 2 bias


BIAS_COLUMNS = [("abs_bias", "|bias|: |mean(estimate − truth)|"),
                ("rounding_error_mean", "rounding error:\nmean |estimate − float64 replay|"),
                ("abs_mc_bias", "|Monte Carlo bias|:\n|mean(float64 replay − truth)|")]


def bias_vs_n(ok: pd.DataFrame, o: Order) -> FigureSpec:
    par, dev = o.parametrization, o.device
    spec = FigureSpec("fig2_bias", TITLES["fig2_bias"],
                      f"Log-log, {par} parametrization on {dev}. Left: total error of the estimate against "
                      "the ground truth; middle: the part due to rounding alone, the distance from the "
                      "float64 log-space estimate on the very same prior draws (the float64 replay); "
                      "right: the Monte Carlo part, the replay's own bias, which depends on the draws and "
                      "not on the dtype (one black line). Colour: dtype; marker: estimator; dotted grey: "
                      "a 1/N slope for reference where 1/N is the expected rate (rounding error is set by "
                      "the dtype and does not fall with N). Zero values (the float64 log-space estimate is "
                      "the "
                      "replay itself) and cells where every estimate underflowed cannot be drawn on a log "
                      "scale and are left out; standard errors are in cells.csv (bias_se, mc_bias_se).")
    d = ok[(ok["parametrization"] == par) & (ok["device"] == dev)].copy()
    d["abs_bias"] = d["bias"].abs()
    d["abs_mc_bias"] = d["mc_bias"].abs()
    models = [m for m in o.models if any(not _positive(d[d["model"] == m], c).empty for c, _ in BIAS_COLUMNS)]
    if not models:
        spec.skipped = f"no {par} cell on {dev} has a finite, non-zero bias or rounding error."
        return spec
    keys = [(m, c) for m in models for c, _ in BIAS_COLUMNS]
    fig, axes = _facets(keys, 3, panel=(3.4, 2.15), sharey=False)
    for (m, c), ax in axes.items():
        sub = _positive(d[d["model"] == m], c)
        if c == "abs_mc_bias":
            line = sub.groupby("n_samples", as_index=False)[c].first()
            sns.lineplot(data=line, x="n_samples", y=c, color="k", marker="o", ms=4, ax=ax, lw=1.3)
        elif not sub.empty:
            hue = [dt for dt in o.dtypes if dt in set(sub["dtype"])]
            sty = [e for e in o.estimators if e in set(sub["estimator"])]
            sns.lineplot(data=sub, x="n_samples", y=c, hue="dtype", hue_order=hue, palette=DTYPE_COLORS,
                         style="estimator", style_order=sty, markers=ESTIMATOR_MARKERS, dashes=False,
                         estimator=None, errorbar=None, legend=False, ax=ax, lw=1.2, ms=5.5, mew=0, alpha=0.9)
        else:
            ax.text(0.5, 0.5, "no finite, non-zero values", ha="center", va="center",
                    transform=ax.transAxes, color="0.4")
        if c != "rounding_error_mean":  # rounding error is set by the dtype, not by N
            _ref_slope(ax, sub, c)
        ax.set(xscale="log", yscale="log", xlabel="", ylabel="")
        col = [cc for cc, _ in BIAS_COLUMNS].index(c)
        if m == models[0]:
            ax.set_title(BIAS_COLUMNS[col][1])
        if col == 0:
            ax.set_ylabel(f"{m}\nnats")
    fig.supxlabel(N_LABEL, fontsize=9)
    handles = (_dtype_handles(o.dtypes) + _marker_handles(o.estimators)
               + [Line2D([], [], color="k", marker="o", ms=4, label="float64 replay"), REF_HANDLE])
    _legend(fig, handles, ncols=min(len(handles), 6))
    spec.figure = fig
    return spec


# ----------------------------------------------------------------------------- 3 variance


def variance_vs_n(ok: pd.DataFrame, o: Order) -> FigureSpec:
    par, dev = o.parametrization, o.device
    spec = FigureSpec("fig3_variance", TITLES["fig3_variance"],
                      f"Variance of the estimate of log p(x) across repeats (nats², mean over test digits), "
                      f"log-log, {par} parametrization on {dev}. Colour: dtype; marker: estimator; dotted "
                      "grey: a 1/N slope for reference. Cells where fewer than two repeats of a digit were "
                      "finite have no variance and are left out.")
    d = _positive(ok[(ok["parametrization"] == par) & (ok["device"] == dev)], "variance")
    models = [m for m in o.models if (d["model"] == m).any()]
    if not models:
        spec.skipped = f"no {par} cell on {dev} has a finite variance."
        return spec
    ncol = 4 if len(models) != 5 else 3
    fig, axes = _facets(models, ncol, panel=(3.0, 2.4), sharey=False)
    floored = False
    for m, ax in axes.items():
        sub = d[d["model"] == m].copy()
        floor = sub["variance"].max() * 10.0 ** -FLOOR_DECADES
        low = sub["variance"] < floor
        sub["variance"] = sub["variance"].clip(lower=floor)
        hue = [dt for dt in o.dtypes if dt in set(sub["dtype"])]
        sty = [e for e in o.estimators if e in set(sub["estimator"])]
        sns.lineplot(data=sub, x="n_samples", y="variance", hue="dtype", hue_order=hue, palette=DTYPE_COLORS,
                     style="estimator", style_order=sty, markers=ESTIMATOR_MARKERS, dashes=False,
                     estimator=None, errorbar=None, legend=False, ax=ax, lw=1.2, ms=5.5, mew=0, alpha=0.9)
        for _, r in sub[low].iterrows():
            ax.plot(r["n_samples"], floor, marker="v", ms=8, color=DTYPE_COLORS.get(r["dtype"], "k"),
                    mec="k", mew=0.6, ls="none", zorder=4, clip_on=False)
            floored = True
        _ref_slope(ax, sub[~low], "variance")
        ax.set(xscale="log", yscale="log", xlabel="", ylabel="", title=m)
    fig.supxlabel(N_LABEL, fontsize=9)
    _ylabel(fig, axes, ncol, "variance of the estimate\n(nats², log scale)")
    handles = _dtype_handles(o.dtypes) + _marker_handles(o.estimators) + [REF_HANDLE]
    if floored:
        handles.append(Line2D([], [], color="0.6", marker="v", ms=8, mec="k", mew=0.6, ls="none",
                              label=f"below 10{str(-FLOOR_DECADES).translate(SUPERSCRIPT)} × the panel's "
                                    "largest "
                                    "(drawn there)"))
        spec.caption += (f" ▼: variances more than {FLOOR_DECADES} decades below the panel's largest, drawn "
                         "at that floor so the scale stays readable; these are estimates that rounded to "
                         "(nearly) the same number in every repeat.")
    _legend(fig, handles, ncols=min(len(handles), 5))
    spec.figure = fig
    return spec


# ----------------------------------------------------------------------------- 4 log-likelihoods


def loglik_distribution(loglik: pd.DataFrame | None, o: Order, dtypes: list[str]) -> FigureSpec:
    spec = FigureSpec("fig4_loglik", TITLES["fig4_loglik"],
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
    fig, axes = _facets(models, 2, panel=(5.0, 2.5), sharex=False, sharey=False)
    for m, ax in axes.items():
        sel = loglik[loglik["model"] == m]
        v = sel["loglik"]
        lo, hi = min(float(v.min()), *floors.values()), max(float(v.max()), *floors.values())
        pad = 0.04 * (hi - lo)
        sns.histplot(x=v, bins=80, binrange=(lo - pad, hi + pad), color="0.35", element="bars",
                     stat="count", ax=ax, edgecolor="none")
        for d in dtypes:
            ax.axvline(floors[d], color=DTYPE_COLORS[d], lw=1.6, ls=(0, (5, 2)))
        share = ", ".join(f"{d} {fmt_pct(float(np.mean(v < floors[d])))}" for d in dtypes)
        digits = sel["datapoint"].nunique()
        ax.set(xlim=(lo - pad, hi + pad), xlabel="", ylabel="",
               title=f"{m}: {digits} digits × {len(v) // max(1, digits)} prior draws\n"
                     f"below the floor: {share}")
    fig.supxlabel("log p(x|z), nats (float64)", fontsize=9)
    fig.supylabel("number of prior draws", fontsize=9)
    handles = [Line2D([], [], color=DTYPE_COLORS[d], lw=1.6, ls=(0, (5, 2)),
                      label=f"{d} floor: {floors[d]:.1f}".replace("-", "−")) for d in dtypes]
    _legend(fig, handles)
    spec.figure = fig
    return spec


# ----------------------------------------------------------------------------- 5 throughput


def throughput(ok: pd.DataFrame, o: Order, peaks: dict) -> FigureSpec:
    par = o.parametrization
    spec = FigureSpec("fig5_throughput", TITLES["fig5_throughput"],
                      f"Log-likelihood terms p(x_b|z_i) evaluated per second at each dtype's largest N, "
                      f"{par} parametrization; point: median over models (marker: estimator), whisker: "
                      "their range. "
                      f"Coloured tick: the same machine's n × n matrix-product rate for that dtype "
                      f"(meta.json matmul_peak_gflops), converted to terms/s at {DATA_FLOP_PER_TERM:,} FLOP "
                      "per term (2 × 784 for one row of the data × log-probability product); the right "
                      "axis reads the bars the same way, in GFLOP/s of that product. The decoder network "
                      "runs once per prior draw and is not counted, so the gap to the tick overstates "
                      "the wasted time; it is a ceiling, not a target.")
    d = ok[(ok["parametrization"] == par)].dropna(subset=["terms_per_s"])
    d = d[d["terms_per_s"] > 0]
    if d.empty:
        spec.skipped = "no measured cell has a throughput."
        return spec
    d = d[d["n_samples"] == d.groupby(["estimator", "dtype", "device"])["n_samples"].transform("max")]
    agg = d.groupby(["device", "estimator", "dtype"], as_index=False)["terms_per_s"].agg(
        ["median", "min", "max"])
    devices = [v for v in o.devices if (agg["device"] == v).any()]
    ests = [e for e in o.estimators if (agg["estimator"] == e).any()]
    dts = [t for t in o.dtypes if (agg["dtype"] == t).any()]
    fig, axes = _facets(devices, 2, panel=(6.2, 3.2), sharex=False, sharey=True, extra_h=1.2)
    width = 0.8 / len(dts)
    for dev, ax in axes.items():
        sub = agg[agg["device"] == dev]
        for j, dt in enumerate(dts):
            g = sub[sub["dtype"] == dt].set_index("estimator").reindex(ests)
            x = np.arange(len(ests)) - 0.4 + (j + 0.5) * width
            peak = (peaks.get(dev) or {}).get(dt)
            for i, e in enumerate(ests):
                if pd.isna(g.loc[e, "median"]):
                    continue
                med, lo, hi = g.loc[e, ["median", "min", "max"]]
                ax.errorbar([x[i]], [med], yerr=[[med - lo], [hi - med]], fmt=ESTIMATOR_MARKERS.get(e, "o"),
                            ms=7, color=DTYPE_COLORS.get(dt, "k"), mec="k", mew=0.5, ecolor="k",
                            elinewidth=0.8, capsize=2, zorder=3)
                if peak:
                    ax.plot([x[i]], [peak * 1e9 / DATA_FLOP_PER_TERM], ls="none", marker="_", ms=width * 55,
                            mew=2.6, color=DTYPE_COLORS.get(dt, "k"), zorder=3)
        for i in range(1, len(ests)):
            ax.axvline(i - 0.5, color="0.85", lw=0.8, zorder=0)
        ax.set_xticks(np.arange(len(ests)), ests)
        ax.set(yscale="log", xlim=(-0.5, len(ests) - 0.5), title=f"device: {dev}", ylabel="")
        ax.grid(axis="x", visible=False)
        sec = ax.secondary_yaxis("right", functions=(lambda t: t * DATA_FLOP_PER_TERM / 1e9,
                                                     lambda g: g * 1e9 / DATA_FLOP_PER_TERM))
        sec.set_ylabel("GFLOP/s in the data product")
    fig.supylabel("terms per second (log scale)", fontsize=9)
    handles = [Line2D([], [], color=DTYPE_COLORS.get(t, "k"), marker="o", mec="k", mew=0.5, ms=7, ls="none",
                      label=t) for t in dts]
    handles += [Line2D([], [], color="0.3", ls="none", marker="_", ms=14, mew=2.6,
                       label="matrix-product peak of the dtype")]
    _legend(fig, handles)
    spec.figure = fig
    return spec


# ----------------------------------------------------------------------------- 6 heatmap


def underflow_heatmap(ok: pd.DataFrame, o: Order) -> FigureSpec:
    spec = FigureSpec("fig6_heatmap", TITLES["fig6_heatmap"],
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
            ax.set_title(f"{e} · {t}", color=DTYPE_COLORS.get(t, "k"), fontweight="bold")
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


def k2_posterior(entries: list[dict], n_prior: int, span: float = 3.0) -> FigureSpec:
    """Decoded digits and one digit's posterior; ``entries``: dicts with name, model, x, skip."""
    zero = f"{dtype_facts('float32').log_min_subnormal - math.log(2):.1f}".replace("-", "−")
    spec = FigureSpec("fig7_k2", TITLES["fig7_k2"],
                      f"One row per K = 2 model. Left: test digit 0 of the run. Middle: the decoder's "
                      f"pixel means sigmoid(logits) on a 15 × 15 grid of z in [−{span:g}, {span:g}]². "
                      f"Right: that digit's posterior log p(z|x) = log p(x|z) + log p(z) + const on a "
                      f"grid (float64, relative to its maximum, clipped at −40 nats), with {n_prior} "
                      "prior draws z_i (the same as in Figure 4): blue where exp(log p(x|z_i)) computed in "
                      f"float32 is non-zero, black × where it rounds to 0 (log p(x|z_i) below about {zero}). "
                      "A probability-space float32 estimate is −∞ unless some draw is blue.")
    rows = [e for e in entries if e.get("model") is not None]
    if not rows:
        why = "; ".join(e["skip"] for e in entries if e.get("skip")) or "the run has no K = 2 model."
        spec.skipped = why
        return spec
    import torch

    from lvm.zoo import decoded_grid

    fig = Figure(figsize=(8.4, 3.2 * len(rows) + 0.6), layout="constrained")
    gs = fig.add_gridspec(len(rows), 3, width_ratios=[0.55, 1, 1.12])
    n = 121
    ticks = torch.linspace(-span - 0.5, span + 0.5, n, dtype=torch.float64)
    zz = torch.stack(torch.meshgrid(ticks, ticks.flip(0), indexing="xy"), -1).reshape(-1, 2)
    for r, e in enumerate(rows):
        model, x = e["model"], e["x"][:1]
        ax0, ax1, ax2 = (fig.add_subplot(gs[r, i]) for i in range(3))
        ax0.imshow(x.reshape(28, 28).numpy(), cmap="gray_r", vmin=0, vmax=1)
        ax0.set(xticks=[], yticks=[], title=f"{e['name']}\ntest digit 0")
        ax0.grid(False)
        half = span / 14
        ax1.imshow(decoded_grid(model, n=15, span=span).numpy(), cmap="gray_r", vmin=0, vmax=1,
                   extent=(-span - half, span + half, -span - half, span + half))
        ax1.set(xlabel="$z_1$", ylabel="$z_2$", title="decoded means on a grid of z")
        ax1.grid(False)
        with torch.no_grad():
            lp = (model.log_likelihood(x, zz, torch.float64)[0] + model.log_prior(zz)).reshape(n, n)
            z = model.sample_prior(n_prior, torch.Generator().manual_seed(e.get("seed", 0)))
            hit = torch.exp(model.log_likelihood(x, z, torch.float32)[0]) > 0
        rel = (lp - lp.max()).clamp(min=-40).numpy()
        lim = float(ticks[-1])
        im = ax2.imshow(rel, cmap=POSTERIOR_CMAP, vmin=-40, vmax=0, extent=(-lim, lim, -lim, lim))
        zn, hn = z.numpy(), hit.numpy()
        ax2.scatter(zn[~hn, 0], zn[~hn, 1], marker="x", s=10, lw=0.7, color="k")
        ax2.scatter(zn[hn, 0], zn[hn, 1], marker="o", s=24, color=DTYPE_COLORS["float32"], ec="white", lw=0.6)
        ax2.set(xlabel="$z_1$", ylabel="$z_2$", xlim=(-lim, lim), ylim=(-lim, lim),
                title=f"posterior of digit 0; {int(hn.sum())} of {len(hn)} prior draws\n"
                      "have p(x|z) > 0 in float32")
        ax2.grid(False)
        cb = fig.colorbar(im, ax=ax2, shrink=0.85, pad=0.02)
        cb.set_label("log p(z|x) − max (nats)")
    _legend(fig, [Line2D([], [], marker="o", ms=6, color=DTYPE_COLORS["float32"], mec="white", ls="none",
                         label="prior draw with p(x|z) > 0 in float32"),
                  Line2D([], [], marker="x", ms=5, mew=0.8, color="k", ls="none",
                         label="prior draw with p(x|z) = 0 in float32")])
    spec.figure = fig
    notes = [e["skip"] for e in entries if e.get("skip")]
    if notes:
        spec.caption += " Not shown: " + "; ".join(notes)
    return spec
