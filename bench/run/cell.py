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

import functools
import platform
import time
import traceback
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

import lvm
from bench.run.config import Cell, Config, estimator_spec
from bench.run.isolation import failure, isolated
from bench.run.metrics import summarize
from bench.run.store import RunError
from bench.run.timing import Measurement, PeakMemory, autorange, estimate_flop, timed
from lvm import engine as lvm_engine
from lvm import sources, zoo
from lvm.axes import AXES, PARAMETRIZATIONS
from lvm.encoder import has_encoder
from lvm.errors import InputError
from lvm.kernels import CHUNK
from lvm.numerics import dtype_facts
from lvm.rng import entropy
from lvm.runtime import keep_temporaries_on_heap, set_torch_threads
from lvm.shared import estimate as estimate_spec
from lvm.shared import evaluate

LOGLIK_SAMPLES = 512  # prior draws per digit behind Figures 4 and 7
FIGURE_REPEAT = -1 % 2**31  # the repeat index of the figures' draws: never one of the cells'
MAX_RUNS = 100  # timed calls per cell at most, however fast the cell
K2_GRID, K2_SPAN, K2_POSTERIOR_POINTS, K2_CLIP = 15, 3.0, 121, -40.0


def draw_seed(root: int, model: str, n_samples: int, repeat: int) -> int:
    """Seed of one repeat's draws: shared by every estimator, dtype and device."""
    return entropy(root, zlib.crc32(model.encode()), n_samples, repeat) >> 1


def estimate(model, x, cell: Cell, seed: int, n_samples: int | None = None) -> lvm.Estimate:
    """Run the cell's estimator once, as a user calls it, with the given draw seed (and N)."""
    return estimate_spec(model, x, n_samples or cell.n_samples, estimator_spec(cell.estimator),
                         dtype=cell.dtype, device=cell.device, seed=seed, precision=cell.precision,
                         proposal=cell.proposal, engine=cell.engine)


@dataclass
class Timing:
    """One timed estimator: its runs, peak memory, FLOP, the model whose weights ran, and the
    seconds its warmup spent compiling (the compiled engine; 0 for eager)."""

    times: Measurement
    peak_bytes: int
    flop: float
    model: str
    compile_s: float = 0.0


def time_estimator(model, x, cell: Cell, seed: int, *, warmup: int, budget: float) -> Timing:
    """Time the cell's estimator end to end, the way torch.utils.benchmark's autorange does.

    ``warmup`` untimed calls on one chunk of draws (min(N, CHUNK)) first: every chunk runs the
    same kernels and casts, so one chunk warms them all without doubling a cell that takes
    seconds. The compiled engine warms up on all N draws, at least once: each chunk shape is
    compiled then, outside the timed calls, and the seconds it spent compiling are recorded.
    Then timed calls, device synchronised, until ``budget`` seconds are spent (at least one
    call, at most MAX_RUNS); peak memory is taken over the first.
    """
    dev = torch.device(cell.device)
    compiling = lvm_engine.compile_seconds()
    whole = cell.engine == "compiled"
    for _ in range(max(warmup, 1) if whole else warmup):
        estimate(model, x, cell, seed, cell.n_samples if whole else min(cell.n_samples, CHUNK))
    compiling = lvm_engine.compile_seconds() - compiling
    peak = PeakMemory(dev)
    with peak:
        _, first = timed(lambda: estimate(model, x, cell, seed), dev)
    times = autorange(lambda: estimate(model, x, cell, seed), dev, budget=budget, max_runs=MAX_RUNS,
                      first=first)
    try:  # with the encoder each digit has its own N draws: the decoder and product run per digit
        arch = zoo.parse(cell.model).architecture()
        flop = float(estimate_flop(arch, len(x), cell.n_samples) if cell.proposal == "prior"
                     else len(x) * estimate_flop(arch, 1, cell.n_samples))
    except InputError:  # an outside model: its network is not described, so its FLOP are unknown
        flop = float("nan")
    return Timing(times, peak.peak, flop, cell.model, compiling)


