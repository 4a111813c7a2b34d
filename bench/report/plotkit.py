"""Drawing kit shared by the report's figures: palettes, style, the figure record, facets, legends.

Every figure gives each dtype the same Okabe-Ito colour (``DTYPE_COLORS``), each estimator
the same marker and each likelihood parametrization the same line style. Figures are built
on ``matplotlib.figure.Figure`` (no pyplot state) with seaborn's axes-level functions,
inside ``style()`` so that fonts, sizes and SVG ids are fixed and the files are byte-stable.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bench.report.analysis import Order
from bench.run.config import AXIS_DEFAULTS

if TYPE_CHECKING:
    from bench.run.store import Run

POSTERIOR_CMAP = mpl.colors.ListedColormap(mpl.colormaps["Greys"](np.linspace(0.0, 0.55, 256)))
# Okabe & Ito (2008) colour-blind-safe colours, one per dtype, in every figure.
DTYPE_COLORS = {"float16": "#D55E00", "bfloat16": "#CC79A7", "float32": "#0072B2", "float64": "#009E73"}
ESTIMATOR_MARKERS = {"prob_space": "o", "prob_space_exp": "s", "log_space": "^", "log_space_acc32": "D"}
OUTSIDE_MARKERS = ("v", "P", "X", "*", "h", "<", ">", "p")  # outside estimators, in grid order


def estimator_markers(estimators) -> dict[str, str]:
    """A marker per estimator: the built-in ones keep theirs, outside ones take the next free."""
    spare = iter(OUTSIDE_MARKERS * (1 + len(estimators) // len(OUTSIDE_MARKERS)))
    return {e: ESTIMATOR_MARKERS.get(e) or next(spare) for e in estimators}
PARAM_DASHES = {"logits": "", "probs": (4, 2)}
DPI = 110
FLOOR_DECADES = 8
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
class Plot:
    """A figure as the report lists it (:data:`bench.report.figures.FIGURES`, in order): its file
    stem (the file keeps this name whatever the run), its title, how it is drawn from a run, and
    the axis whose other levels it sets side by side (None: every run lists it). The caption's
    number is the figure's position among those a run lists (:func:`bench.report.figures.listed`)."""

    stem: str
    title: str
    draw: Callable[[Run, Order], FigureSpec]
    compares: str | None = None

    def listed(self, run: Run) -> bool:
        """Every run lists a figure of no axis; one of an axis only where a cell of the run is at
        a level of it other than the default (autocast, the encoder)."""
        return self.compares is None or bool((run.cells[self.compares] != AXIS_DEFAULTS[self.compares]).any())

    def spec(self, caption: str, **kw) -> FigureSpec:
        """This figure's record, to be drawn (``figure=``) or skipped (``skipped=``)."""
        return FigureSpec(self.stem, self.title, caption, **kw)


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


def facets(keys: list, ncol: int, panel: tuple[float, float] = (2.9, 2.2), *, sharex: bool = True,
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


def dtype_handles(dtypes: list[str]) -> list[Line2D]:
    return [Line2D([], [], color=DTYPE_COLORS.get(d, "k"), lw=2, label=d) for d in dtypes]


def marker_handles(estimators: list[str]) -> list[Line2D]:
    markers = estimator_markers(estimators)
    return [Line2D([], [], color="0.3", marker=markers[e], ls="none", label=e) for e in estimators]


def legend(fig: Figure, handles: list, ncols: int | None = None) -> None:
    """One legend for the figure: above the panels, or at their right when the figure is narrow."""
    if getattr(fig, "legend_right", False):
        fig.legend(handles=handles, loc="outside right upper", ncols=1, frameon=False, handlelength=2.4)
        return
    fig.legend(handles=handles, loc="outside upper center", ncols=ncols or min(len(handles), 6),
               frameon=False, handlelength=2.4, columnspacing=1.4)


def ylabel(fig: Figure, axes: dict, ncol: int, text: str) -> None:
    """One y label for the figure when it is tall, else one per row (two lines) that fits a row."""
    ncol = max(1, min(ncol, len(axes)))
    if math.ceil(len(axes) / ncol) >= 3:
        fig.supylabel(text.replace("\n", " "), fontsize=9)
        return
    for i, ax in enumerate(axes.values()):
        if i % ncol == 0:
            ax.set_ylabel(text)


def ref_slope(ax, sub: pd.DataFrame, y: str) -> None:
    """A grey 1/N line through the geometric mean of the values at the smallest N."""
    v = sub[(sub[y] > 0) & np.isfinite(sub[y])]
    if v.empty or v["n_samples"].nunique() < 2:
        return
    n0, n1 = v["n_samples"].min(), v["n_samples"].max()
    c = float(np.exp(np.log(v.loc[v["n_samples"] == n0, y]).mean())) * n0
    ax.plot([n0, n1], [c / n0, c / n1], color="0.45", ls=(0, (1.5, 1.5)), lw=1.3, zorder=1)


REF_HANDLE = Line2D([], [], color="0.45", ls=(0, (1.5, 1.5)), lw=1.3, label="∝ 1/N reference")


def positive(d: pd.DataFrame, col: str) -> pd.DataFrame:
    return d[np.isfinite(d[col]) & (d[col] > 0)]


def lines_by_dtype_and_estimator(ax, sub: pd.DataFrame, y: str, o: Order) -> None:
    """``y`` against N: one line per (dtype, estimator), coloured by dtype, marked by estimator."""
    hue = [dt for dt in o.dtypes if dt in set(sub["dtype"])]
    sty = [e for e in o.estimators if e in set(sub["estimator"])]
    sns.lineplot(data=sub, x="n_samples", y=y, hue="dtype", hue_order=hue, palette=DTYPE_COLORS,
                 style="estimator", style_order=sty, markers=estimator_markers(sty), dashes=False,
                 estimator=None, errorbar=None, legend=False, ax=ax, lw=1.2, ms=5.5, mew=0, alpha=0.9)
