"""The sweep end to end: a tiny grid, resume after a kill, determinism, bad input."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tiny import run_cli as _cli
from tiny import tiny_toml

from bench.run.metrics import TIMING_COLUMNS
from bench.run.store import load_run

ROOT = Path(__file__).resolve().parents[1]

TINY = tiny_toml()


@pytest.fixture
def tiny(tmp_path) -> Path:
    p = tmp_path / "tiny.toml"
    p.write_text(TINY)
    return p


def _numbers(table: pd.DataFrame) -> pd.DataFrame:
    """The table without timings and memory: what must be identical between runs."""
    return table.drop(columns=[c for c in TIMING_COLUMNS if c in table])


@pytest.fixture
def reference_run(tiny_run) -> Path:
    return tiny_run


def test_tiny_run_writes_tidy_tables(reference_run):
    cells = pd.read_csv(reference_run / "cells.csv")
    meta = json.loads((reference_run / "meta.json").read_text())
    raw = load_run(reference_run).raw
    # 3 estimators x 3 dtypes x 3 N x 2 parametrizations x 2 devices, minus acc32 at f32/f64
    assert len(cells) == (3 * 3 - 2) * 3 * 2 * 2
    ok = cells[cells.status == "ok"]
    skipped = cells[cells.status == "skipped"]
    # every device of the grid is measured where it can run here and skipped with its reason where not
    from lvm.runtime import device_unavailable

    for device in ("cpu", "cuda"):
        reason = device_unavailable(device)
        at = cells[cells.device == device]
        if reason is None:
            assert (at.status == "ok").all(), device
        else:
            assert (at.status == "skipped").all() and (at.reason == reason).all(), (device, reason)
    assert len(skipped) == len(cells) - len(ok)
    assert list(cells.columns[:6]) == ["estimator", "dtype", "n_samples", "model",
                                       "parametrization", "device"]
    assert len(raw) == len(ok) * 6 * 3
    assert meta["status"] == "complete"
    assert meta["environment"]["versions"]["torch"]
    assert meta["dataset"]["sha256"]
    assert "untrained-k2/logits" in meta["models"]
    # probability space underflows float32 on real digits (log p(x|z) ~ -543 for an untrained net)
    f32 = ok[(ok.estimator == "prob_space") & (ok.dtype == "float32")]
    assert (f32.underflow_rate == 1.0).all()
    assert (ok[ok.space == "log"].underflow_rate == 0).all()
    # ... but not at float64: the untrained decoder keeps p(x|z) above 1e-323
    f64 = ok[(ok.estimator == "prob_space") & (ok.dtype == "float64")]
    assert (f64.underflow_rate == 0).all()
    assert (ok.underflow_ci_low <= ok.underflow_rate).all()
    assert (ok.underflow_rate <= ok.underflow_ci_high).all()


def test_raw_rows_agree_with_cells(reference_run):
    cells = pd.read_csv(reference_run / "cells.csv")
    raw = load_run(reference_run).raw
    keys = ["estimator", "dtype", "n_samples", "model", "parametrization", "device"]
    for _, row in cells[cells.status == "ok"].iterrows():
        sel = raw
        for k in keys:
            sel = sel[sel[k] == row[k]]
        assert np.isneginf(sel.estimate).mean() == pytest.approx(row.underflow_rate)
        fin = np.isfinite(sel.estimate)
        if fin.any():
            rms = np.sqrt(((sel.estimate - sel.truth)[fin] ** 2).mean())
            assert rms == pytest.approx(row.rmse, rel=1e-9)


def test_same_seed_same_numbers(reference_run, tmp_path, tiny, cache_dir):
    out = tmp_path / "again"
    assert _cli("--config", str(tiny), "--out", str(out), cache=cache_dir) == 0
    a = _numbers(pd.read_csv(reference_run / "cells.csv"))
    b = _numbers(pd.read_csv(out / "cells.csv"))
    pd.testing.assert_frame_equal(a, b)


def test_kill_and_resume_gives_the_same_table(reference_run, tmp_path, tiny, cache_dir):
    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.cli", "run", "--config", str(tiny), "--out", str(out),
         "--cache-dir", cache_dir, "--no-progress"], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline:
        parts = list((out / "parts").glob("*.json")) if (out / "parts").exists() else []
        if len(parts) >= 10 or proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_before = len(list((out / "parts").glob("*.json")))
    assert 0 < n_before < 42, "the kill should land mid-run"
    # a plain re-run refuses to overwrite; --resume continues
    assert _cli("--config", str(tiny), "--out", str(out), cache=cache_dir) == 2
    assert len(list((out / "parts").glob("*.json"))) == n_before
    assert _cli("--config", str(tiny), "--out", str(out), "--resume", cache=cache_dir) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "complete" and len(meta["segments"]) == 2
    a = _numbers(pd.read_csv(reference_run / "cells.csv"))
    b = _numbers(pd.read_csv(out / "cells.csv"))
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize("args, message", [
    (["--dtype", "float8"], "grid.dtype value 'float8' is unknown"),
    (["--n-samples", "0,10"], "grid.n_samples value 0 is invalid"),
    (["--n-samples", "1000000000000"], "grid.n_samples value 1000000000000 is invalid"),
    (["--set", "run.repeat=3"], "did you mean 'repeats'"),
    (["--set", "grid.dtypes=float32"], "did you mean 'dtype'"),
    (["--estimator", "log_spac"], "did you mean 'log_space'"),
    (["--model", "untrained"], "grid.model value 'untrained' is invalid"),
    (["--config", "nope"], "no such file or built-in config"),
])
def test_bad_input_exits_2(args, message, tmp_path, capsys, cache_dir):
    assert _cli(*args, "--out", str(tmp_path / "x"), cache=cache_dir) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_malformed_toml_and_unknown_section(tmp_path, capsys, cache_dir):
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\nseed = 1")
    assert _cli("--config", str(bad), "--out", str(tmp_path / "o"), cache=cache_dir) == 2
    assert "malformed TOML" in capsys.readouterr().err
    bad.write_text(TINY + "\n[grids]\nx = 1\n")
    assert _cli("--config", str(bad), "--out", str(tmp_path / "o"), cache=cache_dir) == 2
    assert "did you mean 'grid'" in capsys.readouterr().err


def test_existing_run_is_not_overwritten(reference_run, capsys, tiny, cache_dir):
    before = (reference_run / "cells.csv").read_bytes()
    assert _cli("--config", str(tiny), "--out", str(reference_run), cache=cache_dir) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (reference_run / "cells.csv").read_bytes() == before


def test_resume_with_another_config_is_refused(reference_run, tmp_path, capsys, cache_dir):
    other = tmp_path / "other.toml"
    other.write_text(TINY.replace("seed = 3", "seed = 4"))
    assert _cli("--config", str(other), "--out", str(reference_run), "--resume", cache=cache_dir) == 2
    assert "config differs" in capsys.readouterr().err


# ------------------------------------------------------- checks before writing (issue 13, 1-3)

@pytest.mark.parametrize("args, message", [
    (["--set", "run.n_data=5000"], "run.n_data = 5000 exceeds"),
    (["--set", "run.seed=-1"], "run.seed = -1 is invalid"),
    (["--set", "run.name=../../escape"], "run.name = '../../escape' is invalid"),
    (["--set", "run.reference=quadrature", "--model", "untrained-k8"], "quadrature"),
    (["--executor", "dask", "--workers", "0"], "--workers 0 is invalid"),
    (["--set", "run.split=validation"], "unsupported split 'validation'"),
    (["--dataset", "mnist"], "MNIST test split: missing"),
    (["--executor", "dask", "--scheduler", "tcp://127.0.0.1:9"], "cannot connect"),
])
@pytest.mark.slow
def test_bad_input_found_late_writes_nothing(args, message, tmp_path, capsys, tiny, cache_dir, monkeypatch):
    monkeypatch.setenv("LVM_DATA_DIR", str(tmp_path / "no-mnist-here"))
    if "--scheduler" in args and importlib.util.find_spec("distributed") is None:
        message = "needs the optional extra: pip install 'lvm-bench[dask]'"  # without the dask extra
    out = tmp_path / "x"
    assert _cli("--config", str(tiny), *args, "--out", str(out), cache=cache_dir) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def _snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_a_failed_force_leaves_the_old_run_intact(reference_run, tmp_path, capsys, tiny, cache_dir):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    before = _snapshot(run)
    assert _cli("--config", str(tiny), "--set", "run.n_data=5000", "--out", str(run), "--force",
                cache=cache_dir) == 2
    assert "exceeds" in capsys.readouterr().err
    assert _snapshot(run) == before


def test_force_over_a_finished_run_measures_every_cell_again(reference_run, tmp_path, tiny, cache_dir):
    """--force replaces the run: the old parts must not count as done (they once did, and the
    replacement came out empty)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    assert _cli("--config", str(tiny), "--n-samples", "1", "--out", str(run), "--force", cache=cache_dir) == 0
    cells = pd.read_csv(run / "cells.csv")
    assert len(cells) > 0 and (cells.status != "failed").all()
    assert set(cells.n_samples) == {1}
    assert len(list((run / "parts").glob("*.json"))) == (cells.status == "ok").sum()
    old = pd.read_csv(reference_run / "cells.csv")
    pd.testing.assert_frame_equal(_numbers(cells).reset_index(drop=True),
                       _numbers(old[old.n_samples == 1]).reset_index(drop=True), check_dtype=False)


@pytest.mark.slow
def test_an_empty_parts_directory_is_no_run(tmp_path, capsys, tiny, cache_dir):
    """An interrupt after parts/ was made and before meta.json: the directory holds nothing."""
    out = tmp_path / "dead"
    (out / "parts").mkdir(parents=True)
    assert _cli("--config", str(tiny), "--out", str(out), "--resume", cache=cache_dir) == 2
    assert "no run to resume" in capsys.readouterr().err
    assert _cli("--config", str(tiny), "--n-samples", "1", "--dtype", "float32", "--out", str(out),
                cache=cache_dir) == 0
    assert json.loads((out / "meta.json").read_text())["status"] == "complete"
