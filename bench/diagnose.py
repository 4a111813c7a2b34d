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
from lvm.axes import AUTOCAST_DTYPES, DTYPES, ESTIMATORS, LEVELS, PRECISIONS, PROPOSALS
from lvm.encoder import has_encoder
from lvm.errors import InputError, check_int
from lvm.kernels import CHUNK
from lvm.numerics import dtype_facts
from lvm.reference import log_marginal
from lvm.runtime import keep_temporaries_on_heap, set_torch_threads
from lvm.shared import draws_from, estimate, evaluate
from lvm.weights import K_HAT_LIMIT

from . import trust
from .trust import Trust, advice

DEFAULT_N = 1000
TIME_TIE = 1.1  # settings within 10% of the fastest count as equally fast
QUADRATURE_K = 2  # ground truth where quadrature is cheap


@dataclass
class Verdict:
    """One row of the table: a setting, what happened to it, and whether it is safe."""

    dtype: str
    estimator: str
    precision: str
    proposal: str
    n_samples: int
    estimate: float  # mean estimate of log p(x) over the digits (nats)
    ess: float  # median ESS over the digits, of the float64 weights of the same draws
    pareto_k: float  # largest PSIS k-hat over the digits, of the same weights
    reliable: bool  # every digit's k-hat <= 0.7 and ESS >= bench.trust.ESS_FLOOR
    underflow: float  # share of estimates that were -inf
    overflow: float  # share of estimates that were +inf
    nan: float  # share of estimates that were NaN
    below_floor: float  # share of float64 log p(x|z_i) below the dtype's log smallest subnormal
    rounding_error: float  # mean |estimate - float64 replay| over digits with finite estimates
    mc_se: float  # mean Monte Carlo standard error of the float64 replay (an error only when reliable)
    seconds: float  # one estimate of the B digits, end to end
    truth_error: float | None = None  # mean |estimate - ground truth| (K <= 2)
    precise: bool = False  # no -inf, +inf or NaN and rounding below the Monte Carlo s.e.
    safe: bool = False  # precise and reliable
    why: str = ""

    @property
    def setting(self) -> str:
        return f"{self.dtype}/{self.estimator}/{self.precision}/{self.proposal}"


