"""Where computation runs: torch's thread count and the device checks.

``set_torch_threads`` scopes torch's intra-op thread count to a block (BLAS
results can depend on it, so reproducible training pins it).
``device_unavailable`` says why a device cannot run here, for callers that
skip such devices; ``check_device`` turns the same answer into an InputError
for callers that must have the device.

``keep_temporaries_on_heap`` is the one allocator setting of the harness. The
estimators allocate and free the same few-MB temporaries once per chunk; with
glibc's defaults such blocks start out as fresh mmaps and, once the threshold
adapts, the heap top is still trimmed back to the OS after every call, so each
call page-faults its working set in again (tens of MB, ~10^4 faults): time
the allocator spends, not the estimator. Pinning the mmap and trim thresholds
at 32 / 64 MiB keeps such blocks on the heap; the process keeps up to 64 MiB
it no longer uses, and no number changes (only where memory comes from). The
sweep's cells, diagnose's timings, the benchmarks and the tests all run under it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import sys
from collections.abc import Iterator

import torch

from .errors import InputError

DEVICE_TYPES = ("cpu", "cuda", "mps")


@contextlib.contextmanager
def set_torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)``, restoring the previous count on exit.

    The count is restored also when the block raises. ``None`` leaves torch's
    setting alone.
    """
    if n is None:
        yield
        return
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"threads={n!r} is invalid; accepted: None or a positive integer")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(n)
        yield
    finally:
        torch.set_num_threads(before)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, glibc <malloc.h>


@functools.cache
def keep_temporaries_on_heap() -> bool:
    """Pin glibc's mmap / trim thresholds at 32 / 64 MiB for this process (module docstring);
    once per process. False where the C library is not glibc (the allocator is left alone)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mmap_ok = libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
        return bool(mmap_ok) and bool(libc.mallopt(M_TRIM_THRESHOLD, 64 << 20))
    except (OSError, AttributeError):  # not glibc (e.g. musl): no mallopt
        return False


def _mps_available() -> bool:
    return hasattr(torch.backends, "mps") and torch.backends.mps.is_available()


def _diagnose(device: object) -> tuple[torch.device | None, str | None]:
    """The parsed device (None if it is not one) and why it cannot run here (None if it can)."""
    try:
        dev = torch.device(device)  # type: ignore[call-overload]
    except (RuntimeError, TypeError):
        return None, f"device={device!r} is not a device; accepted: cpu, cuda, cuda:N, mps"
    if dev.type == "cuda" and not torch.cuda.is_available():
        return dev, "CUDA is not available on this machine"
    if dev.type == "mps" and not _mps_available():
        return dev, "MPS is not available on this machine"
    if dev.type not in DEVICE_TYPES:
        return dev, f"device={device!r} is not supported; accepted: {', '.join(DEVICE_TYPES)}"
    return dev, None


def device_unavailable(device: str | torch.device) -> str | None:
    """Why ``device`` cannot run here (not a device, unsupported, or absent), or None if it can."""
    return _diagnose(device)[1]


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device; InputError saying why when it cannot run here."""
    dev, reason = _diagnose(device)
    if reason is None:
        assert dev is not None
        return dev
    if dev is not None and dev.type in ("cuda", "mps"):
        raise InputError(f"device={device!r} requested but {reason}; accepted here: cpu")
    raise InputError(reason)
