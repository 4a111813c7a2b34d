"""A decoder as a model: a decoder module (``decoder_model``), or a decoder file (``from_file``:
a TorchScript decoder, a ``torch.export`` program (.pt2) or a state dict, with its .json sidecar).

The grammar of specs is :mod:`lvm.sources`; this module reads the file. Every key of the sidecar is
read or refused: an unknown key is an InputError naming it and listing the accepted ones, so
that nothing it says (an ``"activation": "ReLU"``) is dropped in silence.
"""

from __future__ import annotations

import copy
import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import InputError, check_int, one_line
from .protocol import check_latent_dim

# What a decoder file's .json may hold: for TorchScript, and for a state dict the architecture
# (at the top level, or under "architecture" in the zoo's checkpoint metadata, whose keys follow).
SCRIPT_KEYS = ("latent_dim", "output", "likelihood")  # TorchScript and torch.export programs
TORCHSCRIPT, EXPORT = "TorchScript", "torch.export"  # the program files a decoder may come in
LIKELIHOODS = ("bernoulli",)  # the likelihood families a decoder may declare ("gaussian": not yet)
ARCHITECTURE_KEYS = ("latent_dim", "hidden", "layers", "output", "activation", "data_dim")
CHECKPOINT_KEYS = (
    "format", "name", "architecture", "encoder_architecture", "objective", "objective_formula", "recipe",
    "recipe_key", "steps", "batch_size", "n_samples", "k", "lr", "optimizer", "seed", "dtype", "z_sharing",
    "data", "final_train_loss", "final_train_loss_window", "final_train_loss_note", "train_loss_full_split",
    "train_loss_full_split_note", "test_bounds", "loss_curve", "textbook_recipe", "deviations_from_textbook",
    "wall_time_s", "threads", "torch_version", "python_version", "platform", "sha256", "size_bytes", "file")


def check_likelihood(likelihood: Any, where: str) -> str:
    """``likelihood`` if it is a family the suite measures; an InputError naming ``where``."""
    if likelihood not in LIKELIHOODS:
        planned = " is not supported yet" if likelihood == "gaussian" else ""
        raise InputError(f"{where}: likelihood={likelihood!r}{planned}; accepted: {', '.join(LIKELIHOODS)}")
    return likelihood


def decoder_model(decoder: nn.Module, latent_dim: Any, output: Any, where: str, *,
                  likelihood: Any = "bernoulli"):
    """The :class:`~lvm.model.BernoulliLVM` of a decoder module whose ``output`` (logits or probs)
    is what it declares; D from a probe on one draw. An InputError naming ``where``."""
    from .axes import PARAMETRIZATIONS
    from .model import BernoulliLVM

    check_likelihood(likelihood, where)
    if output not in PARAMETRIZATIONS:
        raise InputError(f"{where}: output={output!r}; accepted: {', '.join(PARAMETRIZATIONS)}")
    check_latent_dim(latent_dim, where)
    p = next(decoder.parameters(), None)
    try:
        with torch.no_grad():
            width = decoder(torch.zeros(1, latent_dim, dtype=p.dtype if p is not None else torch.float32))
    except Exception as e:  # noqa: BLE001 - the user's decoder failed on a probe: bad input
        raise InputError(f"{where}: the decoder fails on a [1, {latent_dim}] input "
                         f"({type(e).__name__}: {e}); accepted: a module mapping [N, K] to [N, D]") from e
    if not isinstance(width, torch.Tensor) or width.dim() != 2 or width.shape[0] != 1:
        got = list(width.shape) if isinstance(width, torch.Tensor) else type(width).__name__
        raise InputError(f"{where}: the decoder maps a [1, {latent_dim}] input to {got}; accepted: "
                         "a tensor [1, D]")
    return BernoulliLVM(decoder, latent_dim, output, int(width.shape[1]))


def _sidecar(path: Path) -> dict | None:
    side = path.with_suffix(".json")
    if not side.is_file():
        return None
    try:
        data = json.loads(side.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"{side}: unreadable JSON ({e})") from e
    if not isinstance(data, dict):
        raise InputError(f"{side}: a JSON {type(data).__name__}; accepted: an object")
    return data


