"""What a result was measured on: versions, hardware, git revision."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
    info = {"platform": platform.platform(), "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "gpus": []}
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


def hardware_key(hw: dict) -> tuple:
    """What must match for two runs' timings to be comparable."""
    return (hw.get("cpu"), hw.get("cpu_count"), hw.get("torch_threads"),
            tuple(g.get("name") for g in hw.get("gpus", [])))


def describe(exclude: str | os.PathLike | None = None) -> dict:
    return {"versions": versions(), "hardware": hardware(), "git": git_info(exclude),
            "argv": sys.argv}
