"""Your own model, data and estimator: a throwaway package (decoder with D = 100, .npz data,
its own estimator) through run, report and compare; and every kind of bad input exits 2 with
nothing written."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import lvm
from bench.cli import main
from bench.run.store import load_run
from lvm.model import architecture, build

PKG = "lvmb_outside_pkg"  # unique, so the import system's cache cannot mix it up with anything
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

MODELS = '''
import torch
from torch import nn


def decoder():
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 100))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    net.latent_dim, net.output = 2, "logits"
    return net


def broken():
    raise RuntimeError("no weights here")


def nan_weights():
    net = decoder()
    with torch.no_grad():
        net[0].weight[0, 0] = float("nan")
    return net
'''

ESTIMATORS = '''
import torch


def wrong_shape(model, x, n_samples, *, dtype, device="cpu", seed=0):
    return torch.zeros(len(x) + 1)
'''


def _tiny(tmp: Path, **changes) -> Path:
    run = {"name": "outside", "seed": 1, "dataset": str(tmp / "digits.npz"), "n_data": 6, "repeats": 3,
           "warmup": 0, "reference": "auto", "reference_samples": 2000}
    grid = {"estimator": ["prob_space", "log_space", "log_mean_exp:log_mean_exp"],
            "dtype": ["float16", "float64"], "n_samples": [10, 100],
            "model": [f"mine={PKG}.models:decoder", str(tmp / "scripted.pt"), f"sd={tmp / 'weights.pt'}"],
            "parametrization": ["logits", "probs"], "device": ["cpu"]}
    for k, v in changes.items():
        (run if k in run else grid)[k] = v
    body = "\n".join([f"[{name}]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in sec.items())
                      for name, sec in (("run", run), ("grid", grid))])
    path = tmp / f"cfg-{len(list(tmp.glob('cfg-*')))}.toml"
    path.write_text(body + "\n")
    return path


@pytest.fixture(scope="module")
def pkg(tmp_path_factory) -> Path:
    """The package, a TorchScript decoder, a state dict with its architecture, and data files."""
    d = tmp_path_factory.mktemp("outside")
    (d / PKG).mkdir()
    (d / PKG / "__init__.py").write_text("")
    (d / PKG / "models.py").write_text(MODELS)
    (d / PKG / "estimators.py").write_text(ESTIMATORS)
    shutil.copy(EXAMPLES / "log_mean_exp.py", d / "log_mean_exp.py")
    sys.path[:0] = [str(d)]
    try:
        from lvmb_outside_pkg.models import decoder

        torch.jit.script(decoder()).save(str(d / "scripted.pt"))
        (d / "scripted.json").write_text(json.dumps({"latent_dim": 2, "output": "logits"}))
        arch = architecture(2, hidden=16, layers=1, output="logits", data_dim=100)
        torch.save(build(arch, seed=1).decoder.state_dict(), d / "weights.pt")
        (d / "weights.json").write_text(json.dumps({"architecture": arch}))
        dist = d / "lvmb_outside_pkg-0.1.dist-info"  # an installed package registering an estimator
        dist.mkdir()
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lvmb-outside-pkg\nVersion: 0.1\n")
        (dist / "entry_points.txt").write_text("[lvm_bench.estimators]\nlme = log_mean_exp:log_mean_exp\n")
        (d / "garbage.pt").write_bytes(b"not a model at all")
        (d / "garbage.json").write_text(json.dumps({"architecture": arch}))
        g = np.random.default_rng(0)
        bits = (g.random((40, 100)) < 0.3).astype(np.uint8)
        np.savez(d / "digits.npz", test=bits, train=bits[:10])
        np.save(d / "wide.npy", (g.random((40, 50)) < 0.3).astype(np.uint8))
        np.save(d / "grey.npy", g.random((40, 100)))
        yield d
    finally:
        sys.path.remove(str(d))


def _run(cfg: Path, out: Path, cache: str, *extra: str) -> int:
    return main(["run", "--config", str(cfg), "--out", str(out), "--cache-dir", cache, "--no-progress",
                 *extra])


@pytest.mark.slow
def test_outside_model_data_and_estimator_run_report_and_compare(pkg, tmp_path, cache_dir, capsys):
    out = tmp_path / "run"
    assert _run(_tiny(pkg), out, cache_dir) == 0
    cells = pd.read_csv(out / "cells.csv")
    assert (cells.status == "ok").all() and len(cells) == 3 * 2 * 2 * 3 * 2
    assert set(cells.model) == {"mine", "scripted", "sd"}
    assert set(cells.state) == {"outside"} and set(cells.latent_dim) == {2}
    meta = json.loads((out / "meta.json").read_text())
    assert meta["models"]["mine/logits"]["source"] == f"{PKG}.models:decoder"
    sd = meta["models"]["sd/probs"]
    assert sd["kind"] == "file" and len(sd["fingerprint"]) == 64
    bits = np.load(pkg / "digits.npz")["test"]
    assert meta["dataset"]["sha256"] == lvm.data._sha256(bits[:6]) and meta["dataset"]["dim"] == 100
    assert meta["dataset"]["n"] == len(bits)
    # the outside estimator draws lvm.draw's z: in float64 it is log_space up to summation order
    raw = load_run(out).raw  # raw.parquet, or raw.csv.gz without pyarrow
    f64 = raw[raw.dtype == "float64"].set_index(["estimator", "model", "parametrization", "n_samples",
                                                  "repeat", "datapoint"])["estimate"]
    np.testing.assert_allclose(f64.loc["log_mean_exp:log_mean_exp"], f64.loc["log_space"], rtol=0, atol=1e-10)
    # ... and in float16 it is measured against the same float64 replay as the built-in ones
    lme = cells[cells.estimator == "log_mean_exp:log_mean_exp"]
    assert (lme[lme.dtype == "float16"].rounding_error_mean > 0).all()
    assert main(["report", str(out)]) == 0
    assert "log_mean_exp" in (out / "report.md").read_text()
    assert main(["compare", str(out), str(out)]) == 0
    capsys.readouterr()
    assert main(["diagnose", "--model", f"mine={PKG}.models:decoder", "--data", str(pkg / "digits.npz"),
                 "--n-data", "6", "--n-samples", "50", "--estimator", "log_space,log_mean_exp:log_mean_exp",
                 "--format", "json", "--cache-dir", cache_dir,
                 "--expect", "float64/log_mean_exp:log_mean_exp/cast"]) == 1
    verdicts = json.loads(capsys.readouterr().out)
    assert verdicts["model"] == "mine" and verdicts["data"]["dim"] == 100
    assert verdicts["truth"] == "quadrature"
    assert {r["estimator"] for r in verdicts["rows"]} == {"log_space", "log_mean_exp:log_mean_exp"}
    # the outside estimator is precise in float64, but 50 prior draws of this decoder are too few
    # for the weights to be reliable: the gate says no (exit 1) for that reason alone
    (row,) = [r for r in verdicts["rows"] if r["setting"] == "float64/log_mean_exp:log_mean_exp/cast/prior"]
    assert row["precise"] and not row["reliable"] and not row["safe"]


BAD = [
    ({"model": [f"{PKG}.nope:decoder"]}, "cannot import"),
    ({"model": [f"{PKG}.models:broken"]}, "the factory raised RuntimeError: no weights here"),
    ({"model": [f"{PKG}.models:nan_weights"]}, "holds NaN or infinity"),
    ({"model": ["{pkg}/garbage.pt"]}, "not a loadable"),
    ({"model": ["{pkg}/missing.pt"]}, "no such file"),
    ({"dataset": "{pkg}/wide.npy"}, "data_dim 100"),
    ({"dataset": "{pkg}/grey.npy"}, "is not binary"),
    ({"estimator": [f"{PKG}.estimators:wrong_shape"]}, "returned shape [3]"),
    ({"estimator": [f"{PKG}.estimators:nope"]}, "has no attribute"),
]


@pytest.mark.parametrize(("change", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_outside_input_exits_2_and_writes_nothing(pkg, tmp_path, cache_dir, capsys, change, message):
    change = {k: ([x.format(pkg=pkg) for x in v] if isinstance(v, list) else v.format(pkg=pkg))
              for k, v in change.items()}
    out = tmp_path / "never"
    assert _run(_tiny(pkg, **change), out, cache_dir) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_log_mean_exp_example_matches_log_space_in_float64(pkg):
    from log_mean_exp import log_mean_exp

    model = lvm.zoo.get("untrained-k2")
    x = lvm.data.load("mnist-5k", "test").x[:5]
    ref = lvm.log_space(model, x, 500, dtype="float64", seed=4).log_px
    ours = log_mean_exp(model, x, 500, dtype="float64", seed=4)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)
    low = log_mean_exp(model, x, 500, dtype="float16", seed=4).double()
    assert not torch.equal(low, ref)  # float16 rounding shows: the suite measures how much


def test_an_entry_point_registers_an_estimator_by_name(pkg):
    from bench.run.config import estimator_spec
    from lvm import sources
    from lvm.shared import estimate

    assert sources.estimator_entry_points()["lme"] == "log_mean_exp:log_mean_exp"
    assert estimator_spec("lme") == {"space": "outside", "form": None, "accumulate": None,
                                     "path": "log_mean_exp:log_mean_exp"}
    model = lvm.zoo.get("untrained-k2")
    x = lvm.data.load("mnist-5k", "test").x[:3]
    est = estimate(model, x, 100, estimator_spec("lme"), dtype="float64", seed=1)
    torch.testing.assert_close(est.log_px, lvm.log_space(model, x, 100, dtype="float64", seed=1).log_px,
                               rtol=0, atol=1e-10)
