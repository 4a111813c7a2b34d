"""Floating-point facts and a streaming, mergeable logsumexp.

Everything the suite says about "underflow" rests on the numbers here: the
smallest subnormal of each dtype (below it, exp(log p) is exactly 0) and the
unit roundoff (the spacing of the working arithmetic).
"""

from __future__ import annotations

import math
import reprlib
from dataclasses import dataclass

import numpy as np
import torch

from .axes import DTYPES
from .errors import InputError


def parse_dtype(dtype: str | torch.dtype, *, argument: str = "dtype") -> torch.dtype:
    """Map a dtype name (or torch dtype) to a torch dtype, with a clear error."""
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPES.values():
            return dtype
    elif isinstance(dtype, str):
        key = dtype.removeprefix("torch.")
        if key in DTYPES:
            return DTYPES[key]
    raise InputError(f"{argument}={dtype!r} is not supported; accepted: {', '.join(DTYPES)}")


def as_tensor(value: object, argument: str) -> torch.Tensor:
    """``value`` as a tensor (a tensor as it is; a list, tuple or numpy array of numbers converted
    by ``torch.as_tensor``); InputError naming the argument and its type otherwise."""
    if isinstance(value, torch.Tensor):
        return value
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as e:
        raise InputError(f"{argument}={reprlib.repr(value)} (a {type(value).__name__}) is invalid; "
                         "accepted: a tensor or array-like of numbers") from e


def _reduction_input(a: object, dim: object) -> tuple[torch.Tensor, int]:
    """``a`` as a tensor of at least one dimension (a 0-d input is a one-term sum, as in scipy)
    and ``dim`` checked against it: out of range is an InputError, never wrapped."""
    a = as_tensor(a, "a")
    if a.dim() == 0:
        a = a.reshape(1)
    n = a.dim()
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or not -n <= dim < n:
        raise InputError(f"dim={dim!r} is invalid for a {n}-d input; "
                         f"accepted: an integer from {-n} to {n - 1}")
    return a, int(dim) % n


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class DtypeFacts:
    """Range and precision of one floating-point format, in natural-log units."""

    name: str
    unit_roundoff: float
    log_max: float
    log_min_normal: float
    log_min_subnormal: float

    @property
    def underflow_threshold(self) -> float:
        """log p below which p rounds to 0 (give or take half a subnormal)."""
        return self.log_min_subnormal


def dtype_facts(dtype: str | torch.dtype) -> DtypeFacts:
    """Unit roundoff and log of the largest, smallest normal and smallest subnormal."""
    dt = parse_dtype(dtype)
    fi = torch.finfo(dt)
    return DtypeFacts(
        name=dtype_name(dt),
        unit_roundoff=fi.eps / 2,
        log_max=math.log(fi.max),
        log_min_normal=math.log(fi.tiny),
        log_min_subnormal=math.log(fi.tiny * fi.eps),
    )


class Scratch:
    """One contiguous buffer kept from chunk to chunk: a chunk-sized temporary freed and
    allocated again costs the allocator fresh pages. ``like(t)`` is a view shaped as ``t``
    (contiguous ``t``), valid until the next call."""

    def __init__(self, dtype: torch.dtype, device: torch.device | str = "cpu"):
        self.buf = torch.empty(0, dtype=dtype, device=device)

    def like(self, t: torch.Tensor) -> torch.Tensor:
        if self.buf.numel() < t.numel():
            self.buf = torch.empty(t.numel(), dtype=self.buf.dtype, device=t.device)
        return self.buf[:t.numel()].view(t.shape)


