"""The dask executor: same table as the local executor, survives a killed worker."""

from __future__ import annotations

import os
import signal
import threading
import time

import pandas as pd
import pytest

distributed = pytest.importorskip("distributed", reason="the dask extra is not installed")

from tiny import tiny_toml  # noqa: E402

from bench.run.config import load_config  # noqa: E402
from bench.run.executors import DaskExecutor  # noqa: E402
from bench.run.metrics import TIMING_COLUMNS  # noqa: E402
from bench.run.sweep import run  # noqa: E402

pytestmark = pytest.mark.slow  # every test here runs sweeps or subprocesses


def _config(tmp_path, n_samples="10,100,1000"):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(tiny_toml(
        run={"name": "dask", "seed": 5, "n_data": 4, "repeats": 2},
        grid={"estimator": ["prob_space", "log_space"], "dtype": ["float32", "float64"],
              "n_samples": [int(n) for n in n_samples.split(",")]}))

    return load_config(str(cfg))


def _numbers(t: pd.DataFrame) -> pd.DataFrame:
    drop = [c for c in (*TIMING_COLUMNS, "reason") if c in t]
    return t.drop(columns=drop)


@pytest.fixture
def cache(cache_dir) -> str:
    return cache_dir


def test_local_cluster_matches_local_executor(tmp_path, cache):
    config = _config(tmp_path)
    local = run(config, tmp_path / "local", progress=False, cache_dir=cache)
    dask = run(config, tmp_path / "dask", progress=False, cache_dir=cache,
               executor=DaskExecutor(n_workers=2))
    pd.testing.assert_frame_equal(_numbers(local), _numbers(dask))
    workers = set(dask.loc[dask.status == "ok", "worker"])
    assert all(w.startswith("tcp://127.0.0.1:") for w in workers)
    # GPU cells need a GPU resource no LocalCluster worker declares: skipped here, never sent
    assert (dask.loc[dask.device == "cuda", "status"] == "skipped").all()
    assert dask.loc[dask.device == "cuda", "reason"].str.contains("GPU resource").all()


def test_killed_worker_costs_only_its_cells(tmp_path, cache):
    """Kill one worker process mid-run: its cells are retried and the run completes."""
    config = _config(tmp_path, n_samples="10,30,100,300,1000,3000")
    ex = DaskExecutor(n_workers=2, retries=2)
    original = ex._client
    killed = {}

    def client_with_killer():
        client, cluster = original()

        def killer():
            time.sleep(0.1)
            deadline = time.time() + 120
            while time.time() < deadline:  # wait until cells are running, then kill one worker
                parts = list((tmp_path / "killed" / "parts").glob("*.json"))
                if len(parts) >= 2:
                    break
                time.sleep(0.05)
            pids = client.run(os.getpid)
            addr, pid = sorted(pids.items())[0]
            killed["addr"] = addr
            os.kill(pid, signal.SIGKILL)

        threading.Thread(target=killer, daemon=True).start()
        return client, cluster

    ex._client = client_with_killer
    table = run(config, tmp_path / "killed", progress=False, cache_dir=cache, executor=ex)
    assert killed, "the killer thread never fired"
    ok = table[table.status == "ok"]
    cells, _ = config.cells()
    assert len(ok) == sum(c.device == "cpu" for c in cells)
    assert not (table.status == "failed").any()
    reference = run(config, tmp_path / "ref", progress=False, cache_dir=cache)
    pd.testing.assert_frame_equal(_numbers(reference), _numbers(table))


def test_local_cluster_workers_keep_glibc_heap(monkeypatch):
    """dask sets MALLOC_TRIM_THRESHOLD_=65536 for the workers it spawns, which made every
    freed chunk tensor go back to the OS and the decoder passes run 1.5-1.7x slower; our
    LocalCluster leaves it unset unless the user's environment sets it."""
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    ex = DaskExecutor(n_workers=1)
    try:
        envs = ex._connect().run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
    finally:
        ex.close()
    assert list(envs.values()) == [None]
