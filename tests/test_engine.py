"""The engine axis (issue 24): the compiled engine against eager, where it cannot run, and in the
sweep. Compilation takes seconds per shape, so the shapes here are few and small."""

from __future__ import annotations

import json
import math
import shutil

import pandas as pd
import pytest
import torch
from tiny import run_cli, tiny_toml

import lvm
from bench.run.config import ConfigError, validate
from bench.run.formats import FORMAT_VERSION, upgrade
from lvm import engine
from lvm.errors import InputError
from lvm.model import architecture, build
from lvm.shared import evaluate

ARCH = architecture(2, hidden=64, layers=2, output="logits")


@pytest.fixture(scope="module")
def model_and_x():
    m = build(ARCH, seed=0)
    return m, m.sample_x(8, torch.Generator().manual_seed(0))


def test_compiled_log_space_matches_eager_in_float64(model_and_x):
    """Within 1e-10 nats at float64, over three chunks (the last one shorter), and it compiled:
    a silent fall back to eager would also agree, so the compiler's graph count must grow."""
    m, x = model_and_x
    graphs = engine._graphs()
    eager = lvm.log_space(m, x, 5000, dtype="float64", seed=3)
    comp = lvm.log_space(m, x, 5000, dtype="float64", seed=3, engine="compiled")
    assert engine._graphs() > graphs
    assert (eager.log_px - comp.log_px).abs().max().item() < 1e-10
    assert torch.allclose(eager.ess, comp.ess, rtol=1e-9)
    assert torch.equal(eager.n_zero_terms, comp.n_zero_terms)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_compiled_low_precision_is_measured_not_assumed_equal(dtype, model_and_x):
    """In the low dtypes the engines may round differently; what is asserted is that both are
    estimates of the same quantity (finite, and within their rounding of the float64 replay)."""
    m, x = model_and_x
    replay = lvm.log_space(m, x, 500, dtype="float64", seed=3).log_px
    eager = lvm.log_space(m, x, 500, dtype=dtype, seed=3).log_px
    comp = lvm.log_space(m, x, 500, dtype=dtype, seed=3, engine="compiled").log_px
    worst = max((eager - replay).abs().max().item(), 1e-6)
    assert torch.isfinite(comp).all()
    assert (comp - replay).abs().max().item() < 10 * worst + 1e-3  # same order as eager's rounding


def test_compiled_prob_space_and_the_shared_pass_agree_in_float64(model_and_x):
    m, x = model_and_x
    specs = {"log_space": {"space": "log"}, "prob_space_exp": {"space": "prob", "form": "exp"},
             "log_space_acc32": {"space": "log", "accumulate": "float32"}}
    eager = evaluate(m, x, 300, dtype="float64", estimators=specs, seed=1)
    comp = evaluate(m, x, 300, dtype="float64", estimators=specs, seed=1, engine="compiled")
    for key, est in eager.items():
        both = torch.isfinite(est.log_px)
        assert torch.equal(both, torch.isfinite(comp[key].log_px)), key
        assert (est.log_px[both] - comp[key].log_px[both]).abs().max().item() < 1e-10, key


def test_the_reduction_steps_keep_special_values():
    """NaN and +inf terms are flagged and left out, as the eager log-sum-exp does."""
    a = torch.tensor([[0.0, math.nan, 1.0], [-math.inf, -math.inf, -math.inf], [2.0, math.inf, 0.0]])
    ref = lvm.numerics.LogSumExpState((3,), dtype=torch.float64).update(a.double())
    state = lvm.numerics.LogSumExpState((3,), dtype=torch.float64)
    state.fold(*engine.lse_step(a.double()))
    assert torch.equal(state.result().isnan(), ref.result().isnan())
    got, want = state.result(), ref.result()
    finite = torch.isfinite(want)
    assert torch.allclose(got[finite], want[finite])
    assert torch.equal(got[~finite].isinf(), want[~finite].isinf())


def test_an_unknown_engine_is_named(model_and_x):
    m, x = model_and_x
    with pytest.raises(InputError, match=r"engine='jit'; accepted: eager, compiled"):
        lvm.log_space(m, x, 10, dtype="float32", engine="jit")


