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

import contextlib
import dataclasses
from collections.abc import Mapping

import torch

from .errors import InputError
from .estimators import (
    CHUNK,
    PROPOSAL_CHUNK,
    Draws,
    Estimate,
    _LogSum,
    _prob_terms,
    _ProbSum,
    _product_chunk,
    _validate,
    log_space,
    prob_space,
)
from .model import bernoulli_log_likelihood
from .numerics import dtype_name, parse_dtype
from .runtime import check_device

SPACES = ("log", "prob", "outside")  # outside: {"space": "outside", "path": "package.module:function"}
PRECISIONS = ("cast", "autocast")
PROPOSALS = ("prior", "encoder")  # z ~ p(z), or z ~ q(z|x) from the model's trained encoder
AUTOCAST_DTYPES = (torch.float16, torch.bfloat16)


def _check_spec(argument: str, spec: Mapping) -> None:
    if spec.get("space") not in SPACES:
        raise InputError(f"{argument}['space'] = {spec.get('space')!r}; accepted: {', '.join(SPACES)}")


def _form(spec: Mapping) -> str | None:
    """A probability-space spec's form (product by default, as in ``prob_space``); None in log space."""
    return (spec.get("form") or "product") if spec["space"] == "prob" else None


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


def _labelled(est: Estimate, precision: str, dtype) -> Estimate:
    """An estimate made under autocast says so: its dtype is the autocast dtype."""
    if precision == "cast":
        return est
    return dataclasses.replace(est, dtype=dtype_name(parse_dtype(dtype)),
                               meta={**est.meta, "precision": precision})


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


def estimate(model, x, n, spec: Mapping, *, precision: str = "cast", proposal: str = "prior",
             **kw) -> Estimate:
    """One estimator by its spec, on its own, as a user calls it: what :func:`evaluate`
    reproduces. ``kw``: the estimator's keywords (dtype, device, seed, ...); ``precision``:
    "cast" or "autocast" (:func:`policy`); ``proposal``: "prior" or "encoder" (:func:`draws_from`)."""
    _check_spec("spec", spec)
    if precision != "cast" and spec["space"] != "outside" and hasattr(model, "with_output"):
        # the reductions in the dtype autocast leaves the terms in: evaluate's path, one spec
        return evaluate(model, x, n, estimators={"_": spec}, precision=precision, proposal=proposal,
                        **kw)[("_", model.output)]
    work, context = policy(precision, kw["dtype"], kw.get("device", "cpu"))
    with context:
        est = _estimate(model, x, n, spec, proposal=proposal, **{**kw, "dtype": work})
    return _labelled(est, precision, kw["dtype"])


def _estimate(model, x, n, spec: Mapping, *, proposal: str, **kw) -> Estimate:
    if spec["space"] == "outside":
        from .sources import load_estimator, run_estimator

        if proposal != "prior":
            raise InputError(f"proposal={proposal!r} with an outside estimator ({spec['path']}): it draws "
                             "its own z; accepted: proposal='prior'")
        return run_estimator(load_estimator(spec["path"]), spec["path"], model, x, n, **kw)
    kw["proposal"] = draws_from(model, x, proposal)
    if spec["space"] == "prob":
        return prob_space(model, x, n, form=_form(spec), **kw)
    return log_space(model, x, n, accumulate_dtype=spec.get("accumulate"), **kw)


