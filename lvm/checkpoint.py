"""Trained weights on disk: a float32 state dict (.pt) beside its JSON metadata (.json).

A checkpoint is the decoder of a :class:`~lvm.model.BernoulliLVM` built by
:func:`lvm.model.build` from an architecture dict: its state dict as it is. A model with an
encoder (the zoo's vae-k{K}, iwae-k{K}) is one flat state dict of both networks, the keys
prefixed ``decoder.`` and ``encoder.``, its metadata holding ``encoder_architecture``
beside ``architecture``. Loading uses
``torch.load(weights_only=True)`` (never runs code) and checks the file
against the metadata's sha256 and the requested architecture, so a corrupt,
replaced or mismatched file is an InputError naming it, never a silently
wrong model. Both files are written atomically (:func:`lvm._io.atomic_write`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Protocol

import torch

from ._io import atomic_write
from .errors import InputError, one_line
from .model import BernoulliLVM, build


class Trained(Protocol):
    """What :func:`save_checkpoint` needs: a model and its metadata (a TrainResult)."""

    model: BernoulliLVM
    metadata: dict[str, Any]


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(result: Trained, path: str | os.PathLike[str]) -> Path:
    """Write ``path`` (.pt: the float32 state dict) and its .json metadata, atomically.

    ``result``: a :class:`lvm.train.TrainResult` (anything with ``model`` and
    ``metadata``); its metadata is replaced by what was written. The JSON gets
    the sha256 and size of the .pt; it is written second, so a checkpoint with
    metadata is always complete.
    """
    path = Path(path).with_suffix(".pt")
    state = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in _state(result.model).items()}
    atomic_write(path, lambda f: torch.save(state, f))
    meta = dict(result.metadata, sha256=_sha256_file(path), size_bytes=path.stat().st_size,
                file=path.name)
    result.metadata = meta
    atomic_write(path.with_suffix(".json"),
                 lambda f: f.write((json.dumps(meta, indent=2, sort_keys=False) + "\n").encode()))
    return path


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The checkpoint's .json metadata, or None if there is none."""
    meta = Path(path).with_suffix(".json")
    if not meta.is_file():
        return None
    try:
        return json.loads(meta.read_text())
    except (ValueError, OSError) as e:
        raise InputError(f"{meta}: unreadable checkpoint metadata ({e})") from e


def load_checkpoint(path: str | os.PathLike[str], arch: dict[str, Any], *,
                    encoder_arch: dict[str, Any] | None = None, verify: bool = True) -> BernoulliLVM:
    """Load a state dict saved by :func:`save_checkpoint` into a model of ``arch``.

    ``encoder_arch``: the encoder's architecture (:func:`lvm.encoder.encoder_architecture`)
    for a checkpoint of a model with an encoder; None for a decoder-only checkpoint.
    Uses ``torch.load(weights_only=True)``: loading never runs code. Raises
    InputError naming the file when it is missing or not a tensor state dict, when its
    sha256 differs from the metadata's (``verify``), or when its keys, shapes
    or recorded architectures do not match ``arch`` and ``encoder_arch``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint file")
    meta = read_metadata(path)
    if verify and meta is not None and "sha256" in meta:
        digest = _sha256_file(path)
        if digest != meta["sha256"]:
            raise InputError(f"{path}: sha256 {digest[:16]}... does not match {meta['sha256'][:16]}... "
                             f"recorded in {path.with_suffix('.json').name}: the file is corrupt or was "
                             "replaced; delete it (cache) or regenerate it")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError (bad zip), EOFError, ...
        raise InputError(f"{path}: not a loadable weights-only state dict ({one_line(e)})") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
    try:  # shapes first, on the meta device: a sidecar's "hidden": 10**9 allocates nothing
        with torch.device("meta"):
            want = {k: tuple(v.shape) for k, v in _state(build(arch, encoder_arch=encoder_arch)).items()}
    except (TypeError, ValueError, RuntimeError) as e:
        desc = ", ".join(f"{k}={v!r}" for k, v in arch.items())
        raise InputError(f"{path}: cannot build the architecture ({desc}): {one_line(e)}; accepted: "
                         "positive integers latent_dim, hidden, layers, data_dim") from e
    have = {k: tuple(v.shape) for k, v in state.items()}
    problems = []
    for field, requested, what in (("architecture", arch, ""), ("encoder_architecture", encoder_arch,
                                                                "encoder ")):
        recorded = (meta or {}).get(field)
        if recorded is not None and requested is not None:
            problems += [f"metadata {what}{k}={recorded.get(k)!r}, requested {what}{k}={v!r}"
                         for k, v in requested.items() if recorded.get(k) != v]
    if encoder_arch is None and any(k.startswith("encoder.") for k in have):
        problems.append("the file holds an encoder (keys encoder.*): load it with its encoder_arch "
                        "(the zoo names vae-k{K} and iwae-k{K} do)")
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing:
        problems.append(f"missing keys {missing}")
    if extra:
        problems.append(f"unexpected keys {extra}")
    problems += [f"{k}: file has shape {have[k]}, architecture needs {want[k]}"
                 for k in want if k in have and have[k] != want[k]]
    if problems:
        desc = ", ".join(f"{k}={v}" for k, v in arch.items())
        raise InputError(f"{path}: checkpoint does not match the requested architecture ({desc}): "
                         + "; ".join(problems))
    state = {k: v.to(torch.float32) for k, v in state.items()}
    model = build(arch, encoder_arch=encoder_arch)  # the shapes match the file's: sized by it
    if model.encoder is None:
        model.decoder.load_state_dict(state)
    else:
        for prefix, net in (("decoder.", model.decoder), ("encoder.", model.encoder)):
            net.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    for net in (model.decoder, model.encoder):
        if net is not None:
            net.eval().requires_grad_(False)
    model.invalidate()
    return model


def _state(model: BernoulliLVM) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint of ``model`` holds, by key: the decoder's state dict, or both
    networks' with ``decoder.`` / ``encoder.`` prefixes."""
    if model.encoder is None:
        return model.decoder.state_dict()
    return {f"{p}.{k}": v for p in ("decoder", "encoder") for k, v in getattr(model, p).state_dict().items()}

