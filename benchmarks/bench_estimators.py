"""Speed and peak memory of ``lvm.log_space`` against the textbook implementation.

Not part of the test suite (pytest's testpaths is ``tests``); run it explicitly::

    pytest benchmarks/bench_estimators.py                   # everything, incl. ~4 min at N = 10^7
    pytest benchmarks/bench_estimators.py -k "not memory"   # timings only (~1.5 min)
    pytest benchmarks/bench_estimators.py --benchmark-json=bench.json

Timing: B = 100 binary images, N = 10^4 prior draws, K = 2, float32, CPU, one torch thread
(``LVM_BENCH_THREADS`` to change), for the part-4 decoder (3 x 512 ELU, logits) and the
part-2 decoder (2 x 128 ELU, Sigmoid). The textbook builds the [B, N, 784] per-pixel
``Bernoulli(probs=decoder(z)).log_prob`` tensor (chunked over N so it fits in memory),
sums it and takes ``torch.logsumexp``. The textbook benchmark records the speed-up of
log_space over it in ``extra_info`` (target: >= 50x).

Memory: log_space at N = 10^7, B = 100 with the part-2 decoder, in a fresh subprocess, measured
by :class:`bench.run.timing.PeakMemory` (peak resident memory above the level just before the call;
target: < 512 MB). tracemalloc does not see torch's allocations, hence resident memory.
Measured figures live in docs/measurements.md (Throughput and memory), not here.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import THREADS  # the suite's one thread count (benchmarks/conftest.py)

import lvm

B, N, K = 100, 10_000, 2
DTYPE = torch.float32
TEXTBOOK_CHUNK = 250  # [100, 250, 784] float32: 78 MB per temporary
SPEEDUP_TARGET = 50.0
MEMORY_N = 10_000_000
MEMORY_TARGET_MB = 512.0
ROOT = Path(__file__).resolve().parents[1]

_times: dict[str, float] = {}  # model name -> median seconds of log_space, for the ratio


def part4() -> lvm.BernoulliLVM:
    return lvm.BernoulliLVM(lvm.seed_decoder(2, hidden=512, layers=3, output="logits"), 2)


def part2() -> lvm.BernoulliLVM:
    return lvm.BernoulliLVM(lvm.seed_decoder(2), 2, "probs")


MODELS = {"part4-logits": part4, "part2-probs": part2}


@torch.no_grad()
def textbook_log_px(decoder: torch.nn.Module, x: torch.Tensor, z: torch.Tensor,
                    chunk: int = TEXTBOOK_CHUNK) -> torch.Tensor:
    """log (1/N) sum_i p(x|z_i) the textbook way: per-pixel Bernoulli log-probs over
    [B, N, 784] (``chunk`` draws at a time), summed over pixels, then torch.logsumexp."""
    ll = torch.cat([
        torch.distributions.Bernoulli(probs=decoder(zc)).log_prob(x[:, None, :]).sum(-1)
        for zc in z.split(chunk)], dim=1)  # [B, N]
    return torch.logsumexp(ll, dim=1) - math.log(len(z))




@pytest.fixture(scope="module", params=list(MODELS))
def case(request):
    """(name, model, probs decoder for the textbook, data x [B, 784] float32 0/1)."""
    model = MODELS[request.param]()
    x = model.sample_x(B, torch.Generator().manual_seed(0)).to(DTYPE)
    probs_decoder = model.with_output("probs").decoder.eval()
    return request.param, model, probs_decoder, x


def _median(benchmark) -> float | None:
    stats = getattr(benchmark, "stats", None)
    return None if stats is None else float(stats.stats.median)


def test_log_space_speed(benchmark, case):
    name, model, _, x = case
    benchmark.group = f"log p(x): B={B}, N={N}, K={K}, float32, {name}"
    est = benchmark.pedantic(lambda: lvm.log_space(model, x, N, dtype="float32", seed=0),
                             rounds=5, warmup_rounds=1, iterations=1)
    assert torch.isfinite(est.log_px).all()
    t = _median(benchmark)
    if t is not None:
        _times[name] = t
        benchmark.extra_info.update(model=name, seconds_median=t, ns_per_pixel_term=t / (B * N * 784) * 1e9)


def test_textbook_speed(benchmark, case):
    name, model, probs_decoder, x = case
    benchmark.group = f"log p(x): B={B}, N={N}, K={K}, float32, {name}"
    z = lvm.draw(model, N, seed=0).to(DTYPE)
    # The two compute the same thing: same draws, float32, agree to float32 rounding of ~|log p|.
    want = lvm.log_space(model, x, N, dtype="float32", seed=0).log_px
    got = textbook_log_px(probs_decoder, x, z).to(torch.float64)
    assert ((got - want).abs() <= 1e-4 * want.abs() + 1e-3).all()
    benchmark.pedantic(lambda: textbook_log_px(probs_decoder, x, lvm.draw(model, N, seed=0).to(DTYPE)),
                       rounds=2, warmup_rounds=1, iterations=1)
    t = _median(benchmark)
    benchmark.extra_info.update(model=name, seconds_median=t)
    if t is not None and name in _times:
        ratio = t / _times[name]
        benchmark.extra_info.update(log_space_seconds=_times[name], speedup=ratio,
                                    speedup_target=SPEEDUP_TARGET, meets_target=ratio >= SPEEDUP_TARGET)
        print(f"\n{name}: textbook {t:.3f} s, log_space {_times[name]:.4f} s, speed-up {ratio:.1f}x "
              f"(target {SPEEDUP_TARGET:.0f}x)")


MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys, time
    import torch
    torch.set_num_threads(int(sys.argv[2]))
    import lvm
    from bench.run.timing import PeakMemory

    n = int(sys.argv[1])
    model = lvm.BernoulliLVM(lvm.seed_decoder(2), 2, "probs")
    x = model.sample_x(100, torch.Generator().manual_seed(0))
    t = time.perf_counter()
    with PeakMemory("cpu") as peak:
        est = lvm.log_space(model, x, n, dtype="float32", seed=0)
    seconds = time.perf_counter() - t
    print(json.dumps({"n": n, "peak_bytes": peak.peak, "seconds": seconds,
                      "finite": bool(torch.isfinite(est.log_px).all())}))
""")


def _peak_memory(n: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(n), str(THREADS)], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["peak_mb"] = r["peak_bytes"] / 2**20
    return r


@pytest.mark.slow
def test_peak_memory_log_space_n1e7(benchmark):
    """Deselect with -k "not memory" (or "not slow"): ~4 minutes on one thread."""
    benchmark.group = "peak memory"
    small = _peak_memory(10_000)
    big = benchmark.pedantic(lambda: _peak_memory(MEMORY_N), rounds=1, iterations=1)
    benchmark.extra_info.update(
        n=MEMORY_N, B=B, model="part2-probs", peak_mb=big["peak_mb"], peak_mb_at_n1e4=small["peak_mb"],
        seconds=big["seconds"],
        target_mb=MEMORY_TARGET_MB)
    print(f"\nlog_space peak memory above baseline: {big['peak_mb']:.1f} MB at N=10^7 "
          f"({small['peak_mb']:.1f} MB at N=10^4), {big['seconds']:.0f} s")
    assert big["finite"]
    assert big["peak_mb"] < MEMORY_TARGET_MB