@dataclass
class Diagnosis:
    model: str
    data: dict
    rows: list[Verdict]
    truth: str | None
    n_data: int
    machine: dict = field(default_factory=dict)
    weights: list[Trust] = field(default_factory=list)  # one per (proposal, N)
    encoder: bool = False  # whether the model has an encoder

    @property
    def recommendation(self) -> Verdict | None:
        """The cheapest safe (precise and reliable) setting at the largest N asked for: among
        the safe settings within ``TIME_TIE`` of the fastest (closer than one timed call can
        tell apart), the one with the smallest rounding error, then the first in table order."""
        top = max(r.n_samples for r in self.rows)
        safe = [r for r in self.rows if r.safe and r.n_samples == top]
        if not safe:
            return None
        fastest = min(r.seconds for r in safe)
        return min((r for r in safe if r.seconds <= fastest * TIME_TIE), key=lambda r: r.rounding_error)

    def verdict(self, setting: str) -> bool:
        """Whether ``DTYPE/ESTIMATOR[/PRECISION[/PROPOSAL]]`` is safe at every N (and every
        proposal, when none is named) diagnosed."""
        wanted, proposal = check_expect(setting, {r.setting.rpartition("/")[0] for r in self.rows})
        rows = [r for r in self.rows if r.setting.rpartition("/")[0] == wanted
                and proposal in (None, r.proposal)]
        if not rows:
            raise InputError(f"--expect {setting!r} is not a diagnosed setting (no {proposal} proposal "
                             f"here); accepted: one of {', '.join(sorted({r.setting for r in self.rows}))}")
        return all(r.safe for r in rows)

    def advice(self) -> str:
        """The recommendation in words: the setting, or why none is safe and what would help."""
        rec = self.recommendation
        if rec is None:
            return "Recommendation: none of these settings is both precise and reliable; " + \
                advice(self.weights, self.encoder)
        return (f"Recommendation: {rec.setting}, the fastest safe setting here "
                f"({fmt_num(rec.seconds)} s per estimate of {self.n_data} digits at N = {rec.n_samples}): "
                f"its weights are reliable (k-hat {fmt_num(rec.pareto_k)} <= {K_HAT_LIMIT}, median ESS "
                f"{fmt_num(rec.ess)}) and its rounding error {fmt_num(rec.rounding_error)} nats stays below "
                f"its Monte Carlo error {fmt_num(rec.mc_se)}.")

    def to_json(self) -> dict:
        rec = self.recommendation
        return {"model": self.model, "data": self.data, "n_data": self.n_data, "truth": self.truth,
                "machine": self.machine, "encoder": self.encoder,
                "rows": [asdict(r) | {"setting": r.setting} for r in self.rows],
                "recommendation": rec.setting if rec else None, "advice": self.advice()}

    def render(self, fmt: str = "text") -> str:
        """The verdict table as ``"text"`` (a terminal), ``"markdown"`` (a pull-request comment)
        or ``"json"`` (:meth:`to_json`)."""
        if fmt == "json":
            return json.dumps(self.to_json(), indent=2)
        if fmt not in ("text", "markdown"):
            raise InputError(f"--format {fmt!r}; accepted: text, markdown, json")
        rows = pd.DataFrame([{
            "dtype": r.dtype, "estimator": r.estimator, "precision": r.precision, "proposal": r.proposal,
            "N": str(r.n_samples), "safe": "yes" if r.safe else "NO", "estimate (nats)": fmt_num(r.estimate),
            "ESS": fmt_num(r.ess), "k-hat": fmt_num(r.pareto_k), "reliable": "yes" if r.reliable else "NO",
            "−∞": fmt_pct(r.underflow), "+∞": fmt_pct(r.overflow), "NaN": fmt_pct(r.nan),
            "terms < floor": fmt_pct(r.below_floor), "rounding (nats)": fmt_num(r.rounding_error),
            "MC s.e. (nats)": fmt_num(r.mc_se) if r.pareto_k <= K_HAT_LIMIT else f"({fmt_num(r.mc_se)})",
            **({"|error| vs truth": fmt_num(math.nan if r.truth_error is None else r.truth_error)}
               if self.truth else {}),
            "seconds": fmt_num(r.seconds), "why": r.why} for r in self.rows])
        head = (f"lvm-bench diagnose: {self.model} on {self.n_data} digits of {self.data.get('name')} "
                f"({self.machine.get('cpu_capability', '?')} CPU)")
        note = ("ESS: median over the digits; k-hat: the largest over the digits (PSIS; above "
                f"{K_HAT_LIMIT} the estimate is a lower bound only and the MC s.e., in parentheses, "
                "is not its error).")
        tail = self.advice()
        if fmt == "markdown":
            rows = rows.rename(columns=lambda c: c.replace("|", "\\|"))  # table() escapes only cells
            return "\n".join([f"### {head}", "", table(rows, "markdown"), "", note, "", tail])
        return "\n".join([head, "", table(rows, "text"), "", note, tail])


def check_expect(setting: str, settings) -> tuple[str, str | None]:
    """``setting`` (``DTYPE/ESTIMATOR[/PRECISION[/PROPOSAL]]``, cast when the precision is left out)
    as (``DTYPE/ESTIMATOR/PRECISION`` as written in ``settings``, the diagnosed ones; the proposal
    or None for every one); InputError naming what is accepted when it is not one."""
    parts = setting.split("/") if isinstance(setting, str) else []
    proposal = parts.pop() if len(parts) == 4 else None
    wanted = "/".join([*parts, "cast"] if len(parts) == 2 else parts)
    if wanted not in settings or (proposal is not None and proposal not in PROPOSALS):
        raise InputError(f"--expect {setting!r} is not a diagnosed setting; accepted: "
                         f"DTYPE/ESTIMATOR/PRECISION[/PROPOSAL] with a proposal of {', '.join(PROPOSALS)}, "
                         f"one of {', '.join(sorted(settings))}")
    return wanted, proposal


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


