"""Models as VAE code has them: a module with ``decode(z)``, ``encode(x)`` and ``latent_dim``.

Most VAE code (the PyTorch MNIST example among it) is one ``nn.Module`` whose ``decode(z)``
maps [N, K] draws to [N, D] pixel parameters and whose ``encode(x)`` maps [B, D] data to
q(z|x). A factory may return such a module (:func:`lvm.sources.load_model`); :func:`vae_model`
makes it a :class:`~lvm.model.BernoulliLVM` whose decoder is ``decode`` (:class:`VAEDecoder`)
and whose encoder is ``encode`` (:class:`VAEEncoder`), so that ``--proposal encoder`` draws
from the model's own q(z|x). The module's attributes:

- ``latent_dim``: K (required);
- ``output``: what ``decode`` returns, ``"logits"`` or ``"probs"`` (required). The model is
  measured under that parametrization; probs with the sigmoid inside ``decode`` has no logits
  view, which the sweep records as an exclusion with its reason;
- ``likelihood``: ``"bernoulli"`` (the default; the only family supported so far);
- ``encoder_output``: what the second of the two tensors ``encode`` returns is, ``"log_var"``
  (the default, as in the PyTorch example) or ``"log_std"``. An ``encode`` that returns a
  ``torch.distributions.Normal`` with batch shape [B, K], or an ``Independent(Normal, 1)`` with
  batch shape [B] and event shape [K], needs none.

q(z|x) is the diagonal Gaussian ``encode`` describes, as it is: unlike the suite's
:class:`~lvm.encoder.GaussianEncoder`, its log std is not clamped. A mean or log std of
another shape, or one that is not finite, is an InputError naming the model. A module without
``encode`` is a decoder only (the prior proposal only).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributions import Independent, Normal

from .encoder import Encoder
from .errors import InputError
from .model import BernoulliLVM
from .model_files import decoder_model

ENCODER_OUTPUTS = ("log_var", "log_std")  # what the second of encode's two tensors is


def is_vae(made: Any) -> bool:
    """Whether a factory returned a module in the shape of VAE code (a ``decode`` method)."""
    return isinstance(made, nn.Module) and callable(getattr(made, "decode", None))


def vae_model(module: nn.Module, where: str):
    """The :class:`~lvm.model.BernoulliLVM` of a module with ``decode`` (and ``encode``); an
    InputError naming ``where`` for a missing or unsupported attribute."""
    for name in ("latent_dim", "output"):
        if not hasattr(module, name):
            raise InputError(f"{where}: the module has decode(z) but no {name} attribute; accepted: "
                             "set latent_dim = K and output = 'logits' | 'probs' (what decode returns) "
                             "on the module")
    model = decoder_model(VAEDecoder(module), module.latent_dim, module.output, where,
                          likelihood=getattr(module, "likelihood", "bernoulli"))
    if not callable(getattr(module, "encode", None)):
        return model
    convention = getattr(module, "encoder_output", "log_var")
    if convention not in ENCODER_OUTPUTS:
        raise InputError(f"{where}: encoder_output={convention!r}; accepted: {', '.join(ENCODER_OUTPUTS)} "
                         "(what the second tensor encode(x) returns is)")
    encoder = VAEEncoder(module, model.latent_dim, model.data_dim, convention, where)
    return BernoulliLVM(model.decoder, model.latent_dim, model.output, model.data_dim, encoder=encoder)


class VAEDecoder(nn.Module):
    """A module's ``decode(z)`` as a decoder: ``forward(z) = module.decode(z)``."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.module.decode(z)


class VAEEncoder(Encoder):
    """A module's ``encode(x)`` as q(z|x): :meth:`params` reads it in ``convention`` (or as the
    Normal it returns) and checks its shape and values."""

    def __init__(self, module: nn.Module, latent_dim: int, data_dim: int, convention: str, where: str):
        super().__init__()
        self.module = module
        self.latent_dim, self.data_dim, self.convention = latent_dim, data_dim, convention
        self._where = where  # private: lvm.guard fingerprints public attributes, and this is a name

    def params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            out = self.module.encode(x)
        except InputError:
            raise
        except Exception as e:  # noqa: BLE001 - the user's encode failed: bad input
            raise InputError(f"{self._where}: encode(x) raised {type(e).__name__} on x of shape "
                             f"{list(x.shape)}: {e}") from e
        mean, log_std, what = self._read(out, len(x))
        bad = ~(torch.isfinite(mean).all(-1) & torch.isfinite(log_std).all(-1))
        if bad.any():
            raise InputError(f"{self._where}: encode(x) gave {what} that is NaN or infinite for "
                             f"{int(bad.sum())} of {len(x)} rows; accepted: finite values for every row")
        return mean.to(x.dtype), log_std.to(x.dtype)

    def _read(self, out: Any, B: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        """(mean, log std, what it was) of what encode returned, its shapes checked."""
        K = self.latent_dim
        accepted = (f"accepted: (mean, {self.convention}), two tensors of shape [B, K] = [{B}, {K}] "
                    "(encoder_output = 'log_var' or 'log_std' says which the second is), a Normal with "
                    f"batch shape [{B}, {K}], or an Independent(Normal, 1) with batch shape [{B}] and "
                    f"event shape [{K}]")
        if isinstance(out, Independent) and isinstance(out.base_dist, Normal):
            got = (f"an Independent(Normal) with batch shape {list(out.batch_shape)} and event shape "
                   f"{list(out.event_shape)}")
            if tuple(out.batch_shape) != (B,) or tuple(out.event_shape) != (K,):
                raise InputError(f"{self._where}: encode(x) returned {got}; {accepted}")
            return out.base_dist.loc, torch.log(out.base_dist.scale), "a Normal's loc or scale"
        if isinstance(out, Normal):
            got = f"a Normal with batch shape {list(out.batch_shape)}"
            if tuple(out.batch_shape) != (B, K):
                raise InputError(f"{self._where}: encode(x) returned {got}; {accepted}")
            return out.loc, torch.log(out.scale), "a Normal's loc or scale"
        if not (isinstance(out, (tuple, list)) and len(out) == 2
                and all(isinstance(t, torch.Tensor) for t in out)):
            got = (f"a {type(out).__name__} of {len(out)}" if isinstance(out, (tuple, list))
                   else f"a {type(out).__name__}")
            raise InputError(f"{self._where}: encode(x) returned {got}; {accepted}")
        mean, second = out
        for name, t in (("mean", mean), (self.convention, second)):
            if tuple(t.shape) != (B, K):
                raise InputError(f"{self._where}: encode(x) returned a {name} of shape {list(t.shape)}; "
                                 f"{accepted}")
        log_std = 0.5 * second if self.convention == "log_var" else second
        return mean, log_std, f"a mean or {self.convention}"
