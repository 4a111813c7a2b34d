"""Throughput suite: each estimator per dtype against the roofline of its own matrix products.

Run with ``tox -e bench`` (JSON into results/benchmarks/) or
``pytest benchmarks/bench_throughput.py --benchmark-only``. The grid is declared as data, as
in asv: ``params`` / ``param_names``. Everything in one module runs side by side in one
process, so the ratios in ``extra_info`` (and printed) compare like with like:

- ``fraction_of_roofline``: the roofline time of an estimate over the estimator's median
  time. The roofline is the estimate's FLOP (the decoder on N draws plus the data product,
  :func:`bench.run.timing.estimate_flop`) at this machine's matrix-product rate for the very
  shapes log_space multiplies: per chunk of draws each decoder layer's [chunk, in] @
  [in, out] and the data product [B, 784] @ [784, chunk], each timed alone
  (:func:`bench.run.timing.measure_roofline`). Everything else (biases, ELU, softplus, the
  logsumexp and the diagnostics) is overhead against it;
- ``speedup_vs_numpy``: a NumPy/SciPy implementation (``scipy.special.logsumexp``) over
  ``lvm.log_space``, float32.
Target (issue 11, item 6): log_space float32 on CPU at B = 1,000, N = 10^4, with the
3 x 512 logits decoder (K = 2), reaches ``ROOFLINE_TARGET`` of its roofline (the
50x-over-textbook target lives in bench_estimators.py).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import scipy.special
import torch

import lvm
from bench.run.timing import estimate_flop, measure_roofline, timed
from lvm.model import architecture, build

params = (["float16", "bfloat16", "float32", "float64"], ["log_space", "log_space_acc32", "prob_space_exp"])
param_names = ("dtype", "estimator")
B, B_LARGE, N, K = 100, 1000, 10_000, 2
ARCH = architecture(K, hidden=512, layers=3, output="logits")  # the part-4 decoder
ROOFLINE_TARGET = 0.8


def model() -> lvm.BernoulliLVM:
    return build(ARCH)  # seed_decoder(K, hidden=512, layers=3, output="logits", seed=0)


@functools.cache
def roofline(dtype: str, b: int) -> float:
    """Seconds of one estimate's matrix products at this machine's rate for their shapes
    (measured once per dtype and B in this process, under the one-thread pin)."""
    return measure_roofline(ARCH, b, N, lvm.numerics.parse_dtype(dtype), "cpu")[0]


@pytest.fixture(scope="module")
def setup():
    """Seeded model and data, as asv's setup."""
    m = model()
    x = m.sample_x(B_LARGE, torch.Generator().manual_seed(0))
    return m, x


def _median(benchmark) -> float:
    return float(benchmark.stats.stats.median)


@pytest.mark.parametrize("dtype,estimator", [(d, e) for d in params[0] for e in params[1]
                                             if not (e == "log_space_acc32" and d in ("float32", "float64"))])
def test_estimator_rate(benchmark, setup, dtype, estimator):
    m, x = setup
    xb = x[:B]
    if estimator == "prob_space_exp":
        fn = lambda: lvm.prob_space(m, xb, N, dtype=dtype, form="exp", seed=0)  # noqa: E731
    else:
        acc = "float32" if estimator == "log_space_acc32" else None
        fn = lambda: lvm.log_space(m, xb, N, dtype=dtype, accumulate_dtype=acc, seed=0)  # noqa: E731
    benchmark.group = f"estimators: B={B}, N={N}, K={K}"
    benchmark.pedantic(fn, rounds=3 if dtype == "float16" else 5, warmup_rounds=1, iterations=1)
    t = _median(benchmark)
    benchmark.extra_info.update(dtype=dtype, estimator=estimator, terms_per_s=B * N / t,
                                gflops=estimate_flop(ARCH, B, N) / t / 1e9, roofline_s=roofline(dtype, B),
                                fraction_of_roofline=roofline(dtype, B) / t)


def _numpy_decoder(m: lvm.BernoulliLVM):
    layers = [(lin.weight.detach().numpy().astype(np.float32), lin.bias.detach().numpy().astype(np.float32))
              for lin in m.decoder if isinstance(lin, torch.nn.Linear)]

    def forward(z: np.ndarray) -> np.ndarray:
        h = z
        for i, (w, b) in enumerate(layers):
            h = h @ w.T + b
            if i < len(layers) - 1:
                h = np.where(h > 0, h, np.expm1(np.minimum(h, 0)))  # ELU
        return h

    return forward


def numpy_log_space(forward, x: np.ndarray, z: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """log_space in NumPy/SciPy: the data product per chunk, then scipy.special.logsumexp."""
    ll = np.concatenate([x @ (l := forward(zc)).T - np.logaddexp(0, l).sum(-1)
                         for zc in np.array_split(z, math.ceil(len(z) / chunk))], axis=1)
    return scipy.special.logsumexp(ll, axis=1) - math.log(len(z))


def test_numpy_scipy_vs_log_space(benchmark, setup):
    m, x = setup
    xb = x[:B]
    forward = _numpy_decoder(m)
    z = lvm.draw(m, N, seed=0).numpy().astype(np.float32)
    xn = xb.numpy().astype(np.float32)
    want = lvm.log_space(m, xb, N, dtype="float32", seed=0).log_px.numpy()
    got = numpy_log_space(forward, xn, z)
    assert np.allclose(got, want, rtol=1e-4, atol=1e-3)  # same draws, same number
    benchmark.group = f"estimators: B={B}, N={N}, K={K}"
    benchmark.pedantic(lambda: numpy_log_space(forward, xn, z), rounds=3, warmup_rounds=1, iterations=1)
    t_numpy = _median(benchmark)
    t_lvm = min(timed(lambda: lvm.log_space(m, xb, N, dtype="float32", seed=0), "cpu")[1] for _ in range(5))
    benchmark.extra_info.update(numpy_seconds=t_numpy, log_space_seconds=t_lvm,
                                speedup_vs_numpy=t_numpy / t_lvm)
    print(f"\nNumPy/SciPy {t_numpy:.3f} s, lvm.log_space {t_lvm:.3f} s: {t_numpy / t_lvm:.2f}x")


def test_log_space_roofline_b1000(benchmark, setup):
    """log_space float32 at B = 1,000, N = 10^4 reaches ROOFLINE_TARGET of its roofline."""
    m, x = setup
    roof = roofline("float32", B_LARGE)
    benchmark.group = f"roofline: B={B_LARGE}, N={N}, float32"
    benchmark.pedantic(lambda: lvm.log_space(m, x, N, dtype="float32", seed=0),
                       rounds=5, warmup_rounds=1, iterations=1)
    t = _median(benchmark)
    frac = roof / t
    flop = estimate_flop(ARCH, B_LARGE, N)
    benchmark.extra_info.update(flop=flop, gflops=flop / t / 1e9, roofline_s=roof,
                                roofline_gflops=flop / roof / 1e9, fraction_of_roofline=frac,
                                target=ROOFLINE_TARGET, meets_target=frac >= ROOFLINE_TARGET)
    print(f"\nlog_space float32 B={B_LARGE}, N={N}: {t:.3f} s for {flop / 1e9:.1f} GFLOP "
          f"({flop / t / 1e9:.1f} GFLOP/s); roofline {roof:.3f} s ({flop / roof / 1e9:.1f} GFLOP/s): "
          f"{100 * frac:.0f}% (target {100 * ROOFLINE_TARGET:.0f}%)")
    assert frac >= ROOFLINE_TARGET, f"{100 * frac:.0f}% of the roofline, target {100 * ROOFLINE_TARGET:.0f}%"
