"""Per-cell statistics from R repeats x B datapoints of estimates (defined in the README).

All inputs are float64 arrays of shape [R, B] (estimates, float64 replays on the
same draws) or [B] (ground truth and its standard error).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import binomtest


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
    per_repeat = [diff[r, finite[r]].mean() for r in range(diff.shape[0]) if finite[r].any()]
    se_shared = 0.0
    if len(per_repeat) >= 2:
        se_shared = np.sqrt(np.var(per_repeat, ddof=1) / len(per_repeat) + np.sum(truth_var) / B**2)
    return float(np.mean(means)), float(max(se_indep, se_shared))


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
    return out
