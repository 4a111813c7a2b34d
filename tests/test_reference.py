"""lvm.reference: ground truth by quadrature (K <= 2) and importance sampling (any K)
against the exact linear-Gaussian log p(x), caching, and argument errors."""

from __future__ import annotations

import math
import os

import pytest
import torch

import lvm

K_SE = 4.0


@pytest.mark.slow
def test_quadrature_matches_exact_within_1e_6_nats(lg2):
    """Three model samples and one off-distribution point (log p ~ -1000) at K = 2, D = 784."""
    x = lg2.sample_x(3, torch.Generator().manual_seed(2))
    x = torch.cat([x, x[:1] + 0.6 * torch.randn(1, 784, generator=torch.Generator().manual_seed(3),
                                                dtype=torch.float64)])
    exact = lg2.exact_log_marginal(x)
    assert exact[-1] < -900
    ref = lvm.log_marginal(lg2, x, "quadrature", cache=False)
    assert ref.method == "quadrature"
    err = (ref.log_px - exact).abs()
    assert (err <= 1e-6).all(), f"quadrature error {err.max():.3g} nats"
    # The reported error (difference of the last two refinements) is itself within tolerance.
    assert (ref.se <= 1e-6).all() and ref.meta["max_err"] <= 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("scale", [0.5, 1.0])
def test_importance_reference_at_k10_within_4_reported_se_of_exact(scale):
    """K = 10: at scale 1 the posterior is 5x narrower than the prior on every axis (prior
    sampling would need ~10^5 draws per effective sample); the Laplace/Student-t proposal
    must still land within 4 of its own delta-method standard errors."""
    model = lvm.LinearGaussianLVM.random(784, 10, sigma=0.5, scale=scale, seed=1)
    x = model.sample_x(3, torch.Generator().manual_seed(0))
    exact = model.exact_log_marginal(x)
    ref = lvm.log_marginal(model, x, "importance", n_samples=65536, cache=False)
    assert ref.method == "importance"
    assert (ref.se > 0).all() and (ref.se < 0.05).all(), ref.se
    z = (ref.log_px - exact) / ref.se
    assert (z.abs() < K_SE).all(), f"(reference - exact) / SE = {z.tolist()}"
    # the posterior is Gaussian, so the moment-matched proposal reaches the 1e-3 target before
    # the cap (65,536 draws each), and the two independent proposals agree within their SEs
    assert (ref.se <= 1e-3).all() and ref.meta["cross_check_disagree"] == 0, ref.meta
    assert max(ref.meta["draws_per_proposal"]) < 65536


def test_two_proposals_that_disagree_report_their_difference_as_the_error():
    """The delta-method SE cannot see a proposal that misses part of the posterior: where the
    two estimates differ by more than 3 combined SEs, the error is the difference itself."""
    from lvm.reference import _Accumulator, _combine

    acc = [_Accumulator(2), _Accumulator(2)]
    rows = torch.arange(2)
    lw = torch.log(torch.linspace(0.5, 1.5, 1000, dtype=torch.float64)).expand(2, -1)
    acc[0].add(rows, lw)
    acc[1].add(rows, lw + torch.tensor([[1e-4], [0.5]], dtype=torch.float64))  # agree; disagree
    lp, err, parts = _combine(acc)
    (a, sa, _), (b, sb, _) = acc[0].result(), acc[1].result()
    assert parts["cross_check_disagree"] == 1
    assert err[0] == torch.sqrt(1 / (1 / sa[0] ** 2 + 1 / sb[0] ** 2)) < 1e-2
    assert err[1] == (a[1] - b[1]).abs() and abs(float(err[1]) - 0.5) < 1e-12


