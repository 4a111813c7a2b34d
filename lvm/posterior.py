"""Posterior approximations for the importance-sampling ground truth of :mod:`lvm.reference`.

Proposal A is a Student-t on the Laplace fit (the posterior mode found by L-BFGS from the best
of a pilot of prior draws, and the Hessian there), proposal B a Gaussian moment-matched to the
posterior by self-normalised importance sampling from A; each is a :class:`MixtureProposal`,
mixed with the prior so that its tails cover the posterior's. :func:`log_weights` gives the
float64 importance weights of a chunk of draws, through the per-digit loop of :mod:`lvm.draws`.
"""

from __future__ import annotations

import math

import torch

from .draws import BLOCK, Drawn, Draws, digit_terms
from .likelihoods import std_normal_log_prob

F64 = torch.float64


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
