"""lvm.errors, lvm.rng, lvm.runtime and lvm._io: the small shared helpers."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

import lvm
from lvm import _io, rng, runtime
from lvm.errors import InputError


def test_input_error_is_a_value_error():
    assert issubclass(InputError, ValueError) and lvm.InputError is InputError
    with pytest.raises(InputError, match="dtype='float8'"):
        lvm.log_space(lvm.LinearGaussianLVM.random(4, 1), torch.zeros(1, 4), 2, dtype="float8")


def test_rng_is_the_seed_sequence_derivation():
    """The derivation every seeded stream uses; changing it moves every pinned number."""
    state = np.random.SeedSequence([7, 3]).generate_state(1, dtype=np.uint64)[0]
    assert rng.entropy(7, 3) == int(state) and rng.entropy(np.int64(7), 3) == int(state)
    want = torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))
    assert torch.equal(torch.randn(5, generator=rng.generator(7, 3)), torch.randn(5, generator=want))
    assert rng.entropy(7, 3) != rng.entropy(3, 7)


def test_set_torch_threads_restores_also_on_error():
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    with runtime.set_torch_threads(target):
        assert torch.get_num_threads() == target
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="boom"), runtime.set_torch_threads(target):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with runtime.set_torch_threads(None):
        assert torch.get_num_threads() == before
    with pytest.raises(InputError, match="threads=0"), runtime.set_torch_threads(0):
        pass
    assert torch.get_num_threads() == before


def test_device_checks_share_one_answer():
    assert runtime.device_unavailable("cpu") is None
    assert runtime.check_device("cpu") == torch.device("cpu")
    for bad in ("banana", "xla"):
        reason = runtime.device_unavailable(bad)
        assert reason and f"device='{bad}'" in reason
        with pytest.raises(InputError, match=f"device='{bad}' is not"):
            runtime.check_device(bad)
    if not torch.cuda.is_available():
        assert runtime.device_unavailable("cuda:0") == "CUDA is not available on this machine"
        with pytest.raises(InputError, match="requested but CUDA is not available on this machine"):
            runtime.check_device("cuda:0")


def test_cache_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("LVM_CACHE_DIR", str(tmp_path / "env"))
    assert _io.cache_root(tmp_path / "arg") == tmp_path / "arg"
    assert _io.cache_root() == tmp_path / "env"
    monkeypatch.delenv("LVM_CACHE_DIR")
    assert _io.cache_root().parts[-2:] == (".cache", "lvm-bench")


def test_atomic_write_replaces_whole_files_only(tmp_path):
    path = tmp_path / "sub" / "f.bin"
    _io.atomic_write(path, lambda f: f.write(b"one"))
    assert path.read_bytes() == b"one" and oct(path.stat().st_mode & 0o777) == "0o644"

    def fails(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _io.atomic_write(path, fails)
    assert path.read_bytes() == b"one"
    assert [p.name for p in path.parent.iterdir()] == ["f.bin"]  # no temp file left behind


# ----------------------------------------------------------------------------- timing budget

def test_autorange_fills_the_budget_on_fast_calls_and_stops_at_max_runs():
    from bench.run.timing import autorange

    calls = []
    m = autorange(lambda: calls.append(1), "cpu", budget=60.0, max_runs=7)
    assert len(m.times) == len(calls) == 7


def test_autorange_makes_one_run_of_a_call_longer_than_the_budget():
    from bench.run.timing import autorange

    m = autorange(lambda: time.sleep(0.02), "cpu", budget=0.001, max_runs=50)
    assert len(m.times) == 1 and m.times[0] >= 0.02
    assert math.isnan(m.iqr)
    # a run already made counts as the first
    m = autorange(lambda: None, "cpu", budget=0.001, max_runs=50, first=5.0)
    assert m.times == [5.0]


def test_autorange_stops_once_the_budget_is_spent():
    from bench.run.timing import autorange

    m = autorange(lambda: time.sleep(0.01), "cpu", budget=0.035, max_runs=1000)
    assert 2 <= len(m.times) < 1000 and sum(m.times[:-1]) < 0.035 <= sum(m.times)
