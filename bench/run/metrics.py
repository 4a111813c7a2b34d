"""Per-cell statistics from R repeats x B datapoints of estimates (defined in docs/reference.md).

All inputs are float64 arrays of shape [R, B] (estimates, float64 replays on the
same draws) or [B] (ground truth and its standard error).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from bench.run.config import Cell
from lvm.axes import AXES


def wilson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k / n."""
    if n == 0:
        return float("nan"), float("nan")
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def _bias_and_se(diff: np.ndarray, finite: np.ndarray, truth_se: np.ndarray) -> tuple[float, float]:
    """Mean over datapoints of the per-datapoint mean error, and its standard error.

    The digits of one repeat share its draws, so their errors are correlated:
    the SE is the larger of (a) the digits-independent SE, sqrt(sum_b var_b/R_b)/B,
    and (b) the spread over repeats of each repeat's mean error, std_r/sqrt(R);
    the ground truth's own SE is added in quadrature to both.
    """
    means, var_of_means, truth_var = [], [], []
    for b in range(diff.shape[1]):
        vals = diff[finite[:, b], b]
        if len(vals) >= 2:
            means.append(vals.mean())
            var_of_means.append(vals.var(ddof=1) / len(vals))
            truth_var.append(truth_se[b] ** 2)
    if not means:
        return float("nan"), float("nan")
    B = len(means)
    se_indep = np.sqrt(np.sum(var_of_means) + np.sum(truth_var)) / B
    shared = repeat_var(diff, finite)
    se_shared = np.sqrt(shared + np.sum(truth_var) / B**2) if math.isfinite(shared) else 0.0
    return float(np.mean(means)), float(max(se_indep, se_shared))


def repeat_var(values: np.ndarray, finite: np.ndarray | None = None) -> float:
    """Variance of the grand mean of an [R, B] table from the spread of its repeats (rows).

    Every datapoint of a repeat is estimated from the same draws, so the columns are
    correlated and only the rows are independent: the variance is that of the R per-repeat
    means (each over the repeat's ``finite`` entries) divided by R. NaN with fewer than two
    repeats that have a finite entry.
    """
    finite = np.isfinite(values) if finite is None else finite
    per_repeat = [values[r, finite[r]].mean() for r in range(values.shape[0]) if finite[r].any()]
    if len(per_repeat) < 2:
        return float("nan")
    return np.var(per_repeat, ddof=1) / len(per_repeat)


def summarize(est: np.ndarray, replay: np.ndarray, truth: np.ndarray, truth_se: np.ndarray,
              zero_terms: np.ndarray, nonfinite_terms: np.ndarray, ess: np.ndarray,
              n_samples: int) -> dict[str, float]:
    """The accuracy and stability metrics of one cell."""
    R, B = est.shape
    n = R * B
    finite = np.isfinite(est)
    under = int(np.isneginf(est).sum())
    nonfin = int((np.isnan(est) | np.isposinf(est)).sum())
    lo, hi = wilson(under, n)
    out: dict[str, float] = {
        "n_estimates": n,
        "n_finite": int(finite.sum()),
        "underflow_rate": under / n,
        "underflow_ci_low": lo,
        "underflow_ci_high": hi,
        "term_underflow_rate": float(zero_terms.sum()) / (n * n_samples),
        "nonfinite_rate": nonfin / n,
        "nonfinite_term_rate": float(nonfinite_terms.sum()) / (n * n_samples),
    }
    err = est - truth[None]
    out["bias"], out["bias_se"] = _bias_and_se(err, finite, truth_se)
    both = finite & np.isfinite(replay)
    rnd = np.abs(est - replay)[both]
    out["rounding_error_mean"] = float(rnd.mean()) if rnd.size else float("nan")
    out["rounding_error_max"] = float(rnd.max()) if rnd.size else float("nan")
    rfin = np.isfinite(replay)
    out["mc_bias"], out["mc_bias_se"] = _bias_and_se(replay - truth[None], rfin, truth_se)
    counts = finite.sum(0)
    if (counts >= 2).any():
        v = [np.var(est[finite[:, b], b], ddof=1) for b in range(B) if counts[b] >= 2]
        out["variance"] = float(np.mean(v))
    else:
        out["variance"] = float("nan")
    out["rmse"] = float(np.sqrt(np.mean(err[finite] ** 2))) if finite.any() else float("nan")
    out["ess"] = float(np.mean(ess))
    out.update(resolution(out["bias"], out["mc_bias"], truth_se))
    return out


