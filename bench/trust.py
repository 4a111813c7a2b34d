"""Whether the draws of one (proposal, N) can carry an estimate at all: `diagnose`'s reliability.

Rounding can only be judged against the Monte Carlo error, and the Monte Carlo error means
something only when the importance weights behave. For one (model, digits, proposal, N, seed)
:func:`check` replays the draws every setting uses in float64, forms the log-weights
log p(x|z) + log p(z) - log q(z|x) [B, N], and judges them per digit (:mod:`lvm.weights`):

- **k-hat <= 0.7** (PSIS, Vehtari et al. 2024): above it the weights' variance is so
  heavy-tailed that the estimate's error is not governed by its standard error; the estimate
  of log p(x) is biased low by an amount the draws cannot tell, a lower bound only;
- **ESS >= ESS_FLOOR** (10): the delta-method standard error sqrt(1/ESS - 1/N) rests on a
  central limit over the effective draws; with fewer than 10 it is a statement about a
  handful of draws (and above 0.3 nats even when it holds), so it is not an error bar.

The setting's ``reliable`` flag holds when every digit passes both. Reported beside it: the
median ESS over the digits and the **largest** k-hat over the digits (the estimate is a
mean over digits, so one digit whose error is not governed by its s.e. is enough for the mean's
not to be). The same pass counts the float64 log p(x|z) below each dtype's floor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from lvm.draws import Draws, proposal_terms
from lvm.kernels import CHUNK, PROPOSAL_CHUNK
from lvm.weights import K_HAT_LIMIT, diagnostics

ESS_FLOOR = 10.0


@dataclass(frozen=True)
class Trust:
    """The weights of one (proposal, N): per-digit ESS and k-hat, and what they allow."""

    proposal: str
    n_samples: int
    ess: np.ndarray  # [B]
    pareto_k: np.ndarray  # [B]
    below_floor: dict  # dtype -> share of float64 log p(x|z) below its floor

    @property
    def ess_median(self) -> float:
        return float(np.median(self.ess))

    @property
    def k_max(self) -> float:
        return float(np.max(self.pareto_k))

    @property
    def reliable(self) -> bool:
        return bool(np.all(self.pareto_k <= K_HAT_LIMIT) and np.all(self.ess >= ESS_FLOOR))

    @property
    def mc_se(self) -> float:
        """Mean over the digits of the delta-method Monte Carlo s.e. sqrt(1/ESS - 1/N) (nats)."""
        ess = np.maximum(self.ess, 1e-300)
        return float(np.mean(np.sqrt(np.clip(1 / ess - 1 / self.n_samples, 0, None))))

    def why(self) -> str:
        """What makes the weights unreliable, in a few words ("" when they are reliable)."""
        out, n_dig = [], len(self.ess)
        bad_k = int(np.sum(self.pareto_k > K_HAT_LIMIT))
        if bad_k:
            out.append(f"k-hat {_num(self.k_max)} > {K_HAT_LIMIT} ({bad_k}/{n_dig} digits), "
                       f"the estimate is a lower bound only and the MC s.e. is not its error")
        low = int(np.sum(self.ess < ESS_FLOOR))
        if low:
            out.append(f"ESS < {ESS_FLOOR:g} ({low}/{n_dig} digits; median {_num(self.ess_median)} of "
                       f"{self.n_samples})")
        return "unreliable: " + "; ".join(out) if out else ""

    def n_needed(self) -> int | None:
        """The N at which PSIS's sample-size-dependent threshold 1 - 1/log10(N) reaches the
        worst k-hat (Vehtari et al. 2024, sec. 3.2): None when k-hat >= 1 (no N suffices)."""
        k = self.k_max
        if not k < 1:
            return None
        return max(self.n_samples, math.ceil(round(10 ** (1 / (1 - max(k, 0.0))), 6)))


def _num(v: float) -> str:
    return f"{v:.3g}"


def check(model, x: torch.Tensor, n: int, seed: int, proposal: str, prop, floors: dict[str, float]) -> Trust:
    """The float64 weights of the draws every setting of (``proposal``, N = ``n``, ``seed``) uses
    (``prop``: None for the prior, else the proposal object of :func:`lvm.shared.draws_from`),
    judged; ``floors``: dtype -> log of its smallest subnormal."""
    below = dict.fromkeys(floors, 0)
    parts = []
    xd = torch.as_tensor(x).to(torch.float64)
    chunk = CHUNK if prop is None else PROPOSAL_CHUNK
    for drawn, ll in proposal_terms(Draws(model, n, seed, prop), xd, chunk,
                                    lambda xb, zb: model.log_likelihood(xb, zb, torch.float64)):
        for dt, f in floors.items():
            below[dt] += int((ll < f).sum())
        parts.append(ll + drawn.log_ratio if drawn.per_digit else ll)
    log_w = torch.cat(parts, dim=1)
    log_w = torch.nan_to_num(log_w, nan=-math.inf, posinf=-math.inf)  # as the ESS bookkeeping screens them
    d = diagnostics(log_w)
    return Trust(proposal, n, d.ess, d.pareto_k, {dt: k / (len(x) * n) for dt, k in below.items()})


def advice(trusts: list[Trust], encoder: bool) -> str:
    """What would help when no setting is both precise and reliable (``encoder``: whether the
    model has one). Reliable draws without a safe setting: the dtype is at fault, not the draws."""
    if any(t.reliable for t in trusts):
        return ("the reliable draws lose to rounding in every dtype tried: try log space in float64 "
                "(--dtype float64 --estimator log_space).")
    top = max(trusts, key=lambda t: (t.n_samples, t.proposal == "encoder"))
    tips = []
    need = top.n_needed()
    if need is not None and need > top.n_samples:
        tips.append(f"more draws (PSIS's threshold 1 - 1/log10(N) reaches the worst k-hat "
                    f"{_num(top.k_max)} near N = {need:,})")
    elif need is None:
        tips.append(f"more draws alone are unlikely to (k-hat {_num(top.k_max)} >= 1: as far as these "
                    "draws show, the weights have no finite mean)")
    tried = {t.proposal for t in trusts}
    if encoder and "encoder" not in tried:
        tips.append("the encoder proposal (--proposal encoder)")
    elif not encoder:
        tips.append("a proposal closer to the posterior (a model with an encoder: --proposal encoder)")
    tips.append("a stronger estimator (annealed importance sampling, or an encoder trained for this "
                "decoder)")
    return (f"the weights of the {top.proposal} proposal at N = {top.n_samples} are not ({top.why()}). "
            "What would help: " + "; ".join(tips) + ".")
