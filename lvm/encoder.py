"""Amortised encoders q(z|x): a diagonal Gaussian MLP, the proposal it makes, and its bounds.

The zoo's ``vae-k{K}`` and ``iwae-k{K}`` models pair the suite's 3 x 512 decoder with a
:class:`GaussianEncoder` trained jointly with it (:mod:`lvm.train`, objectives "vae" and
"iwae"); a user's VAE brings its own ``encode(x)`` (:class:`lvm.vae.VAEEncoder`). Both are an
:class:`Encoder`, whose ``params(x)`` give the mean and log std of a diagonal Gaussian. For the
benchmark an encoder is a proposal: :class:`EncoderProposal` draws z from
q(z|x) per datapoint and evaluates log q(z|x), with the interface of
:class:`lvm.posterior.MixtureProposal`, so :class:`lvm.draws.Draws` uses it as it is.
Drawing near the posterior instead of from the prior lifts log p(x|z) from thousands of
nats below zero to near log p(x), which is what decides whether probability space underflows.

With log w = log p(x|z) + log p(z) - log q(z|x) and z ~ q(z|x):

    ELBO   = E[log w]                              (one draw)
    IWAE_k = E[logsumexp_i log w_i - log k]        (k draws)

both lower bounds on log p(x), with ELBO = IWAE_1 <= IWAE_k <= IWAE_k' for k <= k' (Burda,
Grosse and Salakhutdinov 2016). :func:`log_weights` evaluates log w in float64 with each
digit's draws seeded by its own index, so any subset of digits reproduces what the whole split
gave; :func:`evaluate_bounds` turns them into the ``test_bounds`` of a checkpoint's metadata.

This module sits below :mod:`lvm.model` (which imports it): models are used here only through
their attributes (``encoder``, ``proposal``, ``log_likelihood``, ``log_prior``).
"""

from __future__ import annotations

import copy
import math
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from . import rng
from .draws import Drawn, proposal_terms
from .errors import InputError, check_int

F64 = torch.float64
LOG_STD_MIN, LOG_STD_MAX = -8.0, 4.0  # std in [3.4e-4, 55]: exp and float64 sampling stay finite
INIT_STREAM = 3  # rng words (seed, INIT_STREAM): the encoder's initial weights (train uses 0, 1, 2)
BOUND_STREAM = 4  # rng words (seed, BOUND_STREAM, k, digit index): the draws of log_weights
BOUND_CHUNK = 4096  # draws per decoder pass in log_weights (fixed: it never changes the draws)
DEFAULT_K, DEFAULT_K_LARGE, DEFAULT_N_LARGE = 5, 5000, 100  # evaluate_bounds: IWAE-5, IWAE-5000 on 100
_LOG_2PI = math.log(2 * math.pi)


def encoder_architecture(latent_dim: int, hidden: int = 256, layers: int = 2,
                         data_dim: int = 784) -> dict[str, Any]:
    """A GaussianEncoder's architecture, as stored in checkpoint metadata and checked on load."""
    return {"type": "diagonal-gaussian", "latent_dim": latent_dim, "hidden": hidden, "layers": layers,
            "activation": "ELU", "data_dim": data_dim,
            "output": f"mean and log std, log std clamped to [{LOG_STD_MIN:g}, {LOG_STD_MAX:g}]"}


_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # encoder -> {(dtype, device): copy}


class Encoder(nn.Module):
    """An amortised q(z|x) = N(mean(x), diag(exp(log_std(x))^2)): what :class:`EncoderProposal`
    draws from. A subclass has ``latent_dim`` and ``data_dim`` and gives ``params(x)``, the mean
    and log std [B, K] for x [B, D]: :class:`GaussianEncoder` is the suite's, and
    :class:`lvm.vae.VAEEncoder` a user's ``encode(x)`` in one of the conventions VAE code uses."""

    latent_dim: int
    data_dim: int

    def params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log_std), each [B, K], in the encoder's dtype."""
        raise NotImplementedError

    def cast(self, dtype: torch.dtype, device: torch.device | str = "cpu") -> Encoder:
        """An eval-mode, no-grad copy in ``dtype`` on ``device``, made once and reused.

        The copy is made again when the weights have changed in place since (an optimizer
        step bumps their version counters) or after :meth:`invalidate`.
        """
        device = torch.device(device)
        stamp = tuple(p._version for p in self.parameters())
        cache = _COPIES.setdefault(self, {})
        hit = cache.get((dtype, device))
        if hit is None or hit[0] != stamp:
            m = copy.deepcopy(self).to(device=device, dtype=dtype).eval().requires_grad_(False)
            cache[(dtype, device)] = hit = (stamp, m)
        return hit[1]

    def invalidate(self) -> None:
        """Drop the cached copies of :meth:`cast` (call after assigning new weights)."""
        _COPIES.pop(self, None)


