"""What an estimator accepts: the model protocol and the checks of an estimator's inputs.

The estimators need only :class:`LatentVariableModel`, so users can bring their own
model. ``log_likelihood`` returns a [B, N] matrix of log p(x_b | z_n) computed in the
working dtype; the kernels check that shape on every call (:func:`check_log_likelihood`).
:func:`check_inputs` is the one validation of an estimator call's arguments, used by
``log_space``, ``prob_space`` and the dispatch of :mod:`lvm.shared` before any kernel runs.
"""

from __future__ import annotations

import reprlib
from typing import Protocol, runtime_checkable

import torch

from .errors import InputError, check_int
from .numerics import as_tensor, parse_dtype
from .runtime import check_device


@runtime_checkable
class LatentVariableModel(Protocol):
    """What an estimator needs from a model."""

    latent_dim: int

    def sample_prior(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n float64 prior draws, shape [n, latent_dim]."""
        ...

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor,
                       dtype: torch.dtype) -> torch.Tensor:
        """log p(x_b | z_n) as a [B, N] tensor computed in ``dtype``.

        Rows are datapoints, columns draws. Any other shape is an InputError
        from the estimators, except the transpose [N, B] when B == N: a shape
        cannot tell it apart, and the estimates are then silently wrong.
        """
        ...


PROTOCOL = ("latent_dim", "sample_prior", "log_likelihood")  # what LatentVariableModel asks for
MAX_LATENT_DIM = 4096  # K above this is refused: one float64 prior draw alone would be over 32 KiB


def check_model(model: object, where: str | None = None) -> LatentVariableModel:
    """``model`` if it has the :class:`LatentVariableModel` attributes and a latent_dim from 1 to
    MAX_LATENT_DIM; InputError naming it (``where``, e.g. "model 'pkg:make'") and what it lacks."""
    accepted = ("accepted: a model with latent_dim, sample_prior(n, generator) and log_likelihood(x, z, "
                "dtype) (the lvm.LatentVariableModel protocol)")
    if model is None and where is not None:
        raise InputError(f"{where}: the factory returned None; {accepted}")
    lacks = [a for a in PROTOCOL
             if not hasattr(model, a) or a != "latent_dim" and not callable(getattr(model, a))]
    if lacks:
        named = where or f"model={reprlib.repr(model)}"
        raise InputError(f"{named} (a {type(model).__name__}) lacks {', '.join(lacks)}; {accepted}")
    check_latent_dim(model.latent_dim, where or f"model={reprlib.repr(model)}")
    return model  # type: ignore[return-value]


def check_latent_dim(value: object, where: str) -> int:
    """``value`` if it is an integer latent_dim from 1 to MAX_LATENT_DIM; an InputError naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LATENT_DIM:
        raise InputError(f"{where}: latent_dim={value!r}; accepted: an integer from 1 to {MAX_LATENT_DIM}")
    return value


def check_log_likelihood(model: object, ll: object, B: int, N: int) -> torch.Tensor:
    """``ll``, what ``model.log_likelihood`` returned for B datapoints and N draws, if it is [B, N].

    A [B], [N] or [N, B] (B != N) result would broadcast into silently wrong
    estimates, so it is an InputError; an [N, B] result with B == N cannot be told apart.
    """
    if not isinstance(ll, torch.Tensor) or ll.shape != (B, N):
        got = f"shape {list(ll.shape)}" if isinstance(ll, torch.Tensor) else f"a {type(ll).__name__}"
        raise InputError(f"{type(model).__name__}.log_likelihood(x, z, dtype) returned {got} for {B} "
                         f"datapoints and {N} draws; accepted: a tensor of shape [B, N] = [{B}, {N}], "
                         "log p(x_b | z_n) with a row per datapoint")
    return ll


def check_data(x: torch.Tensor, data_dim: int, *, binary: bool = True) -> torch.Tensor:
    """Validate a data batch: shape [B, D] (or [D]), finite, and 0/1 when ``binary``."""
    x = as_tensor(x, "x")
    if x.dim() == 1:
        x = x[None]
    if x.dim() != 2 or x.shape[1] != data_dim:
        raise InputError(f"x has shape {tuple(x.shape)}; accepted: [B, {data_dim}] or [{data_dim}]")
    if x.shape[0] == 0:
        raise InputError("x has no rows; accepted: at least one datapoint")
    if binary and not x.is_complex() and bool(((x == 0) | (x == 1)).all()):
        return x  # 0/1 everywhere is finite too: one pass, no float64 copy, on the hot path
    xf = x.to(torch.float64)
    if torch.isnan(xf).any():
        raise InputError(f"x contains NaN ({int(torch.isnan(xf).sum())} values); accepted: finite values")
    if torch.isinf(xf).any():
        raise InputError(f"x contains infinity ({int(torch.isinf(xf).sum())} values); "
                         "accepted: finite values")
    if binary and not ((xf == 0) | (xf == 1)).all():
        bad = xf[(xf != 0) & (xf != 1)][:3].tolist()
        raise InputError(f"x is not binary (values such as {bad}); accepted: 0 and 1 only")
    return x


def check_inputs(model, x, n_samples, dtype, device, chunk_size=None, seed=0):
    """An estimator call's arguments checked: (x on the device, N, the dtype, the device).

    The model against the protocol, the dtype and device, N >= 1, ``chunk_size`` (None or
    >= 1), the seed (>= 0), and x against the model's ``data_dim`` (binary for a model with a
    ``decoder``) where it has one. Every failure is an InputError naming the argument.
    """
    check_model(model)
    dt = parse_dtype(dtype)
    dev = check_device(device)
    n = check_int("n_samples", n_samples, minimum=1)
    check_int("chunk_size", chunk_size, minimum=1, none=True)
    data_dim = getattr(model, "data_dim", None)
    x = as_tensor(x, "x") if data_dim is None else check_data(x, data_dim, binary=hasattr(model, "decoder"))
    check_int("seed", seed)
    return x.to(dev), n, dt, dev
