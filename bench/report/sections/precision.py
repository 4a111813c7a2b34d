"""The precision-policy axis in the report: cast against autocast, side by side.

"cast" runs the model and every reduction in the dtype; "autocast" keeps the float32 model
under ``torch.autocast`` (:func:`lvm.shared.policy`). The rest of the report reads the cast
cells only (:attr:`bench.run.store.Run.ok`); this module puts the two policies next to each other
for the (estimator, dtype) pairs measured under both: a table, a finding and a figure.
"""

from __future__ import annotations

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D

from bench.report import plotkit as K
from bench.report.analysis import Finding, Order, bias_display, pooled, resolved_bias_at_largest_n
from bench.report.render import fmt_num, fmt_pct, join
from bench.report.sections.protocol import Section, Table
from bench.run.metrics import wilson
from bench.run.store import Run
from lvm.numerics import dtype_facts

TITLE = "Cast or autocast: underflow against N under each precision policy"
STEM = "fig8_precision"
RESCUED, PARTLY = "rescues", "does not rescue"


def _measured(run: Run) -> pd.DataFrame:
    cells = run.at("precision")
    both = cells.groupby(["estimator", "dtype"])["precision"].transform("nunique") > 1
    return cells[both]


def table(run: Run) -> pd.DataFrame:
    """One row per (estimator, dtype, precision) measured under both policies: underflow rate
    with its Wilson interval, median rounding error, mean bias at the largest N."""
    rows = []
    for (est, dt, prec), g in _measured(run).groupby(["estimator", "dtype", "precision"], sort=False):
        k, n = pooled(g)
        lo, hi = wilson(k, n)
        rows.append({"estimator": est, "dtype": dt, "precision": prec, "cells": len(g), "estimates": n,
                     "underflow_rate": k / n if n else np.nan,
                     "underflow_ci_low": lo, "underflow_ci_high": hi,
                     "rounding_error_median": g["rounding_error_mean"].median(),
                     "largest_n": int(g["n_samples"].max()),
                     "bias_at_largest_n": resolved_bias_at_largest_n(g)})
    return pd.DataFrame(rows)


def display(t: pd.DataFrame) -> pd.DataFrame:
    if t.empty:
        return t
    return pd.DataFrame({
        "estimator": t["estimator"], "dtype": t["dtype"], "precision": t["precision"],
        "underflow rate [95% CI]": [f"{fmt_pct(r)} [{fmt_pct(a)}, {fmt_pct(b)}]" for r, a, b in
                                    zip(t["underflow_rate"], t["underflow_ci_low"], t["underflow_ci_high"],
                                        strict=True)],
        "median rounding error (nats)": t["rounding_error_median"].map(fmt_num),
        "bias at largest N (nats)": bias_display(t)})


def finding(run: Run) -> Finding | None:
    """Where autocast rescues an estimator from underflow (a cast underflow rate that falls to
    zero) and where it cannot; a float32 product's floor is named, since autocast forms
    products in float32."""
    t = table(run)
    if t.empty:
        return None
    wide = t.pivot_table(index=["estimator", "dtype"], columns="precision", values="underflow_rate")
    if not {"cast", "autocast"} <= set(wide.columns):
        return None
    rescued, not_rescued, nums = [], [], {}
    for (est, dt), r in wide.iterrows():
        c, a = r["cast"], r["autocast"]
        nums[f"{est}.{dt}.cast"], nums[f"{est}.{dt}.autocast"] = c, a
        if not c > 0:
            continue
        text = f"{est} at {dt} ({fmt_pct(c)} of estimates −∞ cast, {fmt_pct(a)} under autocast)"
        (rescued if a == 0 else not_rescued).append(text)
    if not rescued and not not_rescued:
        return Finding("Neither policy underflowed for any estimator measured under both cast and "
                       "autocast.", nums)
    floor = dtype_facts("float32").log_min_subnormal
    parts = []
    if rescued:
        parts.append(f"Autocast rescues {join(rescued)}")
    if not_rescued:
        who = "it" if rescued else "Autocast"
        parts.append(f"{who} cannot rescue {join(not_rescued)}: what autocast leaves in float32 still "
                     f"underflows below {fmt_num(floor)} nats, and what it leaves in the low dtype below "
                     "that dtype's floor")
    return Finding("; ".join(parts) + ".", nums)


def figure(run: Run, o: Order) -> K.FigureSpec:
    spec = K.FigureSpec(STEM, TITLE,
                        "Underflow rate (share of estimates = −∞) against N for each (estimator, dtype) "
                        "measured under both policies, pooled over models and parametrizations. Solid: cast "
                        "(the model "
                        "and every reduction in the dtype); dashed: torch.autocast (float32 model, linear "
                        "layers and matrix products in the dtype, other ops as autocast leaves them).")
    d = _measured(run)
    if d.empty:
        spec.skipped = "no (estimator, dtype) was measured under both cast and autocast."
        return spec
    rows = []
    for (est, dt, prec, n), g in d.groupby(["estimator", "dtype", "precision", "n_samples"]):
        k, m = pooled(g)
        rows.append({"estimator": est, "dtype": dt, "precision": prec, "n_samples": n,
                     "underflow_rate": k / m if m else np.nan})
    agg = pd.DataFrame(rows)
    ests = [e for e in o.estimators if e in set(agg["estimator"])]
    fig, axes = K.facets(ests, len(ests), panel=(2.75, 2.0))
    dtypes = [dt for dt in o.dtypes if dt in set(agg["dtype"])]
    for e, ax in axes.items():
        sub = agg[agg["estimator"] == e]
        sns.lineplot(data=sub, x="n_samples", y="underflow_rate", hue="dtype", hue_order=dtypes,
                     palette=K.DTYPE_COLORS, style="precision", style_order=["cast", "autocast"],
                     dashes={"cast": "", "autocast": (4, 2)},
                     markers=dict.fromkeys(("cast", "autocast"), K.estimator_markers([e])[e]),
                     estimator=None, errorbar=None, legend=False, ax=ax, lw=1.3, ms=5)
        ax.set(xscale="log", ylim=(-0.06, 1.06), xlabel="", ylabel="", title=e)
        ax.yaxis.set_major_formatter(mpl.ticker.PercentFormatter(1.0, decimals=0))
    fig.supxlabel(K.N_LABEL, fontsize=9)
    K.ylabel(fig, axes, len(ests), "underflow rate\n(% of estimates = −∞)")
    handles = K.dtype_handles(dtypes) + [Line2D([], [], color="0.3", ls="-", label="cast"),
                                         Line2D([], [], color="0.3", ls=(0, (4, 2)), label="autocast")]
    K.legend(fig, handles, ncols=len(handles))
    spec.figure = fig
    return spec


SECTION = Section(
    STEM, TITLE, figure, heading="Precision policy: cast or autocast",
    intro="Cast runs the model and every reduction in the dtype; autocast keeps the float32 model under "
          "torch.autocast, which runs linear layers and matrix products in the dtype and leaves other ops as "
          "its op lists say. Every other table, figure and finding of this report reads the cast cells; here "
          "both, for each estimator and dtype measured under both. Machine-readable: tables/precision.csv.",
    compares="precision", tables=(Table("precision", table, display),), findings=(finding,))
