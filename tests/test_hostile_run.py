"""Hostile runs (issue 22, items 8-10, 12, 13): nothing lost, damage named, one line instead of a
traceback. Each test reproduces the issue's case as written, on the tiny config (n_data 4, repeats 2,
N in {1, 10})."""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
from tiny import run_cli, tiny_toml

from bench.cli import main

RUN = {"n_data": 4, "repeats": 2, "reference": "importance", "reference_samples": 500}
GRID = {"estimator": ["log_space"], "dtype": ["float32", "float64"], "n_samples": [1, 10],
        "model": ["untrained-k2"], "parametrization": ["logits"], "device": ["cpu"]}
PKG = "lvmb_hostile_pkg"  # unique: the import system's cache cannot mix it up with another test's

MODELS = '''
import math

import torch


class NoPixelProbs:
    """A protocol model (latent_dim, sample_prior, log_likelihood) without pixel_probs."""

    latent_dim = 2

    def __init__(self):
        self.w = torch.randn(2, 784, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def sample_prior(self, n, generator):
        return torch.randn(n, 2, generator=generator, dtype=torch.float64)

    def log_likelihood(self, x, z, dtype):
        logits = (z.to(dtype) @ self.w.to(dtype))[None]
        x = x.to(dtype)[:, None]
        return (x * logits - torch.nn.functional.softplus(logits)).sum(-1)


def no_pixel_probs():
    return NoPixelProbs()


def exits():
    raise SystemExit(0)


def interrupts():
    raise KeyboardInterrupt
'''


def _cfg(tmp: Path, name: str = "cfg.toml", **grid) -> Path:
    path = tmp / name
    path.write_text(tiny_toml(run=RUN, grid={**GRID, **grid}))
    return path


