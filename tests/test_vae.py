"""A VAE as VAE code has it (the PyTorch MNIST example's shape: encode -> (mu, logvar), decode with
the sigmoid inside), brought in by a factory: run with both proposals and both likelihood
estimators, diagnose, its encoder read in every accepted convention, bad encoder outputs exit 2
with nothing written, and a decoder saved with torch.export.save (.pt2) loads."""

from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from tiny import run_cli, tiny_toml

import lvm
from bench.cli import main
from lvm import sources
from lvm.errors import InputError
from lvm.guard import guard
from lvm.shared import evaluate
from lvm.vae import vae_model

PKG = "lvmb_vae_pkg"  # unique, so the import system's cache cannot mix it up with anything

MODELS = '''
import copy
import functools

import torch
from torch import nn
from torch.distributions import Independent, Normal
from torch.nn import functional as F


class VAE(nn.Module):
    """The PyTorch example's VAE (784 -> 400 -> 20 -> 400 -> 784), with small hidden layers."""

    def __init__(self, latent_dim=20, hidden=32, seed=0):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.fc1 = nn.Linear(784, hidden)
            self.fc21 = nn.Linear(hidden, latent_dim)
            self.fc22 = nn.Linear(hidden, latent_dim)
            self.fc3 = nn.Linear(latent_dim, hidden)
            self.fc4 = nn.Linear(hidden, 784)
        self.latent_dim, self.output = latent_dim, "probs"

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(z), mu, logvar


def _trained(model, steps=150):
    """A few steps of the example's loss (BCE + KL) on the shipped training digits, seeded."""
    from lvm.data import load

    x = load("mnist-5k", "train", seed=0).x[:512]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        for i in range(steps):
            xb = x[(i * 64) % 512:][:64]
            recon, mu, logvar = model(xb)
            kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
            loss = F.binary_cross_entropy(recon, xb, reduction="sum") + kl
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@functools.cache
def _trained_vae(latent_dim):
    return _trained(VAE(latent_dim=latent_dim))


def vae():
    return copy.deepcopy(_trained_vae(20))


def vae64():
    return copy.deepcopy(_trained_vae(64))


class LogStd(VAE):
    encoder_output = "log_std"


class AsNormal(VAE):
    def encode(self, x):
        mu, logvar = super().encode(x)
        return Normal(mu, torch.exp(0.5 * logvar))


class AsIndependent(AsNormal):
    def encode(self, x):
        return Independent(super().encode(x), 1)


class Logits(VAE):
    def __init__(self):
        super().__init__()
        self.output = "logits"

    def decode(self, z):
        return self.fc4(F.relu(self.fc3(z)))


def log_std():
    return LogStd()


def as_normal():
    return AsNormal()


def as_independent():
    return AsIndependent()


def logits():
    return Logits()


class WrongK(VAE):
    def encode(self, x):
        mu, logvar = super().encode(x)
        return torch.cat([mu, mu[:, :1]], 1), logvar


class WrongLogVar(VAE):
    def encode(self, x):
        mu, logvar = super().encode(x)
        return mu, logvar[:, :1]


class WrongEvent(VAE):
    def encode(self, x):
        mu, logvar = super().encode(x)
        return Independent(Normal(mu[..., None], torch.exp(0.5 * logvar)[..., None]), 1)


class NaNEncoder(VAE):
    def encode(self, x):
        mu, logvar = super().encode(x)
        return mu * float("nan"), logvar


class Gaussian(VAE):
    likelihood = "gaussian"


class Std(VAE):
    encoder_output = "std"


def wrong_k():
    return WrongK()


def wrong_log_var():
    return WrongLogVar()


def wrong_event():
    return WrongEvent()


def nan_encoder():
    return NaNEncoder()


def gaussian():
    return Gaussian()


def std():
    return Std()
'''


