"""Hardware identity: what meta.json records about the machine, and when two runs' timings compare."""

from __future__ import annotations

import copy

import pytest

from bench.run.environment import CEILING_TOLERANCE, IDENTITY_FIELDS, ISA_FLAGS, hardware, identity_mismatches
from bench.run.store import Meta

HW = {"platform": "Linux", "cpu": "AMD EPYC", "cpu_count": 2, "torch_threads": 2, "cpu_capability": "AVX512",
      "isa_flags": {"avx512_bf16": True, "amx_bf16": False, "avx512_fp16": False, "f16c": True}, "gpus": []}
PEAKS = {"cpu": {"bfloat16": 200.0, "float16": 3.0, "float32": 100.0, "float64": 40.0}}
DROP = object()  # a field the run does not record (None is a value: unknown on that OS)


def _meta(hw: dict | None = None, peaks: dict | None = None, **edits) -> Meta:
    """A Meta over a copy of HW and PEAKS, with hardware fields replaced (DROP: left out)."""
    hw = copy.deepcopy(HW if hw is None else hw)
    for k, v in edits.items():
        if v is DROP:
            hw.pop(k, None)
        else:
            hw[k] = v
    peaks = copy.deepcopy(PEAKS if peaks is None else peaks)
    return Meta.of({"environment": {"hardware": hw}, "matmul_peak_gflops": peaks})


def test_hardware_records_capability_and_isa_flags():
    hw = hardware()
    assert set(IDENTITY_FIELDS) <= set(hw)
    assert isinstance(hw["cpu"], str) and hw["cpu"]
    assert hw["cpu_capability"] is None or isinstance(hw["cpu_capability"], str)
    flags = hw["isa_flags"]
    assert flags is None or list(flags) == list(ISA_FLAGS)
    assert flags is None or all(isinstance(v, bool) for v in flags.values())


def test_hardware_without_proc_cpuinfo(monkeypatch):
    """macOS and the like: no flag list to read, so the flags are unknown (None), not all False."""
    import bench.run.environment as env

    monkeypatch.setattr(env, "_cpu_flags", lambda: None)
    assert env.hardware()["isa_flags"] is None


def test_same_identity_matches():
    assert identity_mismatches(_meta(), _meta()) == []
    # what is no identity (the platform string, GPU memory) does not count
    a = _meta(platform="Linux-6.1", gpus=[{"name": "H100", "memory_gb": 79.1}])
    b = _meta(platform="Linux-6.2", gpus=[{"name": "H100", "memory_gb": 79.2}])
    assert identity_mismatches(a, b) == []


@pytest.mark.parametrize("edit, reason", [
    ({"cpu_capability": "AVX2"}, "cpu_capability: AVX512 vs AVX2"),
    ({"isa_flags": {**HW["isa_flags"], "avx512_bf16": False}}, "isa_flags.avx512_bf16: True vs False"),
    ({"isa_flags": None},
     "isa_flags: avx512_bf16=True, amx_bf16=False, avx512_fp16=False, f16c=True vs unknown"),
    ({"cpu": "Intel Xeon"}, "cpu: AMD EPYC vs Intel Xeon"),
    ({"cpu_count": 4}, "cpu_count: 2 vs 4"),
    ({"torch_threads": 1}, "torch_threads: 2 vs 1"),
    ({"gpus": [{"name": "NVIDIA H100"}]}, "gpus: none vs NVIDIA H100"),
    ({"cpu_capability": DROP}, "the new run does not record cpu_capability"),
])
def test_each_field_mismatch_is_named(edit, reason):
    reasons = identity_mismatches(_meta(), _meta(**edit))
    assert len(reasons) == 1 and reasons[0].startswith(reason), reasons


def test_a_run_without_the_new_fields_never_matches():
    """A meta.json written before identity was recorded (e.g. results/baseline) declines, in words."""
    old = _meta(cpu_capability=DROP, isa_flags=DROP)
    reasons = identity_mismatches(old, old)
    assert reasons == ["neither run records cpu_capability (made before lvm-bench recorded it)",
                       "neither run records isa_flags (made before lvm-bench recorded it)"]
    assert identity_mismatches(old, _meta())[0].startswith("the baseline does not record cpu_capability")
    assert identity_mismatches(Meta.of({}), _meta()) == ["the baseline records no hardware"]
    assert identity_mismatches(_meta(), _meta(peaks={})) == [
        "the new run does not record matmul ceilings (meta.json matmul_peak_gflops)"]


def test_ceilings_match_within_the_tolerance():
    near = {"cpu": {k: v * CEILING_TOLERANCE * 0.99 for k, v in PEAKS["cpu"].items()}}
    assert identity_mismatches(_meta(), _meta(peaks=near)) == []
    # only what both runs measured is held against the tolerance
    fewer = {"cpu": {"float32": 100.0}, "cuda": {"float32": 5e4}}
    assert identity_mismatches(_meta(), _meta(peaks=fewer)) == []


def test_a_ceiling_beyond_the_tolerance_is_named():
    """Same model string and cores, one with native bfloat16 and one without: the ceilings tell."""
    slow = {"cpu": {**PEAKS["cpu"], "bfloat16": 2.0}}
    reasons = identity_mismatches(_meta(), _meta(peaks=slow))
    assert reasons == ["matmul ceiling cpu/bfloat16: 200 vs 2 GFLOP/s "
                       f"(x100, tolerance x{CEILING_TOLERANCE:g})"]
    broken = {"cpu": {**PEAKS["cpu"], "float32": None}}
    assert identity_mismatches(_meta(), _meta(peaks=broken)) == [
        "matmul ceiling cpu/float32: 100 vs nan GFLOP/s (not a positive rate)"]
