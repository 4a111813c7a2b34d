"""The ``[limits]`` rule: a key naming valid levels the (overridden) grid lacks is inert and noted in
meta.json; a key naming nothing known is a config error."""

from __future__ import annotations

import json

import pytest
from tiny import run_cli, tiny_toml

from bench.run.config import ConfigError, load_config, validate


def _cells(config):
    cells, excluded = config.cells()
    return {c.key for c in cells}, {e["cell"]: e["reason"] for e in excluded}


def test_a_model_override_leaves_the_other_models_caps_inert():
    quick = load_config("quick")
    assert quick.inert_limits() == []
    narrowed = load_config("quick", ["grid.model=prior-iwae-k2"])  # as `lvm-bench run --model prior-iwae-k2`
    assert narrowed.inert_limits() == ["iwae-k2"]
    cells, excluded = _cells(narrowed)
    all_cells, all_excluded = _cells(quick)
    assert cells == {k for k in all_cells if "__prior-iwae-k2__" in k}  # the binding caps still bind
    assert {k: v for k, v in all_excluded.items() if "__prior-iwae-k2__" in k} == excluded


@pytest.mark.parametrize("overrides, inert", [
    (["grid.dtype=float32"], ["float16", "float16+encoder", "bfloat16+encoder"]),
    (["grid.proposal=prior"], ["encoder", "float16+encoder", "bfloat16+encoder"]),
    (["grid.estimator=log_space", "grid.precision=cast"], ["prob_space", "autocast"]),
    (["grid.model=untrained-k2,mine.models:decoder"], ["iwae-k2"]),  # an outside model, not loaded here
])
def test_levels_and_combinations_absent_from_the_grid_are_inert(overrides, inert):
    assert sorted(load_config("quick", overrides).inert_limits()) == sorted(inert)


@pytest.mark.parametrize("key", ["float61", "float16+sideways", "mine", "cuda", "prior-iwae-k2+logit"])
def test_a_key_naming_nothing_known_is_an_error(key):
    with pytest.raises(ConfigError, match=rf"limits.max_n_samples.{key.replace('+', '[+]')} = 3"):
        load_config("quick", [f"limits.max_n_samples={key}:3"])


def test_an_unknown_level_gets_the_nearest_one_suggested():
    with pytest.raises(ConfigError, match="did you mean 'float16'"):
        load_config("quick", ["limits.max_n_samples=float16:10,flaot16:3"])


def test_a_label_of_the_grid_binds_and_the_same_label_elsewhere_is_unknown():
    grid = {**load_config("quick").grid, "model": ["mine=mine.models:decoder"]}
    mine = validate({"grid": grid, "limits": {"max_n_samples": {"mine": 10}}})
    assert mine.inert_limits() == []
    assert {c.n_samples for c in mine.cells()[0]} == {1, 10}
    with pytest.raises(ConfigError, match="limits.max_n_samples.mine = 10"):
        validate({"grid": {**grid, "model": ["untrained-k2"]}, "limits": {"max_n_samples": {"mine": 10}}})


def test_the_sweep_lists_the_inert_keys_in_meta(tmp_path, cache_dir):
    cfg = tmp_path / "limits.toml"
    cfg.write_text(tiny_toml(grid={"estimator": ["log_space"], "dtype": ["float32"], "n_samples": [1, 10],
                                   "parametrization": ["logits"], "device": ["cpu"]})
                   + '[limits]\nmax_n_samples = { "prior-iwae-k2" = 5, float16 = 5, log_space = 5 }\n')
    out = tmp_path / "run"
    assert run_cli("--config", str(cfg), "--out", str(out), cache=cache_dir) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["limits_inert"] == ["prior-iwae-k2", "float16"]
    assert [e["reason"] for e in meta["excluded_cells"]] == ["limits.max_n_samples.log_space = 5"]


def test_a_cap_set_on_the_command_line_keeps_the_others():
    """`lvm-bench run --set limits.max_n_samples=float16:100` (the guide shows it) sets one cap."""
    quick = load_config("quick").data["limits"]
    config = load_config("quick", ["limits.max_n_samples=float16:100", "limits.reasons=float16:emulated"])
    assert config.data["limits"]["max_n_samples"] == {**quick["max_n_samples"], "float16": 100}
    assert config.data["limits"]["reasons"] == {**quick["reasons"], "float16": "emulated"}
    assert max(c.n_samples for c in config.cells()[0] if c.dtype == "float16") == 100
