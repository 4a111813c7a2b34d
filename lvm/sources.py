"""Point the suite at your own model, data or estimator: one grammar for each.

A **model spec** is one of
  ``prior-iwae-k2``
      a zoo name (:mod:`lvm.zoo`);
  ``package.module:factory``
      an import path; ``factory()`` returns a model with the protocol of
      :class:`lvm.model.LatentVariableModel` (``latent_dim``, ``sample_prior``,
      ``log_likelihood``), or a decoder ``nn.Module`` that carries ``latent_dim`` and
      ``output`` (``"logits"`` or ``"probs"``) as attributes, or a dict
      ``{"decoder": module, "latent_dim": K, "output": "logits" | "probs"}``, or a module in
      the shape of VAE code, ``decode(z)`` and ``encode(x)`` with ``latent_dim`` and
      ``output`` (:mod:`lvm.vae`: its ``encode`` is then the encoder proposal);
  ``path/to/decoder.pt``
      a file: a TorchScript decoder (``torch.jit.save``), a ``torch.export`` program
      (``torch.export.save``, ``.pt2``, exported with a dynamic batch dimension) or a state
      dict of the suite's ELU decoder, with ``path/to/decoder.json`` beside it. For TorchScript
      and ``.pt2`` the JSON gives ``latent_dim`` and ``output`` (unless the module carries
      them; ``likelihood``, ``"bernoulli"``, may be given too); for a state dict it
      is the architecture: ``latent_dim``, ``hidden``, ``layers``, ``output``, ``data_dim``
      and optionally ``activation`` (``"ELU"``, the only one built), in the format of the zoo's
      checkpoint metadata (under ``"architecture"``) or at the top level; a key it does not
      list is an error, not ignored. Loaded with
      ``weights_only=True``: loading never runs code;
  ``label=<any of these>``
      the same, under a label of your choosing (what cells.csv's ``model`` column says); a zoo
      name labels only that zoo model, and a zoo model only its own name.

Decoders may have any data dimension D. A **data spec** is ``mnist-5k``, ``mnist``, a
``.npy``/``.npz`` file or an IDX file of 0/1 values ([n, D]; an ``.npz`` holds one array for
every split, or one per split under ``train``/``test``: a split it lacks is an error), or
``package.module:factory`` returning such an
array. An **estimator spec** is an import path to a function with the signature of
:func:`lvm.log_space` that returns an :class:`~lvm.Estimate` or a [B] tensor of log p(x),
or a name registered under the entry-point group ``lvm_bench.estimators``.

Every failure is an InputError that names the spec and says what is accepted.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import os
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import InputError
from .model_files import decoder_model, from_file
from .vae import is_vae, vae_model

IMPORT_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")
LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
ENTRY_POINTS = "lvm_bench.estimators"
MODEL_FORMS = ("a zoo name such as prior-iwae-k2", "package.module:factory",
               "a TorchScript or state-dict file (.pt) or a torch.export program (.pt2) with its .json",
               "label=<one of these>")
DATA_FORMS = ("mnist-5k", "mnist", "a .npy/.npz or IDX file of 0/1 values", "package.module:factory")


def _accepted(forms) -> str:
    return "accepted: " + "; ".join(forms)


def load_object(path: str, argument: str) -> Any:
    """The object an import path ``package.module:attr`` names."""
    if not isinstance(path, str) or not IMPORT_PATH.match(path):
        raise InputError(f"{argument} {path!r} is not an import path; accepted: package.module:name")
    module_name, _, attr = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise InputError(f"{argument} {path!r}: cannot import {module_name!r} ({e}); accepted: a module "
                         "on sys.path (an installed package, or the working directory)") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise InputError(f"{argument} {path!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _call(factory: Callable, spec: str, argument: str) -> Any:
    if not callable(factory):
        raise InputError(f"{argument} {spec!r} names a {type(factory).__name__}; accepted: a factory "
                         "function that takes no arguments")
    try:
        return factory()
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's code failed: say so, keep the cause chained
        raise InputError(f"{argument} {spec!r}: the factory raised {type(e).__name__}: {e}") from e


# ----------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec: its label (cells.csv's ``model``), where it comes from, and how."""

    label: str
    source: str  # the zoo name, the import path or the file path
    kind: str  # "zoo", "import" or "file"

    @property
    def outside(self) -> bool:
        return self.kind != "zoo"


