"""Ground truth log p(x) in float64, with an error estimate, cached on disk.

- "exact": closed form (LinearGaussianLVM).
- "quadrature" (K <= 2): trapezoid rule in log space on a per-datapoint box
  around the posterior, refined (33, 65, 129, 257, 513 points per axis) until
  two levels agree to ``tol`` (default 1e-4 nats); the last difference is the
  reported error, and meta["convergence"] shows how it fell level by level.
- "importance" (any K): float64 log-space importance sampling with two
  independent proposals (a Student-t on the Laplace fit and a Gaussian
  moment-matched to the posterior, each mixed with the prior), drawn until
  the error is at most ``target_se`` (default 1e-3 nats) or ``n_samples``
  draws each; their agreement is recorded and any disagreement beyond their
  standard errors is added to the reported error.
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
from .draws import BLOCK, Drawn, Draws, digit_terms
from .errors import InputError, check_int
from .likelihoods import std_normal_log_prob
from .numerics import as_tensor
from .protocol import check_data, check_log_likelihood, check_model

CACHE_VERSION = 3  # bump when an algorithm changes, so stale cached truths are not reused
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
    """(1 - a) * multivariate Student-t(mean, scale_tril, df) + a * N(0, I), per datapoint;
    df = inf is the Gaussian N(mean, L L^T)."""

    def __init__(self, mean: torch.Tensor, scale_tril: torch.Tensor, df: float = 5.0,
                 prior_weight: float = 0.1):
        self.mean, self.L, self.df, self.a = mean.to(F64), scale_tril.to(F64), df, prior_weight
        self.B, self.K = mean.shape

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        eps = torch.randn(self.B, n, self.K, generator=generator, dtype=F64)
        if math.isfinite(self.df):
            chi2 = 2 * torch._standard_gamma(torch.full((self.B, n, 1), self.df / 2, dtype=F64),
                                             generator=generator)
            eps = eps / torch.sqrt(chi2 / self.df)
        t = self.mean[:, None] + eps @ self.L.transpose(-1, -2)
        pick = torch.rand(self.B, n, 1, generator=generator, dtype=F64) < self.a
        prior = torch.randn(self.B, n, self.K, generator=generator, dtype=F64)
        return torch.where(pick, prior, t)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        K, df = self.K, self.df
        d = torch.linalg.solve_triangular(self.L[:, None], (z - self.mean[:, None])[..., None],
                                          upper=False).squeeze(-1)
        logdet = torch.log(torch.diagonal(self.L, dim1=-2, dim2=-1)).sum(-1)[:, None]
        if math.isfinite(df):
            log_t = (math.lgamma((df + K) / 2) - math.lgamma(df / 2) - K / 2 * math.log(df * math.pi)
                     - logdet - (df + K) / 2 * torch.log1p((d * d).sum(-1) / df))
        else:
            log_t = -K / 2 * math.log(2 * math.pi) - logdet - 0.5 * (d * d).sum(-1)
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


def laplace_proposal(model, x, seed: int, inflate: float = 1.2) -> MixtureProposal:
    """Proposal A: 0.9 * Student-t(5) on the Laplace fit (inflated 1.2x, never wider than the
    prior) + 0.1 * prior."""
    mode, prec = laplace_fit(model, x, seed=seed)
    K = mode.shape[1]
    evals, evecs = torch.linalg.eigh(prec)
    evals = evals.clamp(min=1.0)  # never wider than the prior
    cov = evecs @ torch.diag_embed(inflate**2 / evals) @ evecs.transpose(-1, -2)
    return MixtureProposal(mode, torch.linalg.cholesky(cov + 1e-12 * torch.eye(K, dtype=F64)))


def log_weights(model, x: torch.Tensor, drawn: Drawn) -> torch.Tensor:
    """log p(x_b|z_bi) + log p(z_bi) - log q(z_bi|x_b), float64 [B, n], for proposal draws."""
    with torch.no_grad():
        ll = digit_terms(lambda xb, zb: model.log_likelihood(xb, zb, F64), x, drawn)
    return ll + drawn.log_ratio


def moment_proposal(model, x, pilot: MixtureProposal, seed: int, n_pilot: int = BLOCK,
                    prior_weight: float = 0.02) -> MixtureProposal:
    """Proposal B: a Gaussian with the posterior mean and covariance estimated by
    self-normalised importance sampling from ``n_pilot`` draws of proposal A (draws of their
    own, never reused by the estimates), + 0.02 * prior. Where the posterior is close to
    Gaussian its efficiency is near 1; where it is not, it fails differently from A."""
    drawn = Draws(model, n_pilot, seed, pilot).take(0, n_pilot)
    z = drawn.z
    w = torch.softmax(log_weights(model, x, drawn), -1)
    mean = (w[..., None] * z).sum(1)
    zc = z - mean[:, None]
    cov = (w[..., None, None] * zc[..., :, None] * zc[..., None, :]).sum(1)
    K = mean.shape[1]
    L = torch.linalg.cholesky(cov + 1e-10 * torch.eye(K, dtype=F64))
    return MixtureProposal(mean, L, df=math.inf, prior_weight=prior_weight)


class _Accumulator:
    """Running float64 logsumexp of the log weights and of their doubles, per datapoint."""

    def __init__(self, B: int):
        self.lse = torch.full((B,), -math.inf, dtype=F64)
        self.lse2 = torch.full((B,), -math.inf, dtype=F64)
        self.n = torch.zeros(B, dtype=torch.int64)

    def add(self, rows: torch.Tensor, lw: torch.Tensor) -> None:
        self.lse[rows] = torch.logaddexp(self.lse[rows], torch.logsumexp(lw, -1))
        self.lse2[rows] = torch.logaddexp(self.lse2[rows], torch.logsumexp(2 * lw, -1))
        self.n[rows] += lw.shape[1]

    def result(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """log p_hat, its delta-method SE sqrt(1/ESS - 1/n), and the ESS."""
        n = self.n.to(F64)
        ess = torch.exp(2 * self.lse - self.lse2)
        return self.lse - torch.log(n), torch.sqrt((1 / ess - 1 / n).clamp(min=0)), ess


def _importance(model, x, n_samples: int, seed: int, target_se: float):
    """Two independent importance-sampling estimates per datapoint, combined.

    A (Laplace Student-t mixture) and B (moment-matched Gaussian mixture) draw blocks of
    BLOCK samples from their own seeded streams (both a first block, then the more efficient
    one, :func:`_next_blocks`) until the combined error of a datapoint is at most
    ``target_se`` or each has ``n_samples`` draws. The truth is the
    inverse-variance mean of A and B, with its delta-method SE; where A and B differ by more
    than 3 of their combined SEs, the difference |A - B| is the error instead, because the
    delta-method SE is blind to a proposal that misses part of the posterior.
    """
    prop_a = laplace_proposal(model, x, seed)
    prop_b = moment_proposal(model, x, prop_a, seed + 3, n_pilot=min(BLOCK, n_samples))
    B = len(x)
    draws = [Draws(model, n_samples, seed + 1, prop_a), Draws(model, n_samples, seed + 2, prop_b)]
    acc = [_Accumulator(B), _Accumulator(B)]
    active = torch.ones(B, dtype=torch.bool)
    pos = [0, 0]  # the next draw of each proposal's stream
    while True:
        rows = active.nonzero().squeeze(1)
        for p in _next_blocks(acc, rows, pos, n_samples):
            stop = min(pos[p] + BLOCK, n_samples)
            acc[p].add(rows, log_weights(model, x[rows], draws[p].take(pos[p], stop).rows(rows)))
            pos[p] = stop
        lp, err, parts = _combine(acc)
        active &= err > target_se
        if not active.any() or min(pos) >= n_samples:
            break
    return lp, err, {"n_samples_max": n_samples, "target_se": target_se, "seed": seed,
                     "proposals": ["laplace-t5 + 0.1 prior", "moment-gaussian + 0.02 prior"],
                     "draws_per_proposal": [int(a.n.max()) for a in acc], **parts}


def _next_blocks(acc: list[_Accumulator], rows: torch.Tensor, pos: list[int], n_samples: int) -> list[int]:
    """Which proposals draw the next block: both at first; then the one whose draws are worth
    more (the higher median ESS per draw over the datapoints still short of the target), so
    that a poor proposal costs one block and still checks the good one; both when they tie or
    when only one has draws left."""
    if pos[0] == 0 or pos[1] == 0:
        return [0, 1]
    left = [p for p in (0, 1) if pos[p] < n_samples]
    if len(left) < 2:
        return left
    eff = [float((a.result()[2][rows] / a.n[rows].to(F64)).median()) for a in acc]
    return [0] if eff[0] > eff[1] else [1] if eff[1] > eff[0] else [0, 1]


def _combine(acc: list[_Accumulator]) -> tuple[torch.Tensor, torch.Tensor, dict]:
    (a, sa, ea), (b, sb, eb) = acc[0].result(), acc[1].result()
    wa, wb = 1 / sa.clamp(min=1e-300) ** 2, 1 / sb.clamp(min=1e-300) ** 2
    lp = (wa * a + wb * b) / (wa + wb)
    se = torch.sqrt(1 / (wa + wb))
    z = (a - b) / torch.sqrt(sa**2 + sb**2)
    disagree = z.abs() > 3
    parts = {"min_ess": [float(ea.min()), float(eb.min())],
             "cross_check_max_abs_z": float(z.abs().max()),
             "cross_check_max_abs_diff": float((a - b).abs().max()),
             "cross_check_disagree": int(disagree.sum()),
             "draws_per_datapoint_mean": float(sum(a.n for a in acc).to(F64).mean())}
    return lp, torch.where(disagree, torch.maximum(se, (a - b).abs()), se), parts


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
                 target_se: float = 1e-3, seed: int = 0, tol: float = 1e-4, cache: bool = True,
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
        spec = f"{CACHE_VERSION}|{model.fingerprint()}|{method}|{n_samples}|{target_se}|{seed}|{tol}"
        h = hashlib.sha256(spec.encode())
        h.update(x.contiguous().numpy().tobytes())
        key = h.hexdigest()[:32]
        path = _cache_path(cache_dir, key)
        cached = _load(path, len(x)) if path.exists() else None
        if cached is not None:
            return Reference(method, cached["log_px"], cached["se"], dict(cached["meta"], cached=True))
    if method == "quadrature":
        lp, se, meta = quadrature(model, x, tol)
    else:
        lp, se, meta = _importance(model, x, n_samples, seed, target_se)
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
