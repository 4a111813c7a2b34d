"""The engines an estimator's chunk work runs on: ``eager`` PyTorch, or ``compiled``.

``eager`` is the estimators' code as it is, bit for bit. ``compiled`` runs the same work under
``torch.compile`` (inductor, static shapes): the kernel's terms function (decoder, likelihood and
weighting) as one compiled function, and each reduction's chunk step (the log-sum-exp's maximum
and shifted sum, the diagnostics' counts and ESS sums) as another, whose [B] results are folded
into the running state as eager folds them. Inductor fuses pointwise chains into one pass and may
keep their intermediates in float32, so low-precision results can differ from eager ones; in
float64 they agree to rounding.

Every compiled function is compiled once per shape and dtype (``dynamic=False``), so a cell's
numbers never depend on which cells ran before it in the process; the recompile limit is raised
so that a sweep of many shapes never falls back to eager in silence (hitting it is an error).
:func:`compile_seconds` counts the time spent in calls that compiled a graph. Where compilation
is impossible (:func:`unavailable`, or a backend error on the first call) the estimate raises
:class:`EngineUnavailable` with the reason, which the sweep records as a skipped cell.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import time
from collections.abc import Callable

import torch

from .axes import ENGINES
from .errors import InputError, one_line

RECOMPILE_LIMIT = 4096  # graphs per compiled function: shapes x dtypes x models of a sweep
_compile_s = [0.0]


class EngineUnavailable(RuntimeError):
    """The compiled engine cannot run here; the message says why."""


def check_engine(engine: object) -> str:
    """``engine`` if it is one of ENGINES; an InputError naming it otherwise."""
    if engine not in ENGINES:
        raise InputError(f"engine={engine!r}; accepted: {', '.join(ENGINES)}")
    return engine  # type: ignore[return-value]


def require(engine: object, device: str | torch.device = "cpu") -> str:
    """``engine`` checked (:func:`check_engine`); EngineUnavailable with the reason when it is
    "compiled" and cannot run on ``device`` here (:func:`unavailable`)."""
    if check_engine(engine) == "compiled" and (why := unavailable(device)):
        raise EngineUnavailable(why)
    return engine  # type: ignore[return-value]


def unavailable(device: str | torch.device = "cpu") -> str | None:
    """Why the compiled engine cannot run on ``device`` here, or None when it can."""
    kind = torch.device(device).type
    compilers = ("g++", "c++", "clang++")
    if kind == "cpu" and not (os.environ.get("CXX") or any(shutil.which(c) for c in compilers)):
        return "no C++ compiler on PATH (torch.compile's CPU backend, inductor, needs one)"
    if kind not in ("cpu", "cuda"):
        return f"torch.compile's inductor backend is not used on {kind} by this suite"
    return None


def compile_seconds() -> float:
    """Seconds spent so far, in this process, in compiled calls that compiled a new graph."""
    return _compile_s[0]


def compiled(fn: Callable) -> Callable:
    """``fn`` under torch.compile with static shapes; a backend failure is EngineUnavailable."""
    inner = torch.compile(fn, dynamic=False)

    @functools.wraps(fn)
    def call(*args):
        before = _graphs()
        start = time.perf_counter()
        try:
            limit = {"recompile_limit": RECOMPILE_LIMIT, "fail_on_recompile_limit_hit": True}
            with torch._dynamo.config.patch(limit):
                out = inner(*args)
        except Exception as e:
            if type(e).__module__.startswith(("torch._dynamo", "torch._inductor")):
                raise EngineUnavailable(f"torch.compile failed: {one_line(e)}") from e
            raise
        if _graphs() != before:
            _compile_s[0] += time.perf_counter() - start
        return out

    return call


def _graphs() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


# ----------------------------------------------------------------------------- reduction steps


def lse_step(a: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """One chunk's log-sum-exp in the Blanchard-Higham-Higham form of
    :class:`lvm.numerics.LogSumExpState`: per row the maximum m, the sum of exp(a - m) over the
    other terms, and whether a NaN or a +inf was left out; branch-free, for the compiler."""
    nan, posinf = torch.isnan(a).any(-1), (a == math.inf).any(-1)
    a = torch.where(torch.isnan(a) | (a == math.inf), -math.inf, a)
    m, idx = a.max(-1, keepdim=True)
    safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(a - safe).scatter(-1, idx, torch.zeros_like(m))
    m = m.squeeze(-1)
    return m, torch.where(torch.isfinite(m), e.sum(-1), 0), nan, posinf


def diag_step(terms: torch.Tensor | None, log_w: torch.Tensor, cutoff: float,
              dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """One chunk's diagnostics (:class:`lvm.reductions.Diagnostics`): zero and NaN/+inf term
    counts, and the row maximum of the log weights in ``dtype`` with the sums of exp(lw - max) and
    of its square. ``terms=None``: the terms are exp(log_w), zero where log_w <= ``cutoff``."""
    if terms is None:
        zero = (log_w <= cutoff).sum(-1)
        terms = log_w
    else:
        zero = (terms == 0).sum(-1)
    nonfinite = (torch.isnan(terms) | (terms == math.inf)).sum(-1)
    lw = torch.nan_to_num(log_w.to(dtype), nan=-math.inf, posinf=-math.inf, neginf=-math.inf)
    top = lw.amax(-1)
    e = torch.exp(lw - torch.where(top == -math.inf, 0.0, top)[:, None])
    return zero, nonfinite, top, e.sum(-1), (e * e).sum(-1)


@functools.cache
def step(name: str) -> Callable:
    """The compiled form of a reduction step, "lse" (:func:`lse_step`) or "diag" (:func:`diag_step`),
    made on first use: importing lvm does not import torch's compiler."""
    return compiled({"lse": lse_step, "diag": diag_step}[name])
