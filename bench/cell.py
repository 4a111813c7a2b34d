"""What one cell measures: a pure function of (config, cell coordinates).

One cell = R seeded repeats of one estimator on B test digits. Its draws come from seeds
derived from the root seed and the (model, N, repeat) coordinates, so the order and place
cells run in never change their numbers. All estimators and dtypes of a (model, N, repeat)
share the same draws (common random numbers), and the float64 log-space estimate on those
draws is the "replay" that separates rounding error from Monte Carlo error.

The per-run figure data (Figure 4's log-likelihoods, Figure 7's K = 2 arrays) are computed
here too, with the models and data the cells use, so that the report never runs a model.
"""

from __future__ import annotations

import contextlib
import platform
import time
import traceback
import zlib

import numpy as np
import pandas as pd
import torch

import lvm
from lvm import zoo
from lvm.data import load as load_data
from lvm.numerics import dtype_facts
from lvm.rng import entropy
from lvm.runtime import set_torch_threads

from .config import ESTIMATORS, PARAM_NAMES, Cell, Config
from .metrics import summarize
from .store import RunError
from .timing import Measurement, PeakMemory, timed

LOGLIK_SAMPLES = 512  # prior draws per digit behind Figures 4 and 7
FIGURE_REPEAT = -1 % 2**31  # the repeat index of the figures' draws: never one of the cells'
K2_GRID, K2_SPAN, K2_POSTERIOR_POINTS, K2_CLIP = 15, 3.0, 121, -40.0


def draw_seed(root: int, model: str, n_samples: int, repeat: int) -> int:
    """Seed of one repeat's draws: shared by every estimator, dtype and device."""
    return entropy(root, zlib.crc32(model.encode()), n_samples, repeat) >> 1


def estimate(model, x, cell: Cell, seed: int) -> lvm.Estimate:
    """Run the cell's estimator once with the given draw seed."""
    info = ESTIMATORS[cell.estimator]
    kw = {"dtype": cell.dtype, "device": cell.device, "seed": seed}
    if info["space"] == "prob":
        return lvm.prob_space(model, x, cell.n_samples, form=info["form"], **kw)
    return lvm.log_space(model, x, cell.n_samples, accumulate_dtype=info["accumulate"], **kw)


class Context:
    """Per-process caches: data, models, ground truth and float64 replays."""

    def __init__(self, config: Config, cache_dir: str | None = None):
        self.config = config
        self.cache_dir = cache_dir
        run = config.run
        self.dataset = load_data(run["dataset"], run["split"], seed=0)
        if run["n_data"] > len(self.dataset.x):
            raise RunError(f"run.n_data = {run['n_data']} exceeds the {len(self.dataset.x)} digits "
                           f"of {run['dataset']}/{run['split']}")
        self.x = self.dataset.x[: run["n_data"]]
        self._models: dict[tuple[str, str], lvm.BernoulliLVM] = {}
        self.truths: dict[str, dict] = {}
        self._replay: dict[tuple, np.ndarray] = {}

    def model(self, name: str, parametrization: str) -> lvm.BernoulliLVM:
        key = (name, parametrization)
        if key not in self._models:
            base = zoo.get(name, cache_dir=self.cache_dir)
            self._models[key] = base.with_output(parametrization)
        return self._models[key]

    def truth(self, name: str) -> dict:
        """Ground truth for the model's exact (logits) likelihood, cached on disk too."""
        if name not in self.truths:
            run = self.config.run
            t0 = time.perf_counter()
            ref = lvm.log_marginal(self.model(name, "logits"), self.x, run["reference"],
                                   n_samples=run["reference_samples"], seed=run["seed"],
                                   cache_dir=self.cache_dir)
            self.truths[name] = {"log_px": ref.log_px.numpy(), "se": ref.se.numpy(),
                                 "method": ref.method, "seconds": time.perf_counter() - t0,
                                 "meta": ref.meta}
        return self.truths[name]

    def replay(self, cell: Cell, repeat: int, seed: int) -> np.ndarray:
        key = (cell.model, cell.parametrization, cell.n_samples, repeat)
        if key not in self._replay:
            m = self.model(cell.model, cell.parametrization)
            est = lvm.log_space(m, self.x, cell.n_samples, dtype="float64", seed=seed)
            self._replay[key] = est.log_px.numpy()
        return self._replay[key]

    def figure_draws(self, name: str) -> torch.Tensor:
        """The prior draws behind Figures 4 and 7 (the same for both)."""
        m = self.model(name, "logits")
        seed = draw_seed(self.config.run["seed"], name, LOGLIK_SAMPLES, FIGURE_REPEAT)
        return m.sample_prior(LOGLIK_SAMPLES, torch.Generator().manual_seed(seed))

    @torch.no_grad()
    def loglik_sample(self, name: str) -> pd.DataFrame:
        """float64 log p(x_b|z_i) for the figure draws, per digit: what Figure 4 plots."""
        m = self.model(name, "logits")
        ll = m.log_likelihood(self.x, self.figure_draws(name), torch.float64).numpy()
        B, n = ll.shape
        return pd.DataFrame({"model": name, "datapoint": np.repeat(np.arange(B), n),
                             "sample": np.tile(np.arange(n), B), "loglik": ll.ravel()})

    @torch.no_grad()
    def k2_arrays(self, name: str) -> dict[str, np.ndarray]:
        """What Figure 7 draws for a K = 2 model, for test digit 0.

        ``digit`` [784]; ``decoded``: pixel means on a K2_GRID^2 grid of z in [-span, span]^2 as
        one image (``span`` = K2_SPAN); ``posterior``: log p(x|z) + log p(z) on a square grid
        (relative to its maximum, clipped at K2_CLIP nats) of half-width ``extent``; ``draws``: the
        figure draws z_i; ``hit``: whether exp(log p(x|z_i)) computed in float32 is non-zero.
        """
        model = self.model(name, "logits")
        x = self.x[:1]
        lim = K2_SPAN + 0.5
        ticks = torch.linspace(-lim, lim, K2_POSTERIOR_POINTS, dtype=torch.float64)
        zz = torch.stack(torch.meshgrid(ticks, ticks.flip(0), indexing="xy"), -1).reshape(-1, 2)
        n = K2_POSTERIOR_POINTS
        lp = (model.log_likelihood(x, zz, torch.float64)[0] + model.log_prior(zz)).reshape(n, n)
        z = self.figure_draws(name)
        hit = torch.exp(model.log_likelihood(x, z, torch.float32)[0]) > 0
        return {"digit": x[0].numpy(), "decoded": zoo.decoded_grid(model, n=K2_GRID, span=K2_SPAN).numpy(),
                "posterior": (lp - lp.max()).clamp(min=K2_CLIP).numpy(), "extent": np.array(lim),
                "span": np.array(K2_SPAN),
                "draws": z.numpy(), "hit": hit.numpy()}

    def model_identity(self) -> dict:
        return {f"{n}/{p}": m.fingerprint() for (n, p), m in sorted(self._models.items())}


