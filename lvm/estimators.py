"""The two Monte Carlo estimators of log p(x) = log E_{z~q} [p(x|z) p(z)/q(z)].

prob_space (the textbook "Approach 1"):
    p_hat = (1/N) sum_i p(x|z_i),  p(x|z_i) = prod_j p(x_j|z_i),  log_px = log p_hat
    every step in the working dtype; it underflows to -inf once every term is
    below the dtype's smallest subnormal.
log_space:
    log_px = logsumexp_i log p(x|z_i) - log N
    stable, but biased low for finite N (Jensen): E[log p_hat] <= log p(x).

Draws z are float64 from a seeded stream, made in fixed blocks so the chunk
size never changes them, then cast to the working dtype. Replaying the same
seed at float64 separates rounding error from Monte Carlo error.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from . import rng
from .errors import InputError, check_int
from .model import check_data, check_log_likelihood, check_model, std_normal_log_prob
from .numerics import LogSumExpState, Scratch, as_tensor, dtype_name, parse_dtype
from .runtime import check_device

BLOCK = 4096  # draws per seeded block: fixed, so results never depend on chunk_size
CHUNK = 2048  # draws per chunk of the streamed estimators (prior proposal)
PROPOSAL_CHUNK = 256  # ... with a proposal: B x chunk draws, each digit its own decoder pass
FORMS = ("product", "exp")


@dataclass
class Estimate:
    """Per-datapoint estimates of log p(x) and what happened on the way."""

    estimator: str
    dtype: str
    n_samples: int
    log_px: torch.Tensor  # float64 [B]; -inf where the estimate underflowed
    n_zero_terms: torch.Tensor  # int64 [B]: terms p(x|z_i) that were exactly 0 in dtype
    n_nonfinite_terms: torch.Tensor  # int64 [B]: NaN or +inf terms
    ess: torch.Tensor  # float64 [B]: (sum w)^2 / sum w^2 of the weights, from float64 logs
    meta: dict = field(default_factory=dict)

    @property
    def underflowed(self) -> torch.Tensor:
        return self.log_px == -math.inf

    @property
    def nonfinite(self) -> torch.Tensor:
        return torch.isnan(self.log_px) | (self.log_px == math.inf)

    @property
    def term_underflow_rate(self) -> float:
        return float(self.n_zero_terms.sum()) / (self.n_samples * len(self.log_px))


class Draws:
    """Seeded float64 draws from the prior (or a proposal), in fixed blocks.

    ``chunks(c)`` yields (z, log_correction): z [c, K] from the prior, or
    [B, c, K] from a proposal with log p(z) - log q(z|x) [B, c] in float64.
    """

    def __init__(self, model, n: int, seed: int, proposal=None):
        self.model, self.n, self.seed, self.proposal = model, n, check_int("seed", seed), proposal
        self._cache: tuple[int, torch.Tensor, torch.Tensor | None] | None = None

    def _block(self, b: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self._cache is not None and self._cache[0] == b:
            return self._cache[1], self._cache[2]
        size = min(BLOCK, self.n - b * BLOCK)
        g = rng.generator(self.seed, b)  # block b of this seed's stream
        if self.proposal is None:
            z, corr = self.model.sample_prior(size, g), None
        else:
            z = self.proposal.sample(size, g)
            log_prior = getattr(self.model, "log_prior", std_normal_log_prob)
            corr = log_prior(z) - self.proposal.log_prob(z)
        self._cache = (b, z, corr)
        return z, corr

    def take(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        zs, cs = [], []
        for b in range(start // BLOCK, (stop - 1) // BLOCK + 1):
            z, c = self._block(b)
            lo, hi = max(start - b * BLOCK, 0), min(stop - b * BLOCK, BLOCK)
            zs.append(z[..., lo:hi, :])
            cs.append(None if c is None else c[..., lo:hi])
        z = torch.cat(zs, dim=-2)
        return z, (None if cs[0] is None else torch.cat(cs, dim=-1))

    def chunks(self, chunk_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        for start in range(0, self.n, chunk_size):
            yield self.take(start, min(start + chunk_size, self.n))


def draw(model, n_samples: int, *, seed: int = 0, proposal=None) -> torch.Tensor:
    """The exact float64 draws an estimator with this seed uses (for replays)."""
    return Draws(model, n_samples, seed, proposal).take(0, n_samples)[0]


def _validate(model, x, n_samples, dtype, device, chunk_size):
    check_model(model)
    dt = parse_dtype(dtype)
    dev = check_device(device)
    n = check_int("n_samples", n_samples, minimum=1)
    check_int("chunk_size", chunk_size, minimum=1, none=True)
    data_dim = getattr(model, "data_dim", None)
    x = as_tensor(x, "x") if data_dim is None else check_data(x, data_dim, binary=hasattr(model, "decoder"))
    return x.to(dev), n, dt, dev


def _log_terms(model, x, z, corr, dtype, device) -> torch.Tensor:
    """log p(x_b|z) (+ log p(z) - log q(z|x_b)) as [B, c] in dtype, its shape checked."""
    if corr is None:
        return check_log_likelihood(model, model.log_likelihood(x, z.to(device), dtype), len(x), len(z))
    c = z.shape[1]
    rows = [check_log_likelihood(model, model.log_likelihood(x[b:b + 1], z[b].to(device), dtype), 1, c)[0]
            for b in range(len(x))]
    return torch.stack(rows) + corr.to(device=device, dtype=dtype)


def _prob_terms(model, x, z, corr, dtype, device, form) -> torch.Tensor:
    """p(x_b|z) (* p(z)/q(z|x_b)) as [B, c] in dtype."""
    if form == "exp":
        return torch.exp(_log_terms(model, x, z, corr, dtype, device))
    if corr is None:
        return model.pixel_probs(x, z.to(device), dtype).prod(-1)
    rows = [model.pixel_probs(x[b:b + 1], z[b].to(device), dtype)[0].prod(-1) for b in range(len(x))]
    return torch.stack(rows) * torch.exp(corr).to(device=device, dtype=dtype)


@functools.cache
def _zero_cutoff(dtype: torch.dtype, device: torch.device) -> float:
    """The largest value of ``dtype`` whose exp, computed in ``dtype`` on ``device``, is 0."""
    fi = torch.finfo(dtype)
    lo = torch.tensor(math.log(fi.tiny * fi.eps) - 2, dtype=dtype, device=device)  # exp(lo) == 0
    hi = torch.tensor(math.log(fi.tiny * fi.eps) + 1, dtype=dtype, device=device)  # exp(hi) > 0
    assert torch.exp(lo) == 0 and torch.exp(hi) > 0
    while True:
        nxt = torch.nextafter(lo, hi)
        if nxt == hi:
            return float(lo)
        mid = ((lo.double() + hi.double()) / 2).to(dtype)
        if mid in (lo, hi):
            mid = nxt
        if torch.exp(mid) == 0:
            lo = mid
        else:
            hi = mid


def _row_counts(none: torch.Tensor, every: torch.Tensor, n: int, hits) -> torch.Tensor:
    """Per row of a [B, n] chunk, how many entries ``hits()`` (a [B, n] bool tensor) marks, where
    ``none`` / ``every`` [B] say which rows are known to have no hit / only hits: when they
    settle every row, the counts follow from them without ``hits()``'s pass over the chunk."""
    if bool((none | every).all()):
        return torch.where(every, n, 0)
    return hits().sum(-1)