@pytest.fixture(scope="module")
def pkg(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("vae")
    (d / PKG).mkdir()
    (d / PKG / "__init__.py").write_text("")
    (d / PKG / "models.py").write_text(MODELS)
    sys.path[:0] = [str(d)]
    try:
        yield d
    finally:
        sys.path.remove(str(d))


def _load(name: str):
    return sources.load_model(f"{PKG}.models:{name}")


def _x() -> torch.Tensor:
    return lvm.data.load("mnist-5k", "test", seed=0).x[:4]


GRID = {"estimator": ["prob_space", "log_space"], "dtype": ["float32", "float64"], "n_samples": [10, 100],
        "parametrization": ["logits", "probs"], "proposal": ["prior", "encoder"], "device": ["cpu"]}


@pytest.mark.slow
@pytest.mark.parametrize("factory", ["vae", "vae64"])
def test_a_vae_runs_with_its_own_encoder_and_logits_is_an_exclusion(pkg, tmp_path, cache_dir, factory):
    cfg = tmp_path / "vae.toml"
    cfg.write_text(tiny_toml({"repeats": 2, "n_data": 4}, {**GRID, "proposal": ["prior"]}))
    out = tmp_path / "run"
    assert run_cli("--config", str(cfg), "--out", str(out), "--model", f"mine={PKG}.models:{factory}",
                   "--proposal", "prior,encoder", cache=cache_dir) == 0
    cells = pd.read_csv(out / "cells.csv")
    assert (cells.status == "ok").all()
    assert set(cells.proposal) == {"prior", "encoder"} and set(cells.parametrization) == {"probs"}
    assert set(cells.latent_dim) == {64 if factory == "vae64" else 20}
    assert len(cells) == 2 * 2 * 2 * 2  # estimators x dtypes x N x proposals
    meta = json.loads((out / "meta.json").read_text())
    logits = [e["reason"] for e in meta["excluded_cells"] if "logits" in e["cell"]]
    assert len(logits) == len(cells) and all("cannot be derived" in r for r in logits)
    # the encoder draws near the posterior: its float64 estimates are nearer the truth at the same N
    f64 = cells[(cells.dtype == "float64") & (cells.estimator == "log_space") & (cells.n_samples == 100)]
    bias = f64.set_index("proposal")["bias"]
    assert bias["prior"] < bias["encoder"] <= 1.0


def test_the_encoder_proposal_is_the_modules_own_q(pkg):
    """q(z|x) = N(mu, exp(logvar / 2)) as the module's encode gives it, in every accepted convention."""
    from lvmb_vae_pkg.models import VAE

    x = _x()
    for name in ("vae", "log_std", "as_normal", "as_independent"):
        model = _load(name)
        net = copy.deepcopy(model.encoder.inner.module).to(torch.float64)  # the factory's module
        with torch.no_grad():
            mu, second = VAE.encode(net, x.to(torch.float64))  # the example's (mu, logvar) pair
        prop = model.proposal(x)
        want = second if name == "log_std" else 0.5 * second
        assert torch.equal(prop.mean, mu), name
        torch.testing.assert_close(prop.log_std, want, rtol=1e-15, atol=1e-15, msg=name)


def test_a_logits_vae_gives_both_parametrizations(pkg):
    model = _load("logits")
    got = evaluate(model, _x(), 20, dtype="float64", estimators={"l": {"space": "log", "accumulate": None}},
                   outputs=("logits", "probs"), seed=1, proposal="encoder")
    a, b = got[("l", "logits")].log_px, got[("l", "probs")].log_px
    assert torch.isfinite(a).all() and torch.allclose(a, b, rtol=0, atol=1e-6)


def test_a_probs_vae_has_no_logits_view_and_says_why(pkg):
    model = _load("vae")
    with pytest.raises(InputError, match="cannot be derived from this probs decoder"):
        model.with_output("logits")
    specs = {"p": {"space": "prob", "form": "product"}, "e": {"space": "prob", "form": "exp"},
             "l": {"space": "log", "accumulate": None}}
    got = evaluate(model, _x(), 20, dtype="float64", estimators=specs)  # its probs only
    assert set(got) == {("p", "probs"), ("e", "probs"), ("l", "probs")}
    want = got[("l", "probs")].log_px
    assert torch.isfinite(want).all()
    for name in ("p", "e"):
        torch.testing.assert_close(got[(name, "probs")].log_px, want, rtol=0, atol=1e-9)


def test_the_fingerprint_covers_the_encoder(pkg):
    a, b = _load("vae"), _load("vae")
    assert a.fingerprint() == b.fingerprint()
    module = copy.deepcopy(b.encoder.inner.module)
    with torch.no_grad():
        module.fc21.bias.add_(1.0)  # the encoder only: decode is unchanged
    changed = guard(vae_model(module, "changed"), "changed")
    torch.testing.assert_close(changed.decode(torch.ones(2, 20), torch.float64),
                               a.decode(torch.ones(2, 20), torch.float64), rtol=0, atol=0)
    assert changed.fingerprint() != a.fingerprint()


def test_the_encoder_gets_its_own_copy_of_x(pkg, monkeypatch):
    model = _load("vae")
    net = model.encoder.inner.module
    original = type(net).encode

    def spoil(self, x):
        out = original(self, x)
        x.fill_(7.0)
        return out

    monkeypatch.setattr(type(net), "encode", spoil)
    model.encoder.invalidate()
    x = _x()
    before = x.clone()
    model.proposal(x)
    assert torch.equal(x, before)


BAD = [
    ("wrong_k", "returned a mean of shape [4, 21]"),
    ("wrong_log_var", "returned a log_var of shape [4, 1]"),
    ("wrong_event", "Independent(Normal) with batch shape [4, 20] and event shape [1]"),
    ("nan_encoder", "NaN or infinite for 4 of 4 rows"),
    ("gaussian", "likelihood='gaussian' is not supported yet; accepted: bernoulli"),
    ("std", "encoder_output='std'; accepted: log_var, log_std"),
]


@pytest.mark.parametrize(("factory", "message"), BAD, ids=[f for f, _ in BAD])
def test_bad_encoder_output_exits_2_naming_it_and_writes_nothing(pkg, tmp_path, cache_dir, capsys, factory,
                                                                 message):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(tiny_toml({"n_data": 4}, {**GRID, "model": [f"{PKG}.models:{factory}"]}))
    out = tmp_path / "never"
    assert run_cli("--config", str(cfg), "--out", str(out), cache=cache_dir) == 2
    err = capsys.readouterr().err
    assert message in err and f"{PKG}.models:{factory}" in err and "accepted" in err
    assert not out.exists()


def test_diagnose_a_vae(pkg, cache_dir, capsys):
    assert main(["diagnose", "--model", f"mine={PKG}.models:vae", "--n-data", "4", "--n-samples", "50",
                 "--dtype", "float32,float64", "--estimator", "log_space,prob_space", "--format", "json",
                 "--cache-dir", cache_dir]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert {(r["dtype"], r["estimator"]) for r in rows} == {(d, e) for d in ("float32", "float64")
                                                            for e in ("log_space", "prob_space")}


def test_a_torch_export_program_loads(pkg, tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 784))
    z = torch.zeros(4, 3)
    program = torch.export.export(net, (z,), dynamic_shapes=({0: torch.export.Dim("N")},))
    torch.export.save(program, tmp_path / "dec.pt2")
    (tmp_path / "dec.json").write_text(json.dumps({"latent_dim": 3, "output": "logits"}))
    model = sources.load_model(str(tmp_path / "dec.pt2"))
    assert (model.latent_dim, model.data_dim, model.output) == (3, 784, "logits")
    zs = torch.randn(5, 3, dtype=torch.float64)
    with torch.no_grad():
        want = net.to(torch.float64)(zs)
    torch.testing.assert_close(model.decode(zs, torch.float64), want)
    est = lvm.log_space(model, _x(), 50, dtype="float32", seed=0)
    assert torch.isfinite(est.log_px).all() and not math.isnan(float(est.log_px.mean()))
    # exported for one batch size only: refused with what to do instead
    torch.export.save(torch.export.export(net, (z,)), tmp_path / "static.pt2")
    (tmp_path / "static.json").write_text(json.dumps({"latent_dim": 3, "output": "logits"}))
    with pytest.raises(InputError, match="dynamic batch dimension"):
        sources.load_model(str(tmp_path / "static.pt2"))
    (tmp_path / "dec.json").write_text(json.dumps({"latent_dim": 3, "output": "logits", "hidden": 16}))
    with pytest.raises(InputError, match="unknown key"):
        sources.load_model(str(tmp_path / "dec.pt2"))


def test_diagnose_a_k64_vae_with_both_proposals(pkg, cache_dir, capsys):
    """Any K (issue 26): a K = 64 VAE goes through diagnose with the prior and its encoder, and every
    row has a finite estimate and the reliability fields (ESS in [1, N], a k-hat, a boolean verdict;
    a k-hat past 0.7 is never reliable)."""
    assert main(["diagnose", "--model", f"mine={PKG}.models:vae64", "--n-data", "2", "--n-samples", "20",
                 "--dtype", "float32,float64", "--estimator", "log_space", "--format", "json",
                 "--cache-dir", cache_dir]) in (0, 1)
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert {r["proposal"] for r in rows} == {"prior", "encoder"}
    assert {(r["dtype"], r["proposal"]) for r in rows} == {(d, p) for d in ("float32", "float64")
                                                           for p in ("prior", "encoder")}
    for r in rows:
        assert math.isfinite(r["estimate"]), r
        assert 1.0 <= r["ess"] <= 20.0 and not math.isnan(r["pareto_k"]), r
        assert isinstance(r["reliable"], bool) and isinstance(r["safe"], bool), r
        if r["pareto_k"] > 0.7:  # +inf: weights too degenerate to fit a tail (lvm/weights.py)
            assert not r["reliable"] and not r["safe"], r
