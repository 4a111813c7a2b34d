"""Issue 22, item 12 (and 13's one-line promise): outside models and model files that ended in a
traceback where exit 2 with one line is promised. Each case is run as the issue writes it, through
the CLI on a tiny run (4 digits, N in {1, 10}, an importance-sampling truth of 500 draws), and must
exit 2 with one line naming the model and what is accepted, writing nothing."""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.cli import main
from lvm.model import architecture, build
from lvm.protocol import MAX_LATENT_DIM


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("hostile-models")
    bits = (np.random.default_rng(0).random((20, 100)) < 0.3).astype(np.uint8)
    np.savez(d / "digits.npz", test=bits, train=bits[10:])
    return d / "digits.npz"


def _config(tmp: Path, data: Path, model: str) -> Path:
    run = {"name": "hostile", "seed": 1, "dataset": str(data), "n_data": 4, "repeats": 2, "warmup": 0,
           "time_budget": 0.01, "reference": "importance", "reference_samples": 500}
    grid = {"estimator": ["log_space"], "dtype": ["float64"], "n_samples": [1, 10], "model": [model],
            "parametrization": ["logits"], "device": ["cpu"]}
    path = tmp / "cfg.toml"
    path.write_text("\n".join(f"[{name}]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in sec.items())
                              for name, sec in (("run", run), ("grid", grid))) + "\n")
    return path


