"""Named, reproducible models for the benchmark: ``get(name)`` and ``names()``.

A name is ``<family>-k<K>`` with K the latent dimension (any positive integer;
``names()`` lists K in ``DEFAULT_KS`` = 1, 2, 4, 8, 16, or the ``ks`` you pass):

``untrained-k{K}``
    ``seed_decoder(K, hidden=512, layers=3, output="logits", seed=0)``: the
    3 x 512 ELU logits decoder exactly as the trained families start, never
    trained. Built in memory, nothing cached.
``untrained-probs-k{K}``
    ``seed_decoder(K, hidden=128, layers=2, output="probs", seed=0)``: the
    textbook's "part 2" decoder, Linear-ELU-Linear-ELU-Linear-Sigmoid, whose
    likelihood goes through clamped probabilities.
``prior-iwae-k{K}``
    the 3 x 512 logits decoder trained with the textbook's "Approach 3":
    minimise -(logsumexp_i log p(x|z_i) - log N), N = 128 prior samples.
``jensen-k{K}``
    the same decoder trained with "Approach 2": minimise -mean_i log p(x|z_i)
    over 128 prior samples (its optimum ignores z: the mean image).
``vae-k{K}``
    the same decoder trained jointly with an amortised encoder q(z|x)
    (:class:`lvm.encoder.GaussianEncoder`, 2 x 256 ELU, diagonal Gaussian):
    minimise minus the ELBO, one reparameterised draw of q(z|x) per datapoint.
    Loaded with ``.encoder`` set, so ``model.proposal(x)`` draws from q(z|x).
``iwae-k{K}``
    the same with minus the importance-weighted bound, k = 5 draws per datapoint.

Trained recipe (``recipe(name)``, see :mod:`lvm.train`): Adam lr 1e-3, batch
256, float32, seed 0, on the "mnist-5k" train split (static binarization,
seed 0). The prior families: 1,000 steps, N = 128, with the N prior draws
shared by the whole minibatch each step (the logits matmul fast path) instead
of drawn per datapoint; every deviation from the series is listed in the
checkpoint's JSON (``deviations_from_textbook``). The encoder families:
``ENCODER_RECIPE_DEFAULTS`` (1,000 steps: more overfit the 4,000 digits, the
test-split bounds get worse) and k from ``lvm.train.DEFAULT_K``; their
metadata records the test split's ELBO and IWAE bounds (``test_bounds``, see
:func:`lvm.encoder.evaluate_bounds`).

Where trained weights come from, in this order:

1. a shipped checkpoint ``lvm/checkpoints/<name>.pt`` (+ ``.json``); shipped:
   ``SHIPPED`` (prior-iwae-k2, jensen-k2, vae-k2 and iwae-k2);
2. the model cache ``<root>/models/<name>-<recipe key>.pt``, where root is
   :func:`lvm._io.cache_root` (``cache_dir``, else ``$LVM_CACHE_DIR``, else
   ``~/.cache/lvm-bench``: the same root the data and ground-truth caches use);
3. otherwise the model is trained once (deterministic for the recipe; on one
   CPU thread about 15-20 s for a prior family, a few minutes for an encoder
   family) and saved there atomically for reuse.

``train_models`` trains names ahead of time (the ``train`` command).

Checkpoints (:mod:`lvm.checkpoint`) are float32 state dicts loaded with
``torch.load(weights_only=True)`` (loading never runs code; an encoder family's
file holds both networks, keys prefixed ``decoder.`` and ``encoder.``); a file
whose keys, shapes or recorded architectures do not match the name's is an
InputError naming the file.

Every model can be viewed in the other likelihood parametrization with
``BernoulliLVM.with_output("probs" | "logits")``.
"""

from __future__ import annotations

import math
import os
import re
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import train as _train
from ._io import cache_root
from .checkpoint import load_checkpoint, read_metadata, save_checkpoint
from .encoder import encoder_architecture
from .errors import InputError
from .model import BernoulliLVM, architecture, build

DEFAULT_KS = (1, 2, 4, 8, 16)
FAMILIES = ("untrained", "untrained-probs", "prior-iwae", "jensen", "vae", "iwae")
TRAINED = ("prior-iwae", "jensen", "vae", "iwae")
ENCODER_FAMILIES = ("vae", "iwae")  # trained with an encoder q(z|x): their models have .encoder
PATTERNS = tuple(f"{f}-k{{K}}" for f in FAMILIES)
SHIPPED = ("prior-iwae-k2", "jensen-k2", "vae-k2", "iwae-k2")
CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"

