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

The quadrature is :mod:`lvm.quadrature`, the importance proposals :mod:`lvm.posterior`; this
module runs the importance sampling, chooses the method and keeps the cache.
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
from .draws import BLOCK, Draws
from .errors import InputError, check_int
from .numerics import as_tensor
from .posterior import laplace_proposal, log_weights, moment_proposal
from .protocol import check_data, check_log_likelihood, check_model
from .quadrature import quadrature

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


def _probe(model, x: torch.Tensor) -> None:
    """One log-likelihood call, x[0] against two draws z = 0, before any computation: a wrong
    shape, or NaN (NaN weights), is an InputError here rather than a LinAlgError or
    IndexError deep inside the fit or the quadrature."""
    with torch.no_grad():
        ll = model.log_likelihood(x[:1], torch.zeros(2, model.latent_dim, dtype=F64), F64)
    if torch.isnan(check_log_likelihood(model, ll, 1, 2)).any():
        raise InputError(f"model (a {type(model).__name__}) gives log_likelihood NaN at z = 0 for x[0] "
                         "(NaN weights?); accepted: a model whose log-likelihood is a number or -inf")


class _Checked:
    """The model as the truth's fit and sums see it: a log-likelihood that is NaN or +inf for any
    (x, z) pair is an InputError naming the model, where it would otherwise surface as a
    LinAlgError in the Laplace fit or an IndexError in the quadrature (or a truth of NaN)."""

    def __init__(self, model):
        self.model, self.latent_dim = model, model.latent_dim
        self.where = getattr(model, "where", None) or f"model (a {type(model).__name__})"

    def sample_prior(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.model.sample_prior(n, generator)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor, dtype) -> torch.Tensor:
        ll = self.model.log_likelihood(x, z, dtype)
        for what, bad in (("NaN", torch.isnan(ll)), ("+inf", torch.isposinf(ll))):
            if bool(bad.any()):
                raise InputError(f"{self.where}: log_likelihood(x, z, float64) is {what} for "
                                 f"{int(bad.sum())} of {bad.numel()} (datapoint, draw) pairs of the ground "
                                 "truth's draws; accepted: a log-likelihood that is a finite number or -inf")
        return ll


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
        lp, se, meta = quadrature(_Checked(model), x, tol)
    else:
        lp, se, meta = _importance(_Checked(model), x, n_samples, seed, target_se)
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
