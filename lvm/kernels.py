"""The estimators' computations, on arguments already checked: kernels that only compute.

:mod:`lvm.estimators` (``log_space``, ``prob_space``) and :mod:`lvm.shared` (``estimate``,
``evaluate``) validate their arguments and choose the dtype, the chunk, the proposal object
and the reductions' dtypes; then they call one of these, as scipy's ``logsumexp`` validates
and ``_logsumexp`` computes. Each kernel draws z (:class:`lvm.draws.Draws`), gets the
decoder's terms per digit (:func:`lvm.draws.proposal_terms`), weighs them by
log p(z) - log q(z|x) in the working dtype, and feeds a reduction of :mod:`lvm.reductions`.

:func:`shared` is the one-pass form behind :func:`lvm.shared.evaluate`: one decoder pass
per chunk feeds every estimator's reduction, in both likelihood parametrizations (probs is
the logits network followed by a sigmoid; a probs decoder with no logits view, its sigmoid
inside its own code, feeds its probs alone), so each result is bit-identical to
:func:`log_space` or :func:`prob_space` alone with its default chunking. The per-pixel
product streams smaller chunks to bound its [B, c, D] tensor, and a matrix product's
rounding can depend on how many rows it is given, so it gets one pass of its own, shared by
both parametrizations (both multiply the same sigmoid outputs).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

from .draws import Drawn, Draws, Terms, proposal_terms
from .engine import compiled
from .errors import InputError
from .likelihoods import bernoulli_log_likelihood
from .protocol import check_log_likelihood
from .reductions import Estimate, LogSum, ProbSum

CHUNK = 2048  # draws per chunk of the streamed estimators (prior proposal)
PROPOSAL_CHUNK = 256  # ... with a proposal: B x chunk draws, each digit its own decoder pass


def product_chunk(B: int, D: int) -> int:
    """Draws per chunk of the per-pixel product: bounds the [B, c, D] tensor at 2^22 values."""
    return max(1, 2**22 // (B * D))


def default_chunk(form: str | None, proposal, B: int, D: int) -> int:
    """The chunk of draws an estimator streams when not told: ``form`` "product" (the per-pixel
    product), "exp" or None (log terms); ``proposal`` None for the prior."""
    if form == "product":
        return product_chunk(B, D)
    return CHUNK if proposal is None else PROPOSAL_CHUNK


def _log_likelihood(model, dt: torch.dtype, dev: torch.device) -> Terms:
    """log p(x_b|z) [b, c] in dt, its shape checked against the rows and draws it was given."""
    def terms(xb: torch.Tensor, zb: torch.Tensor) -> torch.Tensor:
        return check_log_likelihood(model, model.log_likelihood(xb, zb.to(dev), dt), len(xb), len(zb))
    return terms


def _pixel_product(model, dt: torch.dtype, dev: torch.device) -> Terms:
    """p(x_b|z) [b, c] in dt as the product of the D pixel probabilities (the textbook)."""
    def terms(xb: torch.Tensor, zb: torch.Tensor) -> torch.Tensor:
        return model.pixel_probs(xb, zb.to(dev), dt).prod(-1)
    return terms


def _weigh_log(ll: torch.Tensor, drawn: Drawn, dt: torch.dtype, dev: torch.device) -> torch.Tensor:
    """log p(x_b|z) (+ log p(z) - log q(z|x_b), cast to dt and added in dt)."""
    return ll + drawn.log_ratio.to(device=dev, dtype=dt) if drawn.per_digit else ll


def _weigh_prob(p: torch.Tensor, drawn: Drawn, dt: torch.dtype, dev: torch.device) -> torch.Tensor:
    """p(x_b|z) (* p(z)/q(z|x_b), exponentiated in float64, cast to dt and multiplied in dt)."""
    return p * torch.exp(drawn.log_ratio).to(device=dev, dtype=dt) if drawn.per_digit else p


def weighted_terms(model, x: torch.Tensor, n: int, *, dt: torch.dtype, dev: torch.device, seed: int,
                   chunk: int, form: str | None, proposal=None,
                   engine: str = "eager") -> Iterator[torch.Tensor]:
    """The weighted terms, [B, c] in dt, chunk by chunk: log terms (``form`` None), or
    probabilities by exponentiating them ("exp") or by the per-pixel product ("product").
    ``engine`` "compiled": the terms function under torch.compile (:mod:`lvm.engine`)."""
    fn = _pixel_product(model, dt, dev) if form == "product" else _log_likelihood(model, dt, dev)
    fn = compiled(fn) if engine == "compiled" else fn
    for drawn, t in proposal_terms(Draws(model, n, seed, proposal), x, chunk, fn):
        if form == "product":
            yield _weigh_prob(t, drawn, dt, dev)
        else:
            lw = _weigh_log(t, drawn, dt, dev)
            yield torch.exp(lw) if form == "exp" else lw


def log_space(model, x: torch.Tensor, n: int, *, dt: torch.dtype, dev: torch.device, seed: int,
              chunk: int, acc: torch.dtype, proposal=None, engine: str = "eager") -> Estimate:
    """logsumexp_i log w_i - log N, the sum streamed in ``acc``."""
    out = LogSum(len(x), dt, acc, dev, engine=engine)
    for lw in weighted_terms(model, x, n, dt=dt, dev=dev, seed=seed, chunk=chunk, form=None,
                             proposal=proposal, engine=engine):
        out.add(lw)
    return out.result(n, seed)


def prob_space(model, x: torch.Tensor, n: int, *, dt: torch.dtype, dev: torch.device, seed: int,
               chunk: int, form: str, proposal=None, engine: str = "eager") -> Estimate:
    """log of the mean of the weights, every step in dt."""
    out = ProbSum(len(x), dt, dev, form, engine=engine)
    for w in weighted_terms(model, x, n, dt=dt, dev=dev, seed=seed, chunk=chunk, form=form,
                            proposal=proposal, engine=engine):
        out.add(w)
    return out.result(n, seed)


def _network(model):
    """What the shared pass decodes: the model's logits view, or the model itself when it has
    none (a probs decoder whose sigmoid is inside its own code: then "probs" is its only output)."""
    try:
        return model.with_output("logits")
    except InputError:
        return model


def _log_chunks(model, x, n, seed, dt, dev, outputs, proposal, engine) -> Iterator[dict[str, torch.Tensor]]:
    """Per chunk of draws, {output: log terms [B, c]} as :func:`log_space` computes them, one
    decoder pass serving every output (probs = sigmoid of the logits network)."""
    net, xd = _network(model), x.to(dtype=dt)

    def fn(xb, zb):
        out = net.decode(zb.to(dev), dt)
        if net.output != "logits":  # probs alone: the only output the caller can have asked for
            return {o: bernoulli_log_likelihood(xb, out, o) for o in outputs}
        return {o: bernoulli_log_likelihood(xb, out if o == "logits" else torch.sigmoid(out), o)
                for o in outputs}

    chunk = default_chunk(None, proposal, len(x), x.shape[1])
    fn = compiled(fn) if engine == "compiled" else fn
    for drawn, lls in proposal_terms(Draws(model, n, seed, proposal), xd, chunk, fn):
        if drawn.per_digit:
            c = drawn.log_ratio.to(device=dev, dtype=dt)
            lls = {o: lls[o] + c for o in outputs}
        yield lls


def shared(model, x: torch.Tensor, n: int, *, dt: torch.dtype, dev: torch.device, seed: int,
           specs: Mapping[str, Mapping], outputs: tuple[str, ...], as_given: bool,
           proposal=None, engine: str = "eager") -> dict[tuple[str, str], Estimate]:
    """Every estimator of ``specs`` for every output, from one decoder pass (module docstring).

    ``specs``: name -> {"space": "log", "accumulate": a torch dtype or None} or {"space": "prob",
    "form": "product" | "exp"}; ``as_given``: reductions in the dtype the terms arrive in
    (autocast); ``proposal``: None (the prior) or a proposal object; ``engine``: "eager" or
    "compiled" (:mod:`lvm.engine`).
    """
    B = len(x)
    streamed: dict[str, dict[str, LogSum | ProbSum]] = {o: {} for o in outputs}  # output -> name -> sum
    for sums in streamed.values():
        first: LogSum | None = None  # log sums of one output see the same terms: one set of diagnostics
        for name, spec in specs.items():
            if spec["space"] == "log":
                acc = spec["accumulate"] or (None if as_given else dt)
                sums[name] = LogSum(B, dt, acc, dev, diag=first.diag if first else None, engine=engine)
                first = first or sums[name]
            elif spec["form"] == "exp":
                sums[name] = ProbSum(B, dt, dev, "exp", as_given=as_given, engine=engine)
    if any(streamed.values()):
        for lls in _log_chunks(model, x, n, seed, dt, dev, tuple(streamed), proposal, engine):
            for o, sums in streamed.items():
                ll = lls[o]
                exp = None  # exp(ll), made once for the probability-space sums of this output
                for acc in sums.values():
                    if isinstance(acc, LogSum):
                        acc.add(ll)
                    else:
                        exp = torch.exp(ll) if exp is None else exp
                        acc.add(exp)
    out = {(name, o): acc.result(n, seed) for o, sums in streamed.items() for name, acc in sums.items()}
    products = [name for name, spec in specs.items() if spec["space"] == "prob" and spec["form"] == "product"]
    if products:
        acc = ProbSum(B, dt, dev, "product", as_given=as_given, engine=engine)
        net = _network(model)  # the network up to its output
        for p in weighted_terms(net, x, n, dt=dt, dev=dev, seed=seed, chunk=product_chunk(B, x.shape[1]),
                                form="product", proposal=proposal, engine=engine):
            acc.add(p)
        est = acc.result(n, seed)
        out |= {(name, o): est for name in products for o in outputs}
    return out
