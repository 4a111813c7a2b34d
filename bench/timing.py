"""Device-synchronised timing, peak memory, and the matrix-product ceiling.

Timings follow torch.utils.benchmark's habits: warm up first, synchronise the
device around each run, report the median and IQR of several runs.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


def synchronize(device: torch.device | str) -> None:
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev.type == "mps":
        torch.mps.synchronize()


@dataclass
class Measurement:
    """Wall times of repeated runs, in seconds, with derived statistics."""

    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")

    @property
    def iqr(self) -> float:
        if len(self.times) < 2:
            return float("nan")
        q = statistics.quantiles(self.times, n=4, method="inclusive")
        return q[2] - q[0]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.times) if self.times else float("nan")


def timed(fn: Callable[[], object], device: torch.device | str) -> tuple[object, float]:
    """Run ``fn`` once between device synchronisations; return (result, seconds)."""
    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - t0


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


class PeakMemory:
    """Peak memory above the starting level while the block runs, in bytes.

    CUDA: the allocator's own peak. CPU: resident set size sampled every 2 ms
    from a background thread (torch's CPU allocator keeps no peak).
    """

    def __init__(self, device: torch.device | str, interval: float = 0.002):
        self.device = torch.device(device)
        self.interval = interval
        self.peak = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._base = _rss_bytes()
            self._max = self._base
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._max = max(self._max, _rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._max, _rss_bytes()) - self._base


def matmul_peak_gflops(dtype: torch.dtype, device: torch.device | str = "cpu",
                       n: int = 512, runs: int = 3) -> float:
    """Best-of-``runs`` rate of an n x n matrix product: the machine's ceiling for a dtype."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    best = min(timed(lambda: a @ b, device)[1] for _ in range(runs))
    return 2 * n**3 / best / 1e9
