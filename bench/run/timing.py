"""Device-synchronised timing, peak memory, FLOP counts and the matrix-product roofline.

Timings follow torch.utils.benchmark's habits: warm up first, synchronise the
device around each run, report the median and IQR of several runs.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from lvm.kernels import CHUNK


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


def autorange(fn: Callable[[], object], device: torch.device | str, *, budget: float,
              max_runs: int, first: float | None = None) -> Measurement:
    """Timed runs of ``fn`` until ``budget`` seconds are spent: many runs for a stable median
    on a fast function, one on a function that takes longer than the budget (the idea of
    torch.utils.benchmark's ``blocked_autorange``, one call per run). ``first``: the seconds
    of a run already made, counted as the first. The caller warms up.
    """
    m = Measurement([] if first is None else [first])
    while not m.times or (sum(m.times) < budget and len(m.times) < max_runs):
        m.times.append(timed(fn, device)[1])
    return m


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
#
# The FLOP of one estimate, counted from the model's architecture (lvm.zoo's
# ``parse(name).architecture()``, lvm.model's ``architecture(...)``), and the roofline:
# the time those FLOP take at the machine's matrix-product rate for the very shapes the
# estimator multiplies. One count serves the sweep's ``flop`` column, the report's
# fraction of peak and the throughput benchmark.

LOG_SPACE_CHUNK = CHUNK  # log_space's default chunk of prior draws


def decoder_widths(arch: Mapping[str, Any]) -> list[int]:
    """Layer widths of a zoo decoder, K, h, ..., h, D: Linear(K, h)-ELU-[Linear(h, h)-ELU]
    x (layers - 1)-Linear(h, D), as :func:`lvm.model.seed_decoder` builds it."""
    return [int(arch["latent_dim"]), *[int(arch["hidden"])] * int(arch["layers"]),
            int(arch.get("data_dim", 784))]


def decoder_flop_per_draw(arch: Mapping[str, Any]) -> int:
    """2 x the sum of the decoder's weight-matrix sizes: one multiply and one add per weight
    for one draw z.

    Biases, activations (ELU, a final Sigmoid) and the likelihood's softplus are not
    counted: they are O(width) per draw against the products' O(width^2), and they are not
    matrix-product work, so the matrix-product rate is no ceiling for them; on the roofline
    they are overhead, not useful work.
    """
    w = decoder_widths(arch)
    return 2 * sum(a * b for a, b in zip(w, w[1:], strict=False))


def estimate_flop(arch: Mapping[str, Any], n_data: int, n_samples: int) -> int:
    """FLOP of one estimate of log p(x) for B = ``n_data`` datapoints from N = ``n_samples``
    prior draws: the decoder on each of the N draws (shared by the B datapoints) plus the
    [B, D] @ [D, N] data product (2 B D per draw)."""
    return int(n_samples) * (decoder_flop_per_draw(arch) + 2 * int(n_data) * decoder_widths(arch)[-1])


def matmul_shapes(arch: Mapping[str, Any], n_data: int, n_samples: int,
                  chunk: int = LOG_SPACE_CHUNK) -> dict[tuple[int, int, int], int]:
    """The matrix products of one log_space estimate as {(m, k, n): how many}: per chunk of
    c draws, each decoder layer's [c, in] @ [in, out] and the data product [B, D] @ [D, c]
    (the last chunk holds the remainder). Their 2 m k n add up to :func:`estimate_flop`."""
    w = decoder_widths(arch)
    full, rest = divmod(int(n_samples), chunk)
    out: dict[tuple[int, int, int], int] = {}
    for c, count in ((chunk, full), (rest, 1)):
        if c == 0 or count == 0:
            continue
        for shape in [(c, a, b) for a, b in zip(w, w[1:], strict=False)] + [(int(n_data), w[-1], c)]:
            out[shape] = out.get(shape, 0) + count
    return out


def roofline_seconds(shapes: Mapping[tuple[int, int, int], int],
                     gflops: Mapping[tuple[int, int, int], float]) -> float:
    """The roofline time: each product's FLOP at the machine's rate for its shape (GFLOP/s),
    summed. The work cannot be done faster with these products at these rates."""
    return sum(count * 2 * m * k * n / (gflops[(m, k, n)] * 1e9) for (m, k, n), count in shapes.items())


def matmul_operands(dtype: torch.dtype, device: torch.device | str, shape: tuple[int, int, int],
                    b_transposed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded [m, k] and [k, n] operands of a matrix product in ``dtype`` on ``device``;
    ``b_transposed``: the second is the transpose of a contiguous [n, k] tensor, the layout of
    ``x @ W.T`` in nn.Linear and of the data product ``x @ logits.T``."""
    m, k, n = shape
    g = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=g).to(device=device, dtype=dtype)
    if b_transposed:
        return a, torch.randn(n, k, generator=g).to(device=device, dtype=dtype).T
    return a, torch.randn(k, n, generator=g).to(device=device, dtype=dtype)


def matmul_peak_gflops(dtype: torch.dtype, device: torch.device | str = "cpu",
                       shape: tuple[int, int, int] = (512, 512, 512), runs: int = 3,
                       b_transposed: bool = False) -> float:
    """Best-of-``runs`` rate of an [m, k] @ [k, n] product: the machine's ceiling for a dtype
    (n x n by default; pass the shape, and the layout, of the work it is a ceiling for: where
    a dtype is emulated, as float16 and bfloat16 are on many CPUs, the layout alone can change
    the rate many times over)."""
    a, b = matmul_operands(dtype, device, shape, b_transposed)
    a @ b
    best = min(timed(lambda: a @ b, device)[1] for _ in range(runs))
    m, k, n = shape
    return 2 * m * k * n / best / 1e9


def measure_roofline(arch: Mapping[str, Any], n_data: int, n_samples: int, dtype: torch.dtype,
                     device: torch.device | str = "cpu", chunk: int = LOG_SPACE_CHUNK,
                     runs: int = 5) -> tuple[float, dict[tuple[int, int, int], float]]:
    """(roofline seconds, GFLOP/s per shape) of one log_space estimate on this machine: each
    shape of :func:`matmul_shapes` timed by :func:`matmul_peak_gflops` in the estimator's
    layout (second operand transposed), in two passes over the shapes keeping each one's best
    rate, so that the first shapes timed in a process (while the clock and the BLAS warm up)
    do not lower the ceiling."""
    shapes = matmul_shapes(arch, n_data, n_samples, chunk)
    rates: dict[tuple[int, int, int], float] = {}
    for _ in range(2):
        for s in shapes:
            rates[s] = max(rates.get(s, 0.0), matmul_peak_gflops(dtype, device, s, runs, b_transposed=True))
    return roofline_seconds(shapes, rates), rates
