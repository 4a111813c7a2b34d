"""What a result was measured on (versions, hardware, git revision), and whether two runs'
hardware is the same for their timings to be compared (:func:`identity_mismatches`)."""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from bench.run.store import Meta

# CPU flags (as /proc/cpuinfo names them) that change how fast low precision runs: native
# bfloat16 dot products and tiles, native float16 arithmetic, float16 <-> float32 conversion.
# Two machines with the same model string and core count can differ in these by 100x in bfloat16.
ISA_FLAGS = ("avx512_bf16", "amx_bf16", "avx512_fp16", "f16c")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (Linux), or None where it cannot be read."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):  # x86 | arm
                return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def isa_flags() -> dict[str, bool] | None:
    """{flag: present} for each of :data:`ISA_FLAGS`; None where the OS does not list flags (macOS)."""
    flags = _cpu_flags()
    return None if flags is None else {f: f in flags for f in ISA_FLAGS}


def cpu_capability() -> str | None:
    """The vector instruction set torch's CPU kernels dispatch to ("AVX512", "AVX2", "DEFAULT", ...)."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):  # a torch without the call
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_info(exclude: str | os.PathLike | None = None) -> dict:
    """HEAD and whether tracked files differ from it, not counting ``exclude`` (the run's own
    output directory: re-running a committed baseline rewrites it and is no code change)."""
    rev = _git("rev-parse", "HEAD")
    args = ["status", "--porcelain", "--untracked-files=no"]
    if exclude is not None:
        top = _git("rev-parse", "--show-toplevel")
        try:
            rel = Path(exclude).resolve().relative_to(Path(top)) if top else None
        except ValueError:
            rel = None
        if rel is not None:
            args += ["--", ".", f":(exclude){rel.as_posix()}"]
    status = _git(*args)
    return {"revision": rev, "dirty": bool(status) if status is not None else None,
            "dirty_files": status.splitlines()[:20] if status else []}


def versions() -> dict:
    import pandas as pd
    import scipy

    import lvm

    return {"python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "scipy": scipy.__version__, "pandas": pd.__version__,
            "lvm_bench": lvm.__version__}


def hardware() -> dict:
    """meta.json's hardware record: the CPU model string as the OS reports it, core and torch
    thread count, torch's CPU capability, the low-precision ISA flags, and the GPUs."""
    info = {"platform": platform.platform(), "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "cpu_capability": cpu_capability(),
            "isa_flags": isa_flags(), "gpus": []}
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["gpus"].append({"name": p.name, "memory_gb": round(p.total_memory / 2**30, 1),
                                 "capability": f"{p.major}.{p.minor}"})
        info["cuda"] = torch.version.cuda
        info["gpu_driver"] = _nvidia_driver()
    return info


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


# TF32 changes float32 results on a GPU: the sweep fixes torch's switches (to torch's own
# defaults for matmul, and off for cuDNN) before it measures, in every process that runs cells.
FLOAT32_MATMUL = {"cuda_matmul_allow_tf32": False, "cudnn_allow_tf32": False,
                  "float32_matmul_precision": "highest"}


