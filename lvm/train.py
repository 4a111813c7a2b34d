"""Training the zoo's models: decoders by prior sampling, or with an amortised encoder.

Four objectives (:mod:`lvm.objectives`): two sample z from the prior N(0, I_K), never from
an encoder ("prior-iwae", "jensen"); two train a :class:`~lvm.encoder.GaussianEncoder` q(z|x)
jointly with the decoder ("vae", "iwae"). Losses are reported in nats per datapoint,
positive (= -objective).

How prior z is drawn (``Recipe.z_sharing``, the prior objectives only):

``"batch"`` (default)
    one set of N prior samples per step, shared by every datapoint of the
    minibatch. The likelihood is then the BernoulliLVM logits fast path, one
    matrix multiply ``x @ l.T - softplus(l).sum(-1)`` with l = decoder(z)
    of shape [N, 784], and the decoder sees N inputs per step instead of B*N.
    Each datapoint's loss is the same N-sample objective as the textbook's
    (same expectation and gradient in expectation); only the minibatch mean
    is noisier because its terms share z. The much cheaper step is what
    lets the full recipe run on a laptop CPU; the price is a slightly higher
    final loss than independent z, and the choice is recorded in every
    checkpoint's metadata.
``"datapoint"``
    independent z per datapoint, as in the textbook: the decoder runs on
    B*N inputs and the likelihood is summed per pixel over [B, N, 784].

Reproducibility: the initial weights are ``seed_decoder(..., seed=recipe.seed)`` (and
``seed_encoder(..., seed=recipe.seed)``), the minibatch order and the z (eps) draws come from
their own seeded streams
(:func:`lvm.rng.generator`), and training pins torch to one thread (BLAS
results can depend on the thread count), so a recipe gives bit-identical
weights on a given machine and torch build.

Saving and loading trained weights is :mod:`lvm.checkpoint`; the named models
and the command that trains them are :mod:`lvm.zoo`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import encoder as _encoder
from . import rng
from .axes import PARAMETRIZATIONS
from .errors import InputError
from .model import BernoulliLVM, architecture, build
from .objectives import ENCODER_OBJECTIVES, OBJECTIVE_FORMULAS, OBJECTIVES, PRIOR_OBJECTIVES, loss
from .runtime import set_torch_threads

DEFAULT_K = {"vae": 1, "iwae": 5}  # Recipe.k when not given: draws of q(z|x) per datapoint and step
PRIOR_FIELDS = ("n_samples", "z_sharing")  # Recipe fields that only the prior objectives use
ENCODER_FIELDS = ("k", "encoder_hidden", "encoder_layers")  # ... that only the encoder objectives use
Z_SHARING = ("batch", "datapoint")
FORMAT = "lvm-bench-checkpoint/1"
STREAM_DATA, STREAM_Z, STREAM_EVAL = 0, 1, 2  # rng.generator(seed, stream): minibatch order, z, evaluation
LOSS_WINDOW = 50  # final_train_loss = mean minibatch loss over the last LOSS_WINDOW steps

# The textbook series' recipe, recorded next to ours so every deviation is explicit.
TEXTBOOK_RECIPE = {
    "hidden": 512, "layers": 3, "output": "logits", "steps": 1000, "batch_size": 256,
    "n_samples": 128, "optimizer": "Adam", "z_sharing": "datapoint",
    "data": "static binarized MNIST, 60,000 training digits",
    "reported_train_loss_k2": {"prior-iwae": "about 142 to 147 nats", "jensen": "about 208 nats"},
}


@dataclass(frozen=True)
class Recipe:
    """Everything that determines a trained model (its hash names cache files).

    ``n_samples`` and ``z_sharing`` apply to the prior objectives, ``k``, ``encoder_hidden``
    and ``encoder_layers`` to the encoder objectives (``k`` None: ``DEFAULT_K``). A field that
    does not apply must keep its default and is left out of :meth:`settings` and :meth:`key`,
    so the keys of prior-objective recipes are those they had before encoders existed.
    """

    objective: str
    latent_dim: int
    hidden: int = 512
    layers: int = 3
    output: str = "logits"
    steps: int = 1000
    batch_size: int = 256
    n_samples: int = 128
    lr: float = 1e-3
    seed: int = 0
    z_sharing: str = "batch"
    dataset: str = "mnist-5k"
    split: str = "train"
    binarize: str = "static"
    data_seed: int = 0
    k: int | None = None
    encoder_hidden: int = 256
    encoder_layers: int = 2

    def __post_init__(self) -> None:
        for f, accepted in (("objective", OBJECTIVES), ("output", PARAMETRIZATIONS),
                            ("z_sharing", Z_SHARING)):
            if getattr(self, f) not in accepted:
                raise InputError(f"{f}={getattr(self, f)!r} is not supported; "
                                 f"accepted: {', '.join(accepted)}")
        if self.encoder and self.k is None:
            object.__setattr__(self, "k", DEFAULT_K[self.objective])
        for f in ("latent_dim", "hidden", "layers", "steps", "batch_size", "n_samples",
                  *(ENCODER_FIELDS if self.encoder else ())):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"{f}={v!r} is invalid; accepted: a positive integer")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise InputError(f"lr={self.lr!r} is invalid; accepted: a positive number")
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        unused = PRIOR_FIELDS if self.encoder else ENCODER_FIELDS
        for f in unused:
            if getattr(self, f) != defaults[f]:
                users = "vae, iwae" if f in ENCODER_FIELDS else ", ".join(PRIOR_OBJECTIVES)
                raise InputError(f"{f}={getattr(self, f)!r} does not apply to objective={self.objective!r} "
                                 f"(only to {users}); accepted: leave it at its default "
                                 f"{defaults[f]!r}")

    @property
    def encoder(self) -> bool:
        """Whether the objective trains an encoder with the decoder."""
        return self.objective in ENCODER_OBJECTIVES

    def architecture(self) -> dict[str, Any]:
        return architecture(self.latent_dim, self.hidden, self.layers, self.output)

    def encoder_architecture(self) -> dict[str, Any] | None:
        """The encoder's architecture (:func:`lvm.encoder.encoder_architecture`), None without one."""
        if not self.encoder:
            return None
        return _encoder.encoder_architecture(self.latent_dim, self.encoder_hidden, self.encoder_layers)

    def settings(self) -> dict[str, Any]:
        """The recipe as a dict, without the fields its objective does not use (see the class)."""
        unused = PRIOR_FIELDS if self.encoder else ENCODER_FIELDS
        return {f: v for f, v in asdict(self).items() if f not in unused}

    def key(self) -> str:
        """Short stable hash of the recipe's :meth:`settings` (names cache files)."""
        blob = json.dumps(self.settings(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def replace(self, **changes: Any) -> Recipe:
        return dataclasses.replace(self, **changes)

    def deviations_from_textbook(self) -> list[str]:
        """What this recipe does differently from the series, in words."""
        out = []
        for f in ("hidden", "layers", "output", "steps", "batch_size",
                  *(() if self.encoder else ("n_samples",))):
            if getattr(self, f) != TEXTBOOK_RECIPE[f]:
                out.append(f"{f} = {getattr(self, f)} instead of {TEXTBOOK_RECIPE[f]}")
        if self.encoder:
            out.append(f"z drawn from a jointly trained encoder q(z|x) ({self.encoder_layers} x "
                       f"{self.encoder_hidden} ELU, diagonal Gaussian), k = {self.k} per datapoint, "
                       "instead of N = 128 prior draws: the series trains decoders by prior sampling only")
        elif self.z_sharing == "batch":
            out.append("z shared across the minibatch (N prior draws per step, logits matmul fast path) "
                       "instead of independent z per datapoint")
        if self.dataset == "mnist-5k":
            out.append("trained on the 4,000-digit mnist-5k train split instead of the 60,000 MNIST digits")
        return out


def _draw_z(recipe: Recipe, batch: int, g: torch.Generator) -> torch.Tensor:
    """Prior z for a step, or (encoder objectives) the eps [batch, k, K] of the reparameterisation."""
    shape = ((batch, recipe.k, recipe.latent_dim) if recipe.encoder
             else (recipe.n_samples, recipe.latent_dim) if recipe.z_sharing == "batch"
             else (batch, recipe.n_samples, recipe.latent_dim))
    return torch.randn(*shape, generator=g, dtype=torch.float32)


# ----------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    """A trained model, its per-step minibatch losses and the checkpoint metadata."""

    model: BernoulliLVM
    losses: list[float]
    metadata: dict[str, Any]


def _load_data(recipe: Recipe, data: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, Any]]:
    if data is not None:
        x = torch.as_tensor(data, dtype=torch.float32)
        if x.dim() != 2 or x.shape[0] == 0 or not ((x == 0) | (x == 1)).all():
            raise InputError(f"data has shape {tuple(x.shape)}; accepted: a non-empty [n, D] 0/1 tensor")
        bits = x.to(torch.uint8).numpy()
        return x, {"name": "custom", "n": int(x.shape[0]),
                   "sha256": hashlib.sha256(np.ascontiguousarray(bits).tobytes()).hexdigest()}
    from . import data as lvm_data  # the data layer is only needed when training

    ds = lvm_data.load(recipe.dataset, recipe.split, binarize=recipe.binarize, seed=recipe.data_seed)
    identity = dict(ds.identity)
    if "source" in identity:  # a machine-specific path: keep the file name only
        identity["source"] = Path(str(identity["source"])).name
    return ds.x.to(torch.float32), identity


@torch.no_grad()
def evaluate(model: BernoulliLVM, x: torch.Tensor, objective: str, *, n_samples: int = 128,
             batch_size: int = 256, seed: int = 0, z_sharing: str = "batch") -> float:
    """Mean loss (nats, positive) over all of x, fresh seeded z per batch, float32.

    For the encoder objectives ``n_samples`` is k, the draws of q(z|x) per datapoint.
    """
    g = rng.generator(seed, STREAM_EVAL)
    total = 0.0
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(torch.float32)
        shape = ((len(xb), n_samples, model.latent_dim)
                 if objective in ENCODER_OBJECTIVES or z_sharing == "datapoint"
                 else (n_samples, model.latent_dim))
        z = torch.randn(*shape, generator=g, dtype=torch.float32)
        total += float(loss(model, xb, z, objective).sum())
    return total / len(x)


def _test_bounds(model: BernoulliLVM, recipe: Recipe, seed: int) -> dict[str, Any]:
    """:func:`lvm.encoder.evaluate_bounds` on the recipe dataset's test split, with its identity."""
    from . import data as lvm_data

    ds = lvm_data.load(recipe.dataset, "test", binarize=recipe.binarize, seed=recipe.data_seed)
    t0 = time.perf_counter()
    out = _encoder.evaluate_bounds(model, ds.x.to(torch.float64), seed=seed)
    return {"dataset": recipe.dataset, "split": "test", "binarize": recipe.binarize,
            "data_seed": recipe.data_seed, "data_sha256": ds.identity.get("sha256"), **out,
            "wall_time_s": round(time.perf_counter() - t0, 2)}


def train(recipe: Recipe, *, data: torch.Tensor | None = None, progress: bool = True,
          threads: int | None = 1, name: str | None = None, test_bounds: bool = True) -> TrainResult:
    """Train a decoder (and for the encoder objectives its encoder) by ``recipe`` in float32.

    Returns the model with its metadata. ``data``: 0/1 float tensor [n, 784] to train on
    instead of ``recipe.dataset``. ``threads``: torch threads during training (default 1, for
    reproducible bits; restored afterwards). ``None`` leaves torch's setting alone.
    ``test_bounds``: for the encoder objectives trained on ``recipe.dataset`` (no ``data``),
    record the ELBO and IWAE bounds on its test split (:func:`lvm.encoder.evaluate_bounds`,
    seed ``recipe.seed``) in the metadata.
    """
    from tqdm.auto import tqdm

    x, identity = _load_data(recipe, data)
    arch = recipe.architecture()
    if x.shape[1] != arch["data_dim"]:
        raise InputError(f"data has {x.shape[1]} pixels per row; accepted: {arch['data_dim']}")
    label = name or f"{recipe.objective}-k{recipe.latent_dim}"
    with set_torch_threads(threads):
        used_threads = torch.get_num_threads()
        model = build(arch, seed=recipe.seed, encoder_arch=recipe.encoder_architecture())
        nets = [model.decoder] + ([model.encoder] if model.encoder is not None else [])
        params = [p for net in nets for p in net.to(torch.float32).train().parameters()]
        opt = torch.optim.Adam(params, lr=recipe.lr)
        g_data, g_z = rng.generator(recipe.seed, STREAM_DATA), rng.generator(recipe.seed, STREAM_Z)
        order = torch.empty(0, dtype=torch.int64)
        losses: list[float] = []
        t0 = time.perf_counter()
        bar = tqdm(total=recipe.steps, desc=f"train {label}", disable=not progress, leave=True,
                   unit="step", file=sys.stderr)
        try:
            for step in range(recipe.steps):
                while len(order) < recipe.batch_size:  # epochs of seeded permutations, batches span them
                    order = torch.cat([order, torch.randperm(len(x), generator=g_data)])
                idx, order = order[:recipe.batch_size], order[recipe.batch_size:]
                xb = x[idx]
                z = _draw_z(recipe, len(xb), g_z)
                step_loss = loss(model, xb, z, recipe.objective).mean()
                if not torch.isfinite(step_loss):
                    raise FloatingPointError(f"train {label}: loss is {float(step_loss)} at step {step}")
                opt.zero_grad(set_to_none=True)
                step_loss.backward()
                opt.step()
                losses.append(float(step_loss.detach()))
                bar.update(1)
                if step % 10 == 0 or step == recipe.steps - 1:
                    bar.set_postfix(loss=f"{np.mean(losses[-LOSS_WINDOW:]):.2f}")
        finally:
            bar.close()
        wall = time.perf_counter() - t0
        for net in nets:
            net.eval().requires_grad_(False)
        model.invalidate()
        final = float(np.mean(losses[-LOSS_WINDOW:]))
        if recipe.encoder:  # k = 1 and the iwae k (the recipe's when it trains iwae)
            eval_k = {"vae": 1, "iwae": recipe.k if recipe.objective == "iwae" else DEFAULT_K["iwae"]}
        else:
            eval_k = dict.fromkeys(PRIOR_OBJECTIVES, recipe.n_samples)
        evals = {obj: round(evaluate(model, x, obj, n_samples=k, seed=recipe.seed), 4)
                 for obj, k in eval_k.items()}
        bounds = (_test_bounds(model, recipe, recipe.seed)
                  if recipe.encoder and test_bounds and data is None else None)
    curve_every = max(1, recipe.steps // 20)
    draws = recipe.k if recipe.encoder else recipe.n_samples
    metadata = {
        "format": FORMAT,
        "name": name,
        "architecture": arch,
        **({"encoder_architecture": recipe.encoder_architecture()} if recipe.encoder else {}),
        "objective": recipe.objective,
        "objective_formula": OBJECTIVE_FORMULAS[recipe.objective],
        "recipe": recipe.settings(),
        "recipe_key": recipe.key(),
        "steps": recipe.steps, "batch_size": recipe.batch_size, "n_samples": draws,
        **({"k": recipe.k} if recipe.encoder else {}),
        "lr": recipe.lr, "optimizer": "Adam", "seed": recipe.seed, "dtype": "float32",
        "z_sharing": "datapoint" if recipe.encoder else recipe.z_sharing,
        "data": identity,
        "final_train_loss": round(final, 4),
        "final_train_loss_window": min(LOSS_WINDOW, len(losses)),
        "final_train_loss_note": "nats per datapoint, positive = -objective; mean minibatch loss "
                                 "over the last final_train_loss_window steps",
        "train_loss_full_split": evals,
        "train_loss_full_split_note": (
            f"after training: mean loss over the whole training data, float32, fresh draws, k = "
            f"{eval_k['vae']} (vae) and {eval_k['iwae']} (iwae) draws of q(z|x) per datapoint: minus "
            "the ELBO and minus the IWAE bound" if recipe.encoder else
            f"after training: mean loss over the whole training data, N = {recipe.n_samples} fresh "
            "prior samples per batch, both objectives (prior-iwae is minus the log-space estimate "
            "of log p(x))"),
        **({"test_bounds": bounds} if bounds is not None else {}),
        "loss_curve": {"every": curve_every,
                       "mean_loss": [round(float(np.mean(losses[i:i + curve_every])), 3)
                                     for i in range(0, len(losses), curve_every)]},
        "textbook_recipe": TEXTBOOK_RECIPE,
        "deviations_from_textbook": recipe.deviations_from_textbook(),
        "wall_time_s": round(wall, 2),
        "threads": used_threads,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
    }
    return TrainResult(model, losses, metadata)