RESOLVE_FACTOR = 10.0  # a bias is resolved when it is at least this many times its truth's error


def resolution(bias: float, mc_bias: float, truth_se: np.ndarray) -> dict[str, float]:
    """Whether the ground truth is fine enough to judge a cell's bias and Monte Carlo bias.

    The truth's error in a cell's mean over digits is taken as the mean of the digits'
    errors (as if they were fully correlated: quadrature errors share their sign), and
    a bias is resolved when |bias| >= RESOLVE_FACTOR times it. An unresolved bias is
    reported, but drawn as unresolved and never used by a finding. Flags are 1.0 / 0.0.
    """
    err = float(np.mean(truth_se))
    return {"truth_error": err, **resolved(bias, mc_bias, err)}


def resolved(bias, mc_bias, truth_error) -> dict:
    """The two flags of :func:`resolution`, for numbers or for arrays of them."""
    flag = lambda b: np.where(np.isfinite(b) & (np.abs(b) >= RESOLVE_FACTOR * truth_error), 1.0, 0.0)  # noqa: E731
    out = {"bias_resolved": flag(bias), "mc_bias_resolved": flag(mc_bias)}
    return {k: float(v) for k, v in out.items()} if np.ndim(bias) == 0 else out


# ----------------------------------------------------------------------------- what raw rows add


@dataclass(frozen=True)
class RawStats:
    """What the raw per-estimate rows of one cell add to its cells.csv row."""

    rounding_se: float  # SE of the mean |estimate - replay_float64|
    bias_se: float  # SE of the mean error over repeats of the datapoint-mean (draws shared); NaN if none
    scale: float  # mean |replay_float64|: the size of the log p(x) being rounded


def raw_stats(raw: pd.DataFrame | None) -> dict[Cell, RawStats] | None:
    """Per cell :class:`RawStats` from a run's raw rows; None when the run has none."""
    need = {*AXES, "repeat", "datapoint", "estimate", "replay_float64"}
    if raw is None or not need <= set(raw.columns):
        return None
    raw = raw.copy()
    est, rep = raw["estimate"].to_numpy(float), raw["replay_float64"].to_numpy(float)
    raw["_rnd"] = np.where(np.isfinite(est) & np.isfinite(rep), np.abs(est - rep), np.nan)
    raw["_err"] = est - raw["truth"].to_numpy(float) if "truth" in raw else np.nan
    raw["_scale"] = np.where(np.isfinite(rep), np.abs(rep), np.nan)
    out = {}
    for key, g in raw.groupby(list(AXES), sort=False):
        rnd = g["_rnd"].to_numpy()
        rnd_fin = rnd[np.isfinite(rnd)]
        row_se = float(rnd_fin.std(ddof=1) / math.sqrt(len(rnd_fin))) if len(rnd_fin) >= 2 else float("nan")
        try:
            table = g.pivot(index="repeat", columns="datapoint", values=["_rnd", "_err"])
        except ValueError:  # duplicated (repeat, datapoint): no repeat structure to use
            rep_rnd = rep_err = float("nan")
        else:
            rep_rnd = math.sqrt(repeat_var(table["_rnd"].to_numpy()))
            rep_err = math.sqrt(repeat_var(table["_err"].to_numpy()))
        # the larger of the two: conservative when the datapoints are correlated and when the
        # few repeats happen to agree
        finite = [v for v in (row_se, rep_rnd) if math.isfinite(v)]
        scale = g["_scale"].dropna()
        nan = float("nan")
        out[Cell.of(dict(zip(AXES, key, strict=True)))] = RawStats(
            max(finite) if finite else nan, rep_err, float(scale.mean()) if len(scale) else nan)
    return out