# The architectures and the default training recipe (change them and cached
# models are retrained: the recipe hash names the cache file).
BIG = {"hidden": 512, "layers": 3, "output": "logits"}
SMALL_PROBS = {"hidden": 128, "layers": 2, "output": "probs"}
RECIPE_DEFAULTS: dict[str, Any] = {"steps": 1000, "batch_size": 256, "n_samples": 128, "lr": 1e-3,
                                   "seed": 0, "z_sharing": "batch", "dataset": "mnist-5k",
                                   "split": "train", "binarize": "static", "data_seed": 0}
# The encoder families: RECIPE_DEFAULTS without the prior-sampling fields, then these two.
ENCODER = {"encoder_hidden": 256, "encoder_layers": 2}
ENCODER_RECIPE_DEFAULTS: dict[str, Any] = {"steps": 1000}

_NAME_RE = re.compile(r"^(?P<family>[a-z][a-z-]*?)-k(?P<k>\d+)$")


@dataclass(frozen=True)
class Spec:
    name: str
    family: str
    latent_dim: int

    @property
    def trained(self) -> bool:
        return self.family in TRAINED

    @property
    def has_encoder(self) -> bool:
        return self.family in ENCODER_FAMILIES

    def architecture(self) -> dict[str, Any]:
        """The decoder's architecture (what the estimators' FLOP counts run)."""
        shape = SMALL_PROBS if self.family == "untrained-probs" else BIG
        return architecture(self.latent_dim, **shape)

    def encoder_architecture(self) -> dict[str, Any] | None:
        """The encoder's architecture for the encoder families, else None."""
        if not self.has_encoder:
            return None
        return encoder_architecture(self.latent_dim, ENCODER["encoder_hidden"], ENCODER["encoder_layers"])


def names(ks: tuple[int, ...] | list[int] | None = None) -> list[str]:
    """The known model names, for K in ``ks`` (default ``DEFAULT_KS``)."""
    ks = DEFAULT_KS if ks is None else ks
    return [f"{f}-k{k}" for f in FAMILIES for k in ks]


def _unknown(name: object, why: str) -> InputError:
    return InputError(f"model name {name!r} {why}; accepted: {', '.join(names())} "
                      f"(in general {', '.join(PATTERNS)} for any K >= 1)")


def parse(name: str) -> Spec:
    """Split a name into family and K; InputError listing the known names otherwise."""
    if not isinstance(name, str):
        raise _unknown(name, "is not a string")
    m = _NAME_RE.match(name)
    if not m or m["family"] not in FAMILIES:
        raise _unknown(name, "is unknown")
    k = int(m["k"])
    if k < 1 or m["k"] != str(k):
        raise _unknown(name, "has an invalid latent dimension")
    return Spec(name, m["family"], k)


def is_trained(name: str) -> bool:
    return parse(name).trained


def recipe(name: str) -> _train.Recipe:
    """The default training recipe of a trained name (InputError for untrained ones)."""
    spec = parse(name)
    if not spec.trained:
        raise InputError(f"model {name!r} is not trained; trainable families: "
                         f"{', '.join(f'{f}-k{{K}}' for f in TRAINED)}")
    if spec.has_encoder:
        base = {k: v for k, v in RECIPE_DEFAULTS.items() if k not in _train.PRIOR_FIELDS}
        return _train.Recipe(objective=spec.family, latent_dim=spec.latent_dim, **BIG,
                             **{**base, **ENCODER_RECIPE_DEFAULTS, **ENCODER})  # k: train.DEFAULT_K
    return _train.Recipe(objective=spec.family, latent_dim=spec.latent_dim, **BIG, **RECIPE_DEFAULTS)


