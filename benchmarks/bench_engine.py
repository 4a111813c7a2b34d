"""The engine axis, side by side: log_space eager against compiled (torch.compile), per dtype.

Run with ``tox -e bench`` or ``pytest benchmarks/bench_engine.py -c benchmarks/pytest.ini
--benchmark-only``. Same model, data, shapes and one-thread pin as bench_throughput.py, in one
process, so the ratios compare like with like. Compilation happens in the warm-up round, outside
the timed rounds. ``extra_info`` holds, per test, ``fraction_of_roofline`` (the roofline time of
the estimate's matrix products at this machine's rate over the median time) and, for compiled,
``speedup_vs_eager`` (eager median over compiled median, both measured here).

Targets (issue 24): log_space bfloat16 at B = 100, N = 10^4 reaches ``BF16_TARGET`` of its
roofline on a CPU with native bfloat16, and float32 at B = 1,000 reaches ``F32_TARGET``, eager
or compiled: each test records whether it meets its target, and the compiled test (run after
the eager one) asserts that one of the two does, where the target applies (bfloat16: a CPU with
avx512_bf16 or AMX; elsewhere bfloat16 is emulated).
"""

from __future__ import annotations

import pytest
import torch
from bench_throughput import ARCH, B_LARGE, B, N, model, roofline

import lvm
from bench.run.environment import isa_flags
from bench.run.timing import estimate_flop

BF16_TARGET, F32_TARGET = 0.6, 0.8
ENGINES = ("eager", "compiled")
medians: dict[tuple[str, int, str], float] = {}  # (dtype, B, engine) -> median seconds, this process


@pytest.fixture(scope="module")
def setup():
    m = model()
    return m, m.sample_x(B_LARGE, torch.Generator().manual_seed(0))


def _measure(benchmark, m, x, dtype: str, engine: str, target: float | None) -> None:
    b = len(x)
    benchmark.group = f"engine: log_space, B={b}, N={N}, {dtype}"
    benchmark.pedantic(lambda: lvm.log_space(m, x, N, dtype=dtype, seed=0, engine=engine),
                       rounds=3 if dtype == "float16" else 5, warmup_rounds=1, iterations=1)
    t = float(benchmark.stats.stats.median)
    medians[(dtype, b, engine)] = t
    frac = roofline(dtype, b) / t
    info = {"dtype": dtype, "engine": engine, "B": b, "gflops": estimate_flop(ARCH, b, N) / t / 1e9,
            "roofline_s": roofline(dtype, b), "fraction_of_roofline": frac}
    if engine == "compiled" and (dtype, b, "eager") in medians:
        info["speedup_vs_eager"] = medians[(dtype, b, "eager")] / t
    if target is not None:
        info |= {"target": target, "meets_target": frac >= target}
    benchmark.extra_info.update(info)
    print(f"\nlog_space {dtype} B={b} {engine}: {t * 1e3:.1f} ms, {100 * frac:.0f}% of the roofline")
    flags = isa_flags() or {}
    native = dtype != "bfloat16" or flags.get("avx512_bf16") or flags.get("amx_bf16")
    if target is not None and engine == "compiled" and (dtype, b, "eager") in medians and native:
        best = roofline(dtype, b) / min(t, medians[(dtype, b, "eager")])
        assert best >= target, (f"log_space {dtype} B={b}: {100 * best:.0f}% of the roofline at best (eager "
                                f"or compiled), target {100 * target:.0f}%")


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_engine_rate(benchmark, setup, dtype, engine):
    m, x = setup
    _measure(benchmark, m, x[:B], dtype, engine, BF16_TARGET if dtype == "bfloat16" else None)


@pytest.mark.parametrize("engine", ENGINES)
def test_engine_roofline_b1000(benchmark, setup, engine):
    m, x = setup
    _measure(benchmark, m, x, "float32", engine, F32_TARGET)
