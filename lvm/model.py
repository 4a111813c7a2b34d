"""Latent variable models: z ~ N(0, I_K), x | z ~ Bernoulli(decoder(z)) or Gaussian.

The estimators need only the protocol of :mod:`lvm.protocol`, so users can bring their
own model. These models' ``log_likelihood`` returns a [B, N] matrix of log p(x_b | z_n)
computed in the working dtype, with the data-by-sample product done as one matrix
multiply (no [B, N, D] tensor on the fast path); the densities are :mod:`lvm.likelihoods`.
"""

from __future__ import annotations

import copy
import hashlib
import math
import reprlib
from typing import Any

import torch
from torch import nn
from torch.distributions.utils import clamp_probs

from .axes import PARAMETRIZATIONS
from .encoder import Encoder, EncoderProposal, build_encoder
from .errors import InputError, check_int
from .likelihoods import bernoulli_log_likelihood, std_normal_log_prob
from .numerics import parse_dtype
from .protocol import check_data


def _activations_in_place(module: nn.Module) -> None:
    """In a no-grad copy, let each ELU that follows a Linear in a Sequential overwrite that Linear's
    fresh output instead of allocating another tensor: the same values, one [N, hidden] tensor less
    per layer. Only there: elsewhere an activation's input may be used again (a skip connection)."""
    for seq in module.modules():
        if isinstance(seq, nn.Sequential):
            layers = list(seq.children())
            for prev, act in zip(layers, layers[1:], strict=False):
                if isinstance(prev, nn.Linear) and type(act) is nn.ELU:
                    act.inplace = True


class _DtypeCache:
    """Per-(dtype, device) copies of a module, so casting happens once."""

    def __init__(self, module: nn.Module):
        self.module = module
        self._copies: dict[tuple[torch.dtype, torch.device], nn.Module] = {}

    def get(self, dtype: torch.dtype, device: torch.device) -> nn.Module:
        key = (dtype, device)
        if key not in self._copies:
            m = copy.deepcopy(self.module).to(device=device, dtype=dtype).eval()
            for p in m.parameters():
                p.requires_grad_(False)
            _activations_in_place(m)
            self._copies[key] = m
        return self._copies[key]

    def clear(self) -> None:
        self._copies.clear()


