"""Training the zoo's decoders with the textbook's prior-sampling objectives.

Both objectives sample z from the prior N(0, I_K), never from an encoder:

``"prior-iwae"`` ("Approach 3")
    loss_b = -(logsumexp_i log p(x_b|z_i) - log N): minus the log-space
    estimate of log p(x_b) with N prior samples (a lower bound that tightens
    as N grows).
``"jensen"`` ("Approach 2")
    loss_b = -(1/N) sum_i log p(x_b|z_i): Jensen's lower bound on the same
    quantity. Its optimum ignores z and decodes the mean image (~208 nats).

Losses are reported in nats per datapoint, positive (= -objective).

How z is drawn (``Recipe.z_sharing``):

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

Reproducibility: the initial weights are ``seed_decoder(..., seed=recipe.seed)``,
the minibatch order and the z draws come from their own seeded streams
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
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import rng
from .errors import InputError
from .model import OUTPUTS, BernoulliLVM, architecture, bernoulli_log_likelihood, build
from .runtime import set_torch_threads

OBJECTIVES = ("prior-iwae", "jensen")
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
    """Everything that determines a trained decoder (its hash names cache files)."""

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

    def __post_init__(self) -> None:
        for f, accepted in (("objective", OBJECTIVES), ("output", OUTPUTS), ("z_sharing", Z_SHARING)):
            if getattr(self, f) not in accepted:
                raise InputError(f"{f}={getattr(self, f)!r} is not supported; "
                                 f"accepted: {', '.join(accepted)}")
        for f in ("latent_dim", "hidden", "layers", "steps", "batch_size", "n_samples"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"{f}={v!r} is invalid; accepted: a positive integer")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise InputError(f"lr={self.lr!r} is invalid; accepted: a positive number")

    def architecture(self) -> dict[str, Any]:
        return architecture(self.latent_dim, self.hidden, self.layers, self.output)

    def key(self) -> str:
        """Short stable hash of the recipe (names cache files)."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def replace(self, **changes: Any) -> Recipe:
        return dataclasses.replace(self, **changes)

    def deviations_from_textbook(self) -> list[str]:
        """What this recipe does differently from the series, in words."""
        out = []
        for f in ("hidden", "layers", "output", "steps", "batch_size", "n_samples"):
            if getattr(self, f) != TEXTBOOK_RECIPE[f]:
                out.append(f"{f} = {getattr(self, f)} instead of {TEXTBOOK_RECIPE[f]}")
        if self.z_sharing == "batch":
            out.append("z shared across the minibatch (N prior draws per step, logits matmul fast path) "
                       "instead of independent z per datapoint")
        if self.dataset == "mnist-5k":
            out.append("trained on the 4,000-digit mnist-5k train split instead of the 60,000 MNIST digits")
        return out


# ----------------------------------------------------------------------------- objectives


def objective_loss(decoder: nn.Module, x: torch.Tensor, z: torch.Tensor, objective: str,
                   output: str = "logits") -> torch.Tensor:
    """Per-datapoint loss [B] in nats (positive): -(objective) for each row of x.

    z [N, K] is shared by every row (one matrix multiply), z [B, N, K] is drawn
    per row; gradients flow to the decoder's weights.
    """
    ll = bernoulli_log_likelihood(x, decoder(z), output)
    if objective == "prior-iwae":
        return -(torch.logsumexp(ll, dim=1) - math.log(ll.shape[1]))
    if objective == "jensen":
        return -ll.mean(dim=1)
    raise InputError(f"objective={objective!r} is not supported; accepted: {', '.join(OBJECTIVES)}")


def _draw_z(recipe: Recipe, batch: int, g: torch.Generator) -> torch.Tensor:
    shape = ((recipe.n_samples, recipe.latent_dim) if recipe.z_sharing == "batch"
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
    """Mean loss (nats, positive) over all of x, fresh seeded z per batch, float32."""
    dec = model.decoder
    g = rng.generator(seed, STREAM_EVAL)
    total = 0.0
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(torch.float32)
        shape = ((n_samples, model.latent_dim) if z_sharing == "batch"
                 else (len(xb), n_samples, model.latent_dim))
        z = torch.randn(*shape, generator=g, dtype=torch.float32)
        total += float(objective_loss(dec, xb, z, objective, model.output).sum())
    return total / len(x)


def train(recipe: Recipe, *, data: torch.Tensor | None = None, progress: bool = True,
          threads: int | None = 1, name: str | None = None) -> TrainResult:
    """Train a decoder by ``recipe`` in float32 and return it with its metadata.

    ``data``: 0/1 float tensor [n, 784] to train on instead of ``recipe.dataset``.
    ``threads``: torch threads during training (default 1, for reproducible
    bits; restored afterwards). ``None`` leaves torch's setting alone.
    """
    from tqdm.auto import tqdm

    x, identity = _load_data(recipe, data)
    arch = recipe.architecture()
    if x.shape[1] != arch["data_dim"]:
        raise InputError(f"data has {x.shape[1]} pixels per row; accepted: {arch['data_dim']}")
    label = name or f"{recipe.objective}-k{recipe.latent_dim}"
    with set_torch_threads(threads):
        used_threads = torch.get_num_threads()
        model = build(arch, seed=recipe.seed)
        dec = model.decoder.to(torch.float32).train()
        opt = torch.optim.Adam(dec.parameters(), lr=recipe.lr)
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
                loss = objective_loss(dec, xb, z, recipe.objective, recipe.output).mean()
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"train {label}: loss is {float(loss)} at step {step}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
                bar.update(1)
                if step % 10 == 0 or step == recipe.steps - 1:
                    bar.set_postfix(loss=f"{np.mean(losses[-LOSS_WINDOW:]):.2f}")
        finally:
            bar.close()
        wall = time.perf_counter() - t0
        dec.eval().requires_grad_(False)
        model.invalidate()
        final = float(np.mean(losses[-LOSS_WINDOW:]))
        evals = {obj: round(evaluate(model, x, obj, n_samples=recipe.n_samples, seed=recipe.seed), 4)
                 for obj in OBJECTIVES}
    curve_every = max(1, recipe.steps // 20)
    metadata = {
        "format": FORMAT,
        "name": name,
        "architecture": arch,
        "objective": recipe.objective,
        "objective_formula": ("loss = -(logsumexp_i log p(x|z_i) - log N), z_i ~ N(0, I)"
                              if recipe.objective == "prior-iwae"
                              else "loss = -(1/N) sum_i log p(x|z_i), z_i ~ N(0, I)"),
        "recipe": asdict(recipe),
        "recipe_key": recipe.key(),
        "steps": recipe.steps, "batch_size": recipe.batch_size, "n_samples": recipe.n_samples,
        "lr": recipe.lr, "optimizer": "Adam", "seed": recipe.seed, "dtype": "float32",
        "z_sharing": recipe.z_sharing,
        "data": identity,
        "final_train_loss": round(final, 4),
        "final_train_loss_window": min(LOSS_WINDOW, len(losses)),
        "final_train_loss_note": "nats per datapoint, positive = -objective; mean minibatch loss "
                                 "over the last final_train_loss_window steps",
        "train_loss_full_split": evals,
        "train_loss_full_split_note": f"after training: mean loss over the whole training data, "
                                      f"N = {recipe.n_samples} fresh prior samples per batch, "
                                      "both objectives (prior-iwae is minus the log-space estimate "
                                      "of log p(x))",
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
