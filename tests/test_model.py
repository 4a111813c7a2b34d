"""lvm.model: the Bernoulli likelihood paths against torch.distributions, float16 saturation,
the seeded textbook decoders, and the linear-Gaussian closed form against scipy.

Summation tolerances use the standard bound |sum computed - sum| <= gamma_D sum |t_j|,
gamma_D = D u / (1 - D u), for D = 784 terms in unit roundoff u of the working dtype.
"""

from __future__ import annotations

import math

import pytest
import scipy.stats
import torch
from torch import nn
from torch.distributions import Bernoulli

import lvm
from lvm.numerics import dtype_facts

D = 784


def gamma(n: int, dtype: torch.dtype) -> float:
    u = dtype_facts(dtype).unit_roundoff
    return n * u / (1 - n * u)


def assert_sums_close(got: torch.Tensor, want: torch.Tensor, abs_terms: torch.Tensor, dtype, factor=2.0):
    """|got - want| <= factor * gamma_D * sum_j |t_j| elementwise (both are D-term sums)."""
    tol = factor * gamma(D, dtype) * abs_terms.to(torch.float64)
    err = (got.to(torch.float64) - want.to(torch.float64)).abs()
    assert torch.isfinite(got).all() and torch.isfinite(want).all()
    worst = err.argmax()
    assert (err <= tol).all(), f"max error {err.max():.3g}, bound at that entry {tol.flatten()[worst]:.3g}"


def saturating_probs_model(seed: int = 0) -> lvm.BernoulliLVM:
    """Logits of size ~N(0, 40^2): many pixels are exactly 0.0 or 1.0 after a float32 Sigmoid."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(2, D)
    with torch.no_grad():
        lin.weight.copy_(40 * torch.randn(D, 2, generator=g))
        lin.bias.copy_(40 * torch.randn(D, generator=g))
    return lvm.BernoulliLVM(nn.Sequential(lin, nn.Sigmoid()), 2, "probs")


def constant_decoder(value: float, *, sigmoid: bool, dtype=torch.float32) -> nn.Sequential:
    """Every pixel's output is ``value`` (zero weights), optionally through a Sigmoid."""
    lin = nn.Linear(2, D, dtype=dtype)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.fill_(value)
    return nn.Sequential(lin, nn.Sigmoid()) if sigmoid else nn.Sequential(lin)


# --------------------------------------------------------------------- Bernoulli paths

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_logits_fast_path_equals_slow_path_and_torch_bernoulli(part4, binary_x, dtype):
    z = lvm.draw(part4, 64, seed=0)
    fast = part4.log_likelihood(binary_x, z, dtype)
    assert fast.shape == (8, 64) and fast.dtype == dtype
    slow_terms = part4.pixel_log_probs(binary_x, z, dtype)  # [B, N, D]
    abs_terms = slow_terms.abs().sum(-1)
    assert_sums_close(fast, slow_terms.sum(-1), abs_terms, dtype)
    logits = part4.decode(z, dtype)
    ref = Bernoulli(logits=logits).log_prob(binary_x.to(dtype)[:, None, :]).sum(-1)
    assert_sums_close(fast, ref, abs_terms, dtype)
    # logits() of a logits model is the decoder output itself.
    assert torch.equal(part4.logits(z, dtype), logits)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("which", ["part2", "saturating"])
def test_probs_path_equals_torch_bernoulli_probs_including_clamp(part2, binary_x, dtype, which):
    """torch's Bernoulli(probs=p) clamps p to [eps, 1 - eps]; so must the model.

    The saturating decoder puts exact 0.0 and 1.0 into p in float32: without the clamp the
    model would return -inf (or NaN) where torch returns a finite value. The bound adds a
    factor for the log-odds torch passes through (|logit| <= log(1/eps) < 37).
    """
    model = part2 if which == "part2" else saturating_probs_model()
    z = lvm.draw(model, 64, seed=1)
    p = model.decode(z, dtype)
    if which == "saturating" and dtype == torch.float32:
        assert (p == 0).any() and (p == 1).any()
    got = model.log_likelihood(binary_x, z, dtype)
    terms = Bernoulli(probs=p).log_prob(binary_x.to(dtype)[:, None, :])
    want = terms.sum(-1)
    assert_sums_close(got, want, terms.abs().sum(-1), dtype, factor=40.0)
    assert_sums_close(model.pixel_log_probs(binary_x, z, dtype).sum(-1), want, terms.abs().sum(-1),
                      dtype, factor=40.0)


