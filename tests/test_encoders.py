"""lvm.encoder and the vae-k{K} / iwae-k{K} zoo models: proposals, training, checkpoints, bounds."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

import lvm
from lvm import checkpoint, encoder, objectives, train, zoo
from lvm.encoder import (
    EncoderProposal,
    GaussianEncoder,
    evaluate_bounds,
    has_encoder,
    iwae_bound,
    log_weights,
)
from lvm.errors import InputError

F64 = torch.float64
ENCODED = ("vae-k2", "iwae-k2")
TINY = dict(hidden=16, layers=1, steps=5, batch_size=32, lr=1e-2, encoder_hidden=16, encoder_layers=1)

# Reproducing a recorded bound. The bounds are float64: each digit's log w is a sum of 784
# pixel terms x l - softplus(l), all <= 0, so the sum of their magnitudes is |log p(x|z)| (a
# few hundred nats), plus K-dimensional Gaussian densities. Whatever order a BLAS kernel or a
# vectorised sum adds them in, the rounding error of a digit's bound is below
# 784 x 1.1e-16 x 1e3 < 1e-10 nats, and so is that of the mean over 1,000 digits (the draws
# themselves are bit-identical: float64 torch.randn from seeded CPU generators, JSON keeps
# every bit of the recorded float). TOL is 10,000 x that, for the encoder's and decoder's
# float64 rounding propagated into z and the logits; any change of weights, draws or formula
# moves the bounds by Monte Carlo amounts (0.01 to 1 nat), far beyond it.
TOL = 1e-6


pytestmark = pytest.mark.usefixtures("isolated_cache")


@pytest.fixture(scope="module")
def digits():
    return lvm.data.load("mnist-5k", "test").x.to(F64)


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, 784), 0.2), generator=g)


# ----------------------------------------------------------------------------- recipes


def test_existing_recipe_keys_are_unchanged():
    """The shipped prior checkpoints record these keys; a changed key would warn and retrain caches."""
    assert zoo.recipe("prior-iwae-k2").key() == "152288b772be"
    assert zoo.recipe("jensen-k2").key() == "e8383d37f495"
    for name in ("prior-iwae-k2", "jensen-k2"):
        meta = zoo.metadata(name)
        assert meta["recipe_key"] == zoo.recipe(name).key()
        assert meta["recipe"] == zoo.recipe(name).settings()  # the same fields, nothing added


def test_encoder_recipes():
    vae, iwae = zoo.recipe("vae-k2"), zoo.recipe("iwae-k8")
    assert (vae.objective, vae.k, vae.encoder) == ("vae", 1, True)
    assert (iwae.objective, iwae.k, iwae.latent_dim) == ("iwae", 5, 8)
    assert vae.architecture() == zoo.recipe("prior-iwae-k2").architecture()  # the suite's 3 x 512 decoder
    assert vae.encoder_architecture() == zoo.parse("vae-k2").encoder_architecture()
    assert "n_samples" not in vae.settings() and vae.settings()["k"] == 1
    assert "k" not in zoo.recipe("jensen-k2").settings()
    assert train.Recipe("iwae", 2).k == 5 and train.Recipe("vae", 2).k == 1
    assert zoo.recipe("vae-k2").key() != zoo.recipe("iwae-k2").key()
    with pytest.raises(InputError, match="k=5 does not apply to objective='jensen'"):
        train.Recipe("jensen", 2, k=5)
    with pytest.raises(InputError, match="n_samples=5 does not apply to objective='iwae'"):
        train.Recipe("iwae", 2, n_samples=5)
    with pytest.raises(InputError, match="k=0 is invalid"):
        train.Recipe("iwae", 2, k=0)
    assert zoo.is_trained("vae-k3") and zoo.parse("iwae-k3").has_encoder
    assert not zoo.parse("prior-iwae-k3").has_encoder
    assert zoo.parse("jensen-k2").encoder_architecture() is None


# ----------------------------------------------------------------------------- the proposal


def test_proposal_density_sampling_and_cache():
    enc = encoder.seed_encoder(3, hidden=32, layers=2)
    x = _data(5)
    prop = EncoderProposal(enc, x)
    assert prop.mean.dtype == prop.std.dtype == F64 and prop.mean.shape == (5, 3)
    z = prop.sample(7, torch.Generator().manual_seed(4))
    assert z.shape == (5, 7, 3) and z.dtype == F64
    assert torch.equal(z, prop.sample(7, torch.Generator().manual_seed(4)))  # deterministic per generator
    assert not torch.equal(z, prop.sample(7, torch.Generator().manual_seed(5)))
    for zz in (z, 3 * torch.randn(5, 2, 3, dtype=F64)):  # its own draws and arbitrary points
        want = torch.distributions.Normal(prop.mean[:, None], prop.std[:, None]).log_prob(zz).sum(-1)
        assert torch.allclose(prop.log_prob(zz), want, rtol=1e-12, atol=1e-10)
    with pytest.raises(InputError, match=r"z has shape \(5, 7, 2\)"):
        prop.log_prob(z[..., :2])
    # mean and std come from one cached float64 copy, remade only when the weights change
    copy64 = enc.cast(F64, "cpu")
    assert EncoderProposal(enc, x) is not prop and enc.cast(F64, "cpu") is copy64
    opt = torch.optim.Adam(enc.parameters(), lr=1e-2)
    enc(x).sum().backward()
    opt.step()
    assert enc.cast(F64, "cpu") is not copy64
    assert not torch.equal(EncoderProposal(enc, x).mean, prop.mean)
    # the estimators take it as a proposal, as they take lvm.reference's
    model = lvm.BernoulliLVM(lvm.seed_decoder(3, hidden=16, layers=1, output="logits"), 3, encoder=enc)
    est = lvm.log_space(model, x, 64, dtype="float64", seed=0, proposal=model.proposal(x))
    assert torch.isfinite(est.log_px).all()


def test_models_with_and_without_an_encoder():
    dec = lvm.seed_decoder(2, hidden=512, layers=3, output="logits")
    plain = lvm.BernoulliLVM(dec, 2)
    enc = encoder.seed_encoder(2)
    m = lvm.BernoulliLVM(dec, 2, encoder=enc)
    # fingerprints recorded in results/baseline/meta.json: a model without an encoder hashes as before
    assert plain.fingerprint() == "87ac54b82afd5ca20d8f3cf8d77440d47970516a07580fd118fb3bb77fd63998"
    assert plain.with_output("probs").fingerprint() == (
        "68ca2e2aa938adaa116a05c3cb3148988f066b7b67cc452ad085a1f52b6e7197")
    assert m.fingerprint() != plain.fingerprint()
    assert m.fingerprint() != lvm.BernoulliLVM(dec, 2, encoder=encoder.seed_encoder(2, seed=1)).fingerprint()
    probs = m.with_output("probs")
    assert probs.encoder is enc and probs.with_output("logits") is m
    assert plain.with_output("probs").encoder is None
    assert has_encoder(m) and has_encoder(probs) and not has_encoder(plain) and not has_encoder(object())
    x = _data(3)
    assert torch.equal(probs.proposal(x).mean, m.proposal(x).mean)
    with pytest.raises(InputError, match=r"has no encoder \(encoder=None\).*accepted: .*vae-k\{K\}"):
        plain.proposal(x)
    with pytest.raises(InputError, match="x is not binary"):
        m.proposal(x * 0.5 + 0.25)
    with pytest.raises(InputError, match="encoder is a GaussianEncoder with latent_dim=3"):
        lvm.BernoulliLVM(dec, 2, encoder=encoder.seed_encoder(3))
    with pytest.raises(InputError, match="encoder is a Linear"):
        lvm.BernoulliLVM(dec, 2, encoder=torch.nn.Linear(784, 4))


def test_training_loss_is_minus_the_bound_on_the_same_draws():
    """encoder_loss (training) and log_weights / EncoderProposal (evaluation) are one formula."""
    dec = lvm.seed_decoder(2, hidden=16, layers=1, output="logits").double()
    enc = encoder.seed_encoder(2, hidden=16, layers=1)
    model = lvm.BernoulliLVM(dec, 2, encoder=enc)
    x = _data(4).double()
    eps = torch.randn(4, 6, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    prop = model.proposal(x)
    z = prop.mean[:, None] + prop.std[:, None] * eps
    ll = torch.stack([model.log_likelihood(x[b:b + 1], z[b], F64)[0] for b in range(4)])
    lw = ll + model.log_prior(z) - prop.log_prob(z)
    enc64 = enc.cast(F64, "cpu")
    assert torch.allclose(-objectives.encoder_loss(enc64, dec, x, eps, "iwae"), iwae_bound(lw), atol=1e-9)
    assert torch.allclose(-objectives.encoder_loss(enc64, dec, x, eps, "vae"), lw.mean(-1), atol=1e-9)
    # log_weights draws each digit from its own seeded stream: a subset reproduces the whole
    full = log_weights(model, x, 3, seed=1)
    assert full.shape == (4, 3)
    assert torch.allclose(log_weights(model, x[2:], 3, seed=1, first_index=2), full[2:])
    assert not torch.equal(log_weights(model, x, 3, seed=2), full)


def test_tiny_encoder_training_is_bit_reproducible(tmp_path):
    x = _data()
    for objective in ("vae", "iwae"):
        rec = train.Recipe(objective, 2, **TINY)
        a = train.train(rec, data=x, progress=False)
        b = train.train(rec, data=x, progress=False)
        assert a.losses == b.losses and len(a.losses) == 5 and all(math.isfinite(v) for v in a.losses)
        assert a.model.fingerprint() == b.model.fingerprint() and has_encoder(a.model)
        other = train.train(rec.replace(seed=1), data=x, progress=False)
        assert a.model.fingerprint() != other.model.fingerprint()
        meta = a.metadata
        assert meta["encoder_architecture"] == rec.encoder_architecture() and meta["k"] == rec.k
        assert meta["objective_formula"] == objectives.OBJECTIVE_FORMULAS[objective] and "log q(z_i|x)" in \
            meta["objective_formula"]
        assert set(meta["train_loss_full_split"]) == {"vae", "iwae"} and "test_bounds" not in meta
        path = checkpoint.save_checkpoint(a, tmp_path / f"{objective}.pt")
        state = torch.load(path, weights_only=True)
        assert {k.split(".")[0] for k in state} == {"decoder", "encoder"}
        loaded = checkpoint.load_checkpoint(path, rec.architecture(), encoder_arch=rec.encoder_architecture())
        assert loaded.fingerprint() == a.model.fingerprint()
    bounds = evaluate_bounds(loaded, x.double()[:6], seed=0, k=3, k_large=50, n_large=4)
    first = bounds["first_digits"]
    assert bounds["n_digits"] == 6 and first["n_digits"] == 4
    assert len(first["log_px_bound_iwae_k50_per_digit"]) == 4
    assert first["log_px_bound_elbo"] < first["log_px_bound_iwae_k3"] < first["log_px_bound_iwae_k50"] < 0


def test_get_trains_an_encoder_family_once_into_the_cache(monkeypatch, tmp_path):
    calls = []
    real_train = train.train

    def counting(recipe, **kw):
        calls.append(recipe)
        return real_train(recipe, data=_data(), **kw)

    monkeypatch.setattr(train, "train", counting)
    monkeypatch.setattr(zoo, "BIG", dict(hidden=16, layers=1, output="logits"))
    monkeypatch.setattr(zoo, "ENCODER", dict(encoder_hidden=8, encoder_layers=1))
    monkeypatch.setitem(zoo.ENCODER_RECIPE_DEFAULTS, "steps", 3)
    a = zoo.get("iwae-k3", progress=False)
    assert len(calls) == 1 and calls[0].objective == "iwae" and calls[0].k == 5
    assert a.encoder is not None and a.encoder.hidden == 8 and a.latent_dim == 3
    b = zoo.get("iwae-k3")
    assert len(calls) == 1 and b.fingerprint() == a.fingerprint()
    assert zoo.metadata("iwae-k3")["encoder_architecture"]["hidden"] == 8


# ----------------------------------------------------------------------------- shipped checkpoints


@pytest.mark.slow
@pytest.mark.parametrize("name", ENCODED)
def test_shipped_encoder_checkpoints_reproduce_their_bounds(name, no_training, digits, tmp_path):
    path = zoo.shipped_path(name)
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert all(k.startswith(("decoder.", "encoder.")) for k in state)
    m = zoo.get(name)
    assert isinstance(m.encoder, GaussianEncoder) and m.latent_dim == 2 and has_encoder(m)
    assert not (tmp_path / "cache" / "models").exists()  # nothing trained or cached
    meta = zoo.metadata(name)
    assert meta["recipe_key"] == zoo.recipe(name).key() and meta["objective"] == name.split("-")[0]
    assert meta["encoder_architecture"] == zoo.parse(name).encoder_architecture()
    tb = meta["test_bounds"]
    assert (tb["dataset"], tb["split"], tb["dtype"], tb["n_digits"]) == ("mnist-5k", "test", "float64", 1000)
    assert tb["data_sha256"] == lvm.data.load("mnist-5k", "test").identity["sha256"]
    x = digits[:tb["n_digits"]]
    k, kl = tb["k"], tb["k_large"]
    elbo = log_weights(m, x, 1, seed=tb["seed"])[:, 0]
    iw = iwae_bound(log_weights(m, x, k, seed=tb["seed"]))
    assert abs(float(elbo.mean()) - tb["log_px_bound_elbo"]) < TOL
    assert abs(float(iw.mean()) - tb[f"log_px_bound_iwae_k{k}"]) < TOL
    first = tb["first_digits"]
    n = first["n_digits"]
    assert abs(float(elbo[:n].mean()) - first["log_px_bound_elbo"]) < TOL
    # IWAE-5000 costs 0.2 s a digit in float64: recompute two of the recorded digits
    per_digit = first[f"log_px_bound_iwae_k{kl}_per_digit"]
    assert len(per_digit) == n and abs(sum(per_digit) / n - first[f"log_px_bound_iwae_k{kl}"]) < TOL
    again = iwae_bound(log_weights(m, x[:2], kl, seed=tb["seed"]))
    assert torch.allclose(again, torch.tensor(per_digit[:2], dtype=F64), rtol=0, atol=TOL)
    # ELBO <= IWAE-k <= IWAE-k_large on the same digits, up to 3 standard errors of the paired
    # differences (each bound on independent draws: the expected ordering can show reversed by
    # Monte Carlo noise only)
    lo, mid, hi = (first[f"log_px_bound_{b}"] for b in ("elbo", f"iwae_k{k}", f"iwae_k{kl}"))
    assert lo <= mid + 3 * first[f"se_iwae_k{k}_minus_elbo"]
    assert mid <= hi + 3 * first[f"se_iwae_k{kl}_minus_iwae_k{k}"]
    assert tb["log_px_bound_elbo"] <= tb[f"log_px_bound_iwae_k{k}"] < 0


def test_encoder_checkpoint_errors_name_the_file(tmp_path):
    name = "vae-k2"
    arch, enc = zoo.parse(name).architecture(), zoo.parse(name).encoder_architecture()
    for suffix in (".pt", ".json"):
        shutil.copy(zoo.shipped_path(name).with_suffix(suffix), tmp_path / f"ok{suffix}")
    assert checkpoint.load_checkpoint(tmp_path / "ok.pt", arch, encoder_arch=enc).encoder is not None
    with pytest.raises(InputError, match=r"ok\.pt.*holds an encoder"):
        checkpoint.load_checkpoint(tmp_path / "ok.pt", arch)
    # a recorded sha256 that does not match the file
    meta = json.loads((tmp_path / "ok.json").read_text())
    (tmp_path / "ok.json").write_text(json.dumps(dict(meta, sha256="0" * 64)))
    with pytest.raises(InputError, match=r"ok\.pt: sha256 .* does not match"):
        checkpoint.load_checkpoint(tmp_path / "ok.pt", arch, encoder_arch=enc)
    # a file whose encoder has other shapes
    other = lvm.model.build(arch, encoder_arch=encoder.encoder_architecture(2, hidden=64))
    wrong = checkpoint.save_checkpoint(train.TrainResult(other, [], {"name": "wrong"}), tmp_path / "wrong.pt")
    with pytest.raises(InputError, match=r"wrong\.pt.*encoder\.net\.0\.weight: file has shape \(64, 784\), "
                                         r"architecture needs \(256, 784\)"):
        checkpoint.load_checkpoint(wrong, arch, encoder_arch=enc)
    # ... or whose metadata records another encoder
    meta = json.loads(wrong.with_suffix(".json").read_text())
    wrong.with_suffix(".json").write_text(json.dumps(dict(meta, encoder_architecture=dict(enc, hidden=64))))
    with pytest.raises(InputError, match=r"wrong\.pt.*metadata encoder hidden=64, requested encoder hidden="):
        checkpoint.load_checkpoint(wrong, arch, encoder_arch=enc)