def parse_model(spec: str) -> ModelSpec:
    """Split a model spec into label, source and kind, without loading anything.

    A label is what cells.csv, compare and the report know a model by, and a zoo name there
    stands for that zoo model's facts (state, K, FLOP): a zoo model is labelled by its own name,
    and no other model by a zoo name."""
    if not isinstance(spec, str) or not spec:
        raise InputError(f"model spec {spec!r} is invalid; {_accepted(MODEL_FORMS)}")
    label, eq, source = spec.partition("=")
    if not eq:
        label, source = "", spec
    elif not LABEL.match(label):
        raise InputError(f"model spec {spec!r}: label {label!r} is invalid; accepted: letters, digits, "
                         "'.', '_', ':' and '-', starting with a letter or digit")
    ms = _parse_source(spec, label, source)
    if ms.kind == "zoo" and ms.label != ms.source:
        raise InputError(f"model spec {spec!r}: the zoo model {ms.source} is known by its name, which "
                         f"says its state, K and FLOP; accepted: {ms.source} without a label")
    if ms.kind != "zoo" and _is_zoo_name(ms.label):
        raise InputError(f"model spec {spec!r}: the label {ms.label!r} is a zoo model's name, and cells.csv, "
                         "compare and the report would give this model that model's facts (state, K, "
                         "FLOP); accepted: a label that is not a zoo name (label=<spec>)")
    return ms


def _is_zoo_name(name: str) -> bool:
    from . import zoo

    try:
        zoo.parse(name)
    except InputError:
        return False
    return True


def _parse_source(spec: str, label: str, source: str) -> ModelSpec:
    from . import zoo

    try:
        return ModelSpec(label or source, zoo.parse(source).name, "zoo")
    except InputError as e:
        zoo_error = e
    if IMPORT_PATH.match(source):
        return ModelSpec(label or source, source, "import")
    path = Path(source)
    if path.suffix in (".pt", ".pth", ".ts", ".zip", ".pt2") or os.sep in source or path.exists():
        if not path.is_file():
            raise InputError(f"model spec {spec!r}: {source} is no such file; {_accepted(MODEL_FORMS)}")
        label = label or path.stem
        if not LABEL.match(label):
            raise InputError(f"model spec {spec!r}: the file name makes the label {label!r}, which is "
                             "invalid; name it: label=<path>")
        return ModelSpec(label, str(path), "file")
    raise InputError(f"model spec {spec!r} is not a zoo name ({zoo_error}), an import path or a "
                     f"file; {_accepted(MODEL_FORMS)}")


def load_model(spec: str | ModelSpec, *, cache_dir=None, progress: bool = False):
    """The model a spec names: a zoo model, a factory's model, or a decoder file's model; an
    outside one under :func:`lvm.guard.guard` (its fingerprint covers its code and a probe)."""
    from . import zoo
    from .guard import guard
    from .protocol import check_model

    ms = spec if isinstance(spec, ModelSpec) else parse_model(spec)
    if ms.kind == "zoo":
        return zoo.get(ms.source, cache_dir=cache_dir, progress=progress)
    if ms.kind == "import":
        made = _call(load_object(ms.source, "model"), ms.source, "model")
        model = _from_factory(made, ms.source)
    else:
        model = from_file(Path(ms.source))
    check_model(model, f"model {ms.source!r}")
    _check_weights(model, ms.source)
    return guard(model, f"model {ms.source!r}")


