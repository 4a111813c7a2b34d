"""Where computation runs: torch's thread count and the device checks.

``set_torch_threads`` scopes torch's intra-op thread count to a block (BLAS
results can depend on it, so reproducible training pins it).
``device_unavailable`` says why a device cannot run here, for callers that
skip such devices; ``check_device`` turns the same answer into an InputError
for callers that must have the device.
"""

from __future__ import annotations

import contextlib
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
