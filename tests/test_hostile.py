"""Issue 22 as a hostile user tried it: outside models, data and estimators that used to give a
wrong number with exit 0, and a cell whose exception failed its whole group.

Each test reproduces one problem as the issue writes it, on a tiny run (4 digits, 2 repeats,
N in {1, 10}, an importance-sampling truth of 500 draws). The misbehaving code lives in
tests/hostile_models.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import lvm
from bench.cli import main
from lvm import sources
from lvm.errors import InputError
from lvm.model import architecture, build

TIMING = {"time_median_s", "time_iqr_s", "time_runs", "terms_per_s", "estimates_per_s", "peak_memory_mb",
          "wall_s", "worker", "host", "timed_model"}
CHECKPOINTS = Path(lvm.__file__).resolve().parent / "checkpoints"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """digits.npz (D = 100, both splits), train.npz (train only), sd.pt: a 2 x 32 state dict."""
    d = tmp_path_factory.mktemp("hostile")
    bits = (np.random.default_rng(0).random((20, 100)) < 0.3).astype(np.uint8)
    np.savez(d / "digits.npz", test=bits, train=bits[10:])
    np.savez(d / "train.npz", train=bits)
    arch = architecture(2, hidden=32, layers=2, output="logits", data_dim=100)
    torch.save(build(arch, seed=1).decoder.state_dict(), d / "sd.pt")
    (d / "sd.json").write_text(json.dumps(arch))
    (d / "named").mkdir()  # a file whose name is a zoo name
    shutil.copy(d / "sd.pt", d / "named" / "untrained-k2.pt")
    shutil.copy(d / "sd.json", d / "named" / "untrained-k2.json")
    return d


def _config(tmp: Path, files: Path, **changes) -> Path:
    run = {"name": "hostile", "seed": 1, "dataset": str(files / "digits.npz"), "n_data": 4, "repeats": 2,
           "warmup": 0, "time_budget": 0.01, "reference": "importance", "reference_samples": 500}
    grid = {"estimator": ["log_space"], "dtype": ["float64"], "n_samples": [1, 10],
            "model": ["hostile_models:plain"], "parametrization": ["logits"], "device": ["cpu"]}
    for k, v in changes.items():
        (run if k in run else grid)[k] = v
    body = "\n".join(f"[{name}]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in sec.items())
                     for name, sec in (("run", run), ("grid", grid)))
    path = tmp / f"cfg-{len(list(tmp.glob('cfg-*')))}.toml"
    path.write_text(body + "\n")
    return path


def _run(cfg: Path, out: Path, cache: Path | str) -> int:
    return main(["run", "--config", str(cfg), "--out", str(out), "--cache-dir", str(cache), "--no-progress"])


def _cells(out: Path) -> pd.DataFrame:
    """cells.csv without its timing columns, its numbers as written (bit for bit), by cell."""
    cells = pd.read_csv(out / "cells.csv")  # pandas reads floats back exactly (round trip)
    keys = ["estimator", "dtype", "n_samples", "model", "parametrization", "device"]
    return cells[[c for c in cells if c not in TIMING]].set_index(keys).sort_index()


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Equal bit for bit (an integer column with a failed cell's gap reads as float)."""
    pd.testing.assert_frame_equal(a, b, check_exact=True, check_dtype=False)


# ----------------------------------------------------------------------------- 1. fingerprints


def test_a_cached_truth_is_never_reused_for_a_model_whose_forward_differs(files, tmp_path, capsys):
    """Same class, same weights; the second multiplies its logits by 3 in forward (a plain
    attribute): it used to share the first's fingerprint, and so its cached ground truth."""
    warm, cold = tmp_path / "cache", tmp_path / "cold"
    one, three, three_cold = tmp_path / "one", tmp_path / "three", tmp_path / "three-cold"
    assert _run(_config(tmp_path, files, model=["m=hostile_models:plain"]), one, warm) == 0
    tripled = _config(tmp_path, files, model=["m=hostile_models:tripled"])
    assert _run(tripled, three, warm) == 0
    assert _run(tripled, three_cold, cold) == 0
    _same(_cells(three), _cells(three_cold))
    assert not _cells(one)["bias"].equals(_cells(three)["bias"])
    fingerprints = [json.loads((d / "meta.json").read_text())["models"]["m/logits"]["fingerprint"]
                    for d in (one, three)]
    assert fingerprints[0] != fingerprints[1]
    capsys.readouterr()
    main(["compare", str(one), str(three)])
    assert "model weights differ for m/logits" in capsys.readouterr().out


def test_the_fingerprint_covers_code_attributes_and_weights_and_nothing_random():
    plain, again = (sources.load_model("hostile_models:plain") for _ in range(2))
    assert plain.fingerprint() == again.fingerprint()  # deterministic: the same model, the same key
    assert plain.fingerprint() != sources.load_model("hostile_models:tripled").fingerprint()
    assert plain.fingerprint() != sources.load_model("hostile_models:well_behaved").fingerprint()
    assert sources.load_model("hostile_models:well_behaved").fingerprint() == \
        sources.load_model("hostile_models:well_behaved").fingerprint()


