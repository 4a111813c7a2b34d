"""lvm.zoo, lvm.train and lvm.checkpoint: names, seeded untrained models, shipped and cached checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

import lvm
from lvm import checkpoint, objectives, train, zoo
from lvm.model import build

TINY = dict(hidden=16, layers=1, steps=5, batch_size=32, n_samples=8, lr=1e-2)


pytestmark = pytest.mark.usefixtures("isolated_cache")


def _data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, 784), 0.2), generator=g)


def test_names():
    got = zoo.names()
    for k in (1, 2, 4, 8, 16):
        for fam in ("untrained", "untrained-probs", "prior-iwae", "jensen", "vae", "iwae"):
            assert f"{fam}-k{k}" in got
    assert len(got) == len(set(got)) == 30
    assert zoo.names(ks=[3]) == ["untrained-k3", "untrained-probs-k3", "prior-iwae-k3", "jensen-k3",
                                 "vae-k3", "iwae-k3"]
    assert zoo.is_trained("prior-iwae-k2") and not zoo.is_trained("untrained-probs-k2")
    assert zoo.is_trained("iwae-k2") and zoo.parse("iwae-k2").family == "iwae"
    assert zoo.parse("prior-iwae-k2").family == "prior-iwae"


@pytest.mark.parametrize("bad", ["nope-k2", "prior-iwae", "prior-iwae-k0", "untrained-k02", "", 3])
def test_unknown_name_lists_known_names(bad):
    with pytest.raises(ValueError) as e:
        zoo.get(bad)
    msg = str(e.value)
    assert "prior-iwae-k2" in msg and "untrained-probs-k16" in msg and "jensen-k{K}" in msg


def test_untrained_models_are_seeded_and_deterministic():
    a, b = zoo.get("untrained-k2"), zoo.get("untrained-k2")
    assert a is not b and a.fingerprint() == b.fingerprint()
    assert a.output == "logits" and a.latent_dim == 2
    assert len(a.decoder) == 7 and a.decoder[0].out_features == 512  # 3 x 512 ELU + output
    assert zoo.get("untrained-k4").fingerprint() != a.fingerprint()
    p = zoo.get("untrained-probs-k2")
    assert p.output == "probs" and p.decoder[0].out_features == 128
    assert isinstance(p.decoder[-1], torch.nn.Sigmoid)
    assert p.fingerprint() == zoo.get("untrained-probs-k2").fingerprint()
    ref = lvm.BernoulliLVM(lvm.seed_decoder(2, hidden=128, layers=2, output="probs"), 2, "probs")
    assert p.fingerprint() == ref.fingerprint()


def test_untrained_matches_the_trained_initialisation():
    rec = zoo.recipe("prior-iwae-k2")
    init = build(rec.architecture(), seed=rec.seed)
    assert init.fingerprint() == zoo.get("untrained-k2").fingerprint()


def test_shipped_checkpoint_loads_without_training(no_training, tmp_path):
    m = zoo.get("prior-iwae-k2")
    assert isinstance(m, lvm.BernoulliLVM) and m.latent_dim == 2 and m.output == "logits"
    assert not (tmp_path / "cache" / "models").exists()  # nothing trained or cached
    meta = zoo.metadata("prior-iwae-k2")
    assert meta["objective"] == "prior-iwae" and meta["architecture"]["hidden"] == 512
    assert meta["recipe_key"] == zoo.recipe("prior-iwae-k2").key()
    assert 130 < meta["final_train_loss"] < 160
    assert zoo.get("jensen-k2").fingerprint() != m.fingerprint()
    assert zoo.metadata("jensen-k2")["final_train_loss"] > 200
    for name in zoo.SHIPPED:
        size = zoo.shipped_path(name).stat().st_size
        assert size == zoo.metadata(name)["size_bytes"] < 5e6


def test_shipped_model_beats_untrained_on_test_digits(no_training, tmp_path):
    from lvm import data

    x = data.load("mnist-5k", "test").x[:8]
    trained = lvm.log_space(zoo.get("prior-iwae-k2"), x, 1000, dtype="float64", seed=0).log_px
    untrained = lvm.log_space(zoo.get("untrained-k2"), x, 1000, dtype="float64", seed=0).log_px
    assert torch.isfinite(trained).all() and torch.isfinite(untrained).all()
    assert trained.mean() > untrained.mean() + 100  # ~ -150 vs ~ -540 nats
    assert trained.mean() > -200


def test_architecture_mismatch_is_a_clear_error(tmp_path):
    wrong = tmp_path / "wrong.pt"
    torch.save(lvm.seed_decoder(4, hidden=512, layers=3, output="logits").state_dict(), wrong)
    arch = zoo.parse("prior-iwae-k2").architecture()
    with pytest.raises(ValueError, match=r"wrong\.pt.*does not match.*0\.weight: file has shape \(512, 4\)"):
        checkpoint.load_checkpoint(wrong, arch)
    short = tmp_path / "short.pt"
    torch.save(lvm.seed_decoder(2, hidden=512, layers=2, output="logits").state_dict(), short)
    with pytest.raises(ValueError, match=r"short\.pt.*missing keys"):
        checkpoint.load_checkpoint(short, arch)
    notdict = tmp_path / "notdict.pt"
    torch.save([torch.zeros(2)], notdict)
    with pytest.raises(ValueError, match="notdict.pt: expected a state dict"):
        checkpoint.load_checkpoint(notdict, arch)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt: not a loadable"):
        checkpoint.load_checkpoint(garbage, arch)


def test_mismatched_cached_checkpoint_via_get(tmp_path, no_training):
    path = zoo.cache_path("prior-iwae-k4")
    assert path.parent == tmp_path / "cache" / "models"
    path.parent.mkdir(parents=True)
    torch.save(lvm.seed_decoder(2, hidden=512, layers=3, output="logits").state_dict(), path)
    with pytest.raises(ValueError, match=r"prior-iwae-k4-.*\.pt.*shape \(512, 2\).*needs \(512, 4\)"):
        zoo.get("prior-iwae-k4")


def test_metadata_output_mismatch_and_corruption(tmp_path):
    rec = train.Recipe("jensen", 2, output="probs", **TINY)
    path = checkpoint.save_checkpoint(train.train(rec, data=_data(), progress=False), tmp_path / "m.pt")
    arch = rec.architecture()
    assert checkpoint.load_checkpoint(path, arch).output == "probs"
    with pytest.raises(ValueError, match="metadata output='probs', requested output='logits'"):
        checkpoint.load_checkpoint(path, dict(arch, output="logits"))
    raw = bytearray(path.read_bytes())
    raw[-30] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="m.pt: sha256 .* does not match"):
        checkpoint.load_checkpoint(path, arch)


def test_tiny_training_is_deterministic_and_learns(tmp_path):
    x = _data()
    rec = train.Recipe("prior-iwae", 2, **TINY)
    a = train.train(rec, data=x, progress=False)
    b = train.train(rec, data=x, progress=False)
    assert a.losses == b.losses and len(a.losses) == 5
    assert a.model.fingerprint() == b.model.fingerprint()
    assert a.losses[-1] < a.losses[0]
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    init = build(rec.architecture(), seed=rec.seed)
    before = objectives.objective_loss(init.decoder, x, z, "prior-iwae").mean()
    after = objectives.objective_loss(a.model.decoder, x, z, "prior-iwae").mean()
    assert after < before - 1
    c = train.train(rec.replace(seed=1), data=x, progress=False)
    assert c.model.fingerprint() != a.model.fingerprint()
    # both z-sharing modes and both objectives run
    d = train.train(rec.replace(z_sharing="datapoint", objective="jensen"), data=x, progress=False)
    assert d.losses[-1] < d.losses[0]
    meta = a.metadata
    for key in ("architecture", "objective", "data", "steps", "batch_size", "n_samples", "lr",
                "final_train_loss", "wall_time_s", "torch_version", "seed", "deviations_from_textbook"):
        assert key in meta
    assert meta["final_train_loss"] == pytest.approx(sum(a.losses) / 5, abs=1e-3)
    path = checkpoint.save_checkpoint(a, tmp_path / "tiny.pt")
    saved = json.loads(path.with_suffix(".json").read_text())
    import hashlib

    assert saved["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = checkpoint.load_checkpoint(path, rec.architecture())
    assert loaded.fingerprint() == a.model.fingerprint()


def test_objectives_match_the_estimators():
    """The prior-IWAE loss is minus lvm.log_space on the same draws; Jensen is below it."""
    m = zoo.get("untrained-k2")
    x = _data(4)
    z = lvm.draw(m, 64, seed=3)
    ll = m.log_likelihood(x, z, torch.float64)
    dec64 = m.decoder.to(torch.float64)
    iwae = objectives.objective_loss(dec64, x.double(), z, "prior-iwae")
    est = lvm.log_space(m, x, 64, dtype="float64", seed=3).log_px
    assert torch.allclose(-iwae, est, atol=1e-9)
    jensen = objectives.objective_loss(dec64, x.double(), z, "jensen")
    assert torch.allclose(jensen, -ll.mean(1), atol=1e-9) and (jensen >= iwae).all()


def test_get_trains_once_into_the_cache(monkeypatch, tmp_path):
    calls = []
    real_train = train.train

    def counting(recipe, **kw):
        calls.append(recipe)
        return real_train(recipe, data=_data(), **kw)

    monkeypatch.setattr(train, "train", counting)
    monkeypatch.setattr(zoo, "BIG", dict(hidden=16, layers=1, output="logits"))
    monkeypatch.setitem(zoo.RECIPE_DEFAULTS, "steps", 3)
    monkeypatch.setitem(zoo.RECIPE_DEFAULTS, "batch_size", 16)
    monkeypatch.setitem(zoo.RECIPE_DEFAULTS, "n_samples", 4)
    a = zoo.get("jensen-k3", progress=False)
    assert len(calls) == 1 and calls[0].objective == "jensen" and calls[0].latent_dim == 3
    path = zoo.cache_path("jensen-k3")
    assert path.is_file() and path.with_suffix(".json").is_file()
    b = zoo.get("jensen-k3")
    assert len(calls) == 1 and b.fingerprint() == a.fingerprint()
    other = tmp_path / "elsewhere"
    zoo.get("jensen-k3", cache_dir=other, progress=False)
    assert len(calls) == 2 and zoo.cache_path("jensen-k3", cache_dir=other).is_file()
    # train_models writes <out>/<name>.pt with the overrides recorded
    paths = zoo.train_models(["prior-iwae-k1"], out_dir=tmp_path / "ckpt", steps=2, progress=False)
    assert paths == [tmp_path / "ckpt" / "prior-iwae-k1.pt"]
    assert json.loads(paths[0].with_suffix(".json").read_text())["steps"] == 2
    with pytest.raises(ValueError, match="not trained"):
        zoo.train_models(["untrained-k2"], out_dir=tmp_path / "ckpt")


def test_decoded_grid():
    m = zoo.get("untrained-k2")
    img = zoo.decoded_grid(m, n=4, span=2.0)
    assert img.shape == (4 * 28, 4 * 28)
    assert float(img.min()) >= 0 and float(img.max()) <= 1
    z = torch.tensor([[-2.0, 2.0]], dtype=torch.float64)  # top-left cell
    top_left = torch.sigmoid(m.logits(z, torch.float64)).reshape(28, 28)
    assert torch.allclose(img[:28, :28], top_left)
    with pytest.raises(ValueError, match="latent_dim >= 2"):
        zoo.decoded_grid(zoo.get("untrained-k1"))
