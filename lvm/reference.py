"""Ground truth log p(x) in float64, with an error estimate, cached on disk.

- "exact": closed form (LinearGaussianLVM).
- "quadrature" (K <= 2): trapezoid rule in log space on a per-datapoint box
  around the posterior, refined until two levels agree to ``tol``. For
  smooth, fast-decaying integrands it converges geometrically, so the last
  difference bounds the error.
- "importance" (any K): float64 log-space importance sampling with a
  defensive mixture proposal 0.9 * Student-t(Laplace fit) + 0.1 * prior,
  with the delta-method standard error sqrt(1/ESS - 1/N).
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ._io import atomic_write, cache_root
from .errors import InputError, check_int
from .estimators import log_space
from .model import check_data, check_log_likelihood, check_model, std_normal_log_prob
from .numerics import as_tensor

CACHE_VERSION = 2  # bump when an algorithm changes, so stale cached truths are not reused
METHODS = ("auto", "exact", "quadrature", "importance")
F64 = torch.float64


@dataclass
class Reference:
    """Per-datapoint ground truth and its standard error (float64 [B])."""

    method: str
    log_px: torch.Tensor
    se: torch.Tensor
    meta: dict = field(default_factory=dict)


class MixtureProposal:
    """(1 - a) * multivariate Student-t(mean, scale_tril, df) + a * N(0, I), per datapoint."""

    def __init__(self, mean: torch.Tensor, scale_tril: torch.Tensor, df: float = 5.0,
                 prior_weight: float = 0.1):
        self.mean, self.L, self.df, self.a = mean.to(F64), scale_tril.to(F64), df, prior_weight
        self.B, self.K = mean.shape

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        eps = torch.randn(self.B, n, self.K, generator=generator, dtype=F64)
        chi2 = 2 * torch._standard_gamma(torch.full((self.B, n, 1), self.df / 2, dtype=F64),
                                         generator=generator)
        t = self.mean[:, None] + (eps / torch.sqrt(chi2 / self.df)) @ self.L.transpose(-1, -2)
        pick = torch.rand(self.B, n, 1, generator=generator, dtype=F64) < self.a
        prior = torch.randn(self.B, n, self.K, generator=generator, dtype=F64)
        return torch.where(pick, prior, t)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        K, df = self.K, self.df
        d = torch.linalg.solve_triangular(self.L[:, None], (z - self.mean[:, None])[..., None],
                                          upper=False).squeeze(-1)
        logdet = torch.log(torch.diagonal(self.L, dim1=-2, dim2=-1)).sum(-1)[:, None]
        log_t = (math.lgamma((df + K) / 2) - math.lgamma(df / 2) - K / 2 * math.log(df * math.pi)
                 - logdet - (df + K) / 2 * torch.log1p((d * d).sum(-1) / df))
        log_n = std_normal_log_prob(z)  # = -0.5 |z|^2 - K/2 log(2 pi), bit for bit
        return torch.logaddexp(math.log1p(-self.a) + log_t, math.log(self.a) + log_n)


def _log_joint_diag(model, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log p(x_b | z_b) + log p(z_b) for paired rows, float64, differentiable in z.

    log p(z) without its constant -K/2 log(2 pi): only the mode and curvature
    are used, and adding the constant would change the rounding of the values
    L-BFGS compares, hence the fitted proposal's bits.
    """
    ll = torch.cat([torch.diagonal(model.log_likelihood(x[i:i + 64], z[i:i + 64], F64))
                    for i in range(0, len(x), 64)])
    return ll - 0.5 * (z * z).sum(-1)