def _refused(tmp: Path, data: Path, model: str, capsys, *words: str) -> str:
    """Run ``model``; assert exit 2, one line naming every word, and no output directory."""
    out = tmp / "run"
    code = main(["run", "--config", str(_config(tmp, data, model)), "--out", str(out),
                 "--cache-dir", str(tmp / "cache"), "--no-progress"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2, err
    assert len(errors) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in errors[0], (word, errors[0])
    assert not out.exists()
    return errors[0]


@pytest.mark.parametrize("name, what", [("nan_some", "NaN"), ("inf_some", "+inf")])
def test_a_model_nan_or_inf_for_some_draws_is_named_not_a_linalg_error(name, what, data, tmp_path, capsys):
    """Was an IndexError (NaN) or a Cholesky LinAlgError (+inf) inside the truth's optimiser."""
    _refused(tmp_path, data, f"hostile_models:{name}", capsys, name, f"is {what} for", "accepted", "-inf")


@pytest.mark.parametrize("name, value", [("dim_zero", "0"), ("dim_negative", "-1"), ("dim_string", "'2'"),
                                         ("dim_huge", "1000000")])
def test_a_protocol_models_bad_latent_dim_is_refused(name, value, data, tmp_path, capsys):
    _refused(tmp_path, data, f"hostile_models:{name}", capsys, name, f"latent_dim={value}",
             f"from 1 to {MAX_LATENT_DIM}")


@pytest.mark.parametrize("name, words", [("on_meta", ("on meta", "the draws' device")),
                                         ("as_int64", ("int64", "float64 was asked"))])
def test_a_model_answering_on_meta_or_in_int64_is_refused(name, words, data, tmp_path, capsys):
    """Every cell failed with a torch.finfo error."""
    _refused(tmp_path, data, f"hostile_models:{name}", capsys, name, *words)


def test_a_factory_returning_none_is_named(data, tmp_path, capsys):
    _refused(tmp_path, data, "hostile_models:returns_none", capsys, "'hostile_models:returns_none'",
             "returned None", "accepted")


SD_ARCH = {"latent_dim": 2, "hidden": 32, "layers": 2, "output": "logits", "data_dim": 100}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sd") / "sd.pt"
    torch.save(build(architecture(**{k: v for k, v in SD_ARCH.items()}), seed=1).decoder.state_dict(), path)
    return path


def _sidecar(tmp: Path, weights: Path, **changes) -> Path:
    net = tmp / "net.pt"
    net.write_bytes(weights.read_bytes())
    (tmp / "net.json").write_text(json.dumps({**SD_ARCH, **changes}))
    return net


@pytest.mark.parametrize("value, shown", [(0, "0"), (-1, "-1"), ("2", "'2'"), (10**6, "1000000")])
def test_a_sidecars_bad_latent_dim_is_refused(value, shown, weights, data, tmp_path, capsys):
    net = _sidecar(tmp_path, weights, latent_dim=value)
    _refused(tmp_path, data, str(net), capsys, "net.json", f"latent_dim={shown}", "accepted")


def test_a_sidecar_claiming_a_billion_hidden_units_allocates_nothing(weights, data, tmp_path, capsys):
    """It tried to allocate 8 GB before any check. The shapes are now compared on the meta device:
    the refusal comes at once (a real allocation of 10^18 weights would fail or hang, not return)."""
    net = _sidecar(tmp_path, weights, hidden=10**9)
    start = time.perf_counter()
    _refused(tmp_path, data, str(net), capsys, "net.pt", "file has shape", "1000000000")
    assert time.perf_counter() - start < 60


@pytest.mark.parametrize("key, value", [("hidden", 0), ("layers", -2), ("data_dim", "100")])
def test_a_sidecars_bad_size_is_named(key, value, weights, data, tmp_path, capsys):
    net = _sidecar(tmp_path, weights, **{key: value})
    _refused(tmp_path, data, str(net), capsys, "net.json", key, "accepted")


def test_a_damaged_torchscript_file_is_one_line(data, tmp_path, capsys):
    """TorchScript's own errors run to many lines; the message keeps one."""
    net = tmp_path / "ts.pt"
    with zipfile.ZipFile(net, "w") as z:
        z.writestr("ts/code/__torch__.py", "def forward(self, z):\n    return (\n")
        z.writestr("ts/data.pkl", b"not a pickle")
    (tmp_path / "ts.json").write_text(json.dumps({"latent_dim": 2, "output": "logits"}))
    _refused(tmp_path, data, str(net), capsys, "ts.pt", "not a loadable TorchScript module")


def test_a_pickle_that_is_not_weights_only_is_one_line(data, tmp_path, capsys):
    """torch.load(weights_only=True)'s refusal spans a dozen lines."""
    net = tmp_path / "net.pt"
    torch.save({"0.weight": torch.zeros(32, 2), "fn": print}, net)
    (tmp_path / "net.json").write_text(json.dumps(SD_ARCH))
    _refused(tmp_path, data, str(net), capsys, "net.pt", "not a loadable weights-only state dict")


@pytest.mark.parametrize("name", ["nan_some", "dim_zero"])
def test_diagnose_refuses_them_too(name, data, tmp_path, capsys):
    code = main(["diagnose", "--model", f"hostile_models:{name}", "--data", str(data), "--n-data", "4",
                 "--n-samples", "10", "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and name in err, err


PEAK = """
import resource, sys
from lvm import sources
ds = sources.load_data(sys.argv[1], "test", rows=None if sys.argv[2] == "all" else int(sys.argv[2]))
print(ds.x.shape[0], ds.identity["n"], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def _peak_mb(path: Path, rows: str) -> tuple[int, int, int]:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", PEAK, str(path), rows], capture_output=True, text=True,
                         check=True).stdout.split()
    return tuple(int(v) for v in out)  # type: ignore[return-value]


def test_a_large_npy_is_read_for_the_rows_used(tmp_path):
    """A 10^6-row .npy of which 4 rows were used peaked at 10.3 GB. Now the file is memory-mapped
    and only the rows used are read. Here 200,000 rows of 784 float64 (1.25 GB on disk): the peak
    of a process that keeps 4 rows is measured beside one that reads them all (as before)."""
    path = tmp_path / "big.npy"
    big = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(200_000, 784))
    big[:4, :5] = 1
    big.flush()
    del big
    kept, n, four = _peak_mb(path, "4")
    assert (kept, n) == (4, 200_000)
    _, _, whole = _peak_mb(path, "all")  # the file's 1,254 MB mapped, and 627 MB of float32 x
    assert whole - four > 1000, (four, whole)


def test_the_identity_of_outside_data_is_that_of_the_rows_used(tmp_path):
    import hashlib

    from lvm import sources

    bits = (np.random.default_rng(1).random((20_000, 10)) < 0.5).astype(np.uint8)
    np.save(tmp_path / "d.npy", bits)
    ds = sources.load_data(str(tmp_path / "d.npy"), "test", rows=3)
    assert ds.identity["sha256"] == hashlib.sha256(bits[:3].tobytes()).hexdigest()
    assert ds.identity["n"] == 20_000 and torch.equal(ds.x, torch.from_numpy(bits[:3]).float())
    whole = sources.load_data(str(tmp_path / "d.npy"), "test")  # blocks of 8,192: the same digest
    assert whole.identity["sha256"] == hashlib.sha256(bits.tobytes()).hexdigest()
