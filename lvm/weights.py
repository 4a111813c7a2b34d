"""Is an importance-sampling estimate worth anything? The diagnostics of its weights.

From the log-weights log w_bi = log p(x_b|z_i) + log p(z_i) - log q(z_i|x_b), [B, N] (float64),
:func:`diagnostics` gives per digit b:

- the **ESS**, (sum w)^2 / sum w^2, computed as the estimators compute it
  (:class:`lvm.reductions.Diagnostics`);
- the **Pareto k-hat** of Pareto smoothed importance sampling (Vehtari, Simpson, Gelman, Yao
  and Gabry, "Pareto smoothed importance sampling", JMLR 25(72), 2024): a generalized Pareto
  distribution is fitted to the M = ceil(min(N/5, 3 sqrt(N))) largest weights (those above the
  (M+1)-th largest, and above float64's smallest normal relative to the largest weight), by the
  empirical Bayes estimator of Zhang and Stephens (Technometrics 51(3), 2009) with the weakly
  informative prior on k of the paper (k shrunk toward 0.5 as if by 10 more observations).
  This is the algorithm of arviz's ``psislw`` with r_eff = 1 (independent draws). Fewer than 5
  weights in the tail: k-hat is +inf (the weights are degenerate; nothing can be fitted).

Above k-hat = :data:`K_HAT_LIMIT` (0.7) the variance of the weights is so heavy-tailed that the
estimate's error is no longer governed by its standard error: the estimate of log p(x) is then
biased low by an unknown amount, and reads as a lower bound only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .errors import InputError
from .reductions import Diagnostics

K_HAT_LIMIT = 0.7  # PSIS: above it the estimate's error is not governed by its standard error
_PRIOR_BS, _PRIOR_K = 3, 10  # Zhang & Stephens' grid scale; the weakly informative prior's weight


@dataclass(frozen=True)
class WeightDiagnostics:
    """Per digit: the ESS of the weights and the Pareto k-hat of their right tail, float64 [B]."""

    ess: np.ndarray
    pareto_k: np.ndarray


def diagnostics(log_w) -> WeightDiagnostics:
    """ESS and Pareto k-hat per row of the log-weights ``log_w`` [B, N] (a tensor or array of
    floats: finite or -inf, no NaN or +inf; N >= 1). -inf is a weight of 0."""
    lw = torch.as_tensor(log_w)
    if lw.ndim != 2 or lw.shape[1] < 1 or not lw.is_floating_point():
        raise InputError(f"log_w of shape {tuple(lw.shape)} and dtype {lw.dtype}; accepted: floating "
                         "log-weights [B, N] with N >= 1")
    if bool(torch.isnan(lw).any() | (lw == math.inf).any()):
        raise InputError("log_w holds NaN or +inf; accepted: finite log-weights or -inf (a weight of 0)")
    return _diagnostics(lw.to(torch.float64).cpu())


def _diagnostics(lw: torch.Tensor) -> WeightDiagnostics:
    diag = Diagnostics(lw.shape[0], lw.device, torch.float64)
    diag.add(None, lw)
    rows = lw.numpy()
    return WeightDiagnostics(diag.ess().numpy(), np.array([_pareto_k(r) for r in rows], dtype=np.float64))


def _pareto_k(lw: np.ndarray) -> float:
    """k-hat of one row of log-weights, as arviz's ``_psislw`` computes it (r_eff = 1)."""
    n = len(lw)
    top = np.max(lw)
    if top == -math.inf:
        return math.inf  # every weight is 0
    x = np.sort(lw - top)
    m = int(math.ceil(min(n / 5.0, 3 * math.sqrt(n))))
    cutoff = max(x[-m - 1], math.log(np.finfo(np.float64).tiny)) if m + 1 <= n else x[0]
    tail = x[x > cutoff]
    if len(tail) <= 4:
        return math.inf
    return _gpd_k(np.exp(tail) - math.exp(cutoff))


def _gpd_k(y: np.ndarray) -> float:
    """Zhang & Stephens' posterior-mean estimate of the shape k of a generalized Pareto fitted to
    the sorted exceedances ``y``, with the weakly informative prior of PSIS."""
    n = len(y)
    m = 30 + int(n ** 0.5)
    b = 1 - np.sqrt(m / (np.arange(1, m + 1, dtype=np.float64) - 0.5))
    b /= _PRIOR_BS * y[int(n / 4 + 0.5) - 1]
    b += 1 / y[-1]
    k = np.log1p(-b[:, None] * y).mean(axis=1)
    profile = n * (np.log(-(b / k)) - k - 1)
    w = 1 / np.exp(profile - profile[:, None]).sum(axis=1)
    keep = w >= 10 * np.finfo(np.float64).eps
    w, b = w[keep], b[keep]
    b_post = np.sum(b * w / w.sum())
    k_post = np.log1p(-b_post * y).mean()
    return float((n * k_post + _PRIOR_K * 0.5) / (n + _PRIOR_K))
