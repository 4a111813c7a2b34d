"""Shared fixtures: one torch thread, the seeded models the core tests use, and one tiny sweep.

Threads: float32 reductions round differently depending on how work is split across
threads, and the CI and development machines are small and shared, so every test runs
with ``LVM_TEST_THREADS`` torch threads (default 1). Tests that compare two runs bit for
bit always compare runs made at the same thread count within one process.

The tiny sweep (``tiny_run``) runs once per session through the CLI, into a session
directory with its own model and ground-truth cache; the sweep, report and compare tests
read it (copy it before changing anything in it).

Allocator: as the sweep does, the tests keep the estimators' temporaries on the heap
(``lvm.runtime.keep_temporaries_on_heap``: without it every chunk paid ~10^4 page faults,
measured 2 s instead of 0.5 s per N = 10^5 estimate, mostly system time).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from tiny import tiny_toml

import lvm
from lvm.runtime import keep_temporaries_on_heap, set_torch_threads

THREADS = int(os.environ.get("LVM_TEST_THREADS", "1"))


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    keep_temporaries_on_heap()
    with set_torch_threads(THREADS):
        yield


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """Never write into the home cache (a cache of this test's own); one torch thread."""
    monkeypatch.setenv("LVM_CACHE_DIR", str(tmp_path / "cache"))
    with set_torch_threads(1):
        yield


@pytest.fixture
def no_training(monkeypatch):
    """Training a model is an error here: the model must come from a checkpoint or the cache."""
    from lvm import train

    def boom(*a, **k):
        raise AssertionError("training was called")

    monkeypatch.setattr(train, "train", boom)


# Fixtures that run a sweep (seconds to minutes on 2 cores): a test that uses one is `slow`.
SWEEP_FIXTURES = {"tiny_run", "encoder_run"}


def pytest_collection_modifyitems(config, items):
    """Mark the tests that run a sweep through a fixture `slow` (`pytest -m "not slow"` leaves them
    out for a fast development loop; CI runs everything)."""
    for item in items:
        if SWEEP_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> str:
    """One model and ground-truth cache for every sweep the tests run."""
    return str(tmp_path_factory.mktemp("lvm-cache"))


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.toml"
    path.write_text(tiny_toml())
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_config, cache_dir) -> Path:
    """The tiny sweep, run once through the CLI: read it, or copy it before changing it."""
    from bench.cli import main

    out = tmp_path_factory.mktemp("tiny-run") / "run"
    assert main(["run", "--config", str(tiny_config), "--out", str(out), "--cache-dir", cache_dir,
                 "--no-progress"]) == 0
    return out


@pytest.fixture(scope="session")
def lg2() -> lvm.LinearGaussianLVM:
    """D = 784, K = 2, sigma = 0.5, scale 1: posterior variance 1/5 of the prior's per axis."""
    return lvm.LinearGaussianLVM.random(784, 2, sigma=0.5, scale=1.0, seed=1)


@pytest.fixture(scope="session")
def lg10() -> lvm.LinearGaussianLVM:
    """D = 784, K = 10, sigma = 0.5, scale 0.5 (posterior variance 1/2 of the prior's per axis).

    At scale 1 each posterior axis is 5x narrower than the prior and Var(w) of the prior
    importance weights is of order 5^10 (3.0e4 and 5.5e4 on the two samples test_estimators
    uses): at N = 10^5 the Jensen bias Var(w) / 2N (0.15-0.27 nats) is then as large as the
    standard error of 10 repeats and the heavy-tailed weights make that SE unreliable, so
    the check would measure Monte Carlo error, not numerics. At scale 0.5 Var(w) = 215, 620.
    """
    return lvm.LinearGaussianLVM.random(784, 10, sigma=0.5, scale=0.5, seed=1)


@pytest.fixture(scope="session")
def part2() -> lvm.BernoulliLVM:
    """The textbook "part 2" model: seed_decoder defaults, probabilities out."""
    return lvm.BernoulliLVM(lvm.seed_decoder(2), 2, "probs")


@pytest.fixture(scope="session")
def part4() -> lvm.BernoulliLVM:
    """The "part 4" model: 3 x 512 hidden ELU layers, logits out."""
    return lvm.BernoulliLVM(lvm.seed_decoder(2, hidden=512, layers=3, output="logits"), 2)


@pytest.fixture(scope="session")
def binary_x(part2) -> torch.Tensor:
    """Eight binary 784-pixel images drawn from the part-2 model (float32 0/1)."""
    return part2.sample_x(8, torch.Generator().manual_seed(0))
