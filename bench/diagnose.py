"""`lvm-bench diagnose`: is my estimate safe in this dtype? One model, one verdict table.

For one model (any spec of :mod:`lvm.sources`) on B digits, every (dtype, estimator,
precision policy, N) is run once on the same seeded draws and judged against the float64
log-space estimate on those draws (the replay):

* underflow: the share of estimates that came out −∞;
* terms below the floor: the share of the float64 log p(x|z_i) below the dtype's log
  smallest subnormal, whose p(x|z_i) is 0 in that dtype;
* overflow: the share of estimates that are NaN or +∞ (a float16 sum past 65,504);
* rounding error: mean |estimate − replay| over the digits, beside the Monte Carlo standard
  error of the replay, sqrt(1/ESS − 1/N) per digit by the delta method, averaged.

A setting is **safe** when none of its estimates underflowed or overflowed and its rounding
error is below its Monte Carlo error: rounding then moves the answer less than drawing other
samples would. The recommendation is the safe setting that took the least time here, timed
end to end as a user calls it. Where it is cheap (K ≤ 2) the estimates are also held against
quadrature ground truth. :func:`run` is the verb: the table as text, markdown or JSON, and with
``expect`` an exit code for CI (0 safe, 1 not).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch

from bench.report.render import fmt_num, fmt_pct, table
from bench.run.config import MAX_N_SAMPLES, estimator_spec
from bench.run.environment import cpu_capability
from lvm import sources
from lvm.axes import AUTOCAST_DTYPES, DTYPES, ESTIMATORS, LEVELS, PRECISIONS
from lvm.draws import Draws
from lvm.errors import InputError, check_int
from lvm.kernels import CHUNK
from lvm.numerics import dtype_facts
from lvm.reference import log_marginal
from lvm.runtime import keep_temporaries_on_heap, set_torch_threads
from lvm.shared import estimate, evaluate

DEFAULT_N = 1000
TIME_TIE = 1.1  # settings within 10% of the fastest count as equally fast
QUADRATURE_K = 2  # ground truth where quadrature is cheap


@dataclass
class Verdict:
    """One row of the table: a setting, what happened to it, and whether it is safe."""

    dtype: str
    estimator: str
    precision: str
    n_samples: int
    underflow: float  # share of estimates that were -inf
    overflow: float  # share of estimates that were NaN or +inf
    below_floor: float  # share of float64 log p(x|z_i) below the dtype's log smallest subnormal
    rounding_error: float  # mean |estimate - float64 replay| over digits with finite estimates
    mc_se: float  # mean Monte Carlo standard error of the float64 replay
    seconds: float  # one estimate of the B digits, end to end
    truth_error: float | None = None  # mean |estimate - ground truth| (K <= 2)
    safe: bool = False
    why: str = ""

    @property
    def setting(self) -> str:
        return f"{self.dtype}/{self.estimator}/{self.precision}"


@dataclass
class Diagnosis:
    model: str
    data: dict
    rows: list[Verdict]
    truth: str | None
    n_data: int
    machine: dict = field(default_factory=dict)

    @property
    def recommendation(self) -> Verdict | None:
        """The cheapest safe setting at the largest N asked for: among the safe settings within
        ``TIME_TIE`` of the fastest (closer than one timed call can tell apart), the one with
        the smallest rounding error, then the first in table order."""
        top = max(r.n_samples for r in self.rows)
        safe = [r for r in self.rows if r.safe and r.n_samples == top]
        if not safe:
            return None
        fastest = min(r.seconds for r in safe)
        return min((r for r in safe if r.seconds <= fastest * TIME_TIE), key=lambda r: r.rounding_error)

    def verdict(self, setting: str) -> bool:
        """Whether ``DTYPE/ESTIMATOR[/PRECISION]`` is safe at every N diagnosed."""
        wanted = check_expect(setting, {r.setting for r in self.rows})
        return all(r.safe for r in self.rows if r.setting == wanted)

    def to_json(self) -> dict:
        rec = self.recommendation
        return {"model": self.model, "data": self.data, "n_data": self.n_data, "truth": self.truth,
                "machine": self.machine,
                "rows": [asdict(r) | {"setting": r.setting} for r in self.rows],
                "recommendation": rec.setting if rec else None}

    def render(self, fmt: str = "text") -> str:
        """The verdict table as ``"text"`` (a terminal), ``"markdown"`` (a pull-request comment)
        or ``"json"`` (:meth:`to_json`)."""
        if fmt == "json":
            return json.dumps(self.to_json(), indent=2)
        if fmt not in ("text", "markdown"):
            raise InputError(f"--format {fmt!r}; accepted: text, markdown, json")
        rows = pd.DataFrame([{
            "dtype": r.dtype, "estimator": r.estimator, "precision": r.precision, "N": str(r.n_samples),
            "safe": "yes" if r.safe else "NO", "−∞": fmt_pct(r.underflow), "NaN/+∞": fmt_pct(r.overflow),
            "terms < floor": fmt_pct(r.below_floor), "rounding (nats)": fmt_num(r.rounding_error),
            "MC s.e. (nats)": fmt_num(r.mc_se),
            **({"|error| vs truth": fmt_num(math.nan if r.truth_error is None else r.truth_error)}
               if self.truth else {}),
            "seconds": fmt_num(r.seconds), "why": r.why} for r in self.rows])
        rec = self.recommendation
        head = (f"lvm-bench diagnose: {self.model} on {self.n_data} digits of {self.data.get('name')} "
                f"({self.machine.get('cpu_capability', '?')} CPU)")
        if rec is None:
            tail = "Recommendation: none of these settings is safe; try a larger N or log space in float64."
        else:
            tail = (f"Recommendation: {rec.setting}, the fastest safe setting here "
                    f"({fmt_num(rec.seconds)} s per "
                    f"estimate of {self.n_data} digits at N = {rec.n_samples}): its rounding error "
                    f"{fmt_num(rec.rounding_error)} nats stays below its Monte Carlo error "
                    f"{fmt_num(rec.mc_se)}.")
        if fmt == "markdown":
            rows = rows.rename(columns=lambda c: c.replace("|", "\\|"))  # table() escapes only cells
            return "\n".join([f"### {head}", "", table(rows, "markdown"), "", tail])
        return "\n".join([head, "", table(rows, "text"), "", tail])


def check_expect(setting: str, settings) -> str:
    """``setting`` (``DTYPE/ESTIMATOR[/PRECISION]``, cast when the precision is left out) as it is
    written in ``settings``, the diagnosed ones; InputError naming them when it is not one."""
    parts = setting.split("/") if isinstance(setting, str) else []
    wanted = "/".join([*parts, "cast"] if len(parts) == 2 else parts)
    if wanted not in settings:
        raise InputError(f"--expect {setting!r} is not a diagnosed setting; accepted: "
                         f"DTYPE/ESTIMATOR/PRECISION, one of {', '.join(sorted(settings))}")
    return wanted


def _applies(dtype: str, precision: str) -> bool:
    """Whether a (dtype, precision) pair is a setting of its own: autocast at float32 and float64
    is the cast policy."""
    return precision != "autocast" or DTYPES[dtype] in AUTOCAST_DTYPES


def _choices(argument: str, values, accepted) -> list[str]:
    values = list(values)
    for v in values:
        if v not in accepted:
            raise InputError(f"{argument} {v!r} is not supported; accepted: {', '.join(accepted)}")
    return values


def plan(dtypes, estimators, precisions, n_samples) -> tuple[list[str], dict, list[str], list[int]]:
    """The lists of a diagnosis, checked before anything runs: (dtypes, estimator specs, precisions,
    Ns). InputError for an empty list, an unknown value, N out of run's bounds, or lists that
    leave no setting (autocast with float32/float64 only)."""
    given = {"--dtype": dtypes, "--estimator": estimators, "--precision": precisions,
             "--n-samples": n_samples}
    for argument, values in given.items():
        if not list(values):
            raise InputError(f"{argument} is empty; accepted: one value or more, comma-separated")
    dtypes = _choices("--dtype", dtypes, LEVELS["dtype"])
    precisions = _choices("--precision", precisions, LEVELS["precision"])
    specs = {e: estimator_spec(e) for e in estimators}
    ns = [check_int("--n-samples", n, minimum=1) for n in n_samples]
    for n in ns:
        if n > MAX_N_SAMPLES:
            raise InputError(f"--n-samples {n} is too large; accepted: positive integers up to "
                             f"{MAX_N_SAMPLES:,}, as for `lvm-bench run`")
    if not any(_applies(dt, p) for dt in dtypes for p in precisions):
        raise InputError(f"no setting to diagnose: --precision {','.join(precisions)} with --dtype "
                         f"{','.join(dtypes)}: autocast lowers to float16 or bfloat16 only; accepted: "
                         "cast, or a dtype of float16, bfloat16")
    return dtypes, specs, precisions, ns


def settings(dtypes, estimators, precisions) -> set[str]:
    """The ``DTYPE/ESTIMATOR/PRECISION`` settings a diagnosis of these lists has rows for."""
    return {f"{dt}/{e}/{p}" for dt in dtypes for p in precisions if _applies(dt, p) for e in estimators}


def _below_floor(model, x: torch.Tensor, n: int, seed: int, floors: dict[str, float]) -> dict[str, float]:
    """Share of float64 log p(x|z_i) below each dtype's floor, over the B x N terms of the draws."""
    below = dict.fromkeys(floors, 0)
    for drawn in Draws(model, n, seed).chunks(CHUNK):
        ll = model.log_likelihood(x, drawn.z, torch.float64)
        for dt, f in floors.items():
            below[dt] += int((ll < f).sum())
    return {dt: k / (len(x) * n) for dt, k in below.items()}


