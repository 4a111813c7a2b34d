"""bench.report.sections.theory: each prediction against a measurement it can be checked on exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import lvm
from bench.report.sections import theory

LOGIT = 4.0  # every pixel's logit, whatever z: p(x|z) = p(x) for every draw


@pytest.fixture(scope="module")
def constant_model() -> lvm.BernoulliLVM:
    dec = lvm.seed_decoder(2, hidden=8, layers=1, output="logits")
    with torch.no_grad():
        dec[-1].weight.zero_()
        dec[-1].bias.fill_(LOGIT)
    return lvm.BernoulliLVM(dec, 2)


def _digits(offs: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits with ``k`` pixels off, and their exact log p(x) = -(784 - k) softplus(-L) - k softplus(L)."""
    x = torch.ones(len(offs), 784)
    for i, k in enumerate(offs):
        x[i, :k] = 0
    sp = torch.nn.functional.softplus
    lp = torch.tensor([-(784 - k) * float(sp(torch.tensor(-LOGIT, dtype=torch.float64)))
                       - k * float(sp(torch.tensor(LOGIT, dtype=torch.float64))) for k in offs],
                      dtype=torch.float64)
    return x, lp


@pytest.mark.parametrize(("dtype", "offs"), [("float32", [0, 18, 20, 22, 24, 30]),
                                             ("float64", [100, 180, 182, 184, 186, 190])])
@pytest.mark.parametrize("form", ["product", "exp"])
def test_underflow_prediction_is_exact_when_every_term_is_p_of_x(constant_model, dtype, offs, form):
    """A decoder that ignores z makes every term equal p(x): probability space is -inf exactly for
    the digits whose log p(x) lies below the dtype's floor, log(smallest subnormal / 2), as both
    predictions say (from the float64 replay and from the truth). The digits straddle the floors
    of float32 (-104.0) and float64 (-745.1) by 1.4 to 30 nats. (At float16 and bfloat16 the
    terms' own rounding moves log p(x|z) by nats, -32 instead of -14.2 for the all-on digit at
    bfloat16, which predictions from float64 do not model.)"""
    x, truth = _digits(offs)
    assert torch.allclose(lvm.log_space(constant_model, x, 4, dtype="float64").log_px, truth, atol=1e-9)
    fl = theory.floor(dtype)
    assert ((truth - fl).abs() > 1.3).all()
    assert (truth < fl).any() and (truth > fl).any()
    est = lvm.prob_space(constant_model, x, 16, dtype=dtype, form=form)
    replay = lvm.log_space(constant_model, x, 16, dtype="float64")
    measured = torch.isneginf(est.log_px)
    assert torch.equal(measured, replay.log_px < fl)
    assert torch.equal(measured, truth < fl)


def test_floor_is_half_the_smallest_subnormal():
    for dt in ("float16", "bfloat16", "float32", "float64"):
        fi = torch.finfo(getattr(torch, dt))  # smallest subnormal = smallest normal * eps
        assert math.isclose(theory.floor(dt), math.log(fi.smallest_normal) + math.log(fi.eps) - math.log(2),
                            rel_tol=1e-12)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_the_shifted_logsumexp_stays_within_its_bound(dtype):
    """Random log terms (spread 30 nats around -150), reduced in the dtype by the estimators'
    streamed log-sum-exp, against float64 on the same rounded inputs: the error is within
    u(|y| + N + 2 log N) for every datapoint."""
    from lvm.numerics import LogSumExpState

    g = torch.Generator().manual_seed(0)
    for n in (10, 100, 1000):
        x = (-150 + 10 * torch.randn(64, n, generator=g, dtype=torch.float64)).to(getattr(torch, dtype))
        state = LogSumExpState((64,), dtype=getattr(torch, dtype))
        state.update(x)
        y_hat = state.result().to(torch.float64)
        y = torch.logsumexp(x.to(torch.float64), -1)
        u = lvm.dtype_facts(dtype).unit_roundoff
        bound = theory.lse_bound(y.numpy(), np.full(64, n, dtype=float), u)
        err = (y_hat - y).abs().numpy()
        assert (err <= bound).all(), (n, err.max(), bound.min())
        assert err.max() > 0  # the check is not vacuous: the dtype does round