class BernoulliLVM:
    """z ~ N(0, I_K); x_j ~ Bernoulli(decoder(z)_j) over D binary pixels.

    ``output="logits"``: log p(x|z) = x . l - sum_j softplus(l_j), one matmul.
    ``output="probs"``: the decoder ends in a Sigmoid and the likelihood is
    what ``torch.distributions.Bernoulli(probs=p).log_prob`` gives: p clamped
    to [eps, 1-eps] of the working dtype, then x log p + (1-x) log(1-p). In
    float16 p saturates at 1.0 for logits above ~7.6 and the clamp caps each
    pixel's log-odds at ~6.9: a failure mode the suite measures.

    ``encoder``: an optional :class:`~lvm.encoder.Encoder` q(z|x): a
    :class:`~lvm.encoder.GaussianEncoder` trained with the decoder (the zoo's vae-k{K} and
    iwae-k{K}), or a user's ``encode(x)`` (:mod:`lvm.vae`); :meth:`proposal` turns it into a
    proposal for the estimators. Every view :meth:`with_output` makes shares it (the same object).
    """

    def __init__(self, decoder: nn.Module, latent_dim: int, output: str = "logits",
                 data_dim: int = 784, *, encoder: Encoder | None = None):
        if output not in PARAMETRIZATIONS:
            raise InputError(f"output={output!r} is not supported; accepted: {', '.join(PARAMETRIZATIONS)}")
        if not isinstance(decoder, nn.Module):
            raise InputError(f"decoder={reprlib.repr(decoder)} (a {type(decoder).__name__}) is invalid; "
                             "accepted: a torch.nn.Module mapping [N, latent_dim] to [N, data_dim]")
        latent_dim = check_int("latent_dim", latent_dim, minimum=1)
        data_dim = check_int("data_dim", data_dim, minimum=1)
        if encoder is not None and not (isinstance(encoder, Encoder)
                                        and (encoder.latent_dim, encoder.data_dim) == (latent_dim, data_dim)):
            got = (f"a {type(encoder).__name__} with latent_dim={encoder.latent_dim}, data_dim="
                   f"{encoder.data_dim}" if isinstance(encoder, Encoder) else f"a {type(encoder).__name__}")
            raise InputError(f"encoder is {got}; accepted: None or an lvm.encoder.Encoder (such as an "
                             f"lvm.GaussianEncoder) with latent_dim={latent_dim} and data_dim={data_dim}")
        self.decoder = decoder
        self.encoder = encoder
        self.latent_dim = latent_dim
        self.output = output
        self.data_dim = data_dim
        self._cache = _DtypeCache(decoder)
        self._views: dict[str, BernoulliLVM] = {output: self}  # shared by every view of the network
        with torch.no_grad():
            p = next(decoder.parameters(), None)
            probe = torch.zeros(1, latent_dim, dtype=p.dtype if p is not None else torch.float32)
            try:
                width = decoder(probe).shape[-1]
            except RuntimeError as e:
                raise InputError(f"decoder does not accept latent_dim={latent_dim} inputs: {e}") from e
        if width != data_dim:
            raise InputError(f"decoder output width is {width}; accepted: data_dim={data_dim}")

    def sample_prior(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(n, self.latent_dim, generator=generator, dtype=torch.float64)

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        return std_normal_log_prob(z)

    def fingerprint(self) -> str:
        """sha256 of the architecture description and the decoder weights (and the encoder's, if any).

        A model without an encoder hashes exactly what it did before encoders existed, so the
        fingerprints recorded in earlier runs still name the same models.
        """
        h = hashlib.sha256(f"bernoulli|{self.output}|{self.latent_dim}|{self.decoder}".encode())
        parts = [("", self.decoder)] + ([] if self.encoder is None else [("encoder.", self.encoder)])
        for prefix, module in parts:
            if prefix:
                h.update(f"|encoder|{module}".encode())
            for name, t in module.state_dict().items():
                h.update((prefix + name).encode())
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def proposal(self, x: torch.Tensor) -> EncoderProposal:
        """The encoder's q(z|x_b) for each row of x (float64, CPU): a proposal for the estimators."""
        if self.encoder is None:
            raise InputError("this BernoulliLVM has no encoder (encoder=None), so it has no proposal "
                             "q(z|x); accepted: a model built with encoder=lvm.GaussianEncoder(...), such "
                             "as the zoo's vae-k{K} and iwae-k{K}, a module with encode(x) (lvm.vae), or "
                             "the prior proposal")
        return EncoderProposal(self.encoder, check_data(x, self.data_dim))

    def with_output(self, output: str) -> BernoulliLVM:
        """The same network with the other likelihood parametrization.

        logits -> probs appends a Sigmoid (the textbook's decoder); probs ->
        logits drops a final Sigmoid; a probs decoder without one to drop (a sigmoid inside
        the user's ``decode``) has no logits view: an InputError that says why, which the
        sweep records as the reason of an exclusion. The weights are shared, not copied, and
        each view is made once: a model and its views return one another, so their dtype
        copies are cast once.
        """
        if output in self._views:
            return self._views[output]
        if output not in PARAMETRIZATIONS:
            raise InputError(f"output={output!r} is not supported; accepted: {', '.join(PARAMETRIZATIONS)}")
        if output == "probs":
            view = BernoulliLVM(nn.Sequential(self.decoder, nn.Sigmoid()), self.latent_dim,
                                "probs", self.data_dim, encoder=self.encoder)
        else:
            layers = list(self.decoder.children()) if isinstance(self.decoder, nn.Sequential) else []
            if not layers or not isinstance(layers[-1], nn.Sigmoid):
                last = (f"an nn.Sequential ending in {type(layers[-1]).__name__}" if layers
                        else "its sigmoid, if any, is inside its own forward or decode")
                raise InputError(f"output='logits' cannot be derived from this probs decoder ({last}): "
                                 "only a final nn.Sigmoid of an nn.Sequential can be dropped; accepted: "
                                 "output='probs', the parametrization it declares")
            view = BernoulliLVM(nn.Sequential(*layers[:-1]), self.latent_dim, "logits", self.data_dim,
                                encoder=self.encoder)
        self._views[output] = view
        view._views = self._views
        return view

    def invalidate(self) -> None:
        """Drop cached dtype copies, of this model and its views (call after changing the weights)."""
        for view in self._views.values():
            view._cache.clear()
        if self.encoder is not None:
            self.encoder.invalidate()

    def decode(self, z: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Decoder output (logits or probs) for z [N, K], in ``dtype`` on z's device."""
        dtype = parse_dtype(dtype)
        return self._cache.get(dtype, z.device)(z.to(dtype))

    def logits(self, z: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Per-pixel log-odds [N, D] in ``dtype`` (via clamped probs for a probs decoder)."""
        out = self.decode(z, dtype)
        if self.output == "logits":
            return out
        p = clamp_probs(out)
        return torch.log(p) - torch.log1p(-p)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor,
                       dtype: torch.dtype) -> torch.Tensor:
        dtype = parse_dtype(dtype)
        x = x.to(device=z.device, dtype=dtype)
        return bernoulli_log_likelihood(x, self.decode(z, dtype), self.output)

    def pixel_log_probs(self, x: torch.Tensor, z: torch.Tensor,
                        dtype: torch.dtype) -> torch.Tensor:
        """log p(x_bj | z_n) per pixel, [B, N, D]: the slow textbook path."""
        dtype = parse_dtype(dtype)
        x = x.to(device=z.device, dtype=dtype)[:, None, :]
        out = self.decode(z, dtype)[None]
        if self.output == "logits":
            return x * out - nn.functional.softplus(out)
        p = clamp_probs(out)
        return x * torch.log(p) + (1 - x) * torch.log1p(-p)

    def pixel_probs(self, x: torch.Tensor, z: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """p(x_bj | z_n) per pixel, [B, N, D], in ``dtype``: what Approach 1 multiplies."""
        dtype = parse_dtype(dtype)
        x = x.to(device=z.device, dtype=dtype)[:, None, :]
        out = self.decode(z, dtype)[None]
        p = torch.sigmoid(out) if self.output == "logits" else out
        return torch.where(x > 0.5, p, 1 - p)

    def sample_x(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n binary images drawn from the model (float32 0/1, [n, D])."""
        z = self.sample_prior(n, generator)
        p = torch.sigmoid(self.logits(z, torch.float64))
        return torch.bernoulli(p, generator=generator).to(torch.float32)


def seed_decoder(latent_dim: int = 2, hidden: int = 128, layers: int = 2,
                 output: str = "probs", data_dim: int = 784, seed: int = 0) -> nn.Sequential:
    """The textbook decoders, seeded.

    Defaults give the "part 2" network Linear(K,128)-ELU-Linear(128,128)-ELU-
    Linear(128,784)-Sigmoid; ``hidden=512, layers=3, output="logits"`` gives
    the larger "part 4" network. ``layers`` counts hidden layers.
    """
    if output not in PARAMETRIZATIONS:
        raise InputError(f"output={output!r} is not supported; accepted: {', '.join(PARAMETRIZATIONS)}")
    if layers < 1 or hidden < 1 or latent_dim < 1:
        raise InputError(f"latent_dim={latent_dim}, hidden={hidden}, layers={layers}: "
                         "accepted: positive integers")
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        mods: list[nn.Module] = []
        width = latent_dim
        for _ in range(layers):
            mods += [nn.Linear(width, hidden), nn.ELU()]
            width = hidden
        mods.append(nn.Linear(width, data_dim))
        if output == "probs":
            mods.append(nn.Sigmoid())
        return nn.Sequential(*mods)
    finally:
        torch.random.set_rng_state(gen_state)


def architecture(latent_dim: int, hidden: int, layers: int, output: str,
                 data_dim: int = 784) -> dict[str, Any]:
    """A BernoulliLVM's seed_decoder architecture, as stored in checkpoint metadata and checked on load."""
    return {"latent_dim": latent_dim, "hidden": hidden, "layers": layers, "output": output,
            "activation": "ELU", "data_dim": data_dim}


def build(arch: dict[str, Any], seed: int = 0, encoder_arch: dict[str, Any] | None = None) -> BernoulliLVM:
    """A freshly initialised BernoulliLVM of this architecture (``seed_decoder(..., seed=seed)``),
    with an encoder ``build_encoder(encoder_arch, seed)`` when ``encoder_arch`` is given."""
    dec = seed_decoder(arch["latent_dim"], hidden=arch["hidden"], layers=arch["layers"],
                       output=arch["output"], data_dim=arch.get("data_dim", 784), seed=seed)
    enc = None if encoder_arch is None else build_encoder(encoder_arch, seed=seed)
    return BernoulliLVM(dec, arch["latent_dim"], arch["output"], arch.get("data_dim", 784), encoder=enc)


class LinearGaussianLVM:
    """x | z ~ N(W z + b, sigma^2 I): log p(x) is known exactly, at any K.

    With small sigma its p(x|z) underflows float32 like the Bernoulli model,
    so every estimator can be checked against an exact answer.
    """

    def __init__(self, W: torch.Tensor, b: torch.Tensor, sigma: float):
        W = torch.as_tensor(W, dtype=torch.float64)
        b = torch.as_tensor(b, dtype=torch.float64)
        if W.dim() != 2 or b.shape != (W.shape[0],):
            raise InputError(f"W has shape {tuple(W.shape)} and b {tuple(b.shape)}; "
                             "accepted: W [D, K] and b [D]")
        if not sigma > 0:
            raise InputError(f"sigma={sigma!r}; accepted: a positive number")
        self.W, self.b, self.sigma = W, b, float(sigma)
        self.data_dim, self.latent_dim = W.shape

    @classmethod
    def random(cls, data_dim: int = 784, latent_dim: int = 2, sigma: float = 0.5,
               scale: float = 1.0, seed: int = 0) -> LinearGaussianLVM:
        """A seeded instance: W ~ N(0, scale^2 / D), b ~ N(0, 1)."""
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(data_dim, latent_dim, generator=g, dtype=torch.float64)
        b = torch.randn(data_dim, generator=g, dtype=torch.float64)
        return cls(W * scale / math.sqrt(data_dim), b, sigma)

    def sample_prior(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(n, self.latent_dim, generator=generator, dtype=torch.float64)

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        return std_normal_log_prob(z)

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"linear-gaussian|{self.sigma!r}".encode())
        for t in (self.W, self.b):
            h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()

    def sample_x(self, n: int, generator: torch.Generator) -> torch.Tensor:
        z = self.sample_prior(n, generator)
        noise = torch.randn(n, self.data_dim, generator=generator, dtype=torch.float64)
        return z @ self.W.T + self.b + self.sigma * noise

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor,
                       dtype: torch.dtype) -> torch.Tensor:
        dtype = parse_dtype(dtype)
        W, b = self.W.to(z.device, dtype), self.b.to(z.device, dtype)
        x = x.to(z.device, dtype)
        mu = z.to(dtype) @ W.T + b
        sq = ((x[:, None, :] - mu[None]) ** 2).sum(-1)
        var = torch.tensor(self.sigma**2, dtype=dtype, device=z.device)
        const = -0.5 * self.data_dim * torch.log(2 * math.pi * var)
        return const - sq / (2 * var)

    def pixel_probs(self, x: torch.Tensor, z: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Per-pixel densities N(x_j; mu_j, sigma^2), [B, N, D] in ``dtype``."""
        dtype = parse_dtype(dtype)
        W, b = self.W.to(z.device, dtype), self.b.to(z.device, dtype)
        mu = (z.to(dtype) @ W.T + b)[None]
        d = (x.to(z.device, dtype)[:, None, :] - mu) / self.sigma
        return torch.exp(-0.5 * d * d) / (self.sigma * math.sqrt(2 * math.pi))

    def exact_log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        """log N(x; b, W W^T + sigma^2 I) in float64, via Woodbury (O(D K^2))."""
        x = torch.as_tensor(x, dtype=torch.float64)
        if x.dim() == 1:
            x = x[None]
        s2 = self.sigma**2
        r = x - self.b
        M = s2 * torch.eye(self.latent_dim, dtype=torch.float64) + self.W.T @ self.W
        L = torch.linalg.cholesky(M)
        logdet = (self.data_dim - self.latent_dim) * math.log(s2) + 2 * torch.log(torch.diagonal(L)).sum()
        Wr = r @ self.W  # [B, K]
        sol = torch.cholesky_solve(Wr.T, L).T
        quad = ((r * r).sum(-1) - (Wr * sol).sum(-1)) / s2
        return -0.5 * (self.data_dim * math.log(2 * math.pi) + logdet + quad)
