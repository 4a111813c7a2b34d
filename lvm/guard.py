"""Outside models under guard: how the suite checks and fingerprints code it did not write,
and keeps it from changing the data.

:func:`guard` wraps every model :func:`lvm.sources.load_model` loads from outside the zoo. A
decoder (a factory's ``nn.Module``, a TorchScript file, a state dict) goes inside a
:class:`GuardedDecoder`, and the :class:`~lvm.model.BernoulliLVM` around it is the suite's; a
model with the protocol of its own goes inside a :class:`GuardedModel`, whose
``log_likelihood`` and ``pixel_probs`` get their own copy of x (an outside estimator gets
one from :func:`lvm.sources.run_estimator`): what outside code does to its x never reaches
the data the other cells use.

A decoder gets its own copy of z, and an outside encoder (a module's ``encode``, :mod:`lvm.vae`)
goes inside a :class:`GuardedEncoder`, which gives it its own copy of x.

**Checked** on every call (:func:`check`): a decoder's output is [N, D] on z's device in z's
dtype, a log_likelihood [B, N] and pixel_probs [B, N, D] on z's device in the dtype asked
(under ``torch.autocast``: floating point); anything else is an InputError naming the model.
(An encoder's mean and log std are checked where they are read, :class:`lvm.vae.VAEEncoder`.)
The probe below makes the first such call when the model is loaded, in float64.

**Fingerprint** (what keys the cached ground truth, :func:`lvm.reference.log_marginal`, and
what meta.json records, so that ``compare`` sees a change): sha256 of

1. the code: ``inspect.getsource`` of each class of the decoder's (and an outside encoder's)
   modules, or of the model's class and its bases, that torch does not define (TorchScript:
   each module's ``.code``; a torch.export program: its graph's ``.code``; ``"<no source>"``
   where there is none);
2. the plain attributes (numbers, strings, booleans) of those modules or of the model;
3. a probe: the float64 output on 8 draws of a fixed seed (the decoder's output, and an outside
   encoder's mean and log std on 4 seeded binary rows; the model's draws, its log_likelihood of
   4 seeded binary rows and its log_prior when it has one), each
   value written with 10 significant digits, so that a BLAS that sums in another order gives
   the same key while a changed computation does not. Lower precisions are not probed: their
   rounding differs between machines, and the ground truth is float64;
4. the weights: for a decoder, :meth:`BernoulliLVM.fingerprint` of the whole (its repr and
   state dict, this digest included as the buffer ``guard_sha256``); for a model, the tensors
   and the modules' state dicts among its attributes, and its own ``fingerprint()`` if any.

A model without ``data_dim`` cannot be probed (there is no x to give it): it has no
fingerprint, so its ground truth is never cached.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
from typing import Any

import torch
from torch import nn

from .encoder import Encoder, GaussianEncoder
from .errors import InputError
from .model import BernoulliLVM
from .numerics import parse_dtype

PROBE_SEED, PROBE_DRAWS, PROBE_ROWS, DIGITS = 0, 8, 4, 10
SKIP_ATTRIBUTES = ("training",)  # module state that does not change the computation (copies are eval)


def guard(model: Any, where: str) -> Any:
    """``model`` (loaded from outside the zoo) under guard; ``where`` names it in messages.
    An InputError naming it when the probe fails."""
    try:
        if type(model) is BernoulliLVM:  # the suite's own class: only the decoder is outside code
            return _guard_decoder(model, where)
        return GuardedModel(model, where)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - the outside code failed on the probe: bad input
        raise InputError(f"{where} fails on the suite's probe ({PROBE_DRAWS} draws, float64): "
                         f"{type(e).__name__}: {e}") from e


# ----------------------------------------------------------------------------- decoders


class GuardedDecoder(nn.Module):
    """An outside decoder whose every output is checked, its identity carried as the buffer
    ``guard_sha256``."""

    def __init__(self, inner: nn.Module, where: str, width: int):
        super().__init__()
        self.inner = inner
        self.where, self.width = where, width
        self.register_buffer("guard_sha256", torch.zeros(32, dtype=torch.uint8))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.inner(z.clone())  # its own z: changing it changes nothing of the draws
        return check(out, (len(z), self.width), z, z.dtype, self.where, "the decoder")


class GuardedEncoder(Encoder):
    """An outside encoder (a module's ``encode``, :mod:`lvm.vae`) that gets its own copy of x."""

    def __init__(self, inner: Encoder):
        super().__init__()
        self.inner = inner
        self.latent_dim, self.data_dim = inner.latent_dim, inner.data_dim

    def params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inner.params(x.clone())


def _guard_decoder(model: BernoulliLVM, where: str) -> BernoulliLVM:
    dec = model.decoder
    layers = list(dec.children()) if type(dec) is nn.Sequential else []  # a subclass may have its forward
    if len(layers) > 1 and isinstance(layers[-1], nn.Sigmoid):  # keep the Sigmoid outside: with_output
        guarded = GuardedDecoder(nn.Sequential(*layers[:-1]), where, model.data_dim)  # ("logits")
        decoder: nn.Module = nn.Sequential(guarded, nn.Sigmoid())  # drops it
    else:
        guarded = decoder = GuardedDecoder(dec, where, model.data_dim)
    encoder = model.encoder  # the suite's own GaussianEncoder: its weights are in the fingerprint
    outside = encoder is not None and type(encoder) is not GaussianEncoder
    if outside:
        encoder = GuardedEncoder(encoder)
    out = BernoulliLVM(decoder, model.latent_dim, model.output, model.data_dim, encoder=encoder)
    g = torch.Generator().manual_seed(PROBE_SEED)
    z = torch.randn(PROBE_DRAWS, model.latent_dim, generator=g, dtype=torch.float64)
    with torch.no_grad():
        probe = [copy.deepcopy(decoder).to(torch.float64).eval()(z)]
        if outside:  # its mean and log std on seeded binary rows: a wrong shape is refused here
            x = (torch.rand(PROBE_ROWS, model.data_dim, generator=g) < 0.5).to(torch.float64)
            q = out.proposal(x)
            probe += [q.mean, q.log_std]
    h = hashlib.sha256()
    _code(h, guarded.inner.modules())
    if outside:
        _code(h, encoder.inner.modules())
    for t in probe:
        h.update(_numbers(t).encode())
    guarded.guard_sha256.copy_(torch.frombuffer(bytearray(h.digest()), dtype=torch.uint8))
    return out


# ----------------------------------------------------------------------------- models


class GuardedModel:
    """A model with the protocol of its own, fingerprinted as the module docstring says.

    Every other attribute is the model's own (``hasattr`` answers as for the model)."""

    def __init__(self, model: Any, where: str):
        self.wrapped = model
        self.where = where
        self._views: dict[str, GuardedModel] = {}
        self._digest = _model_digest(self) if isinstance(getattr(model, "data_dim", None), int) else None

    @property
    def latent_dim(self) -> int:
        return self.wrapped.latent_dim

    def sample_prior(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.wrapped.sample_prior(n, generator)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor, dtype) -> torch.Tensor:
        ll = self.wrapped.log_likelihood(x.clone(), z, dtype)  # its own x: changing it changes nothing
        return check(ll, (len(x), len(z)), z, parse_dtype(dtype), self.where, "log_likelihood(x, z, dtype)")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("wrapped", "where", "_views", "_digest"):
            raise AttributeError(name)  # not set yet (copy, pickle): never the model's
        if name == "fingerprint":
            if self._digest is None:
                raise AttributeError(f"{self.where} has no data_dim: it cannot be probed, so it has no "
                                     "fingerprint")
            return lambda: self._digest
        value = getattr(self.wrapped, name)  # AttributeError when the model lacks it
        if name == "with_output":
            return self._with_output
        if name == "pixel_probs":
            return lambda x, z, dtype: check(value(x.clone(), z, dtype), (len(x), len(z), x.shape[-1]), z,
                                             parse_dtype(dtype), self.where, "pixel_probs(x, z, dtype)")
        return value

    def _with_output(self, output: str) -> GuardedModel:
        if output not in self._views:
            view = self.wrapped.with_output(output)
            self._views[output] = self if view is self.wrapped else GuardedModel(view, self.where)
        return self._views[output]


def _model_digest(model: GuardedModel) -> str:
    inner = model.wrapped
    g = torch.Generator().manual_seed(PROBE_SEED)
    with torch.no_grad():
        z = model.sample_prior(PROBE_DRAWS, g)
        x = (torch.rand(PROBE_ROWS, inner.data_dim, generator=g) < 0.5).to(torch.float32)
        ll = model.log_likelihood(x, z, torch.float64)
        prior = inner.log_prior(z) if callable(getattr(inner, "log_prior", None)) else None
    h = hashlib.sha256()
    _code(h, [inner])
    for name, v in sorted(vars(inner).items()):  # the weights it holds
        if isinstance(v, nn.Module):
            _code(h, v.modules())
            for key, t in v.state_dict().items():
                h.update(f"|{name}.{key}|".encode() + _bytes(t))
        elif isinstance(v, torch.Tensor):
            h.update(f"|{name}|".encode() + _bytes(v))
    for t in (z, ll, prior):
        h.update(b"|" + (_numbers(t) if isinstance(t, torch.Tensor) else repr(t)).encode())
    own = getattr(inner, "fingerprint", None)
    h.update(f"|{own() if callable(own) else None}".encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------- checks


def check(out: Any, shape: tuple[int, ...], z: torch.Tensor, dtype: torch.dtype, where: str,
          what: str) -> torch.Tensor:
    """``out``, what outside code returned for draws ``z`` when ``dtype`` was asked, if it is a
    tensor of ``shape`` on z's device in that dtype (under torch.autocast: floating point);
    otherwise an InputError naming ``where``."""
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != shape:
        got = f"shape {list(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        raise InputError(f"{where}: {what} returned {got}; accepted: a tensor of shape {list(shape)}")
    if out.device != z.device:
        raise InputError(f"{where}: {what} returned a tensor on {out.device} for draws on {z.device}; "
                         "accepted: the draws' device")
    if out.dtype != dtype and not (out.is_floating_point() and torch.is_autocast_enabled(z.device.type)):
        raise InputError(f"{where}: {what} returned {_name(out.dtype)} where {_name(dtype)} was asked; "
                         "accepted: a tensor in the dtype asked (its numbers are reported as that dtype's)")
    return out


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ----------------------------------------------------------------------------- hashing


def _code(h, objects) -> None:
    """Hash the code and plain attributes of ``objects`` (modules or a model), torch's aside."""
    seen: set[type] = set()
    for obj in objects:
        if isinstance(obj, torch.jit.ScriptModule):
            h.update(f"|script|{getattr(obj, 'original_name', '')}|{_script_code(obj)}".encode())
            continue
        if isinstance(obj, torch.fx.GraphModule):  # a torch.export program: its graph is its code
            h.update(f"|graph|{obj.code}".encode())
            continue
        for cls in type(obj).__mro__:
            if cls in seen or cls is object or cls.__module__.split(".")[0] == "torch":
                continue
            seen.add(cls)
            try:
                source = inspect.getsource(cls)
            except (OSError, TypeError):
                source = "<no source>"
            h.update(f"|class|{cls.__module__}.{cls.__qualname__}|{source}".encode())
        plain = sorted((k, repr(v)) for k, v in vars(obj).items()
                       if not k.startswith("_") and k not in SKIP_ATTRIBUTES
                       and isinstance(v, (bool, int, float, str, type(None))))
        h.update(f"|attributes|{plain}".encode())


def _script_code(module: torch.jit.ScriptModule) -> str:
    try:
        return module.code
    except (AttributeError, RuntimeError):
        return "<no code>"


def _bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous().flatten()
    return f"{t.dtype}{list(t.shape)}".encode() + t.view(torch.uint8).numpy().tobytes()


def _numbers(t: torch.Tensor) -> str:
    """A tensor's shape, dtype and values, each to DIGITS significant digits."""
    values = t.detach().to("cpu", torch.float64).flatten().tolist()
    return f"{list(t.shape)}|{t.dtype}|" + ",".join(f"{v:.{DIGITS}g}" for v in values)