def test_float16_probs_saturate_and_cap_the_log_odds():
    """A pixel with logit 10 has p = 1 - 4.5e-5; float16's spacing below 1 is 4.9e-4, so p == 1.0.

    The clamp then puts p at 1 - eps16 and log p(x=0) at log(eps16) = -6.93 instead of -10.00005:
    a float16 probs model cannot express log-odds beyond ~6.9. The logits model keeps -10.
    """
    probs_model = lvm.BernoulliLVM(constant_decoder(10.0, sigmoid=True), 2, "probs")
    logits_model = lvm.BernoulliLVM(constant_decoder(10.0, sigmoid=False), 2, "logits")
    z = torch.zeros(3, 2, dtype=torch.float64)
    assert (probs_model.decode(z, torch.float16) == 1.0).all()
    assert (probs_model.decode(z, torch.float32) < 1.0).all()
    x0 = torch.zeros(1, D)
    exact = -math.log1p(math.exp(10.0))  # log(1 - sigmoid(10)) = -10.0000454
    u16 = dtype_facts("float16").unit_roundoff
    eps16 = torch.finfo(torch.float16).eps
    lp16 = probs_model.pixel_log_probs(x0, z, torch.float16)
    assert (lp16 - math.log(eps16)).abs().max() <= 4 * u16 * 7  # log(eps16) = -6.93, not -10
    lp64 = probs_model.pixel_log_probs(x0, z, torch.float64)
    assert (lp64 - exact).abs().max() <= 1e-12
    lpl = logits_model.pixel_log_probs(x0, z, torch.float16)
    assert (lpl.float() - exact).abs().max() <= 2 * u16 * 10


def test_textbook_example_784_pixels_at_p_08():
    """prod of 784 probabilities 0.8: 0.8**784 = 1.05e-76 in float64, 0 in float32 (min 1.4e-45)."""
    want = 0.8**784
    assert want == pytest.approx(1.05e-76, rel=5e-3)
    # float64 weights, so the float64 copy holds 0.8 itself, not float32(0.8) = 0.8 + 1.2e-8.
    model = lvm.BernoulliLVM(constant_decoder(0.8, sigmoid=False, dtype=torch.float64), 2, "probs")
    x = torch.ones(1, D)
    z = lvm.draw(model, 10, seed=0)
    assert (model.pixel_probs(x, z, torch.float32).prod(-1) == 0).all()
    prod64 = model.pixel_probs(x, z, torch.float64).prod(-1)
    assert ((prod64 - want).abs() <= gamma(D + 1, torch.float64) * want).all()
    # Through the estimators: probability space underflows in float32, log space does not.
    log_want = D * math.log(0.8)
    p32 = lvm.prob_space(model, x, 10, dtype="float32")
    assert p32.log_px.item() == -math.inf and p32.n_zero_terms.item() == 10
    p64 = lvm.prob_space(model, x, 10, dtype="float64")
    assert abs(p64.log_px.item() - log_want) <= gamma(D + 10, torch.float64) * abs(log_want)
    l32 = lvm.log_space(model, x, 10, dtype="float32")
    assert abs(l32.log_px.item() - log_want) <= gamma(D, torch.float32) * abs(log_want)


# ------------------------------------------------------------------------- decoders

def _arch(decoder: nn.Module) -> list[tuple]:
    return [(type(m).__name__, getattr(m, "in_features", None), getattr(m, "out_features", None))
            for m in decoder]


def test_seed_decoder_architectures():
    assert _arch(lvm.seed_decoder()) == [
        ("Linear", 2, 128), ("ELU", None, None), ("Linear", 128, 128), ("ELU", None, None),
        ("Linear", 128, 784), ("Sigmoid", None, None)]
    assert _arch(lvm.seed_decoder(2, hidden=512, layers=3, output="logits")) == [
        ("Linear", 2, 512), ("ELU", None, None), ("Linear", 512, 512), ("ELU", None, None),
        ("Linear", 512, 512), ("ELU", None, None), ("Linear", 512, 784)]


def test_seed_decoder_is_reproducible_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = lvm.seed_decoder(seed=7), lvm.seed_decoder(seed=7), lvm.seed_decoder(seed=8)
    assert torch.equal(torch.random.get_rng_state(), state)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys() == sc.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not any(torch.equal(sa[k], sc[k]) for k in sa if k.endswith("weight"))
    assert lvm.BernoulliLVM(a, 2, "probs").fingerprint() == lvm.BernoulliLVM(b, 2, "probs").fingerprint()
    assert lvm.BernoulliLVM(a, 2, "probs").fingerprint() != lvm.BernoulliLVM(c, 2, "probs").fingerprint()


def test_with_output_switches_parametrization_with_shared_weights(part4, binary_x):
    probs = part4.with_output("probs")
    assert probs.output == "probs" and isinstance(list(probs.decoder.children())[-1], nn.Sigmoid)
    back = probs.with_output("logits")
    z = lvm.draw(part4, 16, seed=0)
    assert torch.equal(back.decode(z, torch.float64), part4.decode(z, torch.float64))
    # In float64 the two parametrizations agree except where the clamp bites (|logit| > 36).
    assert (part4.decode(z, torch.float64).abs() < 36).all()
    lp = probs.log_likelihood(binary_x, z, torch.float64)
    ll = part4.log_likelihood(binary_x, z, torch.float64)
    assert ((lp - ll).abs() <= 1e-9 * ll.abs()).all()


# ------------------------------------------------------------------- linear Gaussian