class GaussianEncoder(Encoder):
    """q(z|x) = N(mean(x), diag(std(x)^2)): an ELU MLP from x [B, D] to 2K numbers.

    ``layers`` hidden layers of ``hidden`` units, then a Linear to 2K: the mean and the log
    standard deviation, the latter clamped to [LOG_STD_MIN, LOG_STD_MAX] so that a wild input
    can make neither a zero nor an infinite std (float64 sampling then never gives inf).
    """

    def __init__(self, latent_dim: int, hidden: int = 256, layers: int = 2, data_dim: int = 784):
        super().__init__()
        self.latent_dim = check_int("latent_dim", latent_dim, minimum=1)
        self.hidden = check_int("hidden", hidden, minimum=1)
        self.layers = check_int("layers", layers, minimum=1)
        self.data_dim = check_int("data_dim", data_dim, minimum=1)
        mods: list[nn.Module] = []
        width = data_dim
        for _ in range(layers):
            mods += [nn.Linear(width, hidden), nn.ELU()]
            width = hidden
        mods.append(nn.Linear(width, 2 * latent_dim))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The raw [B, 2K] output: mean, then unclamped log std."""
        return self.net(x)

    def params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log_std), each [B, K], in the encoder's dtype; log_std clamped."""
        out = self.net(x)
        K = self.latent_dim
        return out[..., :K], out[..., K:].clamp(LOG_STD_MIN, LOG_STD_MAX)

    def architecture(self) -> dict[str, Any]:
        return encoder_architecture(self.latent_dim, self.hidden, self.layers, self.data_dim)

def seed_encoder(latent_dim: int, hidden: int = 256, layers: int = 2, data_dim: int = 784,
                 seed: int = 0) -> GaussianEncoder:
    """A GaussianEncoder initialised from torch's RNG seeded by (seed, INIT_STREAM).

    A stream of its own, so that the encoder's weights do not repeat the uniform numbers that
    ``seed_decoder(..., seed=seed)`` starts from; the global RNG state is restored afterwards.
    """
    state = torch.random.get_rng_state()
    torch.manual_seed(rng.entropy(seed, INIT_STREAM) & ((1 << 63) - 1))
    try:
        return GaussianEncoder(latent_dim, hidden, layers, data_dim)
    finally:
        torch.random.set_rng_state(state)


def build_encoder(arch: dict[str, Any], seed: int = 0) -> GaussianEncoder:
    """A freshly initialised encoder of this architecture (:func:`encoder_architecture`)."""
    return seed_encoder(arch["latent_dim"], arch["hidden"], arch["layers"], arch.get("data_dim", 784), seed)


