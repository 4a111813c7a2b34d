"""The public dispatch: an estimator by its spec, alone or many on one decoder pass.

:func:`estimate` (one estimator on its own, as a user calls it) and :func:`evaluate` (every
estimator of a (model, dtype, N, seed) at once) validate their arguments (the specs, the
precision policy, the proposal, the outputs, the inputs) and route each spec:

- **outside** (``{"space": "outside", "path": ...}``, :mod:`lvm.sources`): the user's function,
  run on its own under the precision policy, sharing nothing; it draws its own z (prior only);
- **shared pass** (:func:`lvm.kernels.shared`): the built-in estimators of :func:`evaluate` on
  a model with ``with_output`` (a BernoulliLVM), one decoder pass per chunk feeding every
  estimator's reduction, in every parametrization asked for; and :func:`estimate` under
  autocast, whose reductions then run in the dtype autocast leaves the terms in;
- **alone**: :func:`lvm.log_space` or :func:`lvm.prob_space` under the policy (:func:`estimate`
  under cast; :func:`evaluate` on a model without ``with_output``).

Each result is bit-identical to the estimator called alone with its default chunking (the
shared pass feeds the very reductions ``log_space`` and ``prob_space`` use). Neither public
function calls the other: both go through :func:`_route`, which calls the kernels, the
built-in estimators and the outside runner, never back up.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping

import torch

from . import kernels
from .axes import AUTOCAST_DTYPES, PRECISIONS, PROPOSALS
from .engine import require
from .errors import InputError
from .estimators import FORMS, log_space, prob_space
from .numerics import dtype_name, parse_dtype
from .protocol import check_inputs
from .reductions import Estimate
from .runtime import check_device

SPACES = ("log", "prob", "outside")  # outside: {"space": "outside", "path": "package.module:function"}


def check_spec(argument: str, spec: Mapping) -> dict:
    """An estimator spec checked and normalized: {"space", "form", "accumulate", ["path"]}, with
    the form of a probability-space spec ("product" by default, as in ``prob_space``) and the
    accumulation dtype of a log-space spec (a torch dtype, or None: the working dtype)."""
    space = spec.get("space") if isinstance(spec, Mapping) else None
    if space not in SPACES:
        raise InputError(f"{argument}['space'] = {space!r}; accepted: {', '.join(SPACES)}")
    if space == "outside":
        if not isinstance(spec.get("path"), str):
            raise InputError(f"{argument}['path'] = {spec.get('path')!r}; accepted: an import path "
                             "package.module:function or a registered estimator name")
        return {"space": space, "form": None, "accumulate": None, "path": spec["path"]}
    if space == "prob":
        form = spec.get("form") or "product"
        if form not in FORMS:
            raise InputError(f"{argument}['form'] = {form!r} is not supported; accepted: {', '.join(FORMS)}")
        return {"space": space, "form": form, "accumulate": None}
    acc = spec.get("accumulate")
    return {"space": space, "form": None,
            "accumulate": parse_dtype(acc, argument=f"{argument}['accumulate']") if acc else None}


def policy(precision: str, dtype, device="cpu") -> tuple[torch.dtype, contextlib.AbstractContextManager]:
    """(the dtype the model and estimator run in, the context they run under) of a precision
    policy: "cast" runs everything in ``dtype``; "autocast" keeps the float32 model and runs it
    under ``torch.autocast(device type, dtype)``, which lowers linear layers and matrix
    products to ``dtype`` (float16 or bfloat16) and leaves other ops as its op lists say (on
    CUDA exp, log, softplus, sum, prod and logsumexp go to float32; on CPU only prod does)."""
    if precision not in PRECISIONS:
        raise InputError(f"precision={precision!r}; accepted: {', '.join(PRECISIONS)}")
    dt = parse_dtype(dtype)
    if precision == "cast":
        return dt, contextlib.nullcontext()
    if dt not in AUTOCAST_DTYPES:
        raise InputError(f"precision='autocast' with dtype={dtype_name(dt)}: autocast lowers to float16 "
                         "or bfloat16 only; accepted: those dtypes, or precision='cast'")
    return torch.float32, torch.autocast(check_device(device).type, dtype=dt)


def draws_from(model, x, proposal: str):
    """The proposal object the estimators draw from: None for the prior, else the model's
    encoder q(z|x) (``model.proposal(x)``), made once per call on the CPU in float64."""
    if proposal not in PROPOSALS:
        raise InputError(f"proposal={proposal!r}; accepted: {', '.join(PROPOSALS)}")
    if proposal == "prior":
        return None
    if not callable(getattr(model, "proposal", None)):
        raise InputError(f"proposal='encoder' needs a model with an encoder (proposal(x)); "
                         f"this {type(model).__name__} has none; accepted: proposal='prior', or a zoo "
                         "model trained with an encoder (vae-kK, iwae-kK)")
    return model.proposal(torch.as_tensor(x).cpu())


def estimate(model, x, n_samples: int, spec: Mapping, *, dtype: str | torch.dtype,
             device: str | torch.device = "cpu", seed: int = 0, precision: str = "cast",
             proposal: str = "prior", engine: str = "eager") -> Estimate:
    """One estimator by its spec, on its own, as a user calls it: what :func:`evaluate`
    reproduces. ``spec``: as in :func:`evaluate`; ``precision``: "cast" or "autocast"
    (:func:`policy`); ``proposal``: "prior" or "encoder" (:func:`draws_from`); ``engine``:
    "eager" or "compiled" (:mod:`lvm.engine`)."""
    spec = check_spec("spec", spec)
    own = getattr(model, "output", None)
    # under autocast the reductions run in the dtype the terms arrive in: the shared pass, one spec
    return _route(model, x, n_samples, {"_": spec}, (own,), dtype=dtype, device=device, seed=seed,
                  precision=precision, proposal=proposal, share=precision != "cast",
                  engine=engine)[("_", own)]


@torch.no_grad()
def evaluate(model, x: torch.Tensor, n_samples: int, *, dtype: str | torch.dtype,
             estimators: Mapping[str, Mapping], outputs: tuple[str, ...] | None = None,
             device: str | torch.device = "cpu", seed: int = 0,
             precision: str = "cast", proposal: str = "prior",
             engine: str = "eager") -> dict[tuple[str, str], Estimate]:
    """Every estimator in ``estimators`` for every likelihood parametrization in ``outputs``.

    ``estimators`` maps a name to a spec: ``{"space": "log", "accumulate": None | dtype}``,
    ``{"space": "prob", "form": "product" | "exp"}`` or ``{"space": "outside", "path":
    "package.module:function"}`` (:mod:`lvm.sources`; run on its own, sharing nothing).
    ``outputs`` defaults to the model's own.
    Returns ``{(name, output): Estimate}``, each equal bit for bit to ``log_space`` or
    ``prob_space`` on ``model.with_output(output)`` with the same seed. A model without
    ``with_output`` (not a BernoulliLVM) is evaluated estimator by estimator. ``precision``:
    "cast" or "autocast" (:func:`policy`); under autocast each reduction runs in the dtype the
    terms arrive in, as it would in a user's code under ``torch.autocast``. ``proposal``: "prior"
    or "encoder" (:func:`draws_from`); with the encoder each digit has its own draws, so the
    decoder runs per digit (one pass serving every parametrization), as the estimators called
    alone run it. ``engine``: "eager", or "compiled" (:mod:`lvm.engine`) for the built-in
    estimators; an outside estimator runs its own code and is refused under "compiled".
    """
    specs = {name: check_spec(f"estimators[{name!r}]", spec) for name, spec in estimators.items()}
    own = getattr(model, "output", None)
    return _route(model, x, n_samples, specs, tuple(outputs or (own,)), dtype=dtype, device=device,
                  seed=seed, precision=precision, proposal=proposal, share=True, engine=engine)


def _labelled(est: Estimate, precision: str, dtype) -> Estimate:
    """An estimate made under autocast says so: its dtype is the autocast dtype."""
    if precision == "cast":
        return est
    return dataclasses.replace(est, dtype=dtype_name(parse_dtype(dtype)),
                               meta={**est.meta, "precision": precision})


def _route(model, x, n, specs: dict[str, dict], outputs: tuple, *, dtype, device, seed, precision: str,
           proposal: str, share: bool, engine: str = "eager") -> dict[tuple[str, str], Estimate]:
    """Validate what the specs have in common, then run each spec on its route (module docstring):
    the built-in specs on the shared pass when ``share`` and the model has ``with_output``,
    else each alone; the outside specs each alone. Keys in the order the routes give them."""
    work, context = policy(precision, dtype, device)
    own = getattr(model, "output", None)
    views = hasattr(model, "with_output")
    if not views and outputs != (own,):
        raise InputError(f"outputs={outputs!r}: this model has no other parametrization; "
                         f"accepted: ({own!r},)")
    for o in outputs if views else ():
        model.with_output(o)  # an InputError here names an output the model cannot give
    if proposal not in PROPOSALS:
        raise InputError(f"proposal={proposal!r}; accepted: {', '.join(PROPOSALS)}")
    outside = [name for name, spec in specs.items() if spec["space"] == "outside"]
    if outside and proposal != "prior":
        raise InputError(f"proposal={proposal!r} with an outside estimator ({specs[outside[0]]['path']}): "
                         "it draws its own z; accepted: proposal='prior'")
    if require(engine, device) != "eager" and outside:
        raise InputError(f"engine={engine!r} with an outside estimator ({specs[outside[0]]['path']}): "
                         "it runs its own code; accepted: engine='eager'")

    def alone(name: str, o: str) -> Estimate:
        m = model.with_output(o) if views else model
        with context:
            est = _alone(m, x, n, specs[name], work=work, device=device, seed=seed, proposal=proposal,
                         engine=engine)
        return _labelled(est, precision, dtype)

    if not (share and views):
        return {(name, o): alone(name, o) for name in specs for o in outputs}
    out = {}
    builtin = {name: spec for name, spec in specs.items() if name not in outside}
    if builtin:
        prop = draws_from(model, x, proposal)
        with context, torch.no_grad():
            xs, ns, dt, dev = check_inputs(model, x, n, work, device, None, seed)
            res = kernels.shared(model, xs, ns, dt=dt, dev=dev, seed=seed, specs=builtin, outputs=outputs,
                                 as_given=precision != "cast", proposal=prop, engine=engine)
        out = {k: _labelled(e, precision, dtype) for k, e in res.items()}
    return out | {(name, o): alone(name, o) for name in outside for o in outputs}


def _alone(model, x, n, spec: dict, *, work, device, seed, proposal: str, engine: str) -> Estimate:
    """One spec on its own, in the working dtype ``work`` (under the caller's policy context)."""
    if spec["space"] == "outside":
        from .sources import load_estimator, run_estimator

        return run_estimator(load_estimator(spec["path"]), spec["path"], model, x, n, dtype=work,
                             device=device, seed=seed)
    prop = draws_from(model, x, proposal)
    if spec["space"] == "prob":
        return prob_space(model, x, n, form=spec["form"], dtype=work, device=device, seed=seed, proposal=prop,
                          engine=engine)
    return log_space(model, x, n, accumulate_dtype=spec["accumulate"], dtype=work, device=device, seed=seed,
                     proposal=prop, engine=engine)