# ----------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Metric:
    """One column of cells.csv after the axes: what it is, its unit, and how compare judges it.

    ``rule`` names the regression rule of :mod:`bench.compare` (None: reported only):
    ``"wilson"`` outside the baseline's 95% Wilson interval, ``"appears"`` from 0 to more
    than 0, ``"se"`` more than k standard errors of the difference and the error grew,
    ``"factor"`` slower by more than the throughput factor on the same hardware.
    """

    name: str
    unit: str  # "share", "nats", "terms/s", "estimates/s", "s", "MB", "count", "text", ...
    description: str
    rule: str | None = None
    timing: bool = False  # depends on the machine and its load, not on the numerics

    def fmt(self, value: Any) -> str:
        """The value for a table: shares in %, rates per second, 4 significant digits otherwise."""
        if value is None:
            return "-"
        if isinstance(value, str):
            return value
        v = float(value)
        if math.isnan(v):
            return "n/a"
        if self.unit == "share":
            return f"{100 * v:.3g}%"
        if self.unit.endswith("/s"):
            return f"{v:.3g}/s"
        return f"{v:.4g}"

    def fmt_change(self, change: float | None) -> str:
        """A change as compare states it: a factor for throughput, points for shares."""
        if change is None or (isinstance(change, float) and math.isnan(change)):
            return "-"
        if self.rule == "factor":
            return f"x{change:.3g}"
        if self.unit == "share":
            return f"{100 * change:+.3g} pts"
        return f"{change:+.3g}"


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("n_data", "count", "B, test digits per repeat"),
    Metric("repeats", "count", "R, independent repeats (seeded draws)"),
    Metric("n_estimates", "count", "R x B estimates"),
    Metric("n_finite", "count", "finite estimates"),
    Metric("underflow_rate", "share", "estimates that are -inf", rule="wilson"),
    Metric("underflow_ci_low", "share", "95% Wilson interval of underflow_rate, low end"),
    Metric("underflow_ci_high", "share", "95% Wilson interval of underflow_rate, high end"),
    Metric("term_underflow_rate", "share", "terms p(x|z_i) exactly 0 in the working dtype"),
    Metric("nonfinite_rate", "share", "estimates that are NaN or +inf", rule="appears"),
    Metric("nonfinite_term_rate", "share", "terms that are NaN or +inf"),
    Metric("bias", "nats", "mean over digits of (mean finite estimate - ground truth)", rule="se"),
    Metric("bias_se", "nats", "standard error of bias"),
    Metric("rounding_error_mean", "nats", "mean |estimate - float64 estimate on the same draws|",
           rule="se"),
    Metric("rounding_error_max", "nats", "max |estimate - float64 estimate on the same draws|"),
    Metric("mc_bias", "nats", "float64 estimate on the same draws - ground truth"),
    Metric("mc_bias_se", "nats", "standard error of mc_bias"),
    Metric("variance", "nats^2", "variance over repeats, mean over digits"),
    Metric("rmse", "nats", "root mean square of (estimate - truth) over finite estimates"),
    Metric("ess", "draws", "(sum w)^2 / sum w^2 of the importance weights, mean over estimates"),
    Metric("truth_method", "text", "how the ground truth was computed"),
    Metric("truth_se_max", "nats", "largest standard error of the ground truth over digits"),
    Metric("truth_error", "nats", "error of the ground truth in the cell's mean over digits: the mean "
           "of the digits' standard errors"),
    Metric("bias_resolved", "flag", "|bias| >= 10 x truth_error: the truth can judge the bias"),
    Metric("mc_bias_resolved", "flag", "|mc_bias| >= 10 x truth_error"),
    Metric("underflow_threshold", "nats", "log of the dtype's smallest subnormal"),
    Metric("unit_roundoff", "", "half the dtype's machine epsilon"),
    Metric("flop", "FLOP", "floating-point work of one estimate: decoder on N draws + data product"),
    Metric("time_median_s", "s", "median of the timed runs", timing=True),
    Metric("time_iqr_s", "s", "interquartile range of the timed runs (n/a for one run)", timing=True),
    Metric("time_runs", "count", "timed runs: as many as fit the time budget", timing=True),
    Metric("terms_per_s", "terms/s", "B x N / median time", rule="factor", timing=True),
    Metric("estimates_per_s", "estimates/s", "B / median time", timing=True),
    Metric("peak_memory_mb", "MB", "peak memory above the starting level during the first run",
           timing=True),
    Metric("timed_model", "text", "the model whose weights ran the timing: cells that differ only "
           "in their weights share one timing", timing=True),
    Metric("host", "text", "the machine that ran the cell", timing=True),
    Metric("wall_s", "s", "wall time spent on the cell: its timing plus its share of the shared "
           "accuracy passes", timing=True),
)}
JUDGED = tuple(m for m in METRICS.values() if m.rule)
TIMING_COLUMNS = (*(m.name for m in METRICS.values() if m.timing), "worker")
NUMERIC = tuple(m.name for m in METRICS.values() if m.unit != "text")
