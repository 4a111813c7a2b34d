"""The training objectives: per-datapoint losses in nats of a decoder, or of a decoder and encoder.

Two objectives sample z from the prior N(0, I_K), never from an encoder:

``"prior-iwae"`` ("Approach 3")
    loss_b = -(logsumexp_i log p(x_b|z_i) - log N): minus the log-space
    estimate of log p(x_b) with N prior samples (a lower bound that tightens
    as N grows).
``"jensen"`` ("Approach 2")
    loss_b = -(1/N) sum_i log p(x_b|z_i): Jensen's lower bound on the same
    quantity. Its optimum ignores z and decodes the mean image (~208 nats).

Two train a :class:`~lvm.encoder.GaussianEncoder` q(z|x) jointly with the decoder, z
reparameterised as z = mean(x) + std(x) * eps, eps ~ N(0, I), drawn per datapoint, with
log w = log p(x|z) + log p(z) - log q(z|x):

``"vae"`` (Kingma and Welling 2014)
    loss_b = -(1/k) sum_i log w_bi: minus the ELBO (k = 1 in the zoo).
``"iwae"`` (Burda, Grosse and Salakhutdinov 2016)
    loss_b = -(logsumexp_i log w_bi - log k): minus the importance-weighted bound with k
    draws (k = 5 in the zoo, the IWAE paper's smaller setting), which tightens towards
    log p(x) as k grows.

Losses are reported in nats per datapoint, positive (= -objective). :mod:`lvm.train` minimises
them; the checkpoints record :data:`OBJECTIVE_FORMULAS`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .encoder import GaussianEncoder
from .errors import InputError
from .likelihoods import bernoulli_log_likelihood, std_normal_log_prob

PRIOR_OBJECTIVES = ("prior-iwae", "jensen")  # z from the prior; decoder only
ENCODER_OBJECTIVES = ("vae", "iwae")  # z from a jointly trained encoder q(z|x)
OBJECTIVES = PRIOR_OBJECTIVES + ENCODER_OBJECTIVES


def objective_loss(decoder: nn.Module, x: torch.Tensor, z: torch.Tensor, objective: str,
                   output: str = "logits") -> torch.Tensor:
    """Per-datapoint loss [B] in nats (positive): -(objective) for each row of x.

    z [N, K] is shared by every row (one matrix multiply), z [B, N, K] is drawn
    per row; gradients flow to the decoder's weights.
    """
    ll = bernoulli_log_likelihood(x, decoder(z), output)
    if objective == "prior-iwae":
        return -(torch.logsumexp(ll, dim=1) - math.log(ll.shape[1]))
    if objective == "jensen":
        return -ll.mean(dim=1)
    raise InputError(f"objective={objective!r} is not supported; accepted: {', '.join(PRIOR_OBJECTIVES)}")


def encoder_loss(encoder: GaussianEncoder, decoder: nn.Module, x: torch.Tensor,
                 eps: torch.Tensor, objective: str, output: str = "logits") -> torch.Tensor:
    """Per-datapoint loss [B] in nats (positive): minus the ELBO ("vae") or the IWAE bound ("iwae").

    eps [B, k, K] are standard normal draws; z = mean(x) + std(x) * eps (reparameterised, so
    gradients reach both networks) and log q(z|x) = sum_j (-eps_j^2 / 2 - log std_j) - K/2 log 2 pi.
    "vae" averages log w over the k draws (the ELBO for k = 1), "iwae" takes logsumexp - log k.
    """
    mean, log_std = encoder.params(x)
    z = mean[:, None] + torch.exp(log_std)[:, None] * eps
    log_q = (-0.5 * eps * eps - log_std[:, None]).sum(-1) - 0.5 * eps.shape[-1] * math.log(2 * math.pi)
    lw = bernoulli_log_likelihood(x, decoder(z), output) + std_normal_log_prob(z) - log_q
    if objective == "vae":
        return -lw.mean(dim=1)
    if objective == "iwae":
        return -(torch.logsumexp(lw, dim=1) - math.log(lw.shape[1]))
    raise InputError(f"objective={objective!r} is not supported; accepted: {', '.join(ENCODER_OBJECTIVES)}")


OBJECTIVE_FORMULAS = {
    "prior-iwae": "loss = -(logsumexp_i log p(x|z_i) - log N), z_i ~ N(0, I)",
    "jensen": "loss = -(1/N) sum_i log p(x|z_i), z_i ~ N(0, I)",
    "vae": "loss = -(1/k) sum_i log w_i (minus the ELBO; k = 1 in the zoo), log w_i = log p(x|z_i) + "
           "log p(z_i) - log q(z_i|x), z_i = mean(x) + std(x) * eps_i, eps_i ~ N(0, I) per datapoint",
    "iwae": "loss = -(logsumexp_i log w_i - log k) (minus the importance-weighted bound), log w_i = "
            "log p(x|z_i) + log p(z_i) - log q(z_i|x), z_i = mean(x) + std(x) * eps_i, eps_i ~ N(0, I), "
            "k draws per datapoint",
}


def loss(model, x: torch.Tensor, z: torch.Tensor, objective: str) -> torch.Tensor:
    """Per-datapoint loss [B] of a BernoulliLVM by ``objective``: z is prior z or, for the encoder
    objectives, the eps of the reparameterisation."""
    if objective in ENCODER_OBJECTIVES:
        return encoder_loss(model.encoder, model.decoder, x, z, objective, model.output)
    return objective_loss(model.decoder, x, z, objective, model.output)