def diagnose(model_spec: str, *, data: str = "mnist-5k", n_data: int = 32, dtypes=DTYPES,
             estimators=tuple(ESTIMATORS), precisions=PRECISIONS, n_samples=(DEFAULT_N,), seed: int = 0,
             truth: bool | None = None, cache_dir=None, threads: int | None = None) -> Diagnosis:
    """The verdict table of one model; ``truth=None`` checks against quadrature when K <= 2."""
    dtypes, specs, precisions, ns = plan(dtypes, estimators, precisions, n_samples)
    n_data = check_int("--n-data", n_data, minimum=1)
    dataset = sources.load_dataset(data, "test", cache_dir=cache_dir)
    if n_data > len(dataset):
        raise InputError(f"--n-data {n_data} exceeds the {len(dataset)} digits of {data}")
    x = dataset.x[:n_data]
    model = sources.load_model(model_spec, cache_dir=cache_dir)
    if getattr(model, "data_dim", x.shape[1]) != x.shape[1]:
        raise InputError(f"--model {model_spec!r} has data_dim {model.data_dim}, --data {data!r} has "
                         f"{x.shape[1]} pixels; accepted: the same dimension")
    method = "quadrature" if model.latent_dim <= QUADRATURE_K else "importance"
    keep_temporaries_on_heap()  # timings as the sweep takes them
    with set_torch_threads(threads or torch.get_num_threads()):
        truth_px = None  # ground truth log p(x) per digit
        if truth or (truth is None and method == "quadrature"):
            truth_px = log_marginal(model, x, method, seed=seed, cache_dir=cache_dir).log_px.numpy()
        rows = []
        for n in ns:
            rows += _rows(model, x, n, seed, dtypes, specs, precisions, truth_px)
    return Diagnosis(sources.parse_model(model_spec).label, dict(dataset.identity), rows,
                     None if truth_px is None else method, n_data,
                     {"cpu_capability": cpu_capability(), "torch": torch.__version__,
                      "threads": torch.get_num_threads()})