def _digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` by its sha256: what "byte-identical" means for a run directory."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def pkg(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("hostile")
    (d / PKG).mkdir()
    (d / PKG / "__init__.py").write_text("")
    (d / PKG / "models.py").write_text(MODELS)
    sys.path.insert(0, str(d))
    yield d
    sys.path.remove(str(d))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, cache_dir) -> Path:
    """A finished tiny run (read it, or copy it before changing it)."""
    d = tmp_path_factory.mktemp("finished")
    out = d / "run"
    assert run_cli("--config", str(_cfg(d)), "--out", str(out), cache=cache_dir) == 0
    return out


def _fake_run(tmp: Path) -> Path:
    """A directory that holds a run as far as --force is concerned (meta.json and a table)."""
    old = tmp / "old"
    old.mkdir()
    (old / "meta.json").write_text('{"status": "complete", "format_version": 2}\n')
    (old / "cells.csv").write_text("estimator,dtype\nlog_space,float32\n")
    return old


# ------------------------------------------------ item 8: a run with no runnable cell


@pytest.mark.parametrize(("grid", "words"), [
    ({"proposal": ["encoder"]}, "has no encoder"),
    ({"precision": ["autocast"]}, "autocast lowers to float16 or bfloat16 only"),
], ids=["encoder-without-one", "autocast-at-float32-64"])
def test_a_grid_with_no_runnable_cell_exits_2_writing_nothing(tmp_path, cache_dir, capsys, grid, words):
    out = tmp_path / "never"
    assert run_cli("--config", str(_cfg(tmp_path, **grid)), "--out", str(out), cache=cache_dir) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "no cell of the grid can run" in err[-1] and words in err[-1]
    assert not out.exists()
    old = _fake_run(tmp_path)  # ... and under --force the run there stays as it was
    before = _digest(old)
    cfg = _cfg(tmp_path, **grid)
    assert run_cli("--config", str(cfg), "--out", str(old), "--force", cache=cache_dir) == 2
    assert _digest(old) == before


# ------------------------------------------------ item 9: --force and a run whose every cell failed


@pytest.mark.slow
def test_force_with_every_cell_failing_keeps_the_old_run_byte_identical(pkg, finished, tmp_path, cache_dir,
                                                                         capsys):
    old = tmp_path / "run"
    shutil.copytree(finished, old)
    before = _digest(old)
    cfg = _cfg(tmp_path, "bad.toml", estimator=["prob_space"], model=[f"{PKG}.models:no_pixel_probs"])
    assert run_cli("--config", str(cfg), "--out", str(old), "--force", cache=cache_dir) == 1
    err = capsys.readouterr().err
    assert "FAILED prob_space" in err and "the run that was in" in err and "is kept as it was" in err
    assert _digest(old) == before
    assert main(["report", str(old), "--out", str(tmp_path / "rep")]) == 0  # still a readable run


@pytest.mark.slow
def test_force_with_a_measured_cell_replaces_the_old_run(finished, tmp_path, cache_dir):
    old = tmp_path / "run"
    shutil.copytree(finished, old)
    cfg = _cfg(tmp_path, "other.toml", dtype=["float64"])
    assert run_cli("--config", str(cfg), "--out", str(old), "--force", cache=cache_dir) == 0
    assert set(pd.read_csv(old / "cells.csv").dtype) == {"float64"}
    assert sorted(p.name for p in old.iterdir() if p.name.startswith(".")) == []  # nothing set aside is left


# ------------------------------------------------ item 10: a cut or damaged cells.csv


def _cut(finished: Path, tmp: Path) -> Path:
    cut = tmp / "cut"
    shutil.copytree(finished, cut)
    text = (cut / "cells.csv").read_bytes()
    last = text.rstrip(b"\n").rfind(b"\n")  # the start of the last row
    (cut / "cells.csv").write_bytes(text[:last + (len(text) - last) // 2])  # ... cut in its middle
    return cut


@pytest.mark.slow
@pytest.mark.parametrize("side", ["baseline", "new"])
def test_compare_refuses_a_cells_table_cut_mid_row(finished, tmp_path, capsys, side):
    cut = _cut(finished, tmp_path)
    rows = len(pd.read_csv(finished / "cells.csv"))
    pair = [cut, finished] if side == "baseline" else [finished, cut]
    assert main(["compare", *map(str, pair)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{cut / 'cells.csv'}" in err and f"row {rows + 1}" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_report_refuses_a_cells_table_cut_mid_row_or_with_a_short_row(finished, tmp_path, capsys):
    cut = _cut(finished, tmp_path)
    assert main(["report", str(cut), "--out", str(tmp_path / "rep")]) == 2
    assert f"{cut / 'cells.csv'}" in capsys.readouterr().err
    lines = (finished / "cells.csv").read_text().splitlines(keepends=True)
    lines[2] = ",".join(lines[2].split(",")[:5]) + "\n"  # a row of five fields, whole lines around it
    (cut / "cells.csv").write_text("".join(lines))
    assert main(["report", str(cut), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert f"{cut / 'cells.csv'}" in err and "row 3" in err and "5 fields" in err


# ------------------------------------------------ item 12: one line instead of a traceback


@pytest.mark.parametrize(("args", "words"), [
    (["--n-samples", ","], "--n-samples is empty"),
    (["--dtype", ","], "--dtype is empty"),
    (["--estimator", ","], "--estimator is empty"),
    (["--precision", ","], "--precision is empty"),
    (["--dtype", "float32", "--precision", "autocast"], "no setting to diagnose"),
    (["--n-samples", str(10**9)], "--n-samples 1000000000 is too large"),
    (["--expect", "float16/log_space/cast", "--dtype", "float32"], "--expect 'float16/log_space/cast'"),
    (["--expect", "log_space"], "--expect 'log_space'"),
    (["--expect", "float16/log_space/autocast", "--precision", "cast"],
     "--expect 'float16/log_space/autocast'"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_diagnose_refuses_bad_lists_and_expect_before_running(cache_dir, capsys, monkeypatch, args, words):
    import bench.diagnose

    monkeypatch.setattr(bench.diagnose, "_rows", lambda *a, **k: pytest.fail("diagnosed before checking"))
    assert main(["diagnose", "--model", "untrained-k2", "--n-data", "4", "--no-truth",
                 "--cache-dir", cache_dir, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1


def test_a_scheduler_address_without_a_port_exits_2(tmp_path, cache_dir, capsys):
    out = tmp_path / "never"
    assert run_cli("--config", str(_cfg(tmp_path)), "--out", str(out), "--executor", "dask", "--scheduler",
                   "notaurl", cache=cache_dir) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "--scheduler 'notaurl'" in err[-1] and "tcp://HOST:PORT" in err[-1] and not out.exists()


# ------------------------------------------------ item 13: SystemExit, --workers 0, an early Ctrl-C


@pytest.mark.parametrize("verb", ["run", "diagnose"])
def test_systemexit_from_a_factory_is_a_failure_not_success(pkg, tmp_path, cache_dir, capsys, verb):
    model = f"{PKG}.models:exits"
    if verb == "run":
        cfg = _cfg(tmp_path, model=[model])
        rc = run_cli("--config", str(cfg), "--out", str(tmp_path / "o"), cache=cache_dir)
    else:
        rc = main(["diagnose", "--model", model, "--n-data", "4", "--no-truth", "--cache-dir", cache_dir])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "SystemExit(0)" in err[-1] and "in exits" in err[-1] and "models.py" in err[-1]


def test_workers_0_is_refused_with_the_local_executor(tmp_path, cache_dir, capsys):
    out = tmp_path / "never"
    assert run_cli("--config", str(_cfg(tmp_path)), "--out", str(out), "--workers", "0", cache=cache_dir) == 2
    assert "--workers 0 is invalid" in capsys.readouterr().err and not out.exists()


def test_an_interrupt_before_anything_was_written_says_so(pkg, tmp_path, cache_dir, capsys):
    out = tmp_path / "never"
    cfg = _cfg(tmp_path, model=[f"{PKG}.models:interrupts"])
    assert run_cli("--config", str(cfg), "--out", str(out), cache=cache_dir) == 130
    err = capsys.readouterr().err
    assert "finished cells are saved" not in err and f"nothing was written to {out}" in err
