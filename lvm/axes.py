"""The vocabulary of the benchmark: its axes, their levels, and one word for each concept.

A *cell* is one point of the grid: one level of each axis in :data:`AXES`, in that order
(the columns cells.csv starts with, and the parts of a cell's key). This module is the one
place the levels are written; the config validates against them, the cell runner and the
report read them, and adding an axis starts here. It imports torch only (no pandas).

Glossary (the word in code, CLI, columns and docs; an older spelling that survives where
renaming it would move results or break a saved file is named after "older:"):

axis
    A dimension of the grid (:data:`AXES`); its values are *levels*.
estimator
    A named Monte Carlo estimator of log p(x) (:data:`ESTIMATORS`), given by its *spec*:
    ``space`` (log or prob; ``outside`` for an estimator of :mod:`lvm.sources`), ``form``
    (how prob space multiplies the pixels: product, or exp of the log sum) and ``accumulate``
    (the dtype the log-space sum is kept in; None: the working dtype). cells.csv columns
    ``space``, ``form``, ``accumulate_dtype``. The names ``prob_space_exp`` and
    ``log_space_acc32`` mix a form and a dtype into the estimator name; they name results.
dtype
    The working floating-point type (:data:`DTYPES`, by name).
precision
    The policy that applies a dtype (:data:`PRECISIONS`): ``cast`` runs model and estimator
    in it; ``autocast`` keeps the float32 model under ``torch.autocast``, which lowers only
    to :data:`AUTOCAST_DTYPES` (at float32 and float64 it is the cast policy).
proposal
    Where the draws z come from (:data:`PROPOSALS`): the ``prior`` p(z), or the model's
    trained ``encoder`` q(z|x).
device
    Where a cell runs (:data:`DEVICES`).
engine
    What runs the estimator's chunk work (:data:`ENGINES`): ``eager`` PyTorch, or ``compiled``,
    the same code under ``torch.compile`` (inductor), which fuses the pointwise passes and the
    reductions' steps (:mod:`lvm.engine`).
parametrization
    What the decoder's last layer gives the Bernoulli likelihood (:data:`PARAMETRIZATIONS`):
    ``logits`` (exact) or ``probs`` (a sigmoid, clamped). Older: ``output`` in lvm/
    (``BernoulliLVM.output`` and ``with_output``, ``lvm.model.OUTPUTS``,
    ``shared.evaluate(outputs=...)``), kept where it is saved or promised: a key of the
    training recipes (it names cached checkpoints) and of an outside model (``latent_dim``,
    ``output``: :mod:`lvm.sources`).
n_samples (N)
    Draws per digit and estimate. K is the latent dimension, B the number of digits
    (config ``run.n_data``), R the repeats.
family
    A zoo model's kind (untrained, prior-iwae, jensen, iwae, vae; ``outside`` for a model
    of :mod:`lvm.sources`). Older: the cells.csv column ``state``.
truth
    Ground truth log p(x): by quadrature at small K, else by importance sampling. Older:
    ``reference`` in the config keys ``run.reference``, ``run.reference_samples``,
    ``run.reference_se`` and the module :mod:`lvm.reference`; cells.csv and meta.json
    already say ``truth`` (``truth_error``, ``truth_method``, ``truth_se_max``, ``truth``).
replay
    The float64 log-space estimate on a cell's own draws: what rounding error is measured
    against (the column ``replay_float64`` of a run's raw rows).
se_threshold
    compare's number of standard errors that counts as a change. Older: ``k`` (the
    ``--k`` flag, a deprecated alias; compare's JSON report carries both ``"se_threshold"`` and
    the older ``"k"``).
"""

from __future__ import annotations

import torch

# The grid's axes in grid order: a cell's coordinates, cells.csv's first columns, its key's parts.
AXES = ("estimator", "dtype", "n_samples", "model", "parametrization", "device", "precision", "proposal",
        "engine")

# Axes added after runs were committed, at the level those runs were at. A config may leave them
# out (that level is its grid), a row without them is at it, and a cell key omits it (so that
# the keys of older runs stay valid). Every other axis has no default: a config lists it.
AXIS_DEFAULTS = {"precision": "cast", "proposal": "prior", "engine": "eager"}

DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}
PRECISIONS = ("cast", "autocast")
AUTOCAST_DTYPES = (torch.float16, torch.bfloat16)  # the dtypes torch.autocast lowers to
PROPOSALS = ("prior", "encoder")
ENGINES = ("eager", "compiled")  # compiled: the chunk work under torch.compile (lvm.engine)
DEVICES = ("cpu", "cuda", "mps")
PARAMETRIZATIONS = ("logits", "probs")

# The built-in estimators, as levels of the `estimator` axis. acc32 only exists where it differs
# from plain log space: below float32.
ESTIMATORS = {
    "prob_space": {"space": "prob", "form": "product", "accumulate": None},
    "prob_space_exp": {"space": "prob", "form": "exp", "accumulate": None},
    "log_space": {"space": "log", "form": None, "accumulate": None},
    "log_space_acc32": {"space": "log", "form": None, "accumulate": "float32"},
}
OUTSIDE = {"space": "outside", "form": None, "accumulate": None}  # an estimator of lvm.sources (+ its path)

# The axes whose levels are a closed set, in grid order (estimator and model are open: an
# outside estimator or model is named by an import path; n_samples is any positive integer).
LEVELS = {"dtype": tuple(DTYPES), "parametrization": PARAMETRIZATIONS, "device": DEVICES,
          "precision": PRECISIONS, "proposal": PROPOSALS, "engine": ENGINES}