@pytest.mark.parametrize("K", [1, 3])
def test_linear_gaussian_exact_log_marginal_equals_scipy(K):
    model = lvm.LinearGaussianLVM.random(20, K, sigma=0.3, scale=2.0, seed=K)
    x = model.sample_x(5, torch.Generator().manual_seed(0))
    x = torch.cat([x, x[:1] + 3.0])  # an off-distribution point too
    cov = (model.W @ model.W.T + model.sigma**2 * torch.eye(20, dtype=torch.float64)).numpy()
    want = scipy.stats.multivariate_normal(mean=model.b.numpy(), cov=cov).logpdf(x.numpy())
    got = model.exact_log_marginal(x)
    assert got.dtype == torch.float64 and got.shape == (6,)
    torch.testing.assert_close(got, torch.from_numpy(want), rtol=1e-11, atol=1e-10)
    torch.testing.assert_close(model.exact_log_marginal(x[0]), got[:1], rtol=0, atol=1e-12)


def test_linear_gaussian_likelihood_and_pixel_densities_equal_scipy():
    model = lvm.LinearGaussianLVM.random(20, 2, sigma=0.5, seed=0)
    x = model.sample_x(3, torch.Generator().manual_seed(1))
    z = lvm.draw(model, 7, seed=0)
    mu = (z @ model.W.T + model.b).numpy()  # [N, D]
    dens = scipy.stats.norm(loc=mu[None], scale=model.sigma).logpdf(x.numpy()[:, None, :])  # [B, N, D]
    torch.testing.assert_close(model.log_likelihood(x, z, torch.float64), torch.from_numpy(dens.sum(-1)),
                               rtol=1e-12, atol=1e-11)
    torch.testing.assert_close(model.pixel_probs(x, z, torch.float64), torch.from_numpy(dens).exp(),
                               rtol=1e-12, atol=0)


# ------------------------------------------------------------------------ bad input

def test_decoder_with_wrong_output_width_is_rejected():
    with pytest.raises(ValueError, match=r"decoder output width is 100; accepted: data_dim=784"):
        lvm.BernoulliLVM(nn.Linear(2, 100), 2)
    with pytest.raises(ValueError, match=r"decoder does not accept latent_dim=3"):
        lvm.BernoulliLVM(lvm.seed_decoder(2), 3)


@pytest.mark.parametrize("kwargs, match", [
    (dict(output="logit"), r"output='logit' is not supported"),
    (dict(latent_dim=0), r"latent_dim=0 is invalid"),
])
def test_bernoulli_constructor_names_bad_arguments(kwargs, match):
    args = dict(decoder=lvm.seed_decoder(2), latent_dim=2) | kwargs
    with pytest.raises(ValueError, match=match):
        lvm.BernoulliLVM(**args)


def test_seed_decoder_and_linear_gaussian_name_bad_arguments():
    with pytest.raises(ValueError, match=r"output='sigmoid' is not supported"):
        lvm.seed_decoder(output="sigmoid")
    with pytest.raises(ValueError, match=r"layers=0"):
        lvm.seed_decoder(layers=0)
    with pytest.raises(ValueError, match=r"sigma=0\.0"):
        lvm.LinearGaussianLVM(torch.ones(4, 2), torch.zeros(4), 0.0)
    with pytest.raises(ValueError, match=r"W has shape \(4, 2\) and b \(3,\)"):
        lvm.LinearGaussianLVM(torch.ones(4, 2), torch.zeros(3), 1.0)


# ------------------------------------------------------ API input gaps (issue 13, item 14)

@pytest.mark.parametrize("kwargs, match", [
    (dict(latent_dim=True), r"latent_dim=True is invalid; accepted: a positive integer"),
    (dict(latent_dim=2.0), r"latent_dim=2\.0 is invalid; accepted: a positive integer"),
    (dict(data_dim=True), r"data_dim=True is invalid; accepted: a positive integer"),
])
def test_bernoulli_refuses_a_bool_or_float_dimension(kwargs, match):
    with pytest.raises(lvm.InputError, match=match):
        lvm.BernoulliLVM(**(dict(decoder=lvm.seed_decoder(2), latent_dim=2) | kwargs))


@pytest.mark.parametrize("decoder", [None, "decoder", lambda z: z])
def test_bernoulli_refuses_a_decoder_that_is_not_a_module(decoder):
    with pytest.raises(lvm.InputError, match=r"decoder=.* is invalid; accepted: a torch\.nn\.Module"):
        lvm.BernoulliLVM(decoder, 2)


def test_check_data_refuses_infinity_and_non_numbers():
    from lvm.model import check_data
    for inf in (math.inf, -math.inf):
        with pytest.raises(lvm.InputError, match=r"x contains infinity \(1 values\); accepted: finite"):
            check_data(torch.tensor([[0.0, inf]]), 2, binary=False)
    with pytest.raises(lvm.InputError, match=r"x='ab' \(a str\) is invalid; accepted: a tensor or array"):
        check_data("ab", 2)
    assert check_data([[0.5, 1.5]], 2, binary=False).shape == (1, 2)  # array-likes still convert
