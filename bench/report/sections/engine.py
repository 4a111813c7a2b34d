"""The engine axis in the report: eager against compiled, side by side.

"eager" runs the estimators' code as PyTorch executes it op by op; "compiled" runs the same code
under ``torch.compile`` (:mod:`lvm.engine`). The rest of the report reads the eager cells only
(:attr:`bench.run.store.Run.ok`); this module puts the two engines next to each other for the
(estimator, dtype) pairs measured under both: a table, a finding and a figure.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D

from bench.report import plotkit as K
from bench.report.analysis import Finding, Order, bias_display, resolved_bias_at_largest_n
from bench.report.render import fmt_num, join
from bench.report.sections.protocol import Section, Table
from bench.run.store import Run

TITLE = "Eager or compiled: rounding error against N under each engine"
STEM = "fig11_engine"
KEYS = ["estimator", "dtype", "model", "parametrization", "n_samples"]


def _measured(run: Run) -> pd.DataFrame:
    cells = run.at("engine")
    both = cells.groupby(["estimator", "dtype"])["engine"].transform("nunique") > 1
    return cells[both]


def table(run: Run) -> pd.DataFrame:
    """One row per (estimator, dtype, engine) measured under both engines: median rounding error,
    mean bias at the largest N, median time of an estimate and the seconds spent compiling."""
    rows = []
    for (est, dt, engine), g in _measured(run).groupby(["estimator", "dtype", "engine"], sort=False):
        rows.append({"estimator": est, "dtype": dt, "engine": engine, "cells": len(g),
                     "rounding_error_median": g["rounding_error_mean"].median(),
                     "largest_n": int(g["n_samples"].max()),
                     "bias_at_largest_n": resolved_bias_at_largest_n(g),
                     "time_median_s": g["time_median_s"].median(),
                     "compile_s": g["compile_s"].sum() if "compile_s" in g else np.nan})
    return pd.DataFrame(rows)


def display(t: pd.DataFrame) -> pd.DataFrame:
    if t.empty:
        return t
    return pd.DataFrame({
        "estimator": t["estimator"], "dtype": t["dtype"], "engine": t["engine"],
        "median rounding error (nats)": t["rounding_error_median"].map(fmt_num),
        "bias at largest N (nats)": bias_display(t),
        "median time of an estimate (s)": t["time_median_s"].map(fmt_num),
        "compiling (s, all cells)": t["compile_s"].map(fmt_num)})


def paired(run: Run) -> pd.DataFrame:
    """The cells measured under both engines, one row per cell coordinate: each engine's rounding
    error and time side by side, the change in rounding error, and eager time over compiled."""
    d = _measured(run)
    if d.empty:
        return pd.DataFrame()
    wide = d.pivot_table(index=KEYS, columns="engine", values=["rounding_error_mean", "time_median_s"])
    if ("rounding_error_mean", "compiled") not in wide or ("rounding_error_mean", "eager") not in wide:
        return pd.DataFrame()
    out = pd.DataFrame({"rounding_error_eager": wide[("rounding_error_mean", "eager")],
                        "rounding_error_compiled": wide[("rounding_error_mean", "compiled")],
                        "time_eager_s": wide[("time_median_s", "eager")],
                        "time_compiled_s": wide[("time_median_s", "compiled")]}).reset_index()
    out["rounding_change"] = out["rounding_error_compiled"] - out["rounding_error_eager"]
    out["speedup"] = out["time_eager_s"] / out["time_compiled_s"]
    return out


def finding(run: Run) -> Finding | None:
    """Where compilation changes the numbers (a median rounding error that moves by more than a
    tenth of eager's, or by more than 1e-9 nats where eager's is 0) and what it does to speed at
    the largest N measured under both."""
    p = paired(run)
    if p.empty:
        return None
    nums: dict[str, float] = {}
    moved, same = [], []
    for (est, dt), g in p.groupby(["estimator", "dtype"], sort=False):
        e, c = g["rounding_error_eager"].median(), g["rounding_error_compiled"].median()
        nums[f"{est}.{dt}.eager"], nums[f"{est}.{dt}.compiled"] = e, c
        if not (np.isfinite(e) and np.isfinite(c)):
            continue
        if abs(c - e) > max(0.1 * abs(e), 1e-9):
            moved.append(f"{est} at {dt} (median rounding error {fmt_num(e)} nats eager, {fmt_num(c)} "
                         "compiled)")
        else:
            same.append(f"{est} at {dt}")
    top = p[p["n_samples"] == p["n_samples"].max()]
    speed = top["speedup"].median()
    nums["speedup_at_largest_n"] = speed
    parts = []
    if moved:
        parts.append(f"Compilation changes the rounding of {join(moved)}: inductor fuses each chain of "
                     "pointwise operations into one loop and may keep its intermediates in float32, where "
                     "eager rounds every step to the dtype")
    if same:
        parts.append(f"{'it' if moved else 'Compilation'} leaves {join(same)} as eager rounds them")
    parts.append(f"at N = {int(top['n_samples'].iloc[0]):,} a compiled estimate takes {fmt_num(1 / speed)} "
                 "times the eager time (median over the cells measured under both, compilation excluded)")
    text = "; ".join(parts)
    return Finding(text[0].upper() + text[1:] + ".", nums)


def figure(run: Run, o: Order) -> K.FigureSpec:
    spec = K.FigureSpec(STEM, TITLE,
                        "Median rounding error (|estimate − float64 eager replay|, nats) against N for each "
                        "(estimator, dtype) measured under both engines, over models and parametrizations. "
                        "Solid: eager; dashed: compiled (torch.compile, inductor).")
    d = _measured(run)
    if d.empty:
        spec.skipped = "no (estimator, dtype) was measured under both engines."
        return spec
    agg = (d.groupby(["estimator", "dtype", "engine", "n_samples"])["rounding_error_mean"].median()
           .reset_index())
    ests = [e for e in o.estimators if e in set(agg["estimator"])]
    fig, axes = K.facets(ests, len(ests), panel=(2.75, 2.0))
    dtypes = [dt for dt in o.dtypes if dt in set(agg["dtype"])]
    for e, ax in axes.items():
        sub = agg[(agg["estimator"] == e) & (agg["rounding_error_mean"] > 0)]
        sns.lineplot(data=sub, x="n_samples", y="rounding_error_mean", hue="dtype", hue_order=dtypes,
                     palette=K.DTYPE_COLORS, style="engine", style_order=["eager", "compiled"],
                     dashes={"eager": "", "compiled": (4, 2)},
                     markers=dict.fromkeys(("eager", "compiled"), K.estimator_markers([e])[e]),
                     estimator=None, errorbar=None, legend=False, ax=ax, lw=1.3, ms=5)
        ax.set(xscale="log", yscale="log", xlabel="", ylabel="", title=e)
    fig.supxlabel(K.N_LABEL, fontsize=9)
    K.ylabel(fig, axes, len(ests), "median rounding error\n(nats)")
    handles = K.dtype_handles(dtypes) + [Line2D([], [], color="0.3", ls="-", label="eager"),
                                         Line2D([], [], color="0.3", ls=(0, (4, 2)), label="compiled")]
    K.legend(fig, handles, ncols=len(handles))
    spec.figure = fig
    return spec


def _pairs_display(t: pd.DataFrame) -> pd.DataFrame:
    if t.empty:
        return t
    return pd.DataFrame({
        "estimator": t["estimator"], "dtype": t["dtype"], "model": t["model"],
        "parametrization": t["parametrization"], "N": t["n_samples"],
        "rounding error eager (nats)": t["rounding_error_eager"].map(fmt_num),
        "rounding error compiled (nats)": t["rounding_error_compiled"].map(fmt_num),
        "eager time / compiled time": t["speedup"].map(fmt_num)})


SECTION = Section(
    STEM, TITLE, figure, heading="Engine: eager or compiled",
    intro="Eager runs the estimators op by op; compiled runs the same code under torch.compile "
          "(inductor), which fuses the decoder's pointwise steps, the likelihood and each reduction's chunk "
          "step. Compiled cells are held against the same float64 eager replay, and their compilation is "
          "kept out of the timed calls (its seconds are in cells.csv's compile_s). Every other table, figure "
          "and finding of this report reads the eager cells; here both, for each estimator and dtype "
          "measured under both. Machine-readable: tables/engine.csv and tables/engine_pairs.csv.",
    compares="engine",
    tables=(Table("engine", table, display),
            Table("engine_pairs", paired, _pairs_display, heading="Cell by cell")),
    findings=(finding,))