def run_cell(ctx: Context, cell: Cell) -> tuple[dict, pd.DataFrame]:
    """Measure one cell: (summary row, one raw row per datapoint and repeat).

    Runs with ``run.threads`` torch threads: a matmul's rounding depends on how it is split,
    so the numbers must not depend on the machine's core count, and timings stay clean.
    """
    with set_torch_threads(ctx.config.run["threads"]):
        return _run_cell(ctx, cell)


def _run_cell(ctx: Context, cell: Cell) -> tuple[dict, pd.DataFrame]:
    run = ctx.config.run
    t_start = time.perf_counter()
    model = ctx.model(cell.model, cell.parametrization)
    truth = ctx.truth(cell.model)
    seeds = [draw_seed(run["seed"], cell.model, cell.n_samples, r) for r in range(run["repeats"])]
    dev = torch.device(cell.device)
    peak = PeakMemory(dev)
    for w in range(run["warmup"]):
        with peak if w == 0 else contextlib.nullcontext():
            estimate(model, ctx.x, cell, seeds[0])
    times, ests = Measurement(), []
    for r, seed in enumerate(seeds):
        with peak if (run["warmup"] == 0 and r == 0) else contextlib.nullcontext():
            est, seconds = timed(lambda s=seed: estimate(model, ctx.x, cell, s), dev)
        times.times.append(seconds)
        ests.append(est)
    replay = np.stack([ctx.replay(cell, r, s) for r, s in enumerate(seeds)])
    values = np.stack([e.log_px.numpy() for e in ests])
    zero = np.stack([e.n_zero_terms.numpy() for e in ests])
    nonfinite = np.stack([e.n_nonfinite_terms.numpy() for e in ests])
    ess = np.stack([e.ess.numpy() for e in ests])
    B = values.shape[1]
    facts = dtype_facts(cell.dtype)
    row = {**cell.coords(), "status": "ok", "reason": "", "n_data": B, "repeats": len(seeds),
           **summarize(values, replay, truth["log_px"], truth["se"], zero, nonfinite, ess,
                       cell.n_samples),
           "truth_method": truth["method"], "truth_se_max": float(np.max(truth["se"])),
           "underflow_threshold": facts.log_min_subnormal, "unit_roundoff": facts.unit_roundoff,
           "time_median_s": times.median, "time_iqr_s": times.iqr, "time_runs": len(times.times),
           "terms_per_s": B * cell.n_samples / times.median, "estimates_per_s": B / times.median,
           "peak_memory_mb": peak.peak / 2**20, "host": platform.node(),
           "wall_s": time.perf_counter() - t_start}
    raw = pd.DataFrame({
        **{p: [getattr(cell, p)] * (B * len(seeds)) for p in PARAM_NAMES},
        "repeat": np.repeat(np.arange(len(seeds)), B),
        "datapoint": np.tile(np.arange(B), len(seeds)),
        "estimate": values.ravel(), "replay_float64": replay.ravel(),
        "truth": np.tile(truth["log_px"], len(seeds)),
        "zero_terms": zero.ravel(), "nonfinite_terms": nonfinite.ravel(), "ess": ess.ravel(),
        "time_s": np.repeat(times.times, B),
    })
    return row, raw


def skipped_row(cell: Cell, reason: str, run: dict) -> dict:
    return {**cell.coords(), "status": "skipped", "reason": reason, "n_data": run["n_data"],
            "repeats": run["repeats"]}


def failed_row(cell: Cell, error: BaseException) -> dict:
    return {**cell.coords(), "status": "failed", "reason": f"{type(error).__name__}: {error}",
            "traceback": "".join(traceback.format_exception(error))[-2000:]}
