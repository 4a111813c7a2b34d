"""The streaming reductions of the estimators, and the Estimate they produce.

A kernel (:mod:`lvm.kernels`) feeds chunks of terms, [B, c] each, to one of these and asks
for the :class:`Estimate` at the end:

- :class:`LogSum`: log_space's reduction, a streamed logsumexp
  (:class:`lvm.numerics.LogSumExpState`) in the accumulation dtype, plus diagnostics;
- :class:`ProbSum`: prob_space's reduction, a running sum of probabilities in the working dtype;
- :class:`Diagnostics`: zero / non-finite term counts and the ESS of the weights, streamed.

``log_space`` and ``prob_space`` use one reduction each; the shared pass of
:func:`lvm.kernels.shared` feeds many from the same terms, which is why its results are
bit-identical to the estimators called alone.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch

from .engine import step
from .numerics import LogSumExpState, Scratch, dtype_name


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


@functools.cache
def zero_cutoff(dtype: torch.dtype, device: torch.device) -> float:
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


class Diagnostics:
    """Zero / non-finite term counts and the ESS of the weights, in one float64 pass.

    ESS = (sum w)^2 / sum w^2, streamed as a running max m and the sums of
    exp(lw - m) and exp(2 (lw - m)): the same shift serves both sums.
    """

    def __init__(self, B: int, device, dtype: torch.dtype = torch.float64, engine: str = "eager"):
        self.engine = engine
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
        if self.engine == "compiled":
            self._fold(*step("diag")(terms, log_w, zero_cutoff(log_w.dtype, log_w.device), self.dtype))
            return
        n = log_w.shape[-1]
        if terms is None:  # exp(lw) == 0 exactly when lw <= the dtype's cutoff: one compare, no exp
            cutoff = zero_cutoff(log_w.dtype, log_w.device)
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

    def _fold(self, zero, nonfinite, top, s1, s2) -> None:
        """Fold in one chunk's step (:func:`lvm.engine.diag_step`): its sums are relative to its own
        maximum ``top``, rescaled here to the running one."""
        self.zero += zero
        self.nonfinite += nonfinite
        m = torch.maximum(top, self.m)
        shift = torch.where(m == -math.inf, 0.0, m)
        old, new = torch.exp(self.m - shift), torch.exp(top - shift)
        self.s1 = self.s1 * old + s1 * new
        self.s2 = self.s2 * old * old + s2 * new * new
        self.m = m

    def ess(self) -> torch.Tensor:
        return torch.nan_to_num(self.s1 * self.s1 / self.s2, nan=0.0).to(torch.float64).cpu()


def diag_dtype(dt: torch.dtype) -> torch.dtype:
    """ESS bookkeeping precision: float64 for float64 runs, float32 otherwise (a diagnostic)."""
    return torch.float64 if dt == torch.float64 else torch.float32


class LogSum:
    """log_space's reduction: a streamed logsumexp of log-term chunks, plus diagnostics.
    ``acc=None``: in the dtype the terms arrive in (what torch.autocast left them in)."""

    def __init__(self, B: int, dt: torch.dtype, acc: torch.dtype | None, dev: torch.device,
                 diag: Diagnostics | None = None, engine: str = "eager"):
        self.dt, self.acc, self.shape, self.engine = dt, acc, ((B,), dev), engine
        self.state = None if acc is None else LogSumExpState((B,), dtype=acc, device=dev)
        # the diagnostics depend on the log terms only: sums of the same terms may share them
        self.own_diag = diag is None
        self.diag = Diagnostics(B, dev, diag_dtype(dt), engine) if diag is None else diag

    def add(self, ll: torch.Tensor) -> None:
        if self.state is None:
            self.acc = ll.dtype
            self.state = LogSumExpState(self.shape[0], dtype=ll.dtype, device=self.shape[1])
        if self.engine == "compiled":
            self.state.fold(*step("lse")(ll.to(self.acc)))
        else:
            self.state.update(ll)
        if self.own_diag:
            self.diag.add(None, ll)

    def result(self, n: int, seed: int) -> Estimate:
        log_px = self.state.result().to(torch.float64).cpu() - math.log(n)
        return Estimate("log_space", dtype_name(self.dt), n, log_px, self.diag.zero.cpu(),
                        self.diag.nonfinite.cpu(), self.diag.ess(),
                        {"accumulate_dtype": dtype_name(self.acc), "seed": seed})


class ProbSum:
    """prob_space's reduction: a running sum of probability-term chunks in the working dtype."""

    def __init__(self, B: int, dt: torch.dtype, dev: torch.device, form: str, *, as_given: bool = False,
                 engine: str = "eager"):
        """``as_given``: sum in the dtype the terms arrive in (what torch.autocast left them in)."""
        self.dt, self.form = dt, form
        self.total = None if as_given else torch.zeros(B, dtype=dt, device=dev)
        self.diag = Diagnostics(B, dev, diag_dtype(dt), engine)

    def add(self, terms: torch.Tensor) -> None:
        if self.total is None:
            self.total = torch.zeros(len(terms), dtype=terms.dtype, device=terms.device)
        self.total += terms.sum(-1)
        self.diag.add(terms, torch.log(terms.to(diag_dtype(self.dt))))

    def result(self, n: int, seed: int) -> Estimate:
        log_px = torch.log(self.total / n).to(torch.float64).cpu()
        return Estimate("prob_space", dtype_name(self.dt), n, log_px, self.diag.zero.cpu(),
                        self.diag.nonfinite.cpu(), self.diag.ess(), {"form": self.form, "seed": seed})
