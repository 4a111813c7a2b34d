"""Throughput suite: each estimator per dtype against the machine's matrix-product ceiling.

Run with ``tox -e bench`` (JSON into results/benchmarks/) or
``pytest bench/bench_throughput.py --benchmark-only``. The grid is declared as data, as
in asv: ``params`` / ``param_names``. Everything in one module runs side by side in one
process, so the ratios in ``extra_info`` (and printed) compare like with like:

- ``fraction_of_ceiling``: the estimator's FLOP rate (decoder + data product) over the
  rate of a plain matrix product [B, 784] @ [784, N] in the same dtype;
- ``speedup_vs_numpy``: a NumPy/SciPy implementation (``scipy.special.logsumexp``) over
  ``lvm.log_space``, float32.
Targets (issue 6): log_space float32 on CPU at least 50% of the ceiling at B = 1,000,
N = 10^4, K = 2 (the 50x-over-textbook target lives in bench_estimators.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special
import torch

import lvm
from bench.bench_estimators import _threads  # noqa: F401 - the same one-thread fixture
from bench.timing import estimator_flop, matmul_operands, matmul_peak_gflops, timed

params = (["float16", "bfloat16", "float32", "float64"], ["log_space", "log_space_acc32", "prob_space_exp"])
param_names = ("dtype", "estimator")
B, B_LARGE, N, K, D = 100, 1000, 10_000, 2, 784
CEILING_TARGET = 0.5
_rates: dict[tuple, float] = {}  # (what, dtype, B) -> GFLOP/s, filled as the module runs


def model() -> lvm.BernoulliLVM:
    return lvm.BernoulliLVM(lvm.seed_decoder(K, hidden=512, layers=3, output="logits"), K)


@pytest.fixture(scope="module")
def setup():
    """Seeded model and data, as asv's setup."""
    m = model()
    x = m.sample_x(B_LARGE, torch.Generator().manual_seed(0))
    return m, x


def _median(benchmark) -> float:
    return float(benchmark.stats.stats.median)


@pytest.mark.parametrize("dtype", params[0])
def test_matmul_ceiling(benchmark, dtype):
    """The plain matrix product of the data-product's shape: the machine's ceiling."""
    a, b = matmul_operands(lvm.numerics.parse_dtype(dtype), "cpu", (B, D, N))
    benchmark.group = f"ceiling: [{B}, {D}] @ [{D}, {N}]"
    benchmark.pedantic(lambda: a @ b, rounds=5, warmup_rounds=1, iterations=1)
    rate = 2 * B * D * N / _median(benchmark) / 1e9
    _rates[("matmul", dtype, B)] = rate
    benchmark.extra_info.update(dtype=dtype, gflops=rate)


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
    rate = estimator_flop(m.decoder, B, N) / t / 1e9
    info = {"dtype": dtype, "estimator": estimator, "terms_per_s": B * N / t, "gflops": rate}
    ceiling = _rates.get(("matmul", dtype, B))
    if ceiling:
        info["fraction_of_ceiling"] = rate / ceiling
    benchmark.extra_info.update(info)


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


def test_log_space_fraction_of_ceiling_b1000(benchmark, setup):
    """log_space float32 at B = 1,000, N = 10^4 against the same-shape matrix product."""
    m, x = setup
    ceiling = matmul_peak_gflops(torch.float32, "cpu", (B_LARGE, D, N), runs=6)
    benchmark.group = f"ceiling fraction: B={B_LARGE}, N={N}, float32"
    benchmark.pedantic(lambda: lvm.log_space(m, x, N, dtype="float32", seed=0),
                       rounds=5, warmup_rounds=1, iterations=1)
    rate = estimator_flop(m.decoder, B_LARGE, N) / _median(benchmark) / 1e9
    frac = rate / ceiling
    benchmark.extra_info.update(gflops=rate, ceiling_gflops=ceiling, fraction_of_ceiling=frac,
                                target=CEILING_TARGET, meets_target=frac >= CEILING_TARGET)
    print(f"\nlog_space float32 B={B_LARGE}: {rate:.1f} GFLOP/s, ceiling {ceiling:.1f} GFLOP/s: "
          f"{100 * frac:.0f}% (target {100 * CEILING_TARGET:.0f}%)")