def _rows(model, x, n, seed, dtypes, specs, precisions, truth_px) -> list[Verdict]:
    f64 = evaluate(model, x, n, dtype="float64", estimators={"r": ESTIMATORS["log_space"]}, seed=seed)
    replay_est = next(iter(f64.values()))
    replay = replay_est.log_px.numpy()
    ess = replay_est.ess.numpy()
    mc_se = float(np.mean(np.sqrt(np.clip(1 / np.maximum(ess, 1e-300) - 1 / n, 0, None))))
    floors = {dt: dtype_facts(dt).log_min_subnormal for dt in dtypes}
    below = _below_floor(model, x, n, seed, floors)
    out = []
    for dt in dtypes:
        for prec in precisions:
            if not _applies(dt, prec):
                continue
            ests = evaluate(model, x, n, dtype=dt, estimators=specs, seed=seed, precision=prec)
            for name, spec in specs.items():
                est = next(v for (e, _), v in ests.items() if e == name)
                estimate(model, x, min(n, CHUNK), spec, dtype=dt, seed=seed, precision=prec)  # warm-up
                t0 = time.perf_counter()
                estimate(model, x, n, spec, dtype=dt, seed=seed, precision=prec)
                seconds = time.perf_counter() - t0
                out.append(_verdict(dt, name, prec, n, est.log_px.numpy(), replay, mc_se, below[dt], seconds,
                                    truth_px))
    return out


