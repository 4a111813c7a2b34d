"""Ground truth by adaptive tensor-product quadrature, for latent dimension K <= 2.

:func:`quadrature` locates each datapoint's posterior on a shared coarse grid, then refines the
rectangle rule on a box around it (33, 65, 129, ... points per axis, each level reusing the
previous level's points) until two levels agree; :mod:`lvm.reference` caches the result.
"""

from __future__ import annotations

import math

import torch

from .errors import InputError

F64 = torch.float64


def _axis_grid(lo: torch.Tensor, hi: torch.Tensor, n: int) -> tuple[torch.Tensor, float]:
    """n^K points on the box [lo, hi] (K-vectors) and the cell volume."""
    axes = [torch.linspace(float(lo[k]), float(hi[k]), n, dtype=F64) for k in range(len(lo))]
    grid = torch.cartesian_prod(*axes).reshape(-1, len(lo)) if len(lo) > 1 else axes[0][:, None]
    vol = math.prod(float(hi[k] - lo[k]) / (n - 1) for k in range(len(lo)))
    return grid, vol


def _log_joint(model, x: torch.Tensor, z: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """log p(x_b | z_n) + log N(z_n; 0, I) for all pairs, [B, N], float64, streamed over z."""
    K = z.shape[1]
    # The constant is subtracted once after the chunks, not per term as in
    # std_normal_log_prob: the same value up to rounding, but not bit for bit.
    out = [model.log_likelihood(x, z[i:i + chunk], F64) - 0.5 * (z[i:i + chunk] ** 2).sum(-1)
           for i in range(0, len(z), chunk)]
    return torch.cat(out, dim=1) - 0.5 * K * math.log(2 * math.pi)


def _refine(model, x1: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, n: int,
            prev: torch.Tensor | None) -> torch.Tensor:
    """log p(x, z) on the n^K grid over [lo, hi], as an [n]*K tensor. ``prev`` holds the
    values on the (n + 1) / 2 grid, whose points are this grid's even-indexed ones: only
    the new points are evaluated."""
    K = len(lo)
    idx = torch.cartesian_prod(*[torch.arange(n)] * K).reshape(-1, K)
    new = (idx % 2 == 1).any(-1) if prev is not None else torch.ones(len(idx), dtype=torch.bool)
    z = lo + idx[new].to(F64) * ((hi - lo) / (n - 1))
    vals = torch.empty(len(idx), dtype=F64)
    vals[new] = _log_joint(model, x1, z)[0]
    if prev is not None:
        vals[~new] = prev.reshape(-1)
    out = vals.reshape([n] * K)
    return out


@torch.no_grad()
def quadrature(model, x, tol: float, h0: float = 0.05, bound: float = 6.0,
                points: tuple[int, ...] = (33, 65, 129, 257, 513), drop: float = 30.0):
    """Adaptive tensor-product quadrature, per datapoint.

    A shared coarse grid (spacing h0 on [-bound, bound]^K) locates each
    datapoint's posterior: the box holding every point within ``drop`` nats
    of the maximum, padded by two coarse cells. On that box the rectangle
    rule (equal to the trapezoid rule, the edges being negligible) is refined
    n = 33, 65, 129, ... points per axis, each level reusing the previous
    level's points, until two levels agree within tol; their difference is the
    reported error. That difference bounds the finer level's error when each
    refinement at least halves the error, which the meta records per level
    (``convergence``: the largest difference at each level, and for how many
    datapoints) and the tests check on a trained decoder. The Gaussian model
    converges geometrically; ELU decoders are only once differentiable, so their
    convergence is slower and irregular, and they need the finer levels.
    """
    K = model.latent_dim
    if K > 2:
        raise InputError(f"method='quadrature' needs latent_dim <= 2, got {K}; "
                         "accepted for this model: 'importance'")
    coarse, _ = _axis_grid(torch.full((K,), -bound), torch.full((K,), bound), int(round(2 * bound / h0)) + 1)
    lj = _log_joint(model, x, coarse)
    lp, err, used = [], [], []
    diffs: dict[int, list[float]] = {n: [] for n in points[1:]}
    for b in range(len(x)):
        keep = coarse[lj[b] > lj[b].max() - drop]
        lo = (keep.min(0).values - 2 * h0).clamp(min=-bound)
        hi = (keep.max(0).values + 2 * h0).clamp(max=bound)
        prev, vals, err_b = None, None, math.inf
        for n in points:
            vals = _refine(model, x[b:b + 1], lo, hi, n, vals)
            vol = math.prod(float(hi[k] - lo[k]) / (n - 1) for k in range(K))
            cur = torch.logsumexp(vals.reshape(-1), 0) + math.log(vol)
            if prev is not None:
                err_b = abs(float(cur - prev))
                diffs[n].append(err_b)
                if err_b < tol:
                    break
            prev = cur
        lp.append(cur)
        err.append(err_b)
        used.append(n)
    err_t = torch.tensor(err, dtype=F64)
    convergence = [{"points_per_axis": n, "n_data": len(d), "max_abs_diff": max(d)}
                   for n, d in diffs.items() if d]
    return torch.stack(lp), err_t, {"h0": h0, "bound": bound, "tol": tol, "drop": drop,
                                    "max_points_per_axis": max(used), "max_err": float(err_t.max()),
                                    "converged": float(err_t.max()) < tol, "convergence": convergence}