def _from_factory(made: Any, spec: str):
    where = f"model {spec!r}"
    if isinstance(made, dict):
        missing = [k for k in ("decoder", "latent_dim", "output") if k not in made]
        if missing or not isinstance(made["decoder"], nn.Module):
            lacks = ", ".join(missing) or "an nn.Module decoder"
            raise InputError(f"{where}: the factory's dict lacks {lacks}; accepted: {{'decoder': nn.Module, "
                             "'latent_dim': K, 'output': 'logits' | 'probs'}")
        return decoder_model(made["decoder"], made["latent_dim"], made["output"], where,
                             likelihood=made.get("likelihood", "bernoulli"))
    if is_vae(made) and not hasattr(made, "log_likelihood"):  # decode(z), encode(x): VAE code's shape
        return vae_model(made, where)
    if isinstance(made, nn.Module) and not hasattr(made, "log_likelihood"):
        if not hasattr(made, "latent_dim") or not hasattr(made, "output"):
            raise InputError(f"{where}: the factory returned an nn.Module without latent_dim and output "
                             "attributes; accepted: set them on the module, or return {'decoder': module, "
                             "'latent_dim': K, 'output': 'logits' | 'probs'}")
        return decoder_model(made, made.latent_dim, made.output, where,
                             likelihood=getattr(made, "likelihood", "bernoulli"))
    return made  # a model with the protocol: check_model says what it lacks


def _check_weights(model, spec: str) -> None:
    decoder = getattr(model, "decoder", None)
    if isinstance(decoder, nn.Module):
        for name, t in decoder.state_dict().items():
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise InputError(f"model {spec!r}: weight {name} holds NaN or infinity; accepted: "
                                 "finite weights")


# ----------------------------------------------------------------------------- data


def load_dataset(spec: str, split: str = "test", *, cache_dir=None, rows: int | None = None):
    """The data set a spec names: a built-in one (static binarization, seed 0) or an outside one
    (only its first ``rows`` rows kept in memory, :func:`load_data`)."""
    from .data import DATASETS, load

    if spec in DATASETS and spec != "synthetic":
        return load(spec, split, seed=0, cache_dir=cache_dir)
    return load_data(spec, split, rows=rows)


def load_data(spec: str, split: str = "test", *, rows: int | None = None):
    """An outside data set as a :class:`lvm.data.Dataset`: [n, D] float32 0/1 with its identity.

    Only the first ``rows`` rows (all when None) are read, checked and hashed, a block at a time:
    the identity's sha256 is theirs, its ``n`` the file's row count. An ``.npy`` file is
    memory-mapped, so a large file of which a run uses a few rows costs a few rows of memory; an
    ``.npz`` or IDX file is read whole."""
    from .data import SPLITS, Dataset, read_idx

    if not isinstance(spec, str) or not spec:
        raise InputError(f"data spec {spec!r} is invalid; {_accepted(DATA_FORMS)}")
    if split not in SPLITS:
        raise InputError(f"split {split!r}; accepted: {', '.join(SPLITS)}")
    path = Path(spec)
    if IMPORT_PATH.match(spec) and not path.exists():
        arr, source = _call(load_object(spec, "data"), spec, "data"), f"factory:{spec}"
    elif path.is_file():
        source = f"file:{path.name}"
        if path.suffix == ".npy" or path.suffix == ".npz":
            arr = _read_numpy(path, split)
        else:
            arr = read_idx(path)
    else:
        raise InputError(f"data spec {spec!r} is neither a file nor an import path; {_accepted(DATA_FORMS)}")
    if isinstance(arr, torch.Tensor):
        arr = arr.detach().cpu().numpy()
    if not isinstance(arr, np.ndarray):  # a memmap is an ndarray, and stays one
        arr = np.asarray(arr)
    if arr.ndim == 3:  # IDX images [n, rows, cols]
        arr = arr.reshape(len(arr), -1)
    if arr.ndim != 2 or 0 in arr.shape:
        raise InputError(f"data {spec!r} has shape {list(arr.shape)}; accepted: [n, D] with n, D >= 1")
    if not np.issubdtype(arr.dtype, np.number) and arr.dtype != bool:
        raise InputError(f"data {spec!r} holds {arr.dtype}; accepted: numbers 0 and 1")
    n, used = len(arr), arr[:rows]  # a memmap's slice reads nothing yet
    digest = hashlib.sha256()
    for start in range(0, len(used), _BLOCK_ROWS):  # bounded memory: a block of rows at a time
        block = np.asarray(used[start:start + _BLOCK_ROWS])
        if not np.isin(block, (0, 1)).all():
            bad = block[~np.isin(block, (0, 1))][:3].tolist()
            raise InputError(f"data {spec!r} is not binary (values such as {bad}); accepted: 0 and 1 only")
        digest.update(np.ascontiguousarray(block.astype(np.uint8)).tobytes())
    bits = np.ascontiguousarray(np.asarray(used).astype(np.uint8))
    identity = {"name": spec, "split": split, "source": source, "n": n, "dim": arr.shape[1],
                "sha256": digest.hexdigest(),
                "binarize": "given", "seed": None, "source_sha256": None}
    return Dataset(torch.from_numpy(bits).to(torch.float32), None, identity)