def _verdict(dt, name, prec, n, v, replay, mc_se, below, seconds, truth_px) -> Verdict:
    under = float(np.mean(v == -math.inf))
    over = float(np.mean(np.isnan(v) | (v == math.inf)))
    fin = np.isfinite(v)
    rounding = float(np.mean(np.abs(v[fin] - replay[fin]))) if fin.any() else math.inf
    truth_err = float(np.mean(np.abs(v[fin] - truth_px[fin]))) if truth_px is not None and fin.any() else None
    why = []
    if under:
        why.append(f"{fmt_pct(under)} of estimates −∞ ({fmt_pct(below)} of log p(x|z) below {dt}'s floor "
                   f"{fmt_num(dtype_facts(dt).log_min_subnormal)})")
    if over:
        largest = fmt_num(math.exp(dtype_facts(dt).log_max))
        why.append(f"{fmt_pct(over)} NaN/+∞ (a sum past {dt}'s largest value {largest})")
    if math.isfinite(rounding) and rounding >= mc_se:
        why.append(f"rounding {fmt_num(rounding)} ≥ Monte Carlo s.e. {fmt_num(mc_se)} nats")
    safe = not why
    if safe:
        why.append(f"rounding {fmt_num(rounding)} < Monte Carlo s.e. {fmt_num(mc_se)} nats")
    return Verdict(dt, name, prec, n, under, over, below, rounding, mc_se, seconds, truth_err, safe,
                   "; ".join(why))


def run(model: str, *, data: str = "mnist-5k", n_data: int = 32, dtypes=tuple(DTYPES),
        estimators=tuple(ESTIMATORS), precisions=PRECISIONS, n_samples=(DEFAULT_N,), seed: int = 0,
        truth: bool | None = None, cache_dir=None, fmt: str = "text", expect: str | None = None) -> int:
    """The `diagnose` verb: print the verdict table in ``fmt``; return 0, or with ``expect``
    (``DTYPE/ESTIMATOR[/PRECISION]``) 0 when that setting is safe at every N and 1 when not."""
    if fmt not in ("text", "markdown", "json"):
        raise InputError(f"--format {fmt!r}; accepted: text, markdown, json")
    if expect is not None:  # before the diagnosis, which can take minutes
        dts, specs, precs, _ = plan(dtypes, estimators, precisions, n_samples)
        check_expect(expect, settings(dts, specs, precs))
    result = diagnose(model, data=data, n_data=n_data, dtypes=dtypes, estimators=estimators,
                      precisions=precisions, n_samples=n_samples, seed=seed, cache_dir=cache_dir, truth=truth)
    print(result.render(fmt))
    return 0 if expect is None or result.verdict(expect) else 1
