"""The proposal axis: the encoder's q(z|x) through the shared pass, the config, the sweep and the report."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from tiny import run_cli, tiny_toml

import lvm
from bench.run.config import ESTIMATORS, Cell, ConfigError, load_config, validate
from bench.run.store import load_run
from lvm.kernels import PROPOSAL_CHUNK
from lvm.shared import estimate, evaluate

FIELDS = ("log_px", "n_zero_terms", "n_nonfinite_terms", "ess")


@pytest.fixture(scope="module")
def small_vae(binary_x):
    """A seeded decoder with a seeded (untrained) encoder: enough to check plumbing bit for bit."""
    D = binary_x.shape[1]
    net = lvm.seed_decoder(2, hidden=32, layers=2, output="logits", data_dim=D, seed=4)
    enc = lvm.encoder.seed_encoder(2, hidden=16, layers=1, data_dim=D, seed=4)
    return lvm.BernoulliLVM(net, 2, "logits", D, encoder=enc)


def _same(a: lvm.Estimate, b: lvm.Estimate) -> bool:
    return all(torch.equal(getattr(a, f).nan_to_num(7.5), getattr(b, f).nan_to_num(7.5)) for f in FIELDS)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_encoder_shared_pass_is_bit_identical_to_each_estimator_alone(small_vae, binary_x, dtype):
    n = PROPOSAL_CHUNK + 44  # two chunks of the streamed estimators
    got = evaluate(small_vae, binary_x, n, dtype=dtype, estimators=ESTIMATORS, outputs=("logits", "probs"),
                   seed=5, proposal="encoder")
    assert set(got) == {(e, o) for e in ESTIMATORS for o in ("logits", "probs")}
    for (name, o), est in got.items():
        view = small_vae.with_output(o)
        alone = estimate(view, binary_x, n, ESTIMATORS[name], dtype=dtype, seed=5, proposal="encoder")
        assert _same(est, alone), (name, o)
        # and estimate(proposal="encoder") is the estimator called with the model's proposal object
        fn = lvm.log_space if ESTIMATORS[name]["space"] == "log" else lvm.prob_space
        kw = ({"accumulate_dtype": ESTIMATORS[name]["accumulate"]} if fn is lvm.log_space
              else {"form": ESTIMATORS[name]["form"]})
        direct = fn(view, binary_x, n, dtype=dtype, seed=5, proposal=view.proposal(binary_x), **kw)
        assert _same(est, direct), (name, o)


def test_encoder_draws_differ_from_prior_draws_and_weigh_by_the_correction(small_vae, binary_x):
    x = binary_x[:3]
    prior = evaluate(small_vae, x, 64, dtype="float64", estimators={"l": ESTIMATORS["log_space"]}, seed=1)
    enc = evaluate(small_vae, x, 64, dtype="float64", estimators={"l": ESTIMATORS["log_space"]}, seed=1,
                   proposal="encoder")
    assert not torch.equal(prior[("l", "logits")].log_px, enc[("l", "logits")].log_px)
    # by hand: log w = log p(x|z) + log p(z) - log q(z|x) for the encoder's seeded draws
    prop = small_vae.proposal(x)
    z = lvm.draw(small_vae, 64, seed=1, proposal=prop)
    lw = torch.stack([small_vae.log_likelihood(x[b:b + 1], z[b], torch.float64)[0] for b in range(3)])
    lw = lw + lvm.model.std_normal_log_prob(z) - prop.log_prob(z)
    want = torch.logsumexp(lw, -1) - math.log(64)
    assert torch.allclose(enc[("l", "logits")].log_px, want, rtol=0, atol=1e-10)


def test_encoder_proposal_needs_an_encoder(part4, binary_x):
    with pytest.raises(lvm.InputError, match="no encoder"):
        evaluate(part4, binary_x, 5, dtype="float32", estimators=ESTIMATORS, proposal="encoder")
    with pytest.raises(lvm.InputError, match="proposal='sideways'"):
        evaluate(part4, binary_x, 5, dtype="float32", estimators=ESTIMATORS, proposal="sideways")


class ExactPosterior:
    """The linear-Gaussian model's posterior N(m_b, S) per digit, with the proposal interface."""

    def __init__(self, model: lvm.LinearGaussianLVM, x: torch.Tensor):
        W, s2 = model.W, model.sigma**2
        self.cov = torch.linalg.inv(torch.eye(W.shape[1], dtype=torch.float64) + W.T @ W / s2)
        self.mean = (x - model.b) @ W @ self.cov / s2
        self.dist = torch.distributions.MultivariateNormal(self.mean[:, None], self.cov)
        self.L = torch.linalg.cholesky(self.cov)

    def sample(self, n, generator):
        eps = torch.randn(len(self.mean), n, self.L.shape[0], generator=generator, dtype=torch.float64)
        return self.mean[:, None] + eps @ self.L.T

    def log_prob(self, z):
        return self.dist.log_prob(z)