class LogSumExpState:
    """Running logsumexp over a stream of chunks, mergeable across streams.

    Keeps the running maximum ``m`` and ``s = sum_{i != argmax} exp(a_i - m)``
    so the result is ``m + log1p(s)``: the form of Blanchard, Higham and Higham
    (IMA J. Numer. Anal. 2021) that stays accurate when one term dominates.
    The sum is held in ``accumulate_dtype`` (default: the input dtype), so a
    float16 stream of 65,536 equal terms overflows exactly as float16 would.
    """

    def __init__(self, shape: tuple[int, ...], *, dtype: torch.dtype,
                 device: torch.device | str = "cpu"):
        self.dtype = dtype
        self.m = torch.full(shape, -math.inf, dtype=dtype, device=device)
        self.s = torch.zeros(shape, dtype=dtype, device=device)
        self.posinf = torch.zeros(shape, dtype=torch.bool, device=device)
        self.nan = torch.zeros(shape, dtype=torch.bool, device=device)
        self._work = Scratch(dtype, device)

    def update(self, a: torch.Tensor, dim: int = -1) -> LogSumExpState:
        """Fold a chunk in, reducing over ``dim`` (a 0-d chunk is one term, as in :func:`logsumexp`).

        NaN and +inf terms are flagged and then left out as -inf. The row maxima tell whether
        a chunk has any (``max`` returns a row's NaN if it has one, else its +inf), so a chunk
        without them skips that screening, which would leave every term as it is: both paths
        give the same bits. The exponentials are formed in place in one buffer (:class:`Scratch`
        for a contiguous chunk, so in the chunk's layout as before), then made contiguous as an
        out-of-place ``scatter`` left them: the layout fixes the order of the sum.
        """
        a, dim = _reduction_input(a, dim)
        a = a.to(self.dtype)
        if a.shape[dim] == 0:
            return self
        m_c, idx = a.max(dim, keepdim=True)
        if not bool((m_c < math.inf).all()):  # a NaN or +inf somewhere: flag, screen, reduce again
            self.nan |= torch.isnan(a).any(dim)
            self.posinf |= (a == math.inf).any(dim)
            a = torch.where(torch.isnan(a) | (a == math.inf), -math.inf, a)
            m_c, idx = a.max(dim, keepdim=True)
        safe = torch.where(torch.isfinite(m_c), m_c, torch.zeros_like(m_c))
        e = torch.sub(a, safe, out=self._work.like(a)) if a.is_contiguous() else torch.sub(a, safe)
        e = e.exp_().contiguous()
        e.scatter_(dim, idx, torch.zeros_like(m_c))  # the max term itself is the "1"
        s_c = e.sum(dim)
        self._merge(m_c.squeeze(dim), torch.where(torch.isfinite(m_c.squeeze(dim)), s_c, 0))
        return self

    def fold(self, m: torch.Tensor, s: torch.Tensor, nan: torch.Tensor, posinf: torch.Tensor) -> None:
        """Fold in a chunk already reduced to its row maxima ``m``, shifted sums ``s`` and NaN /
        +inf flags (the compiled engine's step, :func:`lvm.engine.lse_step`)."""
        self.nan |= nan
        self.posinf |= posinf
        self._merge(m, s)

    def merge(self, other: LogSumExpState) -> LogSumExpState:
        """Combine with another state (e.g. from another worker or chunk range)."""
        self.nan |= other.nan
        self.posinf |= other.posinf
        self._merge(other.m.to(self.dtype), other.s.to(self.dtype))
        return self

    def _merge(self, m2: torch.Tensor, s2: torch.Tensor) -> None:
        m1, s1 = self.m, self.s
        new_m = torch.maximum(m1, m2)
        empty = new_m == -math.inf
        safe = torch.where(empty, torch.zeros_like(new_m), new_m)
        # The smaller side contributes (1 + s) * exp(m_small - m_big); the bigger keeps s.
        first_big = m1 >= m2
        small_m = torch.where(first_big, m2, m1)
        small_s = torch.where(first_big, s2, s1)
        big_s = torch.where(first_big, s1, s2)
        small_has = small_m > -math.inf
        add = torch.where(small_has, (1 + small_s) * torch.exp(small_m - safe), 0)
        self.s = torch.where(empty, torch.zeros_like(s1), big_s + add)
        self.m = new_m

    def result(self) -> torch.Tensor:
        """log of the sum so far; -inf if empty or all -inf, +inf / NaN as scipy does."""
        out = self.m + torch.log1p(self.s)
        out = torch.where(self.m == -math.inf, -math.inf, out)
        out = torch.where(self.posinf, math.inf, out)
        return torch.where(self.nan, math.nan, out)


def logsumexp(a: torch.Tensor | list | tuple, dim: int = -1, *,
              accumulate_dtype: torch.dtype | None = None) -> torch.Tensor:
    """log(sum(exp(a))) along ``dim`` with scipy.special.logsumexp's special values.

    Empty -> -inf, all -inf -> -inf, any +inf -> +inf, any NaN -> NaN. With
    ``accumulate_dtype`` the exponentials and their sum are formed in that dtype
    (the remedy for float16 overflow past 65,504); the result is returned in it.
    ``a`` may be a list, tuple or numpy array; bool and integer input is promoted
    to torch's default float dtype, as torch.logsumexp does.
    """
    a, dim = _reduction_input(a, dim)
    if a.is_complex():
        raise InputError(f"a has dtype {dtype_name(a.dtype)}; accepted: real numbers")
    acc = accumulate_dtype or (a.dtype if a.is_floating_point() else torch.get_default_dtype())
    shape = tuple(s for i, s in enumerate(a.shape) if i != dim)
    state = LogSumExpState(shape, dtype=acc, device=a.device)
    return state.update(a, dim).result()
