"""The two Monte Carlo estimators of log p(x) = log E_{z~q} [p(x|z) p(z)/q(z)].

prob_space (the textbook "Approach 1"):
    p_hat = (1/N) sum_i p(x|z_i),  p(x|z_i) = prod_j p(x_j|z_i),  log_px = log p_hat
    every step in the working dtype; it underflows to -inf once every term is
    below the dtype's smallest subnormal.
log_space:
    log_px = logsumexp_i log p(x|z_i) - log N
    stable, but biased low for finite N (Jensen): E[log p_hat] <= log p(x).

Draws z are float64 from a seeded stream (:mod:`lvm.draws`), made in fixed blocks so the
chunk size never changes them, then cast to the working dtype. Replaying the same seed at
float64 separates rounding error from Monte Carlo error.

These are the public functions: each validates its arguments
(:func:`lvm.protocol.check_inputs`), chooses the chunk, and runs its kernel
(:mod:`lvm.kernels`), which only computes.
"""

from __future__ import annotations

import torch

from . import kernels
from .engine import require
from .errors import InputError
from .numerics import parse_dtype
from .protocol import check_inputs
from .reductions import Estimate

FORMS = ("product", "exp")


@torch.no_grad()
def log_space(model, x: torch.Tensor, n_samples: int, *, dtype: str | torch.dtype,
              device: str | torch.device = "cpu", seed: int = 0, chunk_size: int | None = None,
              accumulate_dtype: str | torch.dtype | None = None, proposal=None,
              engine: str = "eager") -> Estimate:
    """logsumexp_i log p(x|z_i) - log N, streamed over chunks of samples.

    ``proposal``: None (z from the prior) or an object with ``sample(n, generator)`` and
    ``log_prob(z)`` (such as ``model.proposal(x)``): then each term is weighed by
    log p(z) - log q(z|x). ``engine``: "eager", or "compiled" to run the chunk work under
    torch.compile (:mod:`lvm.engine`; :class:`lvm.engine.EngineUnavailable` where it cannot).
    """
    x, n, dt, dev = check_inputs(model, x, n_samples, dtype, device, chunk_size, seed)
    engine = require(engine, dev)
    acc = parse_dtype(accumulate_dtype, argument="accumulate_dtype") if accumulate_dtype else dt
    chunk = chunk_size or kernels.default_chunk(None, proposal, len(x), x.shape[1])
    return kernels.log_space(model, x, n, dt=dt, dev=dev, seed=seed, chunk=chunk, acc=acc, proposal=proposal,
                             engine=engine)


@torch.no_grad()
def prob_space(model, x: torch.Tensor, n_samples: int, *, dtype: str | torch.dtype,
               device: str | torch.device = "cpu", seed: int = 0, chunk_size: int | None = None,
               form: str = "product", proposal=None, engine: str = "eager") -> Estimate:
    """log of the sample mean of p(x|z_i), every step in the working dtype.

    ``form="product"`` multiplies the D pixel probabilities (the textbook);
    ``form="exp"`` exponentiates the summed log-likelihood instead. ``engine``: as in
    :func:`log_space`.
    """
    if form not in FORMS:
        raise InputError(f"form={form!r} is not supported; accepted: {', '.join(FORMS)}")
    x, n, dt, dev = check_inputs(model, x, n_samples, dtype, device, chunk_size, seed)
    engine = require(engine, dev)
    if form == "product" and not hasattr(model, "pixel_probs"):
        raise InputError("form='product' needs a model with pixel_probs(x, z, dtype); "
                         "accepted for this model: form='exp'")
    chunk = chunk_size or kernels.default_chunk(form, proposal, len(x), x.shape[1])
    return kernels.prob_space(model, x, n, dt=dt, dev=dev, seed=seed, chunk=chunk, form=form,
                              proposal=proposal, engine=engine)