def test_a_proposal_equal_to_the_posterior_makes_every_weight_p_x(lg2):
    """The case built to be exact: with q(z|x) = p(z|x) every term p(x|z) p(z) / q(z|x) is p(x), so
    both estimators return the exact log p(x) at any N (to float64 rounding) with ESS = N."""
    x = lg2.sample_x(4, torch.Generator().manual_seed(1))
    exact = lg2.exact_log_marginal(x)
    prop = ExactPosterior(lg2, x)
    for n in (1, 7, 300):
        for est in (lvm.log_space(lg2, x, n, dtype="float64", seed=2, proposal=prop),
                    lvm.prob_space(lg2, x, n, dtype="float64", seed=2, proposal=prop, form="exp")):
            assert torch.allclose(est.log_px, exact, rtol=0, atol=1e-8), (n, est.log_px - exact)
            assert torch.allclose(est.ess, torch.full_like(est.ess, n), rtol=1e-9)


def test_trained_encoder_raises_the_effective_sample_size():
    """The IWAE protocol on the shipped iwae-k2: its encoder's q(z|x) spreads the weight over several
    times more draws than the prior does (median ESS over 16 test digits at N = 1,000, float64)."""
    x = lvm.data.load("mnist-5k", "test").x[:16]
    spec = {"l": ESTIMATORS["log_space"]}
    model = lvm.zoo.get("iwae-k2")
    enc = evaluate(model, x, 1000, dtype="float64", estimators=spec, seed=3, proposal="encoder")
    prior = evaluate(model, x, 1000, dtype="float64", estimators=spec, seed=3)
    assert enc[("l", "logits")].ess.median() > 3 * prior[("l", "logits")].ess.median()


# ----------------------------------------------------------------------------- config


def test_proposal_axis_keys_labels_and_old_rows():
    prior = Cell("log_space", "float32", 10, "vae-k2", "logits", "cpu")
    enc = Cell("log_space", "float32", 10, "vae-k2", "logits", "cpu", proposal="encoder")
    both = Cell("log_space", "bfloat16", 10, "vae-k2", "logits", "cpu", "autocast", "encoder")
    assert prior.key == "log_space__float32__10__vae-k2__logits__cpu"  # as before the axis existed
    assert enc.key == prior.key + "__encoder"
    assert both.key == "log_space__bfloat16__10__vae-k2__logits__cpu__autocast__encoder"
    assert enc.label.endswith("cpu encoder") and prior.label.endswith("cpu")  # older rows: test_formats


def test_encoder_cells_of_models_and_estimators_without_one_are_exclusions_with_reasons():
    config = load_config("quick", ["grid.device=cpu", "grid.precision=cast"])
    cells, excluded = config.cells()
    enc = [c for c in cells if c.proposal == "encoder"]
    assert enc and {c.model for c in enc} == {"iwae-k2"} and max(c.n_samples for c in enc) == 100
    assert max(c.n_samples for c in enc if c.dtype in ("float16", "bfloat16")) == 10  # "float16+encoder"
    assert max(c.n_samples for c in cells if c.model == "iwae-k2") == 100
    reasons = {e["cell"]: e["reason"] for e in excluded}
    assert "has no encoder" in reasons[Cell("log_space", "float32", 10, "untrained-k2", "logits", "cpu",
                                             proposal="encoder").key]
    assert reasons[Cell("log_space", "bfloat16", 100, "iwae-k2", "logits", "cpu", proposal="encoder").key
                   ].startswith("limits.max_n_samples.bfloat16+encoder = 10: bfloat16 matrix products")
    assert reasons[Cell("log_space", "float32", 1000, "iwae-k2", "logits", "cpu").key
                   ].startswith("limits.max_n_samples.iwae-k2 = 100")
    with pytest.raises(ConfigError, match=r"limits.max_n_samples.float16\+sideways = 3"):
        load_config("quick", ["limits.max_n_samples=float16+sideways:3"])