def fix_float32_matmul() -> dict:
    """Set TF32 off and float32 matmul precision to "highest"; return the switches as set."""
    torch.backends.cuda.matmul.allow_tf32 = FLOAT32_MATMUL["cuda_matmul_allow_tf32"]
    torch.backends.cudnn.allow_tf32 = FLOAT32_MATMUL["cudnn_allow_tf32"]
    torch.set_float32_matmul_precision(FLOAT32_MATMUL["float32_matmul_precision"])
    return {"cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision()}


def describe(exclude: str | os.PathLike | None = None) -> dict:
    return {"versions": versions(), "hardware": hardware(), "git": git_info(exclude),
            "argv": sys.argv, "float32_matmul": fix_float32_matmul()}


# ----------------------------------------------------------------------------- hardware identity

# What must be equal in two runs' hardware records for their timings to be compared (the
# idea of pyperf's _CHECKED_METADATA). GPUs are compared by name: the memory figure is a
# rounding of what the driver reports, the name is the kind of device.
IDENTITY_FIELDS = ("cpu", "cpu_count", "torch_threads", "cpu_capability", "isa_flags", "gpus")

# The matrix-product ceilings (meta.json matmul_peak_gflops) are measurements, not names: two
# runs match when, for every (device, dtype) both measured, the larger is at most this factor
# times the smaller. A ceiling is a best-of-3 of a short product and moves by tens of percent
# from run to run on a shared machine; machines of a different kind (native bfloat16 or not,
# AVX-512 or AVX2, another GPU) differ by 2x to 100x. A ceiling that moved by more than this
# on the same machine means it was too busy for throughput to be judged at the default factor.
CEILING_TOLERANCE = 1.5


def _view(name: str, value: Any) -> Any:
    if name == "gpus" and isinstance(value, list):
        return [g.get("name") if isinstance(g, dict) else g for g in value]
    return value


def _shown(value: Any) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "none"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "none"
    return str(value)


def _field_mismatches(name: str, a: Any, b: Any) -> list[str]:
    """``name: a vs b``, or one such line per differing key of two dicts (isa_flags)."""
    if isinstance(a, dict) and isinstance(b, dict):
        nr = "not recorded"
        return [f"{name}.{k}: {_shown(a.get(k, nr))} vs {_shown(b.get(k, nr))}"
                for k in sorted(set(a) | set(b), key=str) if a.get(k, nr) != b.get(k, nr)]
    return [] if a == b else [f"{name}: {_shown(a)} vs {_shown(b)}"]


def _not_recorded(what: str, names: tuple[str, str], has: tuple[bool, bool]) -> list[str]:
    lacking = [n for n, h in zip(names, has, strict=True) if not h]
    if not lacking:
        return []
    return [("neither run records" if len(lacking) == 2 else f"{lacking[0]} does not record") + f" {what}"]


def _rate(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _ceiling_mismatches(a: dict, b: dict, tolerance: float) -> list[str]:
    out = []
    for device in sorted(set(a) & set(b), key=str):
        da, db = a[device], b[device]
        if not (isinstance(da, dict) and isinstance(db, dict)):
            continue
        for dtype in sorted(set(da) & set(db), key=str):
            ra, rb = _rate(da[dtype]), _rate(db[dtype])
            where = f"matmul ceiling {device}/{dtype}: {ra:.3g} vs {rb:.3g} GFLOP/s"
            if not (math.isfinite(ra) and math.isfinite(rb) and ra > 0 and rb > 0):
                out.append(f"{where} (not a positive rate)")
            elif (ratio := max(ra, rb) / min(ra, rb)) > tolerance:  # shown rounded up: never "x1.5 > x1.5"
                out.append(f"{where} (x{math.ceil(ratio * 100) / 100:.3g}, tolerance x{tolerance:g})")
    return out


def identity_mismatches(base: Meta, new: Meta, *, names: tuple[str, str] = ("the baseline", "the new run"),
                        tolerance: float = CEILING_TOLERANCE) -> list[str]:
    """Why two runs' hardware differs, in words, one reason a line; empty when it matches.

    ``base`` and ``new`` are :class:`bench.run.store.Meta` (anything with ``.hardware`` and
    ``.matmul_peak_gflops``). Every :data:`IDENTITY_FIELDS` entry must be equal, and every
    matmul ceiling both runs measured within ``tolerance`` (:data:`CEILING_TOLERANCE`). A field
    or the ceilings missing from a run is a mismatch too: such a run (made before lvm-bench
    recorded them) cannot show it ran on the same hardware.
    """
    hw = (base.hardware, new.hardware)
    if not (hw[0] and hw[1]):
        return [f"{n} records no hardware" for n, h in zip(names, hw, strict=True) if not h]
    out = []
    for name in IDENTITY_FIELDS:
        missing = _not_recorded(f"{name} (made before lvm-bench recorded it)", names,
                                (name in hw[0], name in hw[1]))
        out += missing or _field_mismatches(name, _view(name, hw[0][name]), _view(name, hw[1][name]))
    peaks = (base.matmul_peak_gflops, new.matmul_peak_gflops)
    has = tuple(isinstance(p, dict) and bool(p) for p in peaks)
    missing = _not_recorded("matmul ceilings (meta.json matmul_peak_gflops)", names, has)
    return out + (missing or _ceiling_mismatches(*peaks, tolerance))
