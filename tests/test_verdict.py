"""Verdicts that say when the estimate cannot be trusted: the weights' ESS and PSIS k-hat
(checked against arviz), `reliable` and `safe` in diagnose, the --expect gate, the proposals."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

from bench.cli import main
from bench.diagnose import diagnose
from bench.trust import ESS_FLOOR, Trust
from lvm.errors import InputError
from lvm.weights import K_HAT_LIMIT, diagnostics

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # arviz announces its refactor on import
    import arviz

SHARP, GENTLE = "verdict_models:sharp_k8", "verdict_models:gentle_k8"
ROW_FIELDS = {"dtype", "estimator", "precision", "proposal", "n_samples", "estimate", "ess", "pareto_k",
              "reliable", "safe", "underflow", "overflow", "rounding_error", "mc_se", "why"}


def _weight_sets():
    g = np.random.default_rng(7)
    return {
        "light (uniform log-weights)": g.uniform(size=(4, 200)),
        "normal log-weights": g.normal(size=(4, 1000)),
        "student t 1.5 (k near 0.67)": np.log(np.abs(g.standard_t(1.5, size=(4, 3000)))),
        "pareto 0.8 (k near 1.25)": np.log(g.pareto(0.8, size=(4, 1000)) + 1e-3),
        "degenerate (ESS ~ 1)": g.normal(scale=300, size=(4, 1000)),
        "short rows": g.normal(size=(3, 30)),
    }


@pytest.mark.parametrize("name", list(_weight_sets()))
def test_k_hat_agrees_with_arviz_psislw(name):
    lw = _weight_sets()[name]
    ours = diagnostics(torch.as_tensor(lw))
    _, reference = arviz.psislw(lw.copy(), reff=1.0)
    np.testing.assert_allclose(ours.pareto_k, np.asarray(reference), rtol=0, atol=1e-6)
    w = np.exp(lw - lw.max(axis=1, keepdims=True))  # ESS = (sum w)^2 / sum w^2, as the estimators stream it
    np.testing.assert_allclose(ours.ess, w.sum(1) ** 2 / (w * w).sum(1), rtol=1e-12)


def test_k_hat_separates_light_from_heavy_tails():
    sets = _weight_sets()
    assert diagnostics(sets["normal log-weights"]).pareto_k.max() < K_HAT_LIMIT
    heavy = diagnostics(sets["pareto 0.8 (k near 1.25)"]).pareto_k
    assert heavy.min() > K_HAT_LIMIT and np.median(heavy) > 1
    degenerate = diagnostics(sets["degenerate (ESS ~ 1)"])
    assert degenerate.pareto_k.min() > K_HAT_LIMIT and degenerate.ess.max() < 1.5


def test_zero_weights_and_bad_input():
    lw = np.full((2, 50), -math.inf)
    lw[1] = np.linspace(0, 1, 50)
    d = diagnostics(lw)
    assert d.pareto_k[0] == math.inf and d.ess[0] == 0 and math.isfinite(d.pareto_k[1])
    for bad, message in [(np.zeros(10), "log_w of shape"), (np.zeros((2, 0)), "log_w of shape"),
                         (np.array([[0.0, math.nan]]), "NaN or \\+inf"),
                         (np.array([[0.0, math.inf]]), "NaN or \\+inf"),
                         (np.zeros((2, 3), dtype=np.int64), "floating")]:
        with pytest.raises(InputError, match=message):
            diagnostics(bad)


def test_draws_needed_follow_psis_sample_size_rule():
    def trust(k):
        return Trust("prior", 1000, np.array([50.0]), np.array([k]), {})
    assert trust(0.8).n_needed() == 100_000  # 1 - 1/log10(N) = 0.8 at N = 10^5
    assert trust(0.3).n_needed() == 1000  # already enough
    assert trust(1.2).n_needed() is None


def _small(spec, cache_dir, **kw):
    return diagnose(spec, n_data=4, n_samples=[200], dtypes=["float32", "float64"], estimators=["log_space"],
                    precisions=["cast"], truth=False, cache_dir=cache_dir, **kw)


def test_degenerate_prior_weights_are_not_safe_however_precise(cache_dir):
    """K = 8, a decoder whose posterior is far narrower than the prior: ESS ~ 1. Rounding is tiny
    (every row precise) and yet no row is safe, and the MC s.e. is not offered as the error."""
    sharp = _small(SHARP, cache_dir)
    assert sharp.rows and all(r.precise and not r.reliable and not r.safe for r in sharp.rows)
    for r in sharp.rows:
        assert r.pareto_k > K_HAT_LIMIT and r.ess < ESS_FLOOR and r.proposal == "prior"
        assert "not its error" in r.why and "lower bound" in r.why
    assert sharp.recommendation is None
    advice = sharp.advice()
    assert "none of these settings" in advice and "encoder" in advice and "stronger estimator" in advice
    text = sharp.render("text")
    assert f"({r.mc_se:.3g})" in text  # the MC s.e. in parentheses: not the estimate's error
    gentle = _small(GENTLE, cache_dir)  # same architecture and K, posterior close to the prior
    assert all(r.reliable and r.safe and r.pareto_k <= K_HAT_LIMIT for r in gentle.rows)
    assert gentle.recommendation is not None and "reliable" in gentle.advice()


@pytest.mark.parametrize(("spec", "expect", "code"), [
    (SHARP, "float64/log_space/cast", 1), (SHARP, "float64/log_space/cast/prior", 1),
    (GENTLE, "float64/log_space/cast/prior", 0), (GENTLE, "float64/log_space/cast/encoder", 2)])
def test_expect_exits_1_for_an_unreliable_setting(cache_dir, capsys, spec, expect, code):
    args = ["diagnose", "--model", spec, "--n-data", "2", "--n-samples", "100", "--dtype", "float64",
            "--estimator", "log_space", "--precision", "cast", "--no-truth", "--cache-dir", cache_dir,
            "--expect", expect, "--format", "json"]
    assert main(args) == code
    out, err = capsys.readouterr()
    if code == 2:
        assert "not a diagnosed setting" in err and "float64/log_space/cast/prior" in err
        return
    rows = json.loads(out)["rows"]
    assert {r["reliable"] for r in rows} == {code == 0}


def test_encoder_proposal_without_an_encoder_exits_2(cache_dir, capsys):
    args = ["diagnose", "--model", GENTLE, "--n-data", "2", "--n-samples", "10", "--proposal", "encoder",
            "--dtype", "float64", "--estimator", "log_space", "--no-truth", "--cache-dir", cache_dir]
    assert main(args) == 2
    assert "--proposal 'encoder'" in capsys.readouterr().err


def test_json_rows_carry_the_verdict_fields(cache_dir):
    d = _small(SHARP, cache_dir)
    j = json.loads(d.render("json"))
    assert j["recommendation"] is None and "What would help" in j["advice"]
    for row in j["rows"]:
        assert ROW_FIELDS <= set(row)
        assert row["safe"] == (row["precise"] and row["reliable"])
        assert row["setting"].count("/") == 3 and row["setting"].endswith("/prior")
        assert isinstance(row["estimate"], float) and row["estimate"] < 0
    md = d.render("markdown")
    assert "| k-hat |" in md and md.splitlines()[-1].startswith("Recommendation:")


def test_encoder_proposal_is_diagnosed_by_default_and_beats_the_prior(cache_dir):
    """iwae-k2 ships a trained encoder: both proposals are diagnosed without asking. On the first
    test digit at N = 1000 its weights are reliable where the prior's are not."""
    d = diagnose("iwae-k2", n_data=1, n_samples=[1000], dtypes=["float64"], estimators=["log_space"],
                 precisions=["cast"], truth=False, cache_dir=cache_dir)
    by = {r.proposal: r for r in d.rows}
    assert set(by) == {"prior", "encoder"} and d.encoder
    assert by["encoder"].reliable and by["encoder"].safe and by["encoder"].ess > by["prior"].ess
    assert not by["prior"].reliable and by["prior"].pareto_k > K_HAT_LIMIT
    assert d.recommendation is by["encoder"]
    only_prior = diagnose("iwae-k2", n_data=1, n_samples=[1000], dtypes=["float64"], estimators=["log_space"],
                          precisions=["cast"], truth=False, cache_dir=cache_dir, proposals=["prior"])
    assert {r.proposal for r in only_prior.rows} == {"prior"} and "--proposal encoder" in only_prior.advice()
