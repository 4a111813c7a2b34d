"""`lvm-bench diagnose` in useful time (issue 12, item 5): one model, 32 digits, every dtype x
estimator x precision policy, N = 1,000, quadrature ground truth, from a cold cache, on the
machine's cores. Target: ``TARGET_S`` on 2 CPU cores for the 3 x 512 decoder.

Run with ``tox -e bench`` or ``pytest benchmarks/bench_diagnose.py --benchmark-only``.
"""

from __future__ import annotations

import os

import pytest

from bench.diagnose import diagnose

TARGET_S = 60.0
MODEL = "prior-iwae-k2"  # the 3 x 512 ELU logits decoder, shipped: no training in the timing


@pytest.mark.benchmark(group="diagnose")
def test_diagnose_3x512_32_digits_cold_cache(benchmark, tmp_path):
    threads = min(2, os.cpu_count() or 1)
    result = benchmark.pedantic(lambda: diagnose(MODEL, n_data=32, cache_dir=str(tmp_path), threads=threads),
                                rounds=1, iterations=1)
    seconds = benchmark.stats.stats.max
    rec = result.recommendation
    benchmark.extra_info.update({"seconds": seconds, "threads": threads, "rows": len(result.rows),
                                 "recommendation": rec.setting if rec else None})
    print(f"\ndiagnose {MODEL}, 32 digits, {len(result.rows)} settings, {threads} threads, cold cache: "
          f"{seconds:.1f} s (target {TARGET_S:.0f} s)")
    assert seconds <= TARGET_S