def cache_path(name: str, recipe: _train.Recipe | None = None, *,
               cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where ``get`` keeps a trained model that has no shipped checkpoint."""
    recipe = recipe or globals()["recipe"](name)
    return cache_root(cache_dir) / "models" / f"{name}-{recipe.key()}.pt"


def shipped_path(name: str) -> Path:
    return CHECKPOINT_DIR / f"{name}.pt"


def get(name: str, *, cache_dir: str | os.PathLike[str] | None = None,
        progress: bool = True) -> BernoulliLVM:
    """The model called ``name`` (see the module docstring for names and sources).

    Untrained names are built from their seed; trained names load the shipped
    checkpoint, else the cached one, else train once into the cache
    (``progress``: tqdm bar while training).
    """
    spec = parse(name)
    arch, enc = spec.architecture(), spec.encoder_architecture()
    if not spec.trained:
        return build(arch, seed=0)
    rec = recipe(name)
    shipped = shipped_path(name)
    if shipped.is_file():
        meta = read_metadata(shipped) or {}
        if meta.get("recipe_key") not in (None, rec.key()):
            warnings.warn(f"{shipped} was trained with recipe {meta.get('recipe')}, which differs from "
                          f"the current default {rec}; regenerate with scripts/train_checkpoints.py",
                          stacklevel=2)
        return load_checkpoint(shipped, arch, encoder_arch=enc)
    path = cache_path(name, rec, cache_dir=cache_dir)
    if not path.is_file():
        result = _train.train(rec, progress=progress, name=name)
        save_checkpoint(result, path)
    return load_checkpoint(path, arch, encoder_arch=enc)


def metadata(name: str, *, cache_dir: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    """The JSON metadata of a trained name's checkpoint (shipped or cached), if present."""
    spec = parse(name)
    if not spec.trained:
        return None
    shipped = shipped_path(name)
    return read_metadata(shipped if shipped.is_file() else cache_path(name, cache_dir=cache_dir))


def train_models(names: Sequence[str] | None = None, *, out_dir: str | os.PathLike[str] | None = None,
                 seed: int = 0, steps: int | None = None, progress: bool = True,
                 cache_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Train named models and write ``<out_dir>/<name>.pt`` + ``.json`` for each.

    ``names``: trainable names (default: every trained name in :func:`names`);
    all are checked before any training starts. ``out_dir``: where to write;
    default the model cache (:func:`cache_path`), where :func:`get` finds them
    when the recipe is the default one. ``seed`` / ``steps``: override the
    recipe's seed and step count (recorded in the metadata). Returns the .pt
    paths written; prints one summary line per model to stderr.
    """
    names = list(names) if names else [n for n in globals()["names"]() if is_trained(n)]
    if out_dir is not None and Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise InputError(f"out_dir={str(out_dir)!r} is an existing file; accepted: a directory "
                         "(it is created if missing)")
    recipes = []
    for n in names:
        rec = recipe(n)  # InputError for unknown or untrained names
        changes: dict[str, Any] = {"seed": int(seed)}
        if steps is not None:
            changes["steps"] = int(steps)
        recipes.append((n, rec.replace(**changes)))
    written = []
    for n, rec in recipes:
        result = _train.train(rec, progress=progress, name=n)
        path = (Path(out_dir) / f"{n}.pt" if out_dir is not None
                else cache_path(n, rec, cache_dir=cache_dir))
        save_checkpoint(result, path)
        m = result.metadata
        print(f"{n}: final train loss {m['final_train_loss']:.2f} nats "
              f"({m['steps']} steps, {m['wall_time_s']:.0f} s) -> {path}", file=sys.stderr)
        written.append(path)
    return written


@torch.no_grad()
def decoded_grid(model: BernoulliLVM, n: int = 15, span: float = 3.0) -> torch.Tensor:
    """Pixel means sigmoid(logits) decoded on an n x n grid of z, as one [n*28, n*28] image.

    z_1 runs from -span to +span left to right, z_2 from +span (top) to -span
    (bottom); further latent dimensions are held at 0. float64, values in [0, 1].
    """
    K = model.latent_dim
    if K < 2:
        raise InputError(f"decoded_grid needs latent_dim >= 2; this model has {K}")
    if n < 1 or not math.isfinite(span) or span <= 0:
        raise InputError(f"n={n}, span={span}; accepted: n >= 1 and a positive finite span")
    side = int(round(math.sqrt(model.data_dim)))
    if side * side != model.data_dim:
        raise InputError(f"data_dim={model.data_dim} is not a square image")
    ticks = torch.linspace(-span, span, n, dtype=torch.float64)
    z = torch.zeros(n, n, K, dtype=torch.float64)
    z[..., 0] = ticks[None, :]
    z[..., 1] = ticks.flip(0)[:, None]
    p = torch.sigmoid(model.logits(z.reshape(n * n, K), torch.float64))
    img = p.reshape(n, n, side, side).permute(0, 2, 1, 3).reshape(n * side, n * side)
    return img


def save_decoded_grid(model: BernoulliLVM, path: str | os.PathLike[str], *, n: int = 15,
                      span: float = 3.0, title: str | None = None) -> Path:
    """Write :func:`decoded_grid` as a PNG (matplotlib Agg canvas; pyplot is not used)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    img = decoded_grid(model, n=n, span=span).numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    half = span / (n - 1) if n > 1 else span  # half a cell: cell centres sit on the z ticks
    fig = Figure(figsize=(6.5, 6.5), dpi=100)
    FigureCanvasAgg(fig)  # Agg, without touching pyplot's global backend
    ax = fig.add_subplot()
    lo, hi = -span - half, span + half
    ax.imshow(img, cmap="gray_r", vmin=0, vmax=1, extent=(lo, hi, lo, hi))
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    return path