def test_bad_proposal_values_name_the_axis():
    with pytest.raises(ConfigError, match="grid.proposal value 'posterior'"):
        load_config("quick", ["grid.proposal=posterior"])
    raw = {"grid": {**load_config("quick").grid, "proposal": ["prior"]},
           "limits": {"max_n_samples": {"q": 5}}}
    with pytest.raises(ConfigError, match="a proposal"):
        validate(raw)


# ----------------------------------------------------------------------------- sweep and report


@pytest.fixture(scope="module")
def encoder_run(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("proposal") / "run"
    cfg = out.parent / "enc.toml"
    cfg.write_text(tiny_toml(run={"reference": "auto"},
                             grid={"model": ["iwae-k2", "untrained-k2"], "proposal": ["prior", "encoder"],
                                   "dtype": ["float32", "float64"], "device": ["cpu"],
                                   "estimator": ["prob_space_exp", "log_space"]}))
    assert run_cli("--config", str(cfg), "--out", str(out), "--report", cache=cache_dir) == 0
    return out


def test_sweep_measures_both_proposals_and_replays_each_with_its_own(encoder_run, cache_dir):
    cells = pd.read_csv(encoder_run / "cells.csv")
    ok = cells[cells["status"] == "ok"]
    assert set(ok["proposal"]) == {"prior", "encoder"}
    assert set(ok.loc[ok["proposal"] == "encoder", "model"]) == {"iwae-k2"}
    meta = json.loads((encoder_run / "meta.json").read_text())
    assert any("untrained-k2" in e["cell"] and "has no encoder" in e["reason"]
               for e in meta["excluded_cells"])
    raw = load_run(encoder_run).raw
    from bench.run.cell import Context, draw_seed
    from bench.run.cell import estimate as cell_estimate

    ctx = Context(validate(meta["config"]), cache_dir=cache_dir)
    sel = raw[(raw["proposal"] == "encoder") & (raw["model"] == "iwae-k2") & (raw["n_samples"] == 100)
              & (raw["repeat"] == 1) & (raw["estimator"] == "log_space") & (raw["dtype"] == "float32")
              & (raw["parametrization"] == "probs")].sort_values("datapoint")
    cell = Cell("log_space", "float32", 100, "iwae-k2", "probs", "cpu", proposal="encoder")
    seed = draw_seed(ctx.config.run["seed"], "iwae-k2", 100, 1)
    model = ctx.model("iwae-k2", "probs")
    assert (sel["estimate"].to_numpy() == cell_estimate(model, ctx.x, cell, seed).log_px.numpy()).all()
    replay = cell_estimate(model, ctx.x, Cell("log_space", "float64", 100, "iwae-k2", "probs", "cpu",
                                             proposal="encoder"), seed).log_px.numpy()
    assert (sel["replay_float64"].to_numpy() == replay).all()
    # the encoder cells' ESS is larger than the prior cells' on the same model, dtype and N
    f64 = ok[(ok["dtype"] == "float64") & (ok["estimator"] == "log_space") & (ok["model"] == "iwae-k2")
             & (ok["n_samples"] == 100)]
    ess = f64.groupby("proposal")["ess"].mean()
    assert ess["encoder"] > 3 * ess["prior"]


def test_report_sets_the_proposals_side_by_side(encoder_run):
    t = pd.read_csv(encoder_run / "tables" / "proposal.csv")
    assert {"ess_prior", "ess_encoder", "bias_prior", "bias_encoder", "variance_encoder"} <= set(t)
    assert (encoder_run / "figures" / "fig10_proposal.png").exists()
    md = (encoder_run / "report.md").read_text()
    assert "## Proposal: the prior or the trained encoder" in md
    assert "With the trained encoder as proposal, float64 log space: iwae-k2" in md
    run = load_run(encoder_run)
    assert set(run.ok["proposal"]) == {"prior"}  # the other figures read the prior cells
    under = pd.read_csv(encoder_run / "tables" / "theory_underflow.csv")
    assert set(under["proposal"]) == {"prior", "encoder"}
    assert np.isfinite(under["predicted_if_terms_equal_px"]).all()