@pytest.mark.slow
def test_quadrature_on_a_trained_decoder_halves_its_error_per_refinement():
    """prior-iwae-k2 (ELU, once differentiable) on test digit 10, whose integrand converged the
    slowest of the first 12 tried (one refinement gains only a factor 2.5): every refinement at
    least halves the difference of two levels until it reaches the 1e-6 nats floor, so the
    last difference (the reported error) bounds the error. At the
    default tolerance the reported error is <= 5e-4 nats and at least the distance to the
    finest level (513 points per axis)."""
    from lvm import data, zoo

    model, x = zoo.get("prior-iwae-k2"), data.load("mnist-5k", "test").x[10:11]
    fine = lvm.log_marginal(model, x, "quadrature", tol=1e-7, cache=False)
    diffs = [c["max_abs_diff"] for c in fine.meta["convergence"]]
    assert fine.meta["max_points_per_axis"] == 513 and len(diffs) == 4, fine.meta
    for coarse, finer in zip(diffs, diffs[1:], strict=False):
        if coarse > 1e-6:
            assert finer <= coarse / 2, diffs
    default = lvm.log_marginal(model, x, "quadrature", cache=False)
    assert default.se[0] <= 5e-4
    assert abs(float(default.log_px[0] - fine.log_px[0])) <= default.se[0], (default.meta, fine.meta)


@pytest.mark.slow
def test_importance_agrees_with_quadrature_on_the_part2_decoder(part2, binary_x):
    """A non-Gaussian check: both references on the ELU decoder, K = 2."""
    x = binary_x[:2]
    quad = lvm.log_marginal(part2, x, "quadrature", cache=False)
    imp = lvm.log_marginal(part2, x, "importance", cache=False)
    se = torch.sqrt(quad.se**2 + imp.se**2)
    z = (imp.log_px - quad.log_px) / se
    assert (z.abs() < K_SE).all(), f"z = {z.tolist()}, se = {se.tolist()}"


def test_auto_uses_the_closed_form_when_there_is_one(lg2, lg10, part2):
    x = lg2.sample_x(2, torch.Generator().manual_seed(0))
    ref = lvm.log_marginal(lg2, x)
    assert ref.method == "exact"
    assert torch.equal(ref.log_px, lg2.exact_log_marginal(x)) and (ref.se == 0).all()


def test_cache_returns_the_stored_reference(lg2, tmp_path):
    x = lg2.sample_x(2, torch.Generator().manual_seed(0))
    first = lvm.log_marginal(lg2, x, "importance", n_samples=2000, cache_dir=tmp_path)
    assert not first.meta.get("cached")
    assert len(list((tmp_path / "reference").glob("*.pt"))) == 1
    again = lvm.log_marginal(lg2, x, "importance", n_samples=2000, cache_dir=tmp_path)
    assert again.meta["cached"]
    assert torch.equal(again.log_px, first.log_px) and torch.equal(again.se, first.se)
    other = lvm.log_marginal(lg2, x, "importance", n_samples=2000, seed=1, cache_dir=tmp_path)
    assert not other.meta.get("cached")
    assert len(list((tmp_path / "reference").glob("*.pt"))) == 2


def test_bad_arguments_are_named(lg10, part2):
    x = torch.zeros(2, 784)
    with pytest.raises(ValueError, match=r"method='exakt' is not supported; accepted: auto, exact"):
        lvm.log_marginal(part2, x, "exakt")
    with pytest.raises(ValueError, match=r"method='quadrature' needs latent_dim <= 2, got 10"):
        lvm.log_marginal(lg10, torch.zeros(1, 784, dtype=torch.float64), "quadrature", cache=False)
    with pytest.raises(ValueError, match=r"method='exact' needs a model with exact_log_marginal"):
        lvm.log_marginal(part2, x, "exact")
    bad = x.clone()
    bad[0, 0] = 2.0
    with pytest.raises(ValueError, match=r"x is not binary \(values such as \[2\.0\]\)"):
        lvm.log_marginal(part2, bad, "quadrature", cache=False)
    nan = x.clone()
    nan[1, 3] = math.nan
    with pytest.raises(ValueError, match=r"x contains NaN"):
        lvm.log_marginal(part2, nan, cache=False)