class _Diagnostics:
    """Zero / non-finite term counts and the ESS of the weights, in one float64 pass.

    ESS = (sum w)^2 / sum w^2, streamed as a running max m and the sums of
    exp(lw - m) and exp(2 (lw - m)): the same shift serves both sums.
    """

    def __init__(self, B: int, device, dtype: torch.dtype = torch.float64):
        self.zero = torch.zeros(B, dtype=torch.int64, device=device)
        self.nonfinite = torch.zeros(B, dtype=torch.int64, device=device)
        self.dtype = dtype
        self.m = torch.full((B,), -math.inf, dtype=dtype, device=device)
        self.s1 = torch.zeros(B, dtype=dtype, device=device)
        self.s2 = torch.zeros(B, dtype=dtype, device=device)
        self._work = Scratch(dtype, device)

    def add(self, terms: torch.Tensor | None, log_w: torch.Tensor) -> None:
        """Count zero and NaN/+inf terms; ``terms=None`` means exp(log_w) in log_w's dtype.

        Passes over the chunk that cannot change a number are skipped, on the evidence of the
        row minima and maxima (``amin`` and ``amax`` give a row's NaN if it has one, ``amax``
        else its +inf): the zero count's compare where each row has no zero term or only zero
        terms, and the NaN/+inf count and screening where no row has a NaN or +inf log weight
        (a NaN or +inf term has one, as has a finite weight that a narrowing cast overflows).
        The exponentials are formed, and squared, in one buffer (:class:`Scratch` for contiguous
        weights, so in their layout as before).
        """
        n = log_w.shape[-1]
        if terms is None:  # exp(lw) == 0 exactly when lw <= the dtype's cutoff: one compare, no exp
            cutoff = _zero_cutoff(log_w.dtype, log_w.device)
            lo, hi = log_w.amin(-1), log_w.amax(-1)
            self.zero += _row_counts(lo > cutoff, hi <= cutoff, n, lambda: log_w <= cutoff)
            terms = log_w
        else:
            lo, hi = terms.amin(-1), terms.amax(-1)
            self.zero += _row_counts(lo > 0, (lo == 0) & (hi == 0), n, lambda: terms == 0)
        lw = log_w.to(self.dtype)
        top = lw.amax(-1)
        if not bool((top < math.inf).all()):  # a NaN or +inf somewhere: count, screen, reduce again
            self.nonfinite += (torch.isnan(terms) | (terms == math.inf)).sum(-1)
            lw = torch.nan_to_num(lw, nan=-math.inf, posinf=-math.inf, neginf=-math.inf)
            top = lw.amax(-1)
        m_c = torch.maximum(top, self.m)
        shift = torch.where(m_c == -math.inf, 0.0, m_c)
        out = self._work.like(lw) if lw.is_contiguous() else None
        e = torch.sub(lw, shift[:, None], out=out).exp_()
        scale = torch.exp(self.m - shift)
        self.s1 = self.s1 * scale + e.sum(-1)
        self.s2 = self.s2 * scale * scale + e.mul_(e).sum(-1)
        self.m = m_c

    def ess(self) -> torch.Tensor:
        return torch.nan_to_num(self.s1 * self.s1 / self.s2, nan=0.0).to(torch.float64).cpu()