def diag_normal_log_prob(z: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, diag(exp(log_std))^2) summed over the last axis (broadcasting)."""
    d = (z - mean) * torch.exp(-log_std)
    return -0.5 * (d * d).sum(-1) - log_std.sum(-1) - 0.5 * z.shape[-1] * _LOG_2PI


class EncoderProposal:
    """q(z|x_b) for each row of x, as a proposal for the estimators and the bounds.

    Mean and std are computed once, in float64 on the CPU (where the suite's draws are made),
    by the encoder's cached float64 copy, without gradients. ``sample(n, generator)`` gives
    float64 z [B, n, K] = mean + std * eps with eps ~ N(0, I) from ``generator`` (the same
    generator state gives the same draws); ``log_prob(z)`` gives log q(z_bi|x_b) [B, n].
    """

    def __init__(self, encoder: Encoder, x: torch.Tensor):
        if not isinstance(encoder, Encoder):
            raise InputError(f"encoder is a {type(encoder).__name__}; accepted: an lvm.encoder.Encoder "
                             "(an lvm.GaussianEncoder, or a model's encode(x) as lvm.vae reads it)")
        x = torch.as_tensor(x)
        if x.dim() == 1:
            x = x[None]
        if x.dim() != 2 or x.shape[1] != encoder.data_dim or x.shape[0] == 0:
            raise InputError(f"x has shape {tuple(x.shape)}; accepted: [B, {encoder.data_dim}] with B >= 1")
        with torch.no_grad():
            mean, log_std = encoder.cast(F64, "cpu").params(x.to(device="cpu", dtype=F64))
        self.mean, self.log_std, self.std = mean, log_std, torch.exp(log_std)
        self.B, self.K = mean.shape

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        n = check_int("n", n, minimum=1)
        eps = torch.randn(self.B, n, self.K, generator=generator, dtype=F64)
        return self.mean[:, None] + self.std[:, None] * eps

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 3 or z.shape[0] != self.B or z.shape[2] != self.K:
            raise InputError(f"z has shape {tuple(z.shape)}; accepted: [B, n, K] = [{self.B}, n, {self.K}]")
        return diag_normal_log_prob(z.to(F64), self.mean[:, None], self.log_std[:, None])


def has_encoder(model: object) -> bool:
    """Whether ``model`` can make an encoder proposal: it has an ``encoder`` and a ``proposal(x)``."""
    return getattr(model, "encoder", None) is not None and callable(getattr(model, "proposal", None))


# ----------------------------------------------------------------------------- bounds


class _DigitStreams:
    """Each digit's k draws of q(z|x_b), from a stream of its own: digit b's from
    ``rng.generator(seed, BOUND_STREAM, k, first_index + b)``, with log p(z) and log q(z|x_b).
    A source of :class:`lvm.draws.Drawn` chunks for :func:`lvm.draws.proposal_terms`."""

    def __init__(self, model, prop: EncoderProposal, k: int, seed: int, first_index: int):
        zs, log_p, log_q = [], [], []
        for b in range(prop.B):
            g = rng.generator(seed, BOUND_STREAM, k, first_index + b)
            z = prop.mean[b] + prop.std[b] * torch.randn(k, prop.K, generator=g, dtype=F64)
            zs.append(z)
            log_p.append(model.log_prior(z))
            log_q.append(diag_normal_log_prob(z, prop.mean[b], prop.log_std[b]))
        self.k, self.drawn = k, Drawn(torch.stack(zs), torch.stack(log_p), torch.stack(log_q))

    def chunks(self, chunk_size: int) -> Iterator[Drawn]:
        for i in range(0, self.k, chunk_size):
            yield self.drawn.part(i, i + chunk_size)


@torch.no_grad()
def log_weights(model, x: torch.Tensor, k: int, *, seed: int = 0, first_index: int = 0) -> torch.Tensor:
    """log w = log p(x_b|z) + log p(z) - log q(z|x_b), z ~ q(z|x_b): float64 [B, k].

    Row b's k draws come from ``rng.generator(seed, BOUND_STREAM, k, first_index + b)``, so a
    digit's weights depend only on its index in the split, the seed and k: any subset of the
    digits (``first_index`` where it starts) reproduces what the whole split gave, up to the
    float64 rounding of batched products. The likelihood is ``model.log_likelihood`` per row,
    as the estimators compute it under a proposal (:func:`lvm.draws.proposal_terms`), in
    chunks of BOUND_CHUNK draws.
    """
    k = check_int("k", k, minimum=1)
    prop = model.proposal(x)
    x = torch.as_tensor(x, dtype=F64)
    if x.dim() == 1:
        x = x[None]
    streams = _DigitStreams(model, prop, k, seed, first_index)
    ll = torch.cat([t for _, t in proposal_terms(streams, x, BOUND_CHUNK,
                                                 lambda xb, zb: model.log_likelihood(xb, zb, F64))], dim=-1)
    return ll + streams.drawn.log_p - streams.drawn.log_q


def iwae_bound(lw: torch.Tensor) -> torch.Tensor:
    """logsumexp_i log w_i - log k over the last axis: IWAE_k (the ELBO when k = 1)."""
    return torch.logsumexp(lw, dim=-1) - math.log(lw.shape[-1])


def evaluate_bounds(model, x: torch.Tensor, *, seed: int = 0, k: int = DEFAULT_K,
                    k_large: int = DEFAULT_K_LARGE, n_large: int = DEFAULT_N_LARGE) -> dict[str, Any]:
    """Lower bounds on log p(x), nats per digit (negative), float64, from :func:`log_weights`.

    ELBO (k = 1) and IWAE-``k`` on every row of x; IWAE-``k_large`` on the first ``n_large``
    rows (the IWAE paper evaluates with 5,000 draws), with the ELBO and IWAE-``k`` on the same
    rows and the standard errors of the paired differences (over digits, each digit's three
    bounds from independent draws), against which the ordering ELBO <= IWAE-k <= IWAE-k_large
    is judged. Every number is a float as computed (no rounding), so a test can recompute it.
    """
    n_large = min(check_int("n_large", n_large, minimum=1), len(x))
    elbo = log_weights(model, x, 1, seed=seed)[:, 0]
    iw = iwae_bound(log_weights(model, x, k, seed=seed))
    iw_large = iwae_bound(log_weights(model, x[:n_large], k_large, seed=seed))
    e_k, k_name, kl_name = f"log_px_bound_iwae_k{k}", f"iwae_k{k}", f"iwae_k{k_large}"
    first = {"elbo": elbo[:n_large], k_name: iw[:n_large], kl_name: iw_large}

    def se(d: torch.Tensor) -> float:
        return float(d.std() / math.sqrt(len(d))) if len(d) > 1 else math.inf

    return {
        "note": "lower bounds on log p(x) in nats per digit, mean over digits (negative: nearer 0 is "
                "tighter); log w = log p(x|z) + log p(z) - log q(z|x), z ~ q(z|x); ELBO = log w with "
                "one draw, IWAE-k = logsumexp_i log w_i - log k with k draws",
        "dtype": "float64", "seed": seed, "k": k, "k_large": k_large,
        "draws": "digit b's k draws: lvm.rng.generator(seed, 4, k, b), b its index in the split "
                 "(lvm.encoder.log_weights)",
        "n_digits": len(x),
        "log_px_bound_elbo": float(elbo.mean()),
        e_k: float(iw.mean()),
        "first_digits": {
            "n_digits": n_large,
            **{f"log_px_bound_{name}": float(v.mean()) for name, v in first.items()},
            f"se_{k_name}_minus_elbo": se(first[k_name] - first["elbo"]),
            f"se_{kl_name}_minus_{k_name}": se(first[kl_name] - first[k_name]),
            f"log_px_bound_{kl_name}_per_digit": [float(v) for v in iw_large],
        },
    }
