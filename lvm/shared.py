"""One decoder pass, many estimators: every estimator of a (model, dtype, N, seed) at once.

The estimators of :mod:`lvm.estimators` each draw z and run the decoder themselves. A
benchmark that evaluates several of them, in both likelihood parametrizations, on the same
draws would repeat the same decoder pass for each. :func:`evaluate` runs it once per chunk
and feeds every estimator's reduction (the very objects ``log_space`` and ``prob_space``
use), so each result is bit-identical to calling that estimator alone with its default
chunking. The probs parametrization is the logits network followed by a sigmoid, so it
shares the pass too.

The per-pixel product (``prob_space`` with ``form="product"``) streams smaller chunks to
bound its [B, c, D] tensor, and a matrix product's rounding can depend on how many rows it
is given, so it gets one pass of its own, shared by both parametrizations (both multiply
the same sigmoid outputs).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .errors import InputError
from .estimators import (
    CHUNK,
    Draws,
    Estimate,
    _LogSum,
    _ProbSum,
    _product_chunk,
    _validate,
    log_space,
    prob_space,
)
from .model import bernoulli_log_likelihood
from .numerics import parse_dtype

SPACES = ("log", "prob", "outside")  # outside: {"space": "outside", "path": "package.module:function"}


def _check_spec(argument: str, spec: Mapping) -> None:
    if spec.get("space") not in SPACES:
        raise InputError(f"{argument}['space'] = {spec.get('space')!r}; accepted: {', '.join(SPACES)}")


def _form(spec: Mapping) -> str | None:
    """A probability-space spec's form (product by default, as in ``prob_space``); None in log space."""
    return (spec.get("form") or "product") if spec["space"] == "prob" else None


def estimate(model, x, n, spec: Mapping, **kw) -> Estimate:
    """One estimator by its spec, on its own, as a user calls it: what :func:`evaluate`
    reproduces. ``kw``: the estimator's keywords (dtype, device, seed, ...)."""
    _check_spec("spec", spec)
    if spec["space"] == "outside":
        from .sources import load_estimator, run_estimator

        return run_estimator(load_estimator(spec["path"]), spec["path"], model, x, n, **kw)
    if spec["space"] == "prob":
        return prob_space(model, x, n, form=_form(spec), **kw)
    return log_space(model, x, n, accumulate_dtype=spec.get("accumulate"), **kw)


@torch.no_grad()
def evaluate(model, x: torch.Tensor, n_samples: int, *, dtype: str | torch.dtype,
             estimators: Mapping[str, Mapping], outputs: tuple[str, ...] | None = None,
             device: str | torch.device = "cpu", seed: int = 0) -> dict[tuple[str, str], Estimate]:
    """Every estimator in ``estimators`` for every likelihood parametrization in ``outputs``.

    ``estimators`` maps a name to a spec: ``{"space": "log", "accumulate": None | dtype}``,
    ``{"space": "prob", "form": "product" | "exp"}`` or ``{"space": "outside", "path":
    "package.module:function"}`` (:mod:`lvm.sources`; run on its own, sharing nothing). ``outputs`` defaults to the model's own.
    Returns ``{(name, output): Estimate}``, each equal bit for bit to ``log_space`` or
    ``prob_space`` on ``model.with_output(output)`` with the same seed. A model without
    ``with_output`` (not a BernoulliLVM) is evaluated estimator by estimator.
    """
    for name, spec in estimators.items():
        _check_spec(f"estimators[{name!r}]", spec)
    own = getattr(model, "output", None)
    outputs = tuple(outputs or (own,))
    if not hasattr(model, "with_output"):
        if outputs != (own,):
            raise InputError(f"outputs={outputs!r}: this model has no other parametrization; "
                             f"accepted: ({own!r},)")
        return {(name, own): estimate(model, x, n_samples, spec, dtype=dtype, device=device, seed=seed)
                for name, spec in estimators.items()}
    for o in outputs:
        model.with_output(o)  # an InputError here names an output the model cannot give
    outside = {name: spec for name, spec in estimators.items() if spec["space"] == "outside"}
    if outside:  # an outside estimator runs the model itself: nothing to share
        rest = {name: spec for name, spec in estimators.items() if name not in outside}
        out = evaluate(model, x, n_samples, dtype=dtype, estimators=rest, outputs=outputs, device=device,
                       seed=seed) if rest else {}
        return out | {(name, o): estimate(model.with_output(o), x, n_samples, spec, dtype=dtype,
                                          device=device, seed=seed)
                      for name, spec in outside.items() for o in outputs}
    net = model.with_output("logits")  # the network up to its output
    x, n, dt, dev = _validate(model, x, n_samples, dtype, device, None)
    B = len(x)
    streamed: dict[str, dict[str, _LogSum | _ProbSum]] = {o: {} for o in outputs}  # output -> name -> sum
    for sums in streamed.values():
        first: _LogSum | None = None  # log sums of one output see the same terms: one set of diagnostics
        for name, spec in estimators.items():
            if spec["space"] == "log":
                acc = parse_dtype(spec["accumulate"], argument="accumulate") if spec.get("accumulate") else dt
                sums[name] = _LogSum(B, dt, acc, dev, diag=first.diag if first else None)
                first = first or sums[name]
            elif _form(spec) == "exp":
                sums[name] = _ProbSum(B, dt, dev, "exp")
    if any(streamed.values()):
        xd = x.to(dtype=dt)
        for z, _ in Draws(model, n, seed).chunks(CHUNK):
            logits = net.decode(z.to(dev), dt)
            for o, sums in streamed.items():
                ll = bernoulli_log_likelihood(xd, logits if o == "logits" else torch.sigmoid(logits), o)
                terms = None  # exp(ll), made once for the probability-space sums of this output
                for acc in sums.values():
                    if isinstance(acc, _LogSum):
                        acc.add(ll)
                    else:
                        terms = torch.exp(ll) if terms is None else terms
                        acc.add(terms)
    out = {(name, o): acc.result(n, seed) for o, sums in streamed.items() for name, acc in sums.items()}
    products = [name for name, spec in estimators.items() if _form(spec) == "product"]
    if products:
        acc = _ProbSum(B, dt, dev, "product")
        for z, _ in Draws(model, n, seed).chunks(_product_chunk(B, x.shape[1])):
            acc.add(net.pixel_probs(x, z.to(dev), dt).prod(-1))
        est = acc.result(n, seed)
        out |= {(name, o): est for name in products for o in outputs}
    return out