def _config(text: str):
    import tomllib

    return validate(tomllib.loads(text))


def test_without_a_compiler_the_engine_says_why(model_and_x, monkeypatch):
    m, x = model_and_x
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert "no C++ compiler" in engine.unavailable("cpu")
    with pytest.raises(engine.EngineUnavailable, match="no C\\+\\+ compiler"):
        lvm.log_space(m, x, 10, dtype="float32", engine="compiled")
    cfg = _config(tiny_toml(grid={"engine": ["eager", "compiled"], "device": ["cpu"]}))
    cells, excluded = cfg.cells()
    assert cells and all(c.engine == "eager" for c in cells)
    reasons = {e["reason"] for e in excluded if "compiled" in e["cell"]}
    assert any("compiled engine cannot run here: no C++ compiler" in r for r in reasons)


def test_an_outside_estimator_is_not_compiled():
    cfg = _config(tiny_toml(grid={"engine": ["compiled"], "device": ["cpu"],
                                           "estimator": ["hostile_models:no_float32"]}))
    with pytest.raises(ConfigError, match="outside estimator runs its own code"):
        cfg.runnable()


def test_an_engine_level_is_validated_and_can_be_capped():
    with pytest.raises(ConfigError, match="jit"):
        _config(tiny_toml(grid={"engine": ["jit"]}))
    text = tiny_toml(grid={"engine": ["eager", "compiled"], "device": ["cpu"]}) + \
        "[limits]\nmax_n_samples = { compiled = 10 }\n"
    cells, excluded = _config(text).cells()
    assert max(c.n_samples for c in cells if c.engine == "compiled") == 10
    assert any("limits.max_n_samples.compiled = 10" in e["reason"] for e in excluded)


def test_a_format_2_run_reads_as_eager_with_no_compilation():
    cells = pd.DataFrame({"estimator": ["log_space"], "proposal": ["prior"], "status": ["ok"],
                          "time_runs": [3], "bias": [0.1]})
    new = upgrade("cells", cells, 2)
    assert list(new.columns) == ["estimator", "proposal", "engine", "status", "time_runs", "compile_s",
                                 "bias"]
    assert new["engine"].tolist() == ["eager"] and new["compile_s"].tolist() == [0.0]
    meta = upgrade("meta", {"config": {"grid": {"dtype": ["float32"]}}}, 2)
    assert meta["config"]["grid"]["engine"] == ["eager"] and FORMAT_VERSION == 3


@pytest.mark.slow
def test_a_sweep_with_both_engines(tmp_path, cache_dir):
    """Compiled cells are measured against the eager float64 replay, record their compilation, and
    leave the eager cells bit for bit as a run without the axis has them."""
    grid = {"estimator": ["log_space", "prob_space"], "dtype": ["bfloat16", "float64"], "n_samples": [10],
            "device": ["cpu"], "parametrization": ["logits"]}
    (tmp_path / "both.toml").write_text(tiny_toml(grid={**grid, "engine": ["eager", "compiled"]}))
    (tmp_path / "eager.toml").write_text(tiny_toml(grid=grid))
    for name in ("both", "eager"):
        assert run_cli("--config", str(tmp_path / f"{name}.toml"), "--out", str(tmp_path / name),
                       cache=cache_dir) == 0
    both, eager = (pd.read_csv(tmp_path / n / "cells.csv") for n in ("both", "eager"))
    assert (both["status"] == "ok").all() and len(both) == 2 * len(eager)
    comp = both[both["engine"] == "compiled"]
    assert (comp["compile_s"] > 0).all() and (both[both["engine"] == "eager"]["compile_s"] == 0).all()
    f64 = comp[comp["dtype"] == "float64"]
    assert (f64["rounding_error_mean"] < 1e-10).all()
    cols = ["estimator", "dtype", "bias", "rounding_error_mean", "variance", "ess"]
    pd.testing.assert_frame_equal(both[both["engine"] == "eager"][cols].reset_index(drop=True),
                                  eager[cols].reset_index(drop=True), check_exact=True)
    meta = json.loads((tmp_path / "both" / "meta.json").read_text())
    assert meta["config"]["grid"]["engine"] == ["eager", "compiled"]