_BLOCK_ROWS = 8192  # rows checked and hashed at a time: the same digest as all of them at once


def _read_numpy(path: Path, split: str) -> np.ndarray:
    try:
        loaded = np.load(path, allow_pickle=False, mmap_mode="r")  # .npy: mapped; .npz: per array
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise InputError(f"{path}: not a readable .npy/.npz file without pickles ({e})") from e
    if isinstance(loaded, np.ndarray):
        return loaded
    from .data import SPLITS

    with loaded:
        keys = list(loaded.keys())
        if split in keys:
            return loaded[split]
        if len(keys) == 1 and keys[0] not in SPLITS:  # one array, not named for a split: every split
            return loaded[keys[0]]
        raise InputError(f"run.split = {split!r}: {path} holds no array {split!r} (it has "
                         f"{', '.join(keys) or 'none'}); accepted: an .npz with an array per split "
                         f"named {' and '.join(SPLITS)}, or one array under another name for every split")


# ----------------------------------------------------------------------------- estimators


def estimator_entry_points() -> dict[str, str]:
    """Estimators installed packages register: {name: import path}."""
    return {ep.name: ep.value for ep in _metadata.entry_points(group=ENTRY_POINTS)}


def estimator_path(spec: str) -> str | None:
    """The import path an outside estimator spec names (an entry-point name resolves to its
    target), or None for a spec that is neither."""
    if isinstance(spec, str) and IMPORT_PATH.match(spec):
        return spec
    return estimator_entry_points().get(spec)


def load_estimator(spec: str) -> Callable:
    path = estimator_path(spec)
    if path is None:
        raise InputError(f"estimator {spec!r} is not an import path or a registered name; accepted: "
                         f"package.module:function, or one of the {ENTRY_POINTS!r} entry points "
                         f"({', '.join(estimator_entry_points()) or 'none installed'})")
    fn = load_object(path, "estimator")
    if not callable(fn):
        raise InputError(f"estimator {spec!r} names a {type(fn).__name__}; accepted: a function with "
                         "the signature of lvm.log_space")
    return fn


def run_estimator(fn: Callable, spec: str, model, x: torch.Tensor, n_samples: int, *, dtype,
                  device="cpu", seed: int = 0):
    """Call an outside estimator on its own copy of ``x`` and return an Estimate: its own, or
    one made from the [B] tensor it returned (term counts and ESS unknown: NaN)."""
    from .numerics import dtype_name, parse_dtype
    from .reductions import Estimate

    out = fn(model, x.clone(), n_samples, dtype=dtype, device=device, seed=seed)  # its own x to change
    B = len(x)
    if isinstance(out, Estimate):
        if tuple(out.log_px.shape) != (B,):
            raise InputError(f"estimator {spec!r} returned an Estimate with log_px of shape "
                             f"{list(out.log_px.shape)}; accepted: [{B}], one value per datapoint")
        _floating(out.log_px, spec, "an Estimate whose log_px is")
        return out
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (B,):
        got = f"shape {list(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        raise InputError(f"estimator {spec!r} returned {got}; accepted: an lvm.Estimate or a tensor of "
                         f"shape [{B}], log p(x) per datapoint")
    _floating(out, spec, "a tensor of")
    nan = torch.full((B,), math.nan, dtype=torch.float64)
    return Estimate(spec, dtype_name(parse_dtype(dtype)), n_samples, out.detach().to(torch.float64).cpu(),
                    nan.clone(), nan.clone(), nan.clone(), {"seed": seed, "outside": True})


def _floating(t: torch.Tensor, spec: str, what: str) -> None:
    """A log p(x) of bool or integers is no estimate (True would read as log p = 1)."""
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        got = str(t.dtype).removeprefix("torch.") if isinstance(t, torch.Tensor) else type(t).__name__
        raise InputError(f"estimator {spec!r} returned {what} {got}; accepted: floating point log p(x)")
