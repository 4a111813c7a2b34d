"""lvm.estimators: accuracy against exact log p(x), where probability space underflows,
chunk-size independence, bit-for-bit replays, float16 accumulation, and input validation.

Accuracy (linear-Gaussian models, D = 784, sigma = 0.5, N = 10^5, R = 10 seeds): the mean of
R log-space estimates must lie within 4 standard errors of the exact log p(x), the SE being
std / sqrt(R) over the repeats. log space is biased low by Var(w) / (2N) + O(N^-2), with
w = p(x|z) / p(x) the prior importance weight; for this model Var(w) has a closed form
(`var_w`), so the test also checks the bias is below one SE, i.e. well inside the tolerance.
Measured: Var(w) = 34-43 at K = 2 and 215, 620 at K = 10, so the bias is 1.7e-4 to 3.1e-3
nats against SEs of 6.4e-3 to 2.1e-2 (bias / SE <= 0.16, far below the 4-SE tolerance);
largest |mean - exact| / SE = 1.83 (K = 10), float32 and float64 agreeing to 1e-5 nats.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

import lvm
from lvm.numerics import dtype_facts
from lvm.posterior import MixtureProposal

N_ACC = 100_000
REPEATS = 10
K_SE = 4.0
CHUNK_PAIRS = 1024  # chunk_size = 1024 // B: [B, chunk, 784] float64 temporaries of 6.4 MB, below the
# allocator threshold conftest pins (32 MiB); 2-3x faster than the default chunk of 2048 at B = 4.
# Chunking does not change results (test_chunked_equals_unchunked_float64).


LOG_TINY64 = dtype_facts("float64").log_min_subnormal  # -744.44
F64 = torch.float64


def chunk(x: torch.Tensor) -> int:
    return CHUNK_PAIRS // len(x)


def var_w(model: lvm.LinearGaussianLVM, x: torch.Tensor) -> torch.Tensor:
    """Exact Var_{z ~ p(z)}[p(x|z) / p(x)] = E[w^2] - 1 for the linear-Gaussian model.

    The posterior is N(m, S), S^-1 = P = I + W^T W / sigma^2, m = S W^T (x - b) / sigma^2, and
    E[w^2] = int N(z; m, S)^2 / N(z; 0, I) dz = |S|^-1 |A|^-1/2 exp(h^T A^-1 h / 2 - m^T P m)
    with A = 2P - I, h = 2 P m.
    """
    K, s2 = model.latent_dim, model.sigma**2
    eye = torch.eye(K, dtype=F64)
    P = eye + model.W.T @ model.W / s2
    m = torch.linalg.solve(P, ((x.to(F64) - model.b) @ model.W / s2).T).T
    A, h = 2 * P - eye, 2 * m @ P
    log_e_w2 = (torch.logdet(P) - 0.5 * torch.logdet(A)
                + 0.5 * (h * torch.linalg.solve(A, h.T).T).sum(-1) - (m * (m @ P)).sum(-1))
    return torch.expm1(log_e_w2)


def at_log_px(model, x0: torch.Tensor, direction: torch.Tensor, target: float) -> torch.Tensor:
    """x0 + t * direction, t >= 0, whose exact log p(x) equals ``target`` (bisection)."""
    f = lambda t: float(model.exact_log_marginal(x0 + t * direction)[0])  # noqa: E731
    lo, hi = 0.0, 1.0
    assert f(lo) > target
    while f(hi) > target:
        hi *= 2
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if f(mid) > target else (lo, mid)
    return x0 + lo * direction


@pytest.fixture(scope="module")
def cases(lg2, lg10):
    """K -> (model, x) for the accuracy repeats.

    K = 2: four points straddling float64's underflow threshold -744.44: a model sample
    (log p = -585.7) and points on a noise ray from it at exact log p = -743, -746 and -900.
    K = 10: the first two model samples (Var(w) = 215 and 620).
    """
    g = torch.Generator().manual_seed(0)
    x0 = lg2.sample_x(1, g)[0]
    direction = 0.5 * torch.randn(784, generator=g, dtype=F64)
    x2 = torch.stack([x0] + [at_log_px(lg2, x0, direction, t) for t in (-743.0, -746.0, -900.0)])
    x10 = lg10.sample_x(2, torch.Generator().manual_seed(0))
    return {2: (lg2, x2), 10: (lg10, x10)}


@pytest.fixture(scope="module")
def repeats(cases):
    """(K, dtype) -> [R, B] log-space estimates at N = 10^5, seeds 0..R-1 (computed on first use)."""
    store: dict[tuple[int, str], torch.Tensor] = {}

    def get(K: int, dtype: str) -> torch.Tensor:
        if (K, dtype) not in store:
            model, x = cases[K]
            store[K, dtype] = torch.stack([
                lvm.log_space(model, x, N_ACC, dtype=dtype, seed=r, chunk_size=chunk(x)).log_px
                for r in range(REPEATS)])
        return store[K, dtype]

    return get


# ------------------------------------------------------------------------- accuracy

def test_var_w_closed_form_matches_the_estimators_ess(cases):
    """Cross-check of var_w: N / ESS - 1 estimates Var(w) (relative error ~ sqrt(kurtosis / N))."""
    model, x = cases[2]
    est = lvm.log_space(model, x, N_ACC, dtype="float64", seed=0, chunk_size=chunk(x))
    v = var_w(model, x)
    assert ((N_ACC / est.ess - 1) / v - 1).abs().max() < 0.2


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("K", [2, 10])
def test_log_space_within_4_se_of_exact(cases, repeats, K, dtype):
    model, x = cases[K]
    exact = model.exact_log_marginal(x)
    est = repeats(K, dtype)
    assert torch.isfinite(est).all()
    mean = est.mean(0)
    se = est.std(0) / math.sqrt(REPEATS)
    assert (se > 0).all(), "repeats with different seeds must differ"
    z = (mean - exact) / se
    assert (z.abs() < K_SE).all(), f"(mean - exact) / SE = {z.tolist()}, SE = {se.tolist()}"
    # Jensen bias -Var(w) / 2N: below one SE on every datapoint, so far inside the 4-SE tolerance.
    v = var_w(model, x)
    bias = v / (2 * N_ACC)
    assert (bias < se).all(), f"bias {bias.tolist()} vs SE {se.tolist()}"
    # The spread of the repeats is the Monte Carlo error sqrt(Var(w) / N), not rounding noise:
    # s / sigma for R normal draws lies inside the chi-square 99.9% interval.
    lo, hi = (math.sqrt(scipy.stats.chi2.ppf(q, REPEATS - 1) / (REPEATS - 1)) for q in (5e-4, 1 - 5e-4))
    ratio = est.std(0) / torch.sqrt(v / N_ACC)
    assert ((ratio > lo) & (ratio < hi)).all(), f"std / theory {ratio.tolist()} not in [{lo:.2f}, {hi:.2f}]"


@pytest.mark.slow
@pytest.mark.parametrize("form", ["product", "exp"])
def test_prob_space_underflows_exactly_where_theory_says(cases, repeats, form):
    """float32: every term p(x|z_i) (log < -500) is below 1.4e-45, so the estimate is -inf.
    float64: finite iff the mean of p(x|z_i) over the same draws, logsumexp - log N from the
    float64 log-space estimate with the same seed, exceeds the smallest subnormal (-744.44)."""
    model, x = cases[2]
    theory = repeats(2, "float64")[0]  # seed 0: the same draws as below
    above = theory > LOG_TINY64
    assert above.tolist() == [True, True, False, False]
    assert ((theory - LOG_TINY64).abs() > 0.5).all()  # none so close that subnormal rounding decides

    p32 = lvm.prob_space(model, x, N_ACC, dtype="float32", seed=0, form=form, chunk_size=chunk(x))
    assert p32.underflowed.all()
    assert (p32.n_zero_terms == N_ACC).all()

    p64 = lvm.prob_space(model, x, N_ACC, dtype="float64", seed=0, form=form, chunk_size=chunk(x))
    assert torch.equal(torch.isfinite(p64.log_px), above)
    assert torch.equal(p64.underflowed, ~above)
    assert not p64.nonfinite.any()
    # Where the mean is a normal float64 number it equals log space up to summation rounding.
    normal = theory > dtype_facts("float64").log_min_normal
    assert normal.any()
    u = dtype_facts("float64").unit_roundoff
    tol = 2 * (N_ACC + 784) * u
    assert ((p64.log_px - theory)[normal].abs() <= tol).all()


# --------------------------------------------------------- chunking, replays, determinism

def _run(estimator: str, form: str | None, model, x, n, **kw) -> lvm.Estimate:
    if estimator == "log_space":
        return lvm.log_space(model, x, n, **kw)
    return lvm.prob_space(model, x, n, form=form, **kw)


ESTIMATORS = [("log_space", None), ("prob_space", "product"), ("prob_space", "exp")]


@pytest.mark.parametrize("which", ["linear-gaussian", "part2"])
@pytest.mark.parametrize("estimator, form", ESTIMATORS)
def test_chunked_equals_unchunked_float64(lg2, part2, binary_x, which, estimator, form):
    n = 6000  # more than one 4096-draw block
    model, x = ((lg2, lg2.sample_x(2, torch.Generator().manual_seed(5))) if which == "linear-gaussian"
                else (part2, binary_x[:3]))
    ref = _run(estimator, form, model, x, n, dtype="float64", seed=11, chunk_size=n)
    assert torch.isfinite(ref.log_px).all()
    for cs in (97, 2048, 4097):
        got = _run(estimator, form, model, x, n, dtype="float64", seed=11, chunk_size=cs)
        rel = ((got.log_px - ref.log_px).abs() / ref.log_px.abs()).max()
        assert rel <= 1e-12, f"chunk_size={cs}: relative difference {rel:.3g}"
        assert torch.equal(got.n_zero_terms, ref.n_zero_terms)
        assert ((got.ess - ref.ess).abs() <= 1e-10 * ref.ess).all()


def test_draw_replays_bit_for_bit_and_are_what_the_estimators_use(lg2, part2, binary_x):
    a = lvm.draw(lg2, 5000, seed=3)
    assert a.dtype == F64 and a.shape == (5000, 2)
    assert torch.equal(a, lvm.draw(lg2, 5000, seed=3))
    assert torch.equal(a[:1000], lvm.draw(lg2, 1000, seed=3))  # fixed blocks: prefixes agree
    assert not torch.equal(a, lvm.draw(lg2, 5000, seed=4))
    x = lg2.sample_x(2, torch.Generator().manual_seed(5))
    u = dtype_facts("float64").unit_roundoff
    for cs in (5000, 333):
        est = lvm.log_space(lg2, x, 5000, dtype="float64", seed=3, chunk_size=cs)
        replay = torch.logsumexp(lg2.log_likelihood(x, a, F64), -1) - math.log(5000)
        assert ((est.log_px - replay).abs() <= 4 * 5000 * u * replay.abs()).all()
    # The product form multiplies exactly the pixel probabilities of the replayed draws.
    z = lvm.draw(part2, 300, seed=9)
    est = lvm.prob_space(part2, binary_x[:2], 300, dtype="float64", seed=9, form="product")
    replay = torch.log(part2.pixel_probs(binary_x[:2], z, F64).prod(-1).mean(-1))
    assert ((est.log_px - replay).abs() <= 4 * (300 + 784) * u * replay.abs()).all()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("estimator, form", ESTIMATORS)
def test_same_seed_gives_identical_estimates(part2, binary_x, estimator, form, dtype):
    runs = [_run(estimator, form, part2, binary_x[:3], 3000, dtype=dtype, seed=s, chunk_size=1000)
            for s in (21, 21, 22)]
    a, b, c = runs
    for field in ("log_px", "n_zero_terms", "n_nonfinite_terms", "ess"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert a.meta == b.meta and a.estimator == b.estimator and a.dtype == dtype
    if torch.isfinite(a.log_px).any():  # (float32 products of 784 pixels are all 0 in any case)
        assert not torch.equal(a.log_px, c.log_px)


# ------------------------------------------------------------------- float16 overflow

class EqualTerms:
    """A duck-typed model whose every term log p(x|z) is 0: logsumexp = log N exactly."""

    latent_dim = 1

    def sample_prior(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(n, 1, generator=generator, dtype=F64)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return torch.zeros(len(x), len(z), dtype=dtype, device=z.device)


def test_float16_log_space_overflows_at_65536_equal_terms_unless_accumulated_wider():
    model = EqualTerms()
    assert isinstance(model, lvm.LatentVariableModel)
    x = torch.zeros(2, 3)
    n = 65_536  # the sum of 65,536 ones exceeds float16's largest finite 65,504
    est = lvm.log_space(model, x, n, dtype="float16")
    assert (est.log_px == math.inf).all() and est.nonfinite.all()
    fixed = lvm.log_space(model, x, n, dtype="float16", accumulate_dtype="float32")
    assert fixed.meta["accumulate_dtype"] == "float32"
    u16 = dtype_facts("float16").unit_roundoff
    assert (fixed.log_px.abs() <= u16 * math.log(n)).all()  # true value: log N - log N = 0
    assert (fixed.n_zero_terms == 0).all()
    # Fewer equal terms fit in float16 without help.
    small = lvm.log_space(model, x, 30_000, dtype="float16")
    assert (small.log_px.abs() <= 2 * u16 * math.log(30_000)).all()


# ------------------------------------------------------------------------ bad input

BOTH = ["log_space", "prob_space"]


def _call(name, model, x, n=10, **kw):
    kw.setdefault("dtype", "float32")
    return getattr(lvm, name)(model, x, n, **kw)


@pytest.mark.parametrize("name", BOTH)
def test_bad_data_is_named(part2, lg2, name):
    x = torch.zeros(2, 784)
    half = x.clone()
    half[1, 5] = 0.5
    with pytest.raises(ValueError, match=r"x is not binary \(values such as \[0\.5\]\)"):
        _call(name, part2, half)
    with pytest.raises(ValueError, match=r"x has shape \(3, 100\); accepted: \[B, 784\]"):
        _call(name, part2, torch.zeros(3, 100))
    with pytest.raises(ValueError, match=r"x has shape \(2, 3, 784\)"):
        _call(name, part2, torch.zeros(2, 3, 784))
    nan = x.clone()
    nan[0, 0] = math.nan
    with pytest.raises(ValueError, match=r"x contains NaN \(1 values\)"):
        _call(name, part2, nan)
    with pytest.raises(ValueError, match=r"x contains NaN"):
        _call(name, lg2, nan)  # continuous data: NaN is still refused


@pytest.mark.parametrize("name", BOTH)
@pytest.mark.parametrize("kwargs, match", [
    (dict(n=0), r"n_samples=0 is invalid"),
    (dict(n=-5), r"n_samples=-5 is invalid"),
    (dict(n=2.5), r"n_samples=2\.5 is invalid"),
    (dict(dtype="float8"), r"dtype='float8' is not supported; accepted: float16, bfloat16, float32, float64"),
    (dict(dtype="int32"), r"dtype='int32' is not supported"),
    (dict(device="banana"), r"device='banana' is not a device"),
    (dict(device="xla"), r"device='xla' is not supported"),
    (dict(chunk_size=0), r"chunk_size=0 is invalid"),
])
def test_bad_arguments_are_named(part2, name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _call(name, part2, torch.zeros(2, 784), **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
@pytest.mark.parametrize("name", BOTH)
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_cuda_is_named(part2, name, device):
    with pytest.raises(ValueError, match=rf"device='{device}' requested but CUDA is not available"):
        _call(name, part2, torch.zeros(2, 784), device=device)


def test_estimator_specific_arguments_are_named(part2):
    x = torch.zeros(2, 784)
    with pytest.raises(ValueError, match=r"accumulate_dtype='int8' is not supported"):
        lvm.log_space(part2, x, 10, dtype="float16", accumulate_dtype="int8")
    with pytest.raises(ValueError, match=r"form='sum' is not supported; accepted: product, exp"):
        lvm.prob_space(part2, x, 10, dtype="float32", form="sum")
    with pytest.raises(ValueError, match=r"form='product' needs a model with pixel_probs"):
        lvm.prob_space(EqualTerms(), x, 10, dtype="float32", form="product")


def test_decoder_with_wrong_width_never_reaches_an_estimator():
    with pytest.raises(ValueError, match=r"decoder output width is 10; accepted: data_dim=784"):
        lvm.BernoulliLVM(nn.Sequential(nn.Linear(2, 10), nn.Sigmoid()), 2, "probs")


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_ess_is_zero_when_every_term_underflows_and_n_when_all_equal(dtype):
    """ESS = (sum w)^2 / sum w^2: no surviving weight gives 0, N equal weights give N."""
    x = torch.ones(3, 784)
    const = lvm.BernoulliLVM(torch.nn.Sequential(torch.nn.Linear(2, 784)), 2)
    with torch.no_grad():
        const.decoder[0].weight.zero_()
        const.decoder[0].bias.fill_(math.log(0.8 / 0.2))  # p = 0.8 everywhere: 0.8^784 underflows
    const.invalidate()
    under = lvm.prob_space(const, x, 50, dtype=dtype, form="exp")
    if dtype == "float64":
        assert torch.allclose(under.ess, torch.full((3,), 50.0, dtype=torch.float64))
    else:
        assert under.underflowed.all() and (under.ess == 0).all()
    equal = lvm.log_space(const, x, 50, dtype=dtype)
    assert torch.allclose(equal.ess, torch.full((3,), 50.0, dtype=torch.float64), rtol=1e-3)


# ------------------------------------------------------ API input gaps (issue 13, item 14)

@pytest.mark.parametrize("name", BOTH)
def test_a_bool_chunk_size_is_refused(part2, name):
    with pytest.raises(lvm.InputError, match=r"chunk_size=True is invalid; accepted: None or a positive"):
        _call(name, part2, torch.zeros(2, 784), chunk_size=True)


@pytest.mark.parametrize("name", BOTH)
@pytest.mark.parametrize("seed", [1.7, "abc", None, -1, True])
def test_a_seed_that_is_not_a_non_negative_integer_is_refused(part2, name, seed):
    with pytest.raises(lvm.InputError, match=rf"seed={seed!r} is invalid; accepted: a non-negative integer"):
        _call(name, part2, torch.zeros(2, 784), seed=seed)
    with pytest.raises(lvm.InputError, match=r"seed="):
        lvm.draw(part2, 4, seed=seed)
    # numpy integers are integers: the same draws as the Python int
    assert torch.equal(_call(name, part2, torch.zeros(2, 784), seed=np.int64(3)).log_px,
                       _call(name, part2, torch.zeros(2, 784), seed=3).log_px)


@pytest.mark.parametrize("name", BOTH)
def test_x_that_is_not_numbers_and_a_model_that_is_not_one_are_named(part2, name):
    with pytest.raises(lvm.InputError, match=r"x='abc' \(a str\) is invalid; accepted: a tensor or array"):
        _call(name, part2, "abc")
    with pytest.raises(lvm.InputError, match=r"x='abc' \(a str\)"):
        _call(name, EqualTerms(), "abc", **({"form": "exp"} if name == "prob_space" else {}))  # no data_dim
    for model in (None, object()):
        with pytest.raises(lvm.InputError, match=r"model=.* lacks latent_dim, sample_prior, log_likelihood; "
                                                 r"accepted: a model with latent_dim, sample_prior"):
            _call(name, model, torch.zeros(2, 784))


@pytest.mark.parametrize("name", BOTH)
def test_infinite_gaussian_data_is_refused(lg2, name):
    x = torch.zeros(2, 784)
    x[1, 7] = math.inf
    with pytest.raises(lvm.InputError, match=r"x contains infinity \(1 values\); accepted: finite values"):
        _call(name, lg2, x)


class Shaped(EqualTerms):
    """EqualTerms whose log_likelihood returns its [B, N] result reshaped by ``f``."""

    def __init__(self, f):
        self.f = f

    def log_likelihood(self, x, z, dtype):
        return self.f(super().log_likelihood(x, z, dtype))


@pytest.mark.parametrize("f, got", [
    (lambda a: a[:, 0], "[3]"),  # [B]
    (lambda a: a[0], "[8]"),  # [chunk]
    (lambda a: a.T, "[8, 3]"),  # [chunk, B], chunk != B
])
def test_a_log_likelihood_of_the_wrong_shape_is_named(f, got):
    x = torch.zeros(3, 2)
    for kw in (dict(), dict(form="exp")):
        run = lvm.prob_space if kw else lvm.log_space
        with pytest.raises(lvm.InputError, match=rf"Shaped\.log_likelihood\(x, z, dtype\) returned shape "
                                                 rf"{re.escape(got)} for 3 datapoints and 8 draws; "
                                                 r"accepted: a tensor of shape \[B, N\] = \[3, 8\]"):
            run(Shaped(f), x, 8, dtype="float32", **kw)
    # per-datapoint proposal draws: each call is one datapoint, [1, chunk] expected
    prop = MixtureProposal(torch.zeros(3, 1, dtype=F64), torch.ones(3, 1, 1, dtype=F64))
    with pytest.raises(lvm.InputError, match=r"returned shape \[8\] for 1 datapoints and 8 draws"):
        lvm.log_space(Shaped(lambda a: a[0]), x, 8, dtype="float64", proposal=prop)
    assert torch.equal(lvm.log_space(Shaped(lambda a: a), x, 8, dtype="float64", proposal=prop).log_px,
                       lvm.log_space(EqualTerms(), x, 8, dtype="float64", proposal=prop).log_px)