def laplace_fit(model, x: torch.Tensor, *, n_pilot: int = 4096, steps: int = 50,
                seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mode (from the best pilot prior draw, refined by L-BFGS) and Hessian."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        zp = model.sample_prior(n_pilot, g)
        lj = model.log_likelihood(x, zp, F64) - 0.5 * (zp * zp).sum(-1)  # constant left out: argmax only
        z0 = zp[lj.argmax(-1)]
    z = z0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([z], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = -_log_joint_diag(model, x, z).sum()
        loss.backward()
        return loss

    opt.step(closure)
    z = z.detach()
    zg = z.clone().requires_grad_(True)
    grad = torch.autograd.grad(_log_joint_diag(model, x, zg).sum(), zg, create_graph=True)[0]
    rows = [torch.autograd.grad(grad[:, k].sum(), zg, retain_graph=True)[0]
            for k in range(z.shape[1])]
    hess = -torch.stack(rows, dim=1).detach()  # [B, K, K] precision of the fit
    return z, 0.5 * (hess + hess.transpose(-1, -2))


def _importance(model, x, n_samples: int, seed: int, inflate: float = 1.2):
    mode, prec = laplace_fit(model, x, seed=seed)
    K = mode.shape[1]
    evals, evecs = torch.linalg.eigh(prec)
    evals = evals.clamp(min=1.0)  # never wider than the prior
    cov = evecs @ torch.diag_embed(inflate**2 / evals) @ evecs.transpose(-1, -2)
    L = torch.linalg.cholesky(cov + 1e-12 * torch.eye(K, dtype=F64))
    est = log_space(model, x, n_samples, dtype=F64, seed=seed + 1,
                    proposal=MixtureProposal(mode, L))
    se = torch.sqrt((1 / est.ess - 1 / n_samples).clamp(min=0) + 0.0)
    return est.log_px, se, {"n_samples": n_samples, "seed": seed,
                            "min_ess": float(est.ess.min())}


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


@torch.no_grad()
def _quadrature(model, x, tol: float, h0: float = 0.05, bound: float = 6.0,
                points: tuple[int, ...] = (33, 65, 129), drop: float = 40.0):
    """Adaptive tensor-product quadrature, per datapoint.

    A shared coarse grid (spacing h0 on [-bound, bound]^K) locates each
    datapoint's posterior: the box holding every point within ``drop`` nats
    of the maximum, padded by two coarse cells. On that box the rectangle
    rule (equal to the trapezoid rule, the edges being negligible) is refined
    n = 33, 65, 129 points per axis until two levels agree within tol;
    their difference is the reported error. The Gaussian model converges to
    1e-12; ELU decoders are only once differentiable (the ELU kink), so there
    convergence is O(h^2) and the reported error is larger (see meta max_err).
    """
    K = model.latent_dim
    if K > 2:
        raise InputError(f"method='quadrature' needs latent_dim <= 2, got {K}; "
                         "accepted for this model: 'importance'")
    coarse, _ = _axis_grid(torch.full((K,), -bound), torch.full((K,), bound), int(round(2 * bound / h0)) + 1)
    lj = _log_joint(model, x, coarse)
    lp, err, used = [], [], []
    for b in range(len(x)):
        keep = coarse[lj[b] > lj[b].max() - drop]
        lo = (keep.min(0).values - 2 * h0).clamp(min=-bound)
        hi = (keep.max(0).values + 2 * h0).clamp(max=bound)
        prev, err_b = None, math.inf
        for n in points:
            grid, vol = _axis_grid(lo, hi, n)
            cur = torch.logsumexp(_log_joint(model, x[b:b + 1], grid)[0], 0) + math.log(vol)
            if prev is not None:
                err_b = abs(float(cur - prev))
                if err_b < tol:
                    break
            prev = cur
        lp.append(cur)
        err.append(err_b)
        used.append(n)
    err_t = torch.tensor(err, dtype=F64)
    return torch.stack(lp), err_t, {"h0": h0, "bound": bound, "tol": tol, "drop": drop,
                                    "max_points_per_axis": max(used), "max_err": float(err_t.max()),
                                    "converged": float(err_t.max()) < tol}


def _probe(model, x: torch.Tensor) -> None:
    """One log-likelihood call, x[0] against two draws z = 0, before any computation: a wrong
    shape, or NaN (NaN weights), is an InputError here rather than a LinAlgError or
    IndexError deep inside the fit or the quadrature."""
    with torch.no_grad():
        ll = model.log_likelihood(x[:1], torch.zeros(2, model.latent_dim, dtype=F64), F64)
    if torch.isnan(check_log_likelihood(model, ll, 1, 2)).any():
        raise InputError(f"model (a {type(model).__name__}) gives log_likelihood NaN at z = 0 for x[0] "
                         "(NaN weights?); accepted: a model whose log-likelihood is a number or -inf")


def _cache_path(cache_dir, key: str) -> Path:
    return cache_root(cache_dir) / "reference" / f"{key}.pt"


def log_marginal(model, x: torch.Tensor, method: str = "auto", *, n_samples: int = 20_000,
                 seed: int = 0, tol: float = 1e-6, cache: bool = True,
                 cache_dir: str | os.PathLike | None = None) -> Reference:
    """Ground-truth log p(x) per datapoint (float64) with a standard error."""
    if method not in METHODS:
        raise InputError(f"method={method!r} is not supported; accepted: {', '.join(METHODS)}")
    check_model(model)
    seed = check_int("seed", seed)
    if getattr(model, "data_dim", None):
        x = check_data(x, model.data_dim, binary=hasattr(model, "decoder"))
    x = as_tensor(x, "x").to(F64)
    _probe(model, x)
    if method == "auto":
        method = ("exact" if hasattr(model, "exact_log_marginal")
                  else "quadrature" if model.latent_dim <= 2 else "importance")
    if method == "exact":
        if not hasattr(model, "exact_log_marginal"):
            raise InputError("method='exact' needs a model with exact_log_marginal; "
                             "accepted for this model: 'quadrature' (K <= 2) or 'importance'")
        lp = model.exact_log_marginal(x)
        return Reference("exact", lp, torch.zeros_like(lp))
    key = None
    if cache and hasattr(model, "fingerprint"):
        spec = f"{CACHE_VERSION}|{model.fingerprint()}|{method}|{n_samples}|{seed}|{tol}"
        h = hashlib.sha256(spec.encode())
        h.update(x.contiguous().numpy().tobytes())
        key = h.hexdigest()[:32]
        path = _cache_path(cache_dir, key)
        cached = _load(path, len(x)) if path.exists() else None
        if cached is not None:
            return Reference(method, cached["log_px"], cached["se"], dict(cached["meta"], cached=True))
    if method == "quadrature":
        lp, se, meta = _quadrature(model, x, tol)
    else:
        lp, se, meta = _importance(model, x, n_samples, seed)
    ref = Reference(method, lp.detach(), se.detach(), meta)
    if key is not None:
        _save(path, {"log_px": ref.log_px, "se": ref.se, "meta": meta})
    return ref


def _digest(log_px: torch.Tensor, se: torch.Tensor) -> str:
    """sha256 of the cached numbers: any change to them after the entry was written shows."""
    h = hashlib.sha256(log_px.to(F64).contiguous().numpy().tobytes())
    h.update(se.to(F64).contiguous().numpy().tobytes())
    return h.hexdigest()


def _load(path: Path, n: int) -> dict | None:
    """A cache entry, validated: None (a miss, recomputed and rewritten) with a warning when it
    cannot be read, lacks a key, has the wrong length, holds NaN or a negative standard error,
    or no longer matches the digest written with it."""
    try:
        d = torch.load(path, weights_only=True)
        problem = _invalid(d, n)
    except Exception as e:  # noqa: BLE001 - any unreadable entry is a cache miss
        problem = f"unreadable ({type(e).__name__}: {e})"
    if problem is None:
        return d
    warnings.warn(f"ground-truth cache entry {path} is {problem}: recomputing it", stacklevel=3)
    return None


def _invalid(d: dict, n: int) -> str | None:
    """What is wrong with a loaded cache entry, or None."""
    lp, se, _ = d["log_px"], d["se"], d["meta"]
    if not (isinstance(lp, torch.Tensor) and isinstance(se, torch.Tensor) and lp.shape == se.shape == (n,)):
        return f"not two tensors of the data's length {n}"
    if bool(torch.isnan(lp).any()) or not bool((se >= 0).all()):
        return "NaN or a negative standard error"
    if d.get("sha256") != _digest(lp, se):
        return "changed since it was written (digest mismatch)"
    return None


def _save(path: Path, obj: dict) -> None:
    """Atomic write, with the digest :func:`_load` checks; a cache that cannot be written is
    skipped, never half-written."""
    obj = dict(obj, sha256=_digest(obj["log_px"], obj["se"]))
    try:
        atomic_write(path, lambda f: torch.save(obj, f))
    except OSError:
        pass