class Context:
    """Per-process caches: data, models, ground truth and float64 replays."""

    def __init__(self, config: Config, cache_dir: str | None = None, *, progress: bool = False):
        self.config = config
        self.cache_dir = cache_dir
        self.progress = progress  # a training bar when a trained model is first built
        run = config.run
        self.dataset = sources.load_dataset(run["dataset"], run["split"], cache_dir=cache_dir,
                                            rows=run["n_data"])
        if run["n_data"] > len(self.dataset.x):
            raise RunError(f"run.n_data = {run['n_data']} exceeds the {len(self.dataset.x)} digits "
                           f"of {run['dataset']}/{run['split']}")
        self.x = self.dataset.x[: run["n_data"]]
        self._models: dict[tuple[str, str], lvm.LatentVariableModel] = {}
        self.truths: dict[str, dict] = {}
        self._timings: dict[tuple, Timing] = {}

    def model(self, name: str, parametrization: str) -> lvm.LatentVariableModel:
        """The model labelled ``name`` (a zoo name or an outside spec's label) in that
        likelihood parametrization; a model object without ``with_output`` has only its own."""
        key = (name, parametrization)
        if key not in self._models:
            base = self._base(name)
            self._models[key] = base.with_output(parametrization) if hasattr(base, "with_output") else base
        return self._models[key]

    def _base(self, name: str) -> lvm.LatentVariableModel:
        """The model as its spec gives it, loaded once and checked against the data's dimension."""
        if (name, None) not in self._models:
            base = sources.load_model(self.config.models[name], cache_dir=self.cache_dir,
                                      progress=self.progress)
            if hasattr(base, "data_dim") and base.data_dim != self.x.shape[1]:
                raise RunError(f"model {name!r} has data_dim {base.data_dim}, but "
                               f"{self.config.run['dataset']} has {self.x.shape[1]} pixels per datapoint; "
                               "accepted: a model and data of the same dimension")
            self._models[(name, None)] = base
        return self._models[(name, None)]

    def exact(self, name: str) -> lvm.LatentVariableModel:
        """The model the ground truth and the figures use: its logits view where it has one
        (the exact likelihood, no clamped probabilities), else the model as given."""
        base = self._base(name)
        try:
            return self.model(name, "logits")
        except InputError:
            return base

    def probe_estimators(self) -> None:
        """Call each outside estimator once (2 digits, 2 draws, float64, on the CPU), so that
        one that raises or returns the wrong shape is an InputError before anything is written."""
        model = self.exact(next(iter(self.config.models)))
        for e in self.config.grid["estimator"]:
            spec = estimator_spec(e)
            if spec["space"] == "outside":
                try:
                    estimate_spec(model, self.x[:2], 2, spec, dtype="float64", device="cpu", seed=0)
                except InputError:
                    raise
                except Exception as err:  # noqa: BLE001 - the user's estimator failed: bad input
                    raise InputError(f"estimator {e!r} raised {type(err).__name__} on 2 digits and 2 draws: "
                                     f"{err}") from err

    def unavailable(self) -> dict[tuple[str, str], str]:
        """{(model, parametrization or proposal): why} for what a model cannot give: a model object
        without ``with_output`` is measured under the grid's first parametrization only, and one
        without an encoder under the prior proposal only."""
        out = {}
        params = self.config.grid["parametrization"]
        for name in self.config.models:
            base = self._base(name)  # as given: a probs decoder with the sigmoid inside has no logits
            if "encoder" in self.config.grid["proposal"] and not has_encoder(base):
                out[(name, "encoder")] = (f"model {name!r} has no encoder (proposal(x)): measured with the "
                                          "prior proposal only")
            elif "encoder" in self.config.grid["proposal"]:
                base.proposal(self.x)  # an outside encode(x) that fails on the data: before writing
            for p in params if hasattr(base, "with_output") else params[1:]:
                if not hasattr(base, "with_output"):
                    out[(name, p)] = (f"model {name!r} has its own log_likelihood only (no with_output): "
                                      f"measured under parametrization {params[0]!r}")
                    continue
                try:
                    self.model(name, p)
                except InputError as e:
                    out[(name, p)] = f"model {name!r} cannot give {p}: {e}"
        return out

    def truth(self, name: str) -> dict:
        """Ground truth for the model's exact (logits) likelihood, cached on disk too."""
        if name not in self.truths:
            run = self.config.run
            t0 = time.perf_counter()
            ref = lvm.log_marginal(self.exact(name), self.x, run["reference"],
                                   n_samples=run["reference_samples"], target_se=run["reference_se"],
                                   seed=run["seed"],
                                   cache_dir=self.cache_dir)
            self.truths[name] = {"log_px": ref.log_px.numpy(), "se": ref.se.numpy(),
                                 "method": ref.method, "seconds": time.perf_counter() - t0,
                                 "meta": ref.meta}
        return self.truths[name]

    def architecture(self, name: str, parametrization: str) -> str:
        """What decides an estimator's speed besides its own axes: the network's shape, not its weights."""
        m = self.model(name, parametrization)
        net = getattr(m, "decoder", None)
        cls = type(getattr(m, "wrapped", m))  # an outside model's own class, not its guard's
        what = repr(net) if net is not None else f"{cls.__module__}.{cls.__qualname__}"
        return f"K={m.latent_dim} D={getattr(m, 'data_dim', '?')} {getattr(m, 'output', '')} {what}"

    def timing(self, cell: Cell, seed: int) -> Timing:
        """The cell's timing, measured once per (estimator, dtype, N, architecture, device):
        cells that differ only in the weights share it (``timed_model`` says whose ran)."""
        key = (cell.estimator, cell.dtype, cell.precision, cell.proposal, cell.engine, cell.n_samples,
               cell.device, self.architecture(cell.model, cell.parametrization))
        if key not in self._timings:
            run = self.config.run
            self._timings[key] = time_estimator(self.model(cell.model, cell.parametrization), self.x, cell,
                                                seed, warmup=run["warmup"], budget=run["time_budget"])
        return self._timings[key]

    def figure_draws(self, name: str) -> torch.Tensor:
        """The prior draws behind Figures 4 and 7 (the same for both)."""
        m = self.exact(name)
        seed = draw_seed(self.config.run["seed"], name, LOGLIK_SAMPLES, FIGURE_REPEAT)
        return m.sample_prior(LOGLIK_SAMPLES, torch.Generator().manual_seed(seed))

    @torch.no_grad()
    def loglik_sample(self, name: str) -> pd.DataFrame:
        """float64 log p(x_b|z_i) for the figure draws, per digit: what Figure 4 plots."""
        m = self.exact(name)
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
        model = self.exact(name)
        x = self.x[:1]
        lim = K2_SPAN + 0.5
        ticks = torch.linspace(-lim, lim, K2_POSTERIOR_POINTS, dtype=torch.float64)
        zz = torch.stack(torch.meshgrid(ticks, ticks.flip(0), indexing="xy"), -1).reshape(-1, 2)
        n = K2_POSTERIOR_POINTS
        lp = (model.log_likelihood(x, zz, torch.float64)[0] + model.log_prior(zz)).reshape(n, n)
        z = self.figure_draws(name)
        hit = torch.exp(model.log_likelihood(x, z, torch.float32)[0]) > 0
        # the decoded grid is an image to draw: float32 halves its share of k2.npz (most of the file)
        decoded = zoo.decoded_grid(model, n=K2_GRID, span=K2_SPAN).to(torch.float32).numpy()
        return {"digit": x[0].numpy(), "decoded": decoded,
                "posterior": (lp - lp.max()).clamp(min=K2_CLIP).numpy(), "extent": np.array(lim),
                "span": np.array(K2_SPAN),
                "draws": z.numpy(), "hit": hit.numpy()}

    def model_identity(self) -> dict:
        """Each model's fingerprint (sha256 of architecture and weights) and where it came from."""
        out = {}
        for (n, p), m in sorted((k, m) for k, m in self._models.items() if k[1] is not None):
            fp = m.fingerprint() if hasattr(m, "fingerprint") else None
            ms = self.config.models[n]
            out[f"{n}/{p}"] = fp if not ms.outside else {"fingerprint": fp, "source": ms.source,
                                                        "kind": ms.kind, "latent_dim": m.latent_dim}
        return out