def from_file(path: Path):
    """The model of a decoder file: a TorchScript decoder, a torch.export program (.pt2), or a
    state dict of the suite's decoder."""
    from .checkpoint import load_checkpoint

    side = _sidecar(path)
    kind = _archive_kind(path)
    if kind is not None:
        module = _load_program(path, kind)
        info = side or {}
        _known(path, info, SCRIPT_KEYS)
        latent_dim = info.get("latent_dim", getattr(module, "latent_dim", None))
        output = info.get("output", getattr(module, "output", None))
        if latent_dim is None or output is None:
            raise InputError(f"{path}: a {kind} decoder needs latent_dim and output, in "
                             f"{path.with_suffix('.json').name} ({{\"latent_dim\": K, \"output\": "
                             "\"logits\"}) or as module attributes")
        if kind == EXPORT:
            _check_batch(module, latent_dim, path)
        return decoder_model(module, latent_dim, output, str(path),
                             likelihood=info.get("likelihood", getattr(module, "likelihood", "bernoulli")))
    if side is None:
        raise InputError(f"{path}: a state dict needs its architecture in {path.with_suffix('.json').name}; "
                         "accepted: {\"latent_dim\": K, \"hidden\": H, \"layers\": L, \"output\": "
                         "\"logits\" | \"probs\", \"data_dim\": D}")
    if "architecture" in side:  # the zoo's checkpoint metadata
        _known(path, side, CHECKPOINT_KEYS)
        if not isinstance(side["architecture"], dict):
            raise InputError(f"{path.with_suffix('.json')}: architecture is a "
                             f"{type(side['architecture']).__name__}; accepted: an object")
    arch = side.get("architecture", side)
    _known(path, arch, ARCHITECTURE_KEYS, "architecture." if arch is not side else "")
    if arch.get("activation", "ELU") != "ELU":
        raise InputError(f"{path.with_suffix('.json')}: activation={arch['activation']!r}; accepted: ELU "
                         "(the suite's decoder; save another network with torch.export.save or "
                         "torch.jit.save)")
    need = ("latent_dim", "hidden", "layers", "output")
    if not all(k in arch for k in need):
        raise InputError(f"{path.with_suffix('.json')}: the architecture lacks "
                         f"{', '.join(k for k in need if k not in arch)}; accepted keys: "
                         f"{', '.join(need)}, data_dim")
    from .model import architecture

    check_latent_dim(arch["latent_dim"], str(path.with_suffix(".json")))
    for key in ("hidden", "layers", "data_dim"):
        if key in arch:
            check_int(f"{path.with_suffix('.json')}: {key}", arch[key], minimum=1)
    try:
        full = architecture(arch["latent_dim"], arch["hidden"], arch["layers"], arch["output"],
                            arch.get("data_dim", 784))
    except TypeError as e:
        raise InputError(f"{path.with_suffix('.json')}: invalid architecture ({e})") from e
    return load_checkpoint(path, full)


def _known(path: Path, data: dict, accepted: tuple[str, ...], prefix: str = "") -> None:
    """InputError naming the keys of a sidecar that are not ``accepted``: a key the suite would
    not read must not be dropped in silence (an "activation" it would not build)."""
    unknown = [k for k in data if k not in accepted]
    if unknown:
        named = ", ".join(repr(prefix + k) for k in unknown)
        raise InputError(f"{path.with_suffix('.json')}: unknown key(s) {named}; accepted keys: "
                         f"{', '.join(accepted)}")


def _archive_kind(path: Path) -> str | None:
    """TORCHSCRIPT for a zip holding ``<name>/code/``, EXPORT for torch.export.save's archive
    (``<name>/archive_format`` and ``<name>/models/``), None otherwise (a state dict's zip has neither)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return None
    if any("/code/" in n for n in names):
        return TORCHSCRIPT
    if any(n.endswith("/archive_format") for n in names) and any("/models/" in n for n in names):
        return EXPORT
    return None


def _load_program(path: Path, kind: str) -> nn.Module:
    try:
        if kind == TORCHSCRIPT:
            return torch.jit.load(str(path), map_location="cpu")
        return ExportedDecoder(torch.export.load(str(path)).module())
    except Exception as e:  # noqa: BLE001 - a damaged archive
        raise InputError(f"{path}: not a loadable {kind} module ({one_line(e)})") from e


class ExportedDecoder(nn.Module):
    """A torch.export program's module as a decoder. The suite casts deep copies of a decoder per
    dtype; torch's own deep copy of the program warns about torch's internals (a FutureWarning
    a user can do nothing about), which this copy keeps quiet."""

    def __init__(self, program: nn.Module):
        super().__init__()
        self.program = program

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.program(z)

    def __deepcopy__(self, memo: dict) -> ExportedDecoder:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*treespec")
            return ExportedDecoder(copy.deepcopy(self.program, memo)).train(self.training)


def _check_batch(module: nn.Module, latent_dim: Any, path: Path) -> None:
    """An exported program runs on the batch sizes it was exported for only: the suite decodes
    chunks of any size, so the batch dimension must be dynamic."""
    check_latent_dim(latent_dim, str(path))
    p = next(module.parameters(), None)
    for n in (1, 3):
        try:
            with torch.no_grad():
                module(torch.zeros(n, latent_dim, dtype=p.dtype if p is not None else torch.float32))
        except Exception as e:  # noqa: BLE001 - the program's guards refuse the shape: bad input
            raise InputError(f"{path}: the exported program fails on [{n}, {latent_dim}] draws "
                             f"({one_line(e)}); accepted: "
                             "a decoder exported with a dynamic batch dimension, torch.export.export("
                             "decoder, (z,), dynamic_shapes=({0: torch.export.Dim('N')},))") from e