def _diag_dtype(dt: torch.dtype) -> torch.dtype:
    """ESS bookkeeping precision: float64 for float64 runs, float32 otherwise (a diagnostic)."""
    return torch.float64 if dt == torch.float64 else torch.float32


class _LogSum:
    """log_space's reduction: a streamed logsumexp of log-term chunks, plus diagnostics.
    ``acc=None``: in the dtype the terms arrive in (what torch.autocast left them in)."""

    def __init__(self, B: int, dt: torch.dtype, acc: torch.dtype | None, dev: torch.device,
                 diag: _Diagnostics | None = None):
        self.dt, self.acc, self.shape = dt, acc, ((B,), dev)
        self.state = None if acc is None else LogSumExpState((B,), dtype=acc, device=dev)
        # the diagnostics depend on the log terms only: sums of the same terms may share them
        self.own_diag = diag is None
        self.diag = _Diagnostics(B, dev, _diag_dtype(dt)) if diag is None else diag

    def add(self, ll: torch.Tensor) -> None:
        if self.state is None:
            self.acc = ll.dtype
            self.state = LogSumExpState(self.shape[0], dtype=ll.dtype, device=self.shape[1])
        self.state.update(ll)
        if self.own_diag:
            self.diag.add(None, ll)

    def result(self, n: int, seed: int) -> Estimate:
        log_px = self.state.result().to(torch.float64).cpu() - math.log(n)
        return Estimate("log_space", dtype_name(self.dt), n, log_px, self.diag.zero.cpu(),
                        self.diag.nonfinite.cpu(), self.diag.ess(),
                        {"accumulate_dtype": dtype_name(self.acc), "seed": seed})