def diagnose(model_spec: str, *, data: str = "mnist-5k", n_data: int = 32, dtypes=DTYPES,
             estimators=tuple(ESTIMATORS), precisions=PRECISIONS, n_samples=(DEFAULT_N,), seed: int = 0,
             truth: bool | None = None, cache_dir=None, threads: int | None = None,
             proposals=None) -> Diagnosis:
    """The verdict table of one model; ``truth=None`` checks against quadrature when K <= 2;
    ``proposals=None``: the prior and, when the model has an encoder, the encoder."""
    dtypes, specs, precisions, ns = plan(dtypes, estimators, precisions, n_samples)
    n_data = check_int("--n-data", n_data, minimum=1)
    dataset = sources.load_dataset(data, "test", cache_dir=cache_dir, rows=n_data)
    if n_data > len(dataset):
        raise InputError(f"--n-data {n_data} exceeds the {len(dataset)} digits of {data}")
    x = dataset.x[:n_data]
    model = sources.load_model(model_spec, cache_dir=cache_dir)
    if getattr(model, "data_dim", x.shape[1]) != x.shape[1]:
        raise InputError(f"--model {model_spec!r} has data_dim {model.data_dim}, --data {data!r} has "
                         f"{x.shape[1]} pixels; accepted: the same dimension")
    encoder = has_encoder(model)
    proposals = _choices("--proposal", proposals or (("prior", "encoder") if encoder else ("prior",)),
                         PROPOSALS)
    if "encoder" in proposals and not encoder:
        raise InputError(f"--proposal 'encoder': --model {model_spec!r} has no encoder; accepted: prior, "
                         "or a model with an encoder (the zoo's vae-kK and iwae-kK)")
    method = "quadrature" if model.latent_dim <= QUADRATURE_K else "importance"
    keep_temporaries_on_heap()  # timings as the sweep takes them
    with set_torch_threads(threads or torch.get_num_threads()):
        props = {p: draws_from(model, x, p) for p in proposals}  # an InputError when there is no encoder
        truth_px = None  # ground truth log p(x) per digit
        if truth or (truth is None and method == "quadrature"):
            truth_px = log_marginal(model, x, method, seed=seed, cache_dir=cache_dir).log_px.numpy()
        rows, weights = [], []
        floors = {dt: dtype_facts(dt).log_min_subnormal for dt in dtypes}
        for proposal in proposals:
            for n in ns:
                weights.append(trust.check(model, x, n, seed, proposal, props[proposal], floors))
                rows += _rows(model, x, n, seed, dtypes, specs, precisions, truth_px, weights[-1])
    return Diagnosis(sources.parse_model(model_spec).label, dict(dataset.identity), rows,
                     None if truth_px is None else method, n_data,
                     {"cpu_capability": cpu_capability(), "torch": torch.__version__,
                      "threads": torch.get_num_threads()}, weights, encoder)


