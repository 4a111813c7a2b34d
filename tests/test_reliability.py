"""The run directory under stress (issue 13): a lock per directory, SIGTERM, a full disk.

Each test uses a one-dtype slice of the tiny config so that it runs in seconds.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny import run_cli as _run
from tiny import tiny_toml

import bench.run.store

pytestmark = pytest.mark.slow  # every test here runs sweeps in subprocesses

ROOT = Path(__file__).resolve().parents[1]
SMALL = tiny_toml(grid={"dtype": ["float32"], "estimator": ["log_space"], "device": ["cpu"]})
SLOW = tiny_toml(run={"time_budget": 1.0}, grid={"dtype": ["float32"], "estimator": ["log_space"],
                                                  "device": ["cpu"], "n_samples": [1, 10, 100, 1000]})


@pytest.fixture
def small(tmp_path) -> Path:
    p = tmp_path / "small.toml"
    p.write_text(SMALL)
    return p


def _meta(out: Path) -> dict:
    return json.loads((out / "meta.json").read_text())


def test_a_directory_held_by_a_live_process_is_refused_and_a_stale_lock_taken_over(
        tmp_path, capsys, small, cache_dir):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".lock").write_text(f"{socket.gethostname()} {holder.pid}\n")
        assert _run("--config", str(small), "--out", str(out), cache=cache_dir) == 2
        assert f"in use by process {holder.pid}" in capsys.readouterr().err
        assert not (out / "meta.json").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale, taken over, and released at the end
    assert _run("--config", str(small), "--out", str(out), cache=cache_dir) == 0
    assert _meta(out)["status"] == "complete" and not (out / ".lock").exists()


def test_sigterm_ends_with_status_interrupted_and_resume_continues(tmp_path, cache_dir):
    """SIGTERM after the first group (8 cells of at least 1 s of timing each remain)."""
    out, small = tmp_path / "run", tmp_path / "slow.toml"
    small.write_text(SLOW)
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", "run", "--config", str(small),
                             "--out", str(out), "--cache-dir", cache_dir, "--no-progress"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (out / "parts").exists() and any((out / "parts").glob("*.json")):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "continue with --resume" in err and "Traceback" not in err
    assert _meta(out)["status"] == "interrupted" and not (out / ".lock").exists()
    assert _run("--config", str(small), "--out", str(out), "--resume", cache=cache_dir) == 0
    assert _meta(out)["status"] == "complete"


def test_a_full_disk_ends_with_one_line_and_status_interrupted(tmp_path, capsys, small, cache_dir,
                                                                monkeypatch):
    out = tmp_path / "run"
    real = bench.run.store.RunStore.write_part
    written = []

    def fill_up(self, key, row, raw):
        if len(written) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.parts / f"{key}.json"))
        written.append(key)
        real(self, key, row, raw)

    monkeypatch.setattr(bench.run.store.RunStore, "write_part", fill_up)
    assert _run("--config", str(small), "--out", str(out), cache=cache_dir) == 2
    err = capsys.readouterr().err
    assert "the disk is full" in err and "--resume" in err and len(err.strip().splitlines()) <= 2
    assert _meta(out)["status"] == "interrupted" and not (out / ".lock").exists()
    monkeypatch.setattr(bench.run.store.RunStore, "write_part", real)
    assert _run("--config", str(small), "--out", str(out), "--resume", cache=cache_dir) == 0
    assert _meta(out)["status"] == "complete"


def test_cache_dir_holds_every_cache_the_run_writes(tmp_path, small, monkeypatch):
    """--cache-dir covers the binarized data as well as the models and the ground truth."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LVM_CACHE_DIR", raising=False)
    cache = tmp_path / "cache"
    assert _run("--config", str(small), "--out", str(tmp_path / "run"), cache=str(cache)) == 0
    assert any((cache / "binarized").iterdir()) and any((cache / "reference").iterdir())
    assert not (tmp_path / "home").exists()


def test_resume_reruns_damaged_parts_and_names_them(tmp_path, capsys, small, cache_dir):
    import gzip

    import pandas as pd

    from bench.run.metrics import TIMING_COLUMNS

    out = tmp_path / "run"
    assert _run("--config", str(small), "--out", str(out), cache=cache_dir) == 0
    before = pd.read_csv(out / "cells.csv")
    keys = sorted(p.name.removesuffix(".json") for p in (out / "parts").glob("*.json"))
    truncated, cut_json, short = keys[:3]
    raw = out / "parts" / f"{truncated}.raw.csv.gz"
    raw.write_bytes(raw.read_bytes()[:40])
    js = out / "parts" / f"{cut_json}.json"
    js.write_text(js.read_text()[:50])
    raw = out / "parts" / f"{short}.raw.csv.gz"  # still valid gzip, 5 rows fewer
    lines = gzip.decompress(raw.read_bytes()).decode().splitlines(keepends=True)
    raw.write_bytes(gzip.compress("".join(lines[:-5]).encode()))
    capsys.readouterr()
    assert _run("--config", str(small), "--out", str(out), "--resume", cache=cache_dir) == 0
    err = capsys.readouterr().err
    for key in (truncated, cut_json, short):
        assert f"the part of {key} is damaged" in err
    meta = _meta(out)
    assert meta["status"] == "complete" and meta["segments"][-1]["cells_todo"] == 3
    drop = [c for c in TIMING_COLUMNS if c in before]
    after = pd.read_csv(out / "cells.csv").drop(columns=drop)
    pd.testing.assert_frame_equal(after, before.drop(columns=drop))


def test_two_writers_started_together_one_runs_the_other_exits_2(tmp_path, small, cache_dir):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "bench.cli", "run", "--config", str(small), "--out", str(out),
           "--cache-dir", cache_dir, "--no-progress"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = sorted((p.wait(timeout=300), p.stderr.read()) for p in procs)
    (ok, _), (refused, err) = results
    assert (ok, refused) == (0, 2), results
    assert "in use by process" in err or "already holds a run" in err
    assert _meta(out)["status"] == "complete" and not (out / ".lock").exists()


def test_no_space_for_meta_json_exits_2_and_leaves_no_lock(tmp_path, capsys, small, cache_dir, monkeypatch):
    def full(self, meta):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.meta_path))

    monkeypatch.setattr(bench.run.store.RunStore, "write_meta", full)
    out = tmp_path / "run"
    assert _run("--config", str(small), "--out", str(out), cache=cache_dir) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert not (out / ".lock").exists() and not (out / "meta.json").exists() and not (out / "parts").exists()


def test_no_progress_reaches_the_training_of_a_model(tmp_path, small, cache_dir, monkeypatch):
    """--no-progress silences the training bar too (it flooded a long run's log)."""
    from lvm import zoo

    seen = []
    real = zoo.get
    monkeypatch.setattr(zoo, "get", lambda name, **kw: seen.append(kw.get("progress")) or real(name, **kw))
    assert _run("--config", str(small), "--out", str(tmp_path / "run"), cache=cache_dir) == 0
    assert seen and all(p is False for p in seen)  # passed, and off