def groups(cells: list[Cell]) -> list[list[Cell]]:
    """Cells that share draws and decoder passes: one (model, device, N), in first-seen order."""
    out: dict[tuple, list[Cell]] = {}
    for c in cells:
        out.setdefault((c.model, c.device, c.n_samples), []).append(c)
    return list(out.values())


def run_group(ctx: Context, cells: list[Cell]) -> list[tuple[str, dict, pd.DataFrame | None]]:
    """Measure the cells of one group: [(key, summary row, raw rows)], in the order given; a
    cell that raised comes back as (key, :func:`failed_row`, None) with its own reason, and the
    rest of its group is measured. What the whole group shares (the model, the ground truth)
    raises for the group.

    Runs with ``run.threads`` torch threads: a matmul's rounding depends on how it is split,
    so the numbers must not depend on the machine's core count, and timings stay clean.
    """
    keep_temporaries_on_heap()  # in whichever process runs the group: timings without page-fault churn
    with set_torch_threads(ctx.config.run["threads"]):
        return _run_group(ctx, cells)


def _run_group(ctx: Context, cells: list[Cell]) -> list[tuple[str, dict, pd.DataFrame | None]]:
    run = ctx.config.run
    first = cells[0]
    if any((c.model, c.device, c.n_samples) != (first.model, first.device, first.n_samples) for c in cells):
        raise ValueError("run_group: the cells must share model, device and n_samples")
    t_start = time.perf_counter()
    truth = ctx.truth(first.model)
    seeds = [draw_seed(run["seed"], first.model, first.n_samples, r) for r in range(run["repeats"])]
    # Accuracy: one shared pass per (dtype, precision, proposal, engine, repeat); eager float64 log
    # space with the cell's proposal is also every cell's replay.
    params = [p for p in PARAMETRIZATIONS if any(c.parametrization == p for c in cells)]
    proposals = dict.fromkeys(c.proposal for c in cells)
    wanted: dict[tuple[str, ...], set[str]] = {  # (dtype, precision, proposal, engine) -> estimators
        ("float64", "cast", prop, "eager"): {"log_space"} for prop in proposals}
    for c in cells:
        wanted.setdefault((c.dtype, c.precision, c.proposal, c.engine), set()).add(c.estimator)
    base = ctx.model(first.model, first.parametrization)
    own = None if hasattr(base, "with_output") else first.parametrization  # one likelihood only

    def shared_pass(dt, precision, proposal, engine, names, seed):
        out = evaluate(base, ctx.x, first.n_samples, dtype=dt, device=first.device, seed=seed,
                       estimators={e: estimator_spec(e) for e in names},
                       outputs=None if own else tuple(params), precision=precision, proposal=proposal,
                       engine=engine)
        return {(e, own or o): est for (e, o), est in out.items()}

    errors: dict[tuple[str, ...], Exception] = {}  # (dtype, precision, proposal, engine, estimator)
    passes = {}
    compiling = dict.fromkeys(wanted, 0.0)  # seconds torch.compile spent in each pass (compiled engine)
    for k, names in wanted.items():
        for r, seed in enumerate(seeds):
            live = sorted(e for e in names if (*k, e) not in errors)
            before = lvm_engine.compile_seconds()
            passes[(*k, r)], failed = isolated(functools.partial(shared_pass, *k, seed=seed), live)
            compiling[k] += lvm_engine.compile_seconds() - before
            errors |= {(*k, e): err for e, err in failed.items()}
    share = (time.perf_counter() - t_start) / len(cells)

    def measure(cell: Cell) -> tuple[dict, pd.DataFrame | None]:
        err = failure(errors, cell)
        if isinstance(err, lvm_engine.EngineUnavailable):  # not a failure: this machine cannot compile
            return skipped_row(cell, f"the compiled engine cannot run here: {err}", run), None
        if err is not None:
            return failed_row(cell, err), None
        try:
            at, f64 = (cell.estimator, cell.parametrization), ("log_space", cell.parametrization)
            ests = [passes[(cell.dtype, cell.precision, cell.proposal, cell.engine, r)][at]
                    for r in range(len(seeds))]
            replay = np.stack([passes[("float64", "cast", cell.proposal, "eager", r)][f64].log_px.numpy()
                               for r in range(len(seeds))])
            row, raw = _tables(cell, ests, replay, truth, ctx.timing(cell, seeds[0]))
            row["compile_s"] += compiling[(cell.dtype, cell.precision, cell.proposal, cell.engine)]
            return row, raw
        except Exception as e:  # noqa: BLE001 - this cell's failure, recorded; the group goes on
            return failed_row(cell, e), None

    out = []
    for cell in cells:
        t_cell = time.perf_counter()
        row, raw = measure(cell)
        row["latent_dim"] = base.latent_dim  # known for outside models too, once loaded
        if raw is not None:
            row["wall_s"] = share + time.perf_counter() - t_cell
        out.append((cell.key, row, raw))
    return out


