"""Device-synchronised timing, peak memory, and the matrix-product ceiling.

Timings follow torch.utils.benchmark's habits: warm up first, synchronise the
device around each run, report the median and IQR of several runs.
"""

from __future__ import annotations

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


def _status_bytes(key: str) -> int | None:
    """A memory line of /proc/self/status (VmRSS, VmHWM) in bytes; None without procfs."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))
    except (OSError, StopIteration, ValueError):
        return None


def _reset_high_water_mark() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _status_bytes("VmHWM") is not None


class PeakMemory:
    """Peak memory above the starting level while the block runs, in bytes.

    CUDA: the allocator's own peak. CPU on Linux: the kernel's resident high-water mark
    (VmHWM), reset on entry, so no allocation is missed between samples; elsewhere the
    resident set size sampled every 2 ms from a background thread (torch's CPU allocator
    keeps no peak).
    """

    def __init__(self, device: torch.device | str, interval: float = 0.002):
        self.device = torch.device(device)
        self.interval = interval
        self.peak = 0
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        elif _reset_high_water_mark():
            self._base = _status_bytes("VmRSS") or 0
        else:
            self._base = self._max = _status_bytes("VmRSS") or 0
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._max = max(self._max, _status_bytes("VmRSS") or 0)
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
        elif self._thread is None:
            self.peak = (_status_bytes("VmHWM") or 0) - self._base
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._max, _status_bytes("VmRSS") or 0) - self._base


# ----------------------------------------------------------------------------- the roofline

DATA_FLOP_PER_TERM = 2 * 784  # one log-likelihood term: a length-784 dot product in the data product


def estimator_flop(decoder: torch.nn.Module, b: int, n: int, data_dim: int = 784) -> float:
    """Floating-point work of one estimate: the decoder on n draws (2 x its weights per draw,
    shared by the b datapoints) plus the [b, D] x [D, n] data product."""
    per_draw = sum(2 * p.numel() for name, p in decoder.named_parameters() if name.endswith("weight"))
    return n * per_draw + 2.0 * b * n * data_dim


def matmul_operands(dtype: torch.dtype, device: torch.device | str, shape: tuple[int, int, int]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded [m, k] and [k, n] operands of a matrix product in ``dtype`` on ``device``."""
    m, k, n = shape
    g = torch.Generator().manual_seed(0)
    return (torch.randn(m, k, generator=g).to(device=device, dtype=dtype),
            torch.randn(k, n, generator=g).to(device=device, dtype=dtype))


def matmul_peak_gflops(dtype: torch.dtype, device: torch.device | str = "cpu",
                       shape: tuple[int, int, int] = (512, 512, 512), runs: int = 3) -> float:
    """Best-of-``runs`` rate of an [m, k] @ [k, n] product: the machine's ceiling for a dtype
    (n x n by default; pass the shape of the work it is a ceiling for)."""
    a, b = matmul_operands(dtype, device, shape)
    a @ b
    best = min(timed(lambda: a @ b, device)[1] for _ in range(runs))
    m, k, n = shape
    return 2 * m * k * n / best / 1e9