@torch.no_grad()
def evaluate(model, x: torch.Tensor, n_samples: int, *, dtype: str | torch.dtype,
             estimators: Mapping[str, Mapping], outputs: tuple[str, ...] | None = None,
             device: str | torch.device = "cpu", seed: int = 0,
             precision: str = "cast", proposal: str = "prior") -> dict[tuple[str, str], Estimate]:
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
    alone run it.
    """
    for name, spec in estimators.items():
        _check_spec(f"estimators[{name!r}]", spec)
    work, context = policy(precision, dtype, device)
    own = getattr(model, "output", None)
    outputs = tuple(outputs or (own,))
    if not hasattr(model, "with_output"):
        if outputs != (own,):
            raise InputError(f"outputs={outputs!r}: this model has no other parametrization; "
                             f"accepted: ({own!r},)")
        return {(name, own): estimate(model, x, n_samples, spec, dtype=dtype, device=device, seed=seed,
                                      precision=precision, proposal=proposal)
                for name, spec in estimators.items()}
    for o in outputs:
        model.with_output(o)  # an InputError here names an output the model cannot give
    outside = {name: spec for name, spec in estimators.items() if spec["space"] == "outside"}
    if outside:  # an outside estimator runs the model itself: nothing to share
        rest = {name: spec for name, spec in estimators.items() if name not in outside}
        out = evaluate(model, x, n_samples, dtype=dtype, estimators=rest, outputs=outputs, device=device,
                       seed=seed, precision=precision, proposal=proposal) if rest else {}
        return out | {(name, o): estimate(model.with_output(o), x, n_samples, spec, dtype=dtype,
                                          device=device, seed=seed, precision=precision, proposal=proposal)
                      for name, spec in outside.items() for o in outputs}
    prop = draws_from(model, x, proposal)
    with context:
        out = _shared(model, x, n_samples, work, estimators, outputs, device, seed,
                      as_given=precision != "cast", proposal=prop)
    return {k: _labelled(e, precision, dtype) for k, e in out.items()}


def _log_chunks(model, x, n, seed, dt, dev, outputs, proposal):
    """Per chunk of draws, {output: log terms [B, c]} as the estimators compute them, one decoder
    pass serving every output (probs = sigmoid of the logits network): over the chunk's prior
    draws, or, with a proposal, over each digit's own draws (as :func:`lvm.estimators._log_terms`
    runs it: one digit at a time, its correction log p(z) - log q(z|x) added in the dtype)."""
    net, xd = model.with_output("logits"), x.to(dtype=dt)

    def terms(xb, zb):
        logits = net.decode(zb.to(dev), dt)
        return {o: bernoulli_log_likelihood(xb, logits if o == "logits" else torch.sigmoid(logits), o)
                for o in outputs}

    if proposal is None:
        for z, _ in Draws(model, n, seed).chunks(CHUNK):
            yield terms(xd, z)
        return
    for z, corr in Draws(model, n, seed, proposal).chunks(PROPOSAL_CHUNK):
        rows = [terms(xd[b:b + 1], z[b]) for b in range(len(x))]
        c = corr.to(device=dev, dtype=dt)
        yield {o: torch.stack([r[o][0] for r in rows]) + c for o in outputs}


def _shared(model, x, n_samples, dtype, estimators, outputs, device, seed, *, as_given: bool, proposal=None):
    """The shared pass in ``dtype``; ``as_given``: reductions in the dtype the terms arrive in;
    ``proposal``: None (the prior) or what :func:`draws_from` made."""
    net = model.with_output("logits")  # the network up to its output
    x, n, dt, dev = _validate(model, x, n_samples, dtype, device, None)
    B = len(x)
    streamed: dict[str, dict[str, _LogSum | _ProbSum]] = {o: {} for o in outputs}  # output -> name -> sum
    for sums in streamed.values():
        first: _LogSum | None = None  # log sums of one output see the same terms: one set of diagnostics
        for name, spec in estimators.items():
            if spec["space"] == "log":
                acc = (parse_dtype(spec["accumulate"], argument="accumulate") if spec.get("accumulate")
                       else None if as_given else dt)
                sums[name] = _LogSum(B, dt, acc, dev, diag=first.diag if first else None)
                first = first or sums[name]
            elif _form(spec) == "exp":
                sums[name] = _ProbSum(B, dt, dev, "exp", as_given=as_given)
    if any(streamed.values()):
        for lls in _log_chunks(model, x, n, seed, dt, dev, tuple(streamed), proposal):
            for o, sums in streamed.items():
                ll = lls[o]
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
        acc = _ProbSum(B, dt, dev, "product", as_given=as_given)
        for z, corr in Draws(model, n, seed, proposal).chunks(_product_chunk(B, x.shape[1])):
            acc.add(_prob_terms(net, x, z, corr, dt, dev, "product"))
        est = acc.result(n, seed)
        out |= {(name, o): est for name in products for o in outputs}
    return out