def _tables(cell: Cell, ests: list[lvm.Estimate], replay: np.ndarray, truth: dict,
            timing: Timing) -> tuple[dict, pd.DataFrame]:
    """A cell's summary row and raw rows from its R estimates, replays, truth and timing."""
    values = np.stack([e.log_px.numpy() for e in ests])
    zero = np.stack([e.n_zero_terms.numpy() for e in ests])
    nonfinite = np.stack([e.n_nonfinite_terms.numpy() for e in ests])
    ess = np.stack([e.ess.numpy() for e in ests])
    R, B = values.shape
    facts = dtype_facts(cell.dtype)
    median = timing.times.median
    row = {**cell.coords(), "status": "ok", "reason": "", "n_data": B, "repeats": R,
           **summarize(values, replay, truth["log_px"], truth["se"], zero, nonfinite, ess,
                       cell.n_samples),
           "truth_method": truth["method"], "truth_se_max": float(np.max(truth["se"])),
           "underflow_threshold": facts.log_min_subnormal, "unit_roundoff": facts.unit_roundoff,
           "flop": timing.flop,
           "time_median_s": median, "time_iqr_s": timing.times.iqr, "time_runs": len(timing.times.times),
           "compile_s": timing.compile_s,
           "terms_per_s": B * cell.n_samples / median, "estimates_per_s": B / median,
           "peak_memory_mb": timing.peak_bytes / 2**20, "timed_model": timing.model,
           "host": platform.node()}
    raw = pd.DataFrame({
        **{p: [getattr(cell, p)] * (B * R) for p in AXES},
        "repeat": np.repeat(np.arange(R), B),
        "datapoint": np.tile(np.arange(B), R),
        "estimate": values.ravel(), "replay_float64": replay.ravel(),
        "truth": np.tile(truth["log_px"], R),
        "zero_terms": zero.ravel(), "nonfinite_terms": nonfinite.ravel(), "ess": ess.ravel(),
    })
    return row, raw


def skipped_row(cell: Cell, reason: str, run: dict) -> dict:
    return {**cell.coords(), "status": "skipped", "reason": reason, "n_data": run["n_data"],
            "repeats": run["repeats"]}


def failed_row(cell: Cell, error: BaseException) -> dict:
    return {**cell.coords(), "status": "failed", "reason": f"{type(error).__name__}: {error}",
            "traceback": "".join(traceback.format_exception(error))[-2000:]}