# ----------------------------------------------------------------------------- 2. x in place


def test_an_estimator_that_zeroes_x_changes_no_other_cell(tmp_path, cache_dir):
    """``log_space,mypkg:mutates`` (x.zero_() after estimating) used to move the built-in
    log_space cells of prior-iwae-k2."""
    common = dict(model=["prior-iwae-k2"], dtype=["float32", "float64"], dataset="mnist-5k")
    alone, beside = tmp_path / "alone", tmp_path / "beside"
    assert _run(_config(tmp_path, tmp_path, estimator=["log_space"], **common), alone, cache_dir) == 0
    assert _run(_config(tmp_path, tmp_path, estimator=["log_space", "hostile_models:mutates"], **common),
                beside, cache_dir) == 0
    mine = _cells(beside)
    _same(_cells(alone), mine.loc[["log_space"]])
    # the mutating estimator computed on the real digits too: in float64 it is log_space
    assert (mine.loc["hostile_models:mutates", "bias"].values == mine.loc["log_space", "bias"].values).all()


def test_an_outside_estimator_gets_its_own_copy_of_x():
    model = sources.load_model("untrained-k2")
    x = sources.load_dataset("mnist-5k").x[:3]
    before = x.clone()
    fn = sources.load_estimator("hostile_models:mutates")
    sources.run_estimator(fn, "hostile_models:mutates", model, x, 2, dtype=torch.float32)
    assert torch.equal(x, before)


def test_an_outside_model_gets_its_own_copy_of_x():
    model = sources.load_model("hostile_models:zeroes_x")
    x = (torch.arange(300).reshape(3, 100) % 3 == 0).to(torch.float32)
    before = x.clone()
    lvm.log_space(model, x, 4, dtype="float32")
    assert torch.equal(x, before)


# ----------------------------------------------------------------------------- 3. dtype


def test_a_model_that_answers_in_another_dtype_is_refused(files, tmp_path, capsys):
    """log_likelihood always float16: its "float64" cells were float16 numbers, exit 0."""
    out = tmp_path / "run"
    assert _run(_config(tmp_path, files, model=["hostile_models:always_half"]), out, tmp_path / "c") == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert "hostile_models:always_half" in last and "float16 where float64 was asked" in last
    assert "Traceback" not in err and not out.exists()


@pytest.mark.parametrize("spec", ["hostile_models:always_half", "hostile_models:half_decoder"])
def test_a_wrong_dtype_is_named_when_the_model_is_loaded(spec):
    with pytest.raises(InputError, match=f"{spec}.*returned float16 where float(32|64) was asked"):
        sources.load_model(spec)


def test_a_wrong_dtype_is_named_when_it_shows_only_later():
    """Without data_dim the model cannot be probed when loaded; with float64 right and float16
    wrong the probe passes: the call that gets the wrong dtype names it."""
    x = torch.zeros(3, 100)
    late = sources.load_model("hostile_models:always_half_no_dim")
    with pytest.raises(InputError, match="always_half_no_dim.*float16.*float64"):
        lvm.log_space(late, x, 4, dtype="float64")
    mixed = sources.load_model("hostile_models:float32_for_half")
    lvm.log_space(mixed, x, 4, dtype="float32")
    with pytest.raises(InputError, match="float32_for_half.*float32.*float16"):
        lvm.log_space(mixed, x, 4, dtype="float16")


