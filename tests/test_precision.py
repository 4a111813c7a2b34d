"""The precision-policy axis: autocast through the shared pass, the sweep and the report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tiny import tiny_toml

import lvm
from bench.cli import main
from bench.run.config import ESTIMATORS, Cell
from bench.run.store import load_run
from lvm.shared import estimate, evaluate

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained():
    return lvm.zoo.get("prior-iwae-k2"), lvm.data.load("mnist-5k", "test").x[:6]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_autocast_shared_pass_equals_each_estimator_alone(trained, dtype):
    model, x = trained
    out = evaluate(model, x, 2500, dtype=dtype, estimators=ESTIMATORS, outputs=("logits", "probs"), seed=7,
                   precision="autocast")
    for (name, o), est in out.items():
        alone = estimate(model.with_output(o), x, 2500, ESTIMATORS[name], dtype=dtype, seed=7,
                         precision="autocast")
        assert torch.equal(est.log_px, alone.log_px), (name, o)
        assert est.dtype == dtype and est.meta["precision"] == "autocast"


def test_on_cpu_autocast_runs_the_decoder_as_cast_does_except_the_product(trained):
    """CPU autocast lowers Linear to bfloat16 and leaves ELU, softplus, exp and logsumexp in the
    dtype they receive: the log terms are those of the cast model, bit for bit. Only prod is
    in CPU autocast's float32 list, so only the per-pixel product changes."""
    model, x = trained
    spec = {"log_space": ESTIMATORS["log_space"], "acc32": ESTIMATORS["log_space_acc32"],
            "product": ESTIMATORS["prob_space"]}
    cast = evaluate(model, x, 500, dtype="bfloat16", estimators=spec, seed=1)
    auto = evaluate(model, x, 500, dtype="bfloat16", estimators=spec, seed=1, precision="autocast")
    for name in ("log_space", "acc32"):
        assert torch.equal(cast[(name, "logits")].log_px, auto[(name, "logits")].log_px)
    assert auto[("acc32", "logits")].meta["accumulate_dtype"] == "float32"
    assert auto[("log_space", "logits")].meta["accumulate_dtype"] == "bfloat16"  # as CPU autocast leaves ll
    assert not torch.equal(cast[("product", "logits")].log_px, auto[("product", "logits")].log_px)


def test_autocast_product_is_formed_in_float32(trained):
    """Under autocast the per-pixel product runs in float32 (CPU autocast's op list puts prod
    there) over the bfloat16 pixel probabilities, and so do the sum and the mean: an estimate is
    -inf exactly where the mean of the exact products of those bfloat16 probabilities lies below
    float32's floor (-103.3 nats; 1 nat of margin for the float32 rounding of 784 factors).
    bfloat16's floor is -92.2: some of these digits a bfloat16 product would have lost."""
    model, _ = trained
    x = lvm.data.load("mnist-5k", "test").x[:200]  # digits 55 and 141 lie in the band the last line asks for
    n = 64
    est = estimate(model, x, n, ESTIMATORS["prob_space"], dtype="bfloat16", seed=2, precision="autocast")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        probs = model.pixel_probs(x, lvm.draw(model, n, seed=2), torch.float32)
    assert probs.dtype == torch.bfloat16
    top = torch.logsumexp(probs.double().log().sum(-1), -1) - math.log(n)  # log of the mean, exactly
    floor = lvm.dtype_facts("float32").log_min_subnormal
    under = est.log_px == -math.inf
    assert under[top < floor - 1].all() and not under[top > floor + 1].any()
    assert ((top > floor + 1) & (top < lvm.dtype_facts("bfloat16").log_min_subnormal)).any()


def test_autocast_needs_a_low_dtype(trained):
    model, x = trained
    with pytest.raises(lvm.InputError, match="precision='autocast' with dtype=float32"):
        evaluate(model, x, 10, dtype="float32", estimators=ESTIMATORS, precision="autocast")
    with pytest.raises(lvm.InputError, match="precision='bogus'"):
        estimate(model, x, 10, ESTIMATORS["log_space"], dtype="float16", precision="bogus")


def test_cell_keys_of_cast_cells_do_not_change():
    c = Cell("log_space", "float16", 10, "untrained-k2", "logits", "cpu")
    assert c.key == "log_space__float16__10__untrained-k2__logits__cpu" and c.precision == "cast"
    a = Cell("log_space", "float16", 10, "untrained-k2", "logits", "cpu", "autocast")
    assert a.key == c.key + "__autocast" and Cell.of(a.axes()) == a  # a row without the axis: test_formats


@pytest.mark.slow
def test_runs_from_before_the_axis_read_as_cast():
    """results/full was made before the precision axis existed: its tables lack the column."""
    root = ROOT / "results" / "full"
    assert "precision" not in pd.read_csv(root / "cells.csv", nrows=1).columns
    run = load_run(root)
    assert set(run.cells["precision"]) == {"cast"} and len(run.ok) == (run.cells["status"] == "ok").sum()


@pytest.mark.slow
def test_raw_rows_from_before_the_axis_read_as_cast():
    """The same for results/full's raw rows, which it keeps as raw.parquet only: reading them is the
    parquet extra's job."""
    pytest.importorskip("pyarrow", reason="the parquet extra is not installed")
    assert set(load_run(ROOT / "results" / "full").raw["precision"]) == {"cast"}


@pytest.mark.slow
def test_sweep_with_both_policies_reports_them_side_by_side(tmp_path, cache_dir, capsys):
    cfg = tmp_path / "ac.toml"
    cfg.write_text(tiny_toml(run={"name": "ac", "n_data": 4, "repeats": 2},
                             grid={"estimator": ["prob_space", "log_space"], "dtype": ["bfloat16", "float32"],
                                   "n_samples": [10, 100], "model": ["prior-iwae-k2"],
                                   "parametrization": ["logits"], "device": ["cpu"],
                                   "precision": ["cast", "autocast"]}))
    out = tmp_path / "run"
    assert main(["run", "--config", str(cfg), "--out", str(out), "--cache-dir", cache_dir, "--no-progress",
                 "--report"]) == 0
    cells = pd.read_csv(out / "cells.csv")
    assert set(zip(cells.dtype, cells.precision, strict=True)) == {
        ("bfloat16", "cast"), ("bfloat16", "autocast"), ("float32", "cast")}
    excluded = json.loads((out / "meta.json").read_text())["excluded_cells"]
    assert len(excluded) == 4
    assert all("autocast lowers to float16 or bfloat16 only" in e["reason"] for e in excluded)
    md = (out / "report.md").read_text()
    assert "## Precision policy: cast or autocast" in md and (out / "figures" / "fig8_precision.png").exists()
    t = pd.read_csv(out / "tables" / "precision.csv")
    assert set(t.precision) == {"cast", "autocast"} and set(t.dtype) == {"bfloat16"}
    assert np.isfinite(t.rounding_error_median[t.estimator == "log_space"]).all()
    assert main(["compare", str(out), str(out)]) == 0
    capsys.readouterr()
