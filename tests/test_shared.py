"""One decoder pass, many estimators: bit for bit what each estimator gives alone.

The sweep's accuracy numbers come from :func:`lvm.shared.evaluate`; the claim that they are
the numbers a user gets from ``log_space`` / ``prob_space`` rests on these tests, at every
dtype, both parametrizations, with N spanning several chunks, and on the tiny sweep itself.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

import lvm
from bench.run.cell import draw_seed, estimate
from bench.run.config import ESTIMATORS, Cell
from bench.run.store import load_run
from lvm.kernels import CHUNK
from lvm.shared import estimate as estimate_alone
from lvm.shared import evaluate

FIELDS = ("log_px", "n_zero_terms", "n_nonfinite_terms", "ess")


def _alone(model, x, n, name, dtype, seed):
    return estimate_alone(model, x, n, ESTIMATORS[name], dtype=dtype, seed=seed)


def _same(a: lvm.Estimate, b: lvm.Estimate) -> bool:
    return all(torch.equal(getattr(a, f).nan_to_num(7.5), getattr(b, f).nan_to_num(7.5)) for f in FIELDS)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("native", ["logits", "probs"])
def test_shared_pass_is_bit_identical_to_each_estimator_alone(dtype, native, binary_x):
    net = lvm.seed_decoder(2, hidden=64, layers=2, output=native, seed=1)
    model = lvm.BernoulliLVM(net, 2, native)
    n = CHUNK + 300  # two chunks of the streamed estimators, many of the product's
    got = evaluate(model, binary_x, n, dtype=dtype, estimators=ESTIMATORS, outputs=("logits", "probs"),
                   seed=11)
    assert set(got) == {(e, o) for e in ESTIMATORS for o in ("logits", "probs")}
    for (name, output), est in got.items():
        ref = _alone(model.with_output(output), binary_x, n, name, dtype, 11)
        assert _same(est, ref), (name, output)


def test_models_without_parametrizations_are_evaluated_one_by_one(lg2):
    x = lg2.sample_x(3, torch.Generator().manual_seed(0))
    specs = {"log_space": ESTIMATORS["log_space"], "prob_space_exp": ESTIMATORS["prob_space_exp"]}
    got = evaluate(lg2, x, 50, dtype="float64", estimators=specs, seed=2)
    for (name, _), est in got.items():
        assert _same(est, _alone(lg2, x, 50, name, "float64", 2))
    with pytest.raises(lvm.InputError, match="outputs"):
        evaluate(lg2, x, 5, dtype="float64", estimators=specs, outputs=("probs",))


def test_bad_estimator_spec_names_the_estimator(part4, binary_x):
    with pytest.raises(lvm.InputError, match=r"estimators\['mine'\]"):
        evaluate(part4, binary_x, 5, dtype="float32", estimators={"mine": {"space": "neither"}})


def test_views_are_made_once_and_return_one_another(part4):
    probs = part4.with_output("probs")
    assert part4.with_output("probs") is probs
    assert probs.with_output("logits") is part4


def test_tiny_sweep_equals_the_per_estimator_path(tiny_run, cache_dir):
    """Every estimate of the tiny sweep (a shared pass) equals the estimator called alone."""
    import json

    from bench.run.cell import Context
    from bench.run.config import validate

    run = load_run(tiny_run).raw  # raw.parquet, or raw.csv.gz without pyarrow
    config = validate(json.loads((tiny_run / "meta.json").read_text())["config"])
    ctx = Context(config, cache_dir=cache_dir)
    checked = 0
    for keys, rows in run.groupby(["estimator", "dtype", "n_samples", "model", "parametrization", "device"]):
        cell = Cell(*keys)
        model = ctx.model(cell.model, cell.parametrization)
        for r, sel in rows.groupby("repeat"):
            seed = draw_seed(ctx.config.run["seed"], cell.model, cell.n_samples, int(r))
            alone = estimate(model, ctx.x, cell, seed).log_px.numpy()
            got = sel.sort_values("datapoint").estimate.to_numpy()
            assert ((got == alone) | (pd.isna(got) & pd.isna(alone))).all(), (cell.label, r)
            if cell.dtype != "float64":
                replay = estimate(model, ctx.x, Cell("log_space", "float64", *keys[2:]), seed).log_px
                assert (sel.sort_values("datapoint").replay_float64.to_numpy() == replay.numpy()).all()
            checked += 1
    assert checked == len(run) // len(ctx.x)