class _ProbSum:
    """prob_space's reduction: a running sum of probability-term chunks in the working dtype."""

    def __init__(self, B: int, dt: torch.dtype, dev: torch.device, form: str, *, as_given: bool = False):
        """``as_given``: sum in the dtype the terms arrive in (what torch.autocast left them in)."""
        self.dt, self.form = dt, form
        self.total = None if as_given else torch.zeros(B, dtype=dt, device=dev)
        self.diag = _Diagnostics(B, dev, _diag_dtype(dt))

    def add(self, terms: torch.Tensor) -> None:
        if self.total is None:
            self.total = torch.zeros(len(terms), dtype=terms.dtype, device=terms.device)
        self.total += terms.sum(-1)
        self.diag.add(terms, torch.log(terms.to(_diag_dtype(self.dt))))

    def result(self, n: int, seed: int) -> Estimate:
        log_px = torch.log(self.total / n).to(torch.float64).cpu()
        return Estimate("prob_space", dtype_name(self.dt), n, log_px, self.diag.zero.cpu(),
                        self.diag.nonfinite.cpu(), self.diag.ess(), {"form": self.form, "seed": seed})


def _product_chunk(B: int, D: int) -> int:
    """Draws per chunk of the per-pixel product: bounds the [B, c, D] tensor at 2^22 values."""
    return max(1, 2**22 // (B * D))


@torch.no_grad()
def log_space(model, x: torch.Tensor, n_samples: int, *, dtype: str | torch.dtype,
              device: str | torch.device = "cpu", seed: int = 0, chunk_size: int | None = None,
              accumulate_dtype: str | torch.dtype | None = None, proposal=None) -> Estimate:
    """logsumexp_i log p(x|z_i) - log N, streamed over chunks of samples."""
    x, n, dt, dev = _validate(model, x, n_samples, dtype, device, chunk_size)
    acc = parse_dtype(accumulate_dtype, argument="accumulate_dtype") if accumulate_dtype else dt
    chunk = chunk_size or (CHUNK if proposal is None else PROPOSAL_CHUNK)
    out = _LogSum(len(x), dt, acc, dev)
    for z, corr in Draws(model, n, seed, proposal).chunks(chunk):
        out.add(_log_terms(model, x, z, corr, dt, dev))
    return out.result(n, seed)


@torch.no_grad()
def prob_space(model, x: torch.Tensor, n_samples: int, *, dtype: str | torch.dtype,
               device: str | torch.device = "cpu", seed: int = 0, chunk_size: int | None = None,
               form: str = "product", proposal=None) -> Estimate:
    """log of the sample mean of p(x|z_i), every step in the working dtype.

    ``form="product"`` multiplies the D pixel probabilities (the textbook);
    ``form="exp"`` exponentiates the summed log-likelihood instead.
    """
    if form not in FORMS:
        raise InputError(f"form={form!r} is not supported; accepted: {', '.join(FORMS)}")
    x, n, dt, dev = _validate(model, x, n_samples, dtype, device, chunk_size)
    if form == "product" and not hasattr(model, "pixel_probs"):
        raise InputError("form='product' needs a model with pixel_probs(x, z, dtype); "
                         "accepted for this model: form='exp'")
    B = len(x)
    chunk = chunk_size or (_product_chunk(B, x.shape[1]) if form == "product"
                           else CHUNK if proposal is None else PROPOSAL_CHUNK)
    out = _ProbSum(B, dt, dev, form)
    for z, corr in Draws(model, n, seed, proposal).chunks(chunk):
        out.add(_prob_terms(model, x, z, corr, dt, dev, form))
    return out.result(n, seed)
