"""The GPU device run (scripts/gpu_run.sh): its CPU dry run end to end, and the cuda checks it
runs on the device machine. There LVM_REQUIRE_CUDA=1 turns a missing device into a failure, so
no cuda test skips for want of one."""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.cli import main

ROOT = Path(__file__).resolve().parents[1]
needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("LVM_REQUIRE_CUDA") != "1",
    reason="CUDA is not available here (LVM_REQUIRE_CUDA=1 makes this a failure)")


@needs_cuda
def test_cuda_cells_are_measured(tmp_path, monkeypatch, cache_dir):
    assert torch.cuda.is_available(), "LVM_REQUIRE_CUDA=1 but CUDA is not available"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LVM_CACHE_DIR", cache_dir)
    rc = main(["run", "--device", "cuda", "--estimator", "log_space", "--dtype", "float32,float64",
               "--n-samples", "10", "--model", "untrained-k2", "--precision", "cast", "--proposal",
               "prior", "--repeats", "2", "--n-data", "4", "--out", "run", "--no-progress"])
    assert rc == 0
    cells = pd.read_csv(tmp_path / "run" / "cells.csv")
    assert (cells.device == "cuda").all() and (cells.status == "ok").all(), cells[["status", "reason"]]


@pytest.mark.slow
def test_gpu_run_dry_run_leaves_one_archive(tmp_path, cache_dir):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "RESULTS": str(tmp_path / "results"), "PYTHON": sys.executable,
           "PYTHONPATH": str(ROOT), "LVM_CACHE_DIR": cache_dir}
    env.pop("LVM_REQUIRE_CUDA", None)
    p = subprocess.run(["bash", "scripts/gpu_run.sh", "--dry-run"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    for step in ("install", "environment", "tests", "sweep", "bench", "dask"):
        assert f"step {step}: " in p.stdout, step
        assert "(exit 0)" in p.stdout.split(f"step {step}: ")[1].splitlines()[0], step
    assert [f.name for f in out.iterdir()] == ["gpu-run.tar.gz"]
    with tarfile.open(out / "gpu-run.tar.gz") as tar:
        names = set(tar.getnames())
    top = "gpu-cpu-dry-run"
    for need in ("environment.json", "benchmark.json", "run/cells.csv", "run/meta.json", "run/report.md",
                 "dask-run/cells.csv", "logs/worker.txt"):
        assert f"{top}/{need}" in names, need
    assert not any("/parts/" in n for n in names)
    dask_cells = pd.read_csv(tmp_path / "results" / top / "dask-run" / "cells.csv")
    assert (dask_cells.status == "ok").all()


def test_gpu_run_rejects_an_unknown_flag():
    p = subprocess.run(["bash", "scripts/gpu_run.sh", "--fast"], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2 and "accepted: --dry-run, --no-install" in p.stderr