# ------------------------------------------------- a damaged cache entry is a miss (issue 13, item 5)

def _corrupt_bytes(path):
    path.write_bytes(os.urandom(300))


def _truncate(path):
    path.write_bytes(path.read_bytes()[:100])


def _empty(path):
    path.write_bytes(b"")


def _edit(change):
    def apply(path):
        d = torch.load(path, weights_only=True)
        change(d)
        torch.save(d, path)
    return apply


@pytest.mark.parametrize("damage", [
    _corrupt_bytes, _truncate, _empty,
    _edit(lambda d: d.pop("log_px")),
    _edit(lambda d: d.update(log_px=d["log_px"][:-1], se=d["se"][:-1])),
    _edit(lambda d: d.update(log_px=torch.full_like(d["log_px"], float("nan")))),
    _edit(lambda d: d.update(log_px=d["log_px"] + 5)),  # plausible numbers, but not the ones written
], ids=["random-bytes", "truncated", "empty", "missing-key", "wrong-length", "all-nan", "shifted"])
def test_a_damaged_truth_cache_entry_is_recomputed_with_a_warning(damage, tmp_path):
    model = lvm.BernoulliLVM(lvm.seed_decoder(3, hidden=16, layers=1, output="logits"), 3)
    x = model.sample_x(3, torch.Generator().manual_seed(0))
    kw = {"method": "importance", "n_samples": 300, "cache_dir": tmp_path}
    first = lvm.log_marginal(model, x, **kw)
    (entry,) = (tmp_path / "reference").glob("*.pt")
    damage(entry)
    with pytest.warns(UserWarning, match="recomputing"):
        again = lvm.log_marginal(model, x, **kw)
    assert torch.equal(again.log_px, first.log_px) and not again.meta.get("cached")
    assert lvm.log_marginal(model, x, **kw).meta.get("cached")  # rewritten, valid again


# ------------------------------------------------------ API input gaps (issue 13, item 14)

def test_bad_model_seed_and_data_are_named_before_any_computation(part2, lg2):
    x = torch.zeros(2, 784)
    for model in (None, object()):
        with pytest.raises(lvm.InputError, match=r"model=.* lacks latent_dim, sample_prior, log_likelihood"):
            lvm.log_marginal(model, x, cache=False)
    for seed in (1.7, "abc", None, True, -1):
        with pytest.raises(lvm.InputError, match=rf"seed={seed!r} is invalid; accepted: a non-negative"):
            lvm.log_marginal(part2, x, "importance", seed=seed, cache=False)
    inf = x.clone()
    inf[0, 0] = math.inf
    with pytest.raises(lvm.InputError, match=r"x contains infinity \(1 values\)"):
        lvm.log_marginal(lg2, inf)


@pytest.mark.parametrize("method", ["auto", "quadrature", "importance"])
def test_a_decoder_with_nan_weights_is_named_not_a_linalg_error(method):
    dec = lvm.seed_decoder(2)
    with torch.no_grad():
        dec[0].weight[0, 0] = math.nan
    model = lvm.BernoulliLVM(dec, 2, "probs")
    with pytest.raises(lvm.InputError, match=r"model \(a BernoulliLVM\) gives log_likelihood NaN"):
        lvm.log_marginal(model, torch.zeros(2, 784), method, cache=False)


def test_a_log_likelihood_of_the_wrong_shape_is_named_by_the_reference(lg2):
    class Rows(lvm.LinearGaussianLVM):  # returns [B]: one value per datapoint
        def log_likelihood(self, x, z, dtype):
            return super().log_likelihood(x, z, dtype)[:, 0]

    model = Rows(lg2.W, lg2.b, lg2.sigma)
    with pytest.raises(lvm.InputError, match=r"Rows\.log_likelihood\(x, z, dtype\) returned shape \[1\] "
                                             r"for 1 datapoints and 2 draws"):
        lvm.log_marginal(model, torch.zeros(1, 784), "quadrature", cache=False)