def _rows(model, x, n, seed, dtypes, specs, precisions, truth_px, weights: Trust) -> list[Verdict]:
    proposal = weights.proposal
    if proposal != "prior":  # an outside estimator draws its own z from the prior: not diagnosed here
        specs = {name: spec for name, spec in specs.items() if spec.get("space") != "outside"}
    f64 = evaluate(model, x, n, dtype="float64", estimators={"r": ESTIMATORS["log_space"]}, seed=seed,
                   proposal=proposal)
    replay = next(iter(f64.values())).log_px.numpy()
    out = []
    for dt in dtypes:
        for prec in precisions:
            if not _applies(dt, prec):
                continue
            ests = evaluate(model, x, n, dtype=dt, estimators=specs, seed=seed, precision=prec,
                            proposal=proposal)
            for name, spec in specs.items():
                est = next(v for (e, _), v in ests.items() if e == name)
                estimate(model, x, min(n, CHUNK), spec, dtype=dt, seed=seed, precision=prec,
                         proposal=proposal)  # warm-up
                t0 = time.perf_counter()
                estimate(model, x, n, spec, dtype=dt, seed=seed, precision=prec, proposal=proposal)
                seconds = time.perf_counter() - t0
                out.append(_verdict(dt, name, prec, est.log_px.numpy(), replay, weights, seconds, truth_px))
    return out


def _verdict(dt, name, prec, v, replay, weights: Trust, seconds, truth_px) -> Verdict:
    under = float(np.mean(v == -math.inf))
    over = float(np.mean(v == math.inf))
    nan = float(np.mean(np.isnan(v)))
    fin = np.isfinite(v)
    rounding = float(np.mean(np.abs(v[fin] - replay[fin]))) if fin.any() else math.inf
    truth_err = float(np.mean(np.abs(v[fin] - truth_px[fin]))) if truth_px is not None and fin.any() else None
    mc_se, below = weights.mc_se, weights.below_floor[dt]
    why = []
    if under:
        why.append(f"{fmt_pct(under)} of estimates −∞ ({fmt_pct(below)} of log p(x|z) below {dt}'s floor "
                   f"{fmt_num(dtype_facts(dt).log_min_subnormal)})")
    if over:
        largest = fmt_num(math.exp(dtype_facts(dt).log_max))
        why.append(f"{fmt_pct(over)} of estimates +∞ (a sum past {dt}'s largest value {largest})")
    if nan:
        why.append(f"{fmt_pct(nan)} of estimates NaN")
    if math.isfinite(rounding) and rounding >= mc_se:
        why.append(f"rounding {fmt_num(rounding)} ≥ Monte Carlo s.e. {fmt_num(mc_se)} nats")
    precise = not why
    if precise:
        why.append(f"rounding {fmt_num(rounding)} < Monte Carlo s.e. {fmt_num(mc_se)} nats")
    if not weights.reliable:
        why.append(weights.why())
    return Verdict(dt, name, prec, weights.proposal, weights.n_samples, float(np.mean(v)),
                   weights.ess_median, weights.k_max, weights.reliable, under, over, nan, below, rounding,
                   mc_se, seconds, truth_err, precise, precise and weights.reliable, "; ".join(why))


def run(model: str, *, data: str = "mnist-5k", n_data: int = 32, dtypes=tuple(DTYPES),
        estimators=tuple(ESTIMATORS), precisions=PRECISIONS, n_samples=(DEFAULT_N,), seed: int = 0,
        truth: bool | None = None, cache_dir=None, fmt: str = "text", expect: str | None = None,
        proposals=None) -> int:
    """The `diagnose` verb: print the verdict table in ``fmt``; return 0, or with ``expect``
    (``DTYPE/ESTIMATOR[/PRECISION[/PROPOSAL]]``) 0 when that setting is safe (precise and
    reliable) at every N and 1 when not."""
    if fmt not in ("text", "markdown", "json"):
        raise InputError(f"--format {fmt!r}; accepted: text, markdown, json")
    if expect is not None:  # before the diagnosis, which can take minutes
        dts, specs, precs, _ = plan(dtypes, estimators, precisions, n_samples)
        check_expect(expect, settings(dts, specs, precs))
    result = diagnose(model, data=data, n_data=n_data, dtypes=dtypes, estimators=estimators,
                      precisions=precisions, n_samples=n_samples, seed=seed, cache_dir=cache_dir, truth=truth,
                      proposals=proposals)
    print(result.render(fmt))
    return 0 if expect is None or result.verdict(expect) else 1