def test_a_dtype_that_shows_only_in_some_cells_fails_those_cells(files, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = _config(tmp_path, files, model=["hostile_models:float32_for_half"], dtype=["float16", "float64"])
    assert _run(cfg, out, tmp_path / "c") == 1
    cells = pd.read_csv(out / "cells.csv")
    assert set(cells[cells.dtype == "float64"].status) == {"ok"}
    bad = cells[cells.dtype == "float16"]
    assert set(bad.status) == {"failed"} and bad.reason.str.contains("float32_for_half").all()


# ----------------------------------------------------------------------------- 4. labels


@pytest.mark.parametrize("spec", ["untrained-k2={sd}", "{dir}/named/untrained-k2.pt",
                                  "untrained-k2=hostile_models:plain",
                                  "mine=untrained-k2", "prior-iwae-k2=untrained-k2"])
def test_a_label_never_borrows_a_zoo_models_facts(spec, files, tmp_path, capsys):
    """``untrained-k2=files/sd.pt`` (a 2 x 32 net) was recorded as state=untrained with the zoo
    3 x 512 net's flop."""
    spec = spec.format(sd=files / "sd.pt", dir=files)
    out = tmp_path / "run"
    assert _run(_config(tmp_path, files, model=[spec]), out, tmp_path / "c") == 2
    err = capsys.readouterr().err
    assert "label" in err and "zoo" in err and not out.exists()


def test_a_zoo_model_under_its_own_name_is_still_a_label():
    assert sources.parse_model("untrained-k2=untrained-k2") == sources.parse_model("untrained-k2")


# ----------------------------------------------------------------------------- 5. sidecars


SD_ARCH = {"latent_dim": 2, "hidden": 32, "layers": 2, "output": "logits", "data_dim": 100}


@pytest.mark.parametrize("side, named", [
    ({**SD_ARCH, "activation": "ReLU"}, "activation='ReLU'"),
    ({**SD_ARCH, "dropout": 0.1}, "dropout"),
    ({"architecture": {**SD_ARCH, "bias": False}}, "bias"),
    ({"architecture": SD_ARCH, "notes": "x"}, "notes"),
])
def test_unknown_or_unbuildable_sidecar_keys_are_named(side, named, files, tmp_path, capsys):
    """``"activation": "ReLU"`` was dropped and the state dict built as ELU."""
    shutil.copy(files / "sd.pt", tmp_path / "net.pt")
    (tmp_path / "net.json").write_text(json.dumps(side))
    out = tmp_path / "run"
    assert _run(_config(tmp_path, files, model=[str(tmp_path / "net.pt")]), out, tmp_path / "c") == 2
    err = capsys.readouterr().err
    assert named in err and "net.json" in err and "accepted" in err and not out.exists()


def test_an_unknown_torchscript_sidecar_key_is_named(tmp_path):
    import hostile_models

    torch.jit.script(hostile_models.plain()).save(str(tmp_path / "ts.pt"))
    (tmp_path / "ts.json").write_text(json.dumps({"latent_dim": 2, "output": "logits", "hidden": 32}))
    with pytest.raises(InputError, match=r"ts.json.*'hidden'.*accepted.*latent_dim, output"):
        sources.load_model(str(tmp_path / "ts.pt"))


@pytest.mark.parametrize("name", ["prior-iwae-k2", "vae-k2"])
def test_the_zoos_own_checkpoint_metadata_is_a_valid_sidecar(name, tmp_path):
    for suffix in (".pt", ".json"):  # under a name of its own: a zoo name labels only the zoo's model
        shutil.copy(CHECKPOINTS / f"{name}{suffix}", tmp_path / f"copy{suffix}")
    if name == "vae-k2":  # a file with an encoder: refused for what it holds, not for its keys
        with pytest.raises(InputError, match="holds an encoder"):
            sources.load_model(str(tmp_path / "copy.pt"))
        return
    assert sources.load_model(str(tmp_path / "copy.pt")).latent_dim == 2


# ----------------------------------------------------------------------------- 6. splits


def test_an_npz_without_the_split_is_refused(files, tmp_path, capsys):
    """An .npz holding only ``train`` was used as the test split (meta.json: split test)."""
    out = tmp_path / "run"
    assert _run(_config(tmp_path, files, dataset=str(files / "train.npz")), out, tmp_path / "c") == 2
    err = capsys.readouterr().err
    assert "run.split" in err and "'test'" in err and "train.npz" in err and "train" in err
    assert not out.exists()


def test_an_npz_with_one_unnamed_array_serves_any_split(tmp_path):
    np.savez(tmp_path / "one.npz", (np.arange(20).reshape(4, 5) % 2).astype(np.uint8))
    assert sources.load_data(str(tmp_path / "one.npz"), "test").x.shape == (4, 5)


# ----------------------------------------------------------------------------- 7. result dtype


@pytest.mark.parametrize("name", ["as_bool", "as_int", "int_estimate"])
def test_an_estimator_returning_bool_or_integers_is_refused(name, files, tmp_path, capsys):
    """A bool return gave log p = 1 and a bias of +545, exit 0."""
    spec = f"hostile_models:{name}"
    out = tmp_path / "run"
    assert _run(_config(tmp_path, files, estimator=["log_space", spec]), out, tmp_path / "c") == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert spec in last and "floating point" in last and "Traceback" not in err
    assert not out.exists()


# ----------------------------------------------------------------------------- 11. isolation


def test_a_cell_that_raises_fails_alone(files, tmp_path, capsys):
    """An estimator that raises only at float32 used to fail all 8 cells of its group, float64
    and the built-in log_space included."""
    common = dict(dtype=["float32", "float64"], estimator=["log_space", "prob_space"])
    without, beside = tmp_path / "without", tmp_path / "beside"
    cache = tmp_path / "c"
    assert _run(_config(tmp_path, files, **common), without, cache) == 0
    raiser = "hostile_models:no_float32"
    assert _run(_config(tmp_path, files, **{**common, "estimator": [*common["estimator"], raiser]}),
                beside, cache) == 1
    cells = _cells(beside)
    failed = cells[cells.status == "failed"]
    assert set(failed.index.get_level_values("estimator")) == {raiser}
    assert set(failed.index.get_level_values("dtype")) == {"float32"} and len(failed) == 2
    assert failed.reason.str.contains("RuntimeError: no float32 here").all()
    ok = cells[cells.status == "ok"]
    assert len(ok) == 2 * 2 * 2 + 2  # every built-in cell, and the raiser's float64 ones
    _same(ok.drop(raiser, level="estimator"), _cells(without))
