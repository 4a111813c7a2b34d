"""The densities every layer shares: the standard normal prior and the Bernoulli likelihood.

:func:`bernoulli_log_likelihood` is the one implementation behind the Bernoulli models'
likelihood, the shared pass of :mod:`lvm.kernels` and the training objectives;
:func:`std_normal_log_prob` is the prior's density, used wherever log p(z) is needed
(a model without ``log_prior`` falls back on it). Imports nothing from lvm.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions.utils import clamp_probs


def std_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I_K) over the last axis (K = z.shape[-1]): the prior's density."""
    return -0.5 * (z * z).sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)


def bernoulli_log_likelihood(x: torch.Tensor, out: torch.Tensor, output: str) -> torch.Tensor:
    """log p(x_b | z_n) summed over pixels, from decoder output ``out`` (logits or probs).

    ``out`` [N, D] (one set of z for every datapoint) gives [B, N] through one
    matrix multiply, never a [B, N, D] tensor; ``out`` [B, N, D] (z drawn per
    datapoint) gives [B, N] by a per-pixel sum. ``output="probs"`` clamps p to
    [eps, 1-eps] of its dtype, as torch's Bernoulli does. Computed in ``out``'s
    dtype, with gradients when ``out`` has them: the one implementation behind
    both the estimators' likelihood and the training objectives.
    """
    if output == "logits":
        if out.dim() == 2:  # in place on the product's fresh [B, N] result: one pass, no second tensor
            return (x @ out.T).sub_(nn.functional.softplus(out).sum(-1))
        return (x[:, None, :] * out - nn.functional.softplus(out)).sum(-1)
    p = clamp_probs(out)
    if out.dim() == 2:
        return x @ torch.log(p).T + (1 - x) @ torch.log1p(-p).T
    xb = x[:, None, :]
    return (xb * torch.log(p) + (1 - xb) * torch.log1p(-p)).sum(-1)
