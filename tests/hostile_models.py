"""Outside code that misbehaves as issue 22 describes, for tests/test_hostile.py.

Import paths ``hostile_models:<name>`` (pytest puts tests/ on sys.path). The decoders and data
are D = 100, so the runs stay tiny.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

import lvm

D = 100


class Scaled(nn.Module):
    """A decoder whose forward multiplies its logits by a plain attribute: neither its repr nor
    its state dict shows the factor."""

    latent_dim, output = 2, "logits"

    def __init__(self, scale: float):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.net = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, D))
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.scale = scale

    def forward(self, z):
        return self.net(z) * self.scale


def plain():
    return Scaled(1.0)


def tripled():
    return Scaled(3.0)


class HalfDecoder(Scaled):
    """A decoder that answers in float16 whatever dtype it is given."""

    def forward(self, z):
        return self.net(z).to(torch.float16)


def half_decoder():
    return HalfDecoder(1.0)


class Protocol:
    """The LatentVariableModel protocol around a small decoder; ``answer(dtype)`` is the dtype
    its log_likelihood computes in (the one asked, for a well-behaved model)."""

    latent_dim = 2

    def __init__(self, answer=lambda dtype: dtype, data_dim: bool = True):
        self.m = lvm.BernoulliLVM(Scaled(1.0), 2, "logits", D)
        self.answer = answer
        if data_dim:
            self.data_dim = D

    def sample_prior(self, n, generator):
        return self.m.sample_prior(n, generator)

    def log_likelihood(self, x, z, dtype):
        return self.m.log_likelihood(x, z, self.answer(dtype))


def always_half():
    """log_likelihood in float16 whatever is asked."""
    return Protocol(lambda dtype: torch.float16)


def always_half_no_dim():
    """The same without data_dim: it cannot be probed when loaded, only when called."""
    return Protocol(lambda dtype: torch.float16, data_dim=False)


def float32_for_half():
    """Right in float64 and float32; float32 when float16 is asked."""
    return Protocol(lambda dtype: torch.float32 if dtype == torch.float16 else dtype)


def well_behaved():
    return Protocol()


class ZeroesX(Protocol):
    """Zeroes the data it is given, after computing."""

    def log_likelihood(self, x, z, dtype):
        out = super().log_likelihood(x, z, dtype)
        x.zero_()
        return out


def zeroes_x():
    return ZeroesX()


# ----------------------------------------------------------------------------- estimators


def mutates(model, x, n_samples, *, dtype, device="cpu", seed=0):
    """log_space, then zeroes the data it was given."""
    est = lvm.log_space(model, x, n_samples, dtype=dtype, device=device, seed=seed)
    x.zero_()
    return est


def no_float32(model, x, n_samples, *, dtype, device="cpu", seed=0):
    """log_space, except at float32."""
    if dtype in (torch.float32, "float32"):
        raise RuntimeError("no float32 here")
    return lvm.log_space(model, x, n_samples, dtype=dtype, device=device, seed=seed)


def as_bool(model, x, n_samples, *, dtype, device="cpu", seed=0):
    return torch.ones(len(x), dtype=torch.bool)


def as_int(model, x, n_samples, *, dtype, device="cpu", seed=0):
    return torch.full((len(x),), -90, dtype=torch.int64)


def int_estimate(model, x, n_samples, *, dtype, device="cpu", seed=0):
    est = lvm.log_space(model, x, n_samples, dtype=dtype, device=device, seed=seed)
    return dataclasses.replace(est, log_px=est.log_px.round().to(torch.int64))


# ----------------------------------------------------------------------------- item 12: tracebacks


class SomeZ(Protocol):
    """log p(x|z) replaced by ``value`` wherever the draw's first coordinate is above 1."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def log_likelihood(self, x, z, dtype):
        out = super().log_likelihood(x, z, dtype)
        return torch.where(z[:, 0].to(out.device) > 1, torch.full_like(out, self.value), out)


def nan_some():
    return SomeZ(float("nan"))


def inf_some():
    return SomeZ(float("inf"))


def _with_dim(value):
    model = Protocol()
    model.latent_dim = value
    return model


def dim_zero():
    return _with_dim(0)


def dim_negative():
    return _with_dim(-1)


def dim_string():
    return _with_dim("2")


def dim_huge():
    return _with_dim(10**6)


class Meta(Protocol):
    def log_likelihood(self, x, z, dtype):
        return super().log_likelihood(x, z, dtype).to("meta")


def on_meta():
    return Meta()


class Int64(Protocol):
    def log_likelihood(self, x, z, dtype):
        return super().log_likelihood(x, z, dtype).round().to(torch.int64)


def as_int64():
    return Int64()


def returns_none():
    return None
