"""Results formats: older runs read as today's, one step per version; newer ones refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tiny import run_cli

from bench.run import formats
from bench.run.config import Cell
from bench.run.metrics import resolved
from bench.run.store import RunError, RunStore, load_run

ROOT = Path(__file__).resolve().parents[1]

# what format-1 runs made before the flop, precision, truth_error and proposal columns lack
V1_AXES = ("precision", "proposal")
V1_TRUTH = ("truth_error", "bias_resolved", "mc_bias_resolved")
V1_LACKS = (*V1_AXES, *V1_TRUTH, "flop")


def _raw_path(run: Path) -> Path:
    return next(p for p in (run / "raw.parquet", run / "raw.csv.gz") if p.exists())


def _read_raw(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def _write_raw(path: Path, raw: pd.DataFrame) -> None:
    if path.suffix == ".parquet":
        raw.to_parquet(path, index=False)
    else:
        raw.to_csv(path, index=False, compression={"method": "gzip", "mtime": 0})


def _old_run(tiny_run: Path, dst: Path, version: int | None) -> Path:
    """A copy of the tiny run as an early format-1 run wrote it (``version`` in meta.json, None:
    no format_version at all): no precision, proposal, truth_error, flags or flop anywhere."""
    shutil.copytree(tiny_run, dst)
    meta = json.loads((dst / "meta.json").read_text())
    assert meta["format_version"] == formats.FORMAT_VERSION  # what a run writes today
    meta.pop("format_version")
    if version is not None:
        meta["format_version"] = version
    for axis in V1_AXES:
        meta["config"]["grid"].pop(axis)
    (dst / "meta.json").write_text(json.dumps(meta))
    cells = pd.read_csv(dst / "cells.csv")
    cells.drop(columns=list(V1_LACKS)).to_csv(dst / "cells.csv", index=False)
    raw_path = _raw_path(dst)
    _write_raw(raw_path, _read_raw(raw_path).drop(columns=list(V1_AXES)))
    store = RunStore(dst)
    for key in store.done():
        row, raw = store.read_part(key)
        row = {k: v for k, v in row.items() if k not in V1_LACKS}
        store.write_part(key, row, raw.drop(columns=list(V1_AXES)))
    return dst


def _assert_read_as_today(old, new) -> None:
    """``old`` (an early format-1 run) read back as ``new`` (the same run in today's format):
    equal, but for the truth's error, which format 1 took from the largest digit error."""
    same = [c for c in new.cells if c not in V1_TRUTH]
    pd.testing.assert_frame_equal(old.cells[same], new.cells[same], check_exact=True)
    np.testing.assert_array_equal(old.cells["truth_error"], old.cells["truth_se_max"])
    ok = (old.cells["status"] == "ok").to_numpy()
    assert ok.any() and np.isnan(old.cells.loc[~ok, ["bias_resolved", "mc_bias_resolved"]].to_numpy()).all()
    flags = resolved(old.cells["bias"].to_numpy(), old.cells["mc_bias"].to_numpy(), old.cells["truth_error"])
    for name, flag in flags.items():
        np.testing.assert_array_equal(old.cells.loc[ok, name], flag[ok])
    pd.testing.assert_frame_equal(old.raw, new.raw, check_exact=True)
    assert old.meta.config == new.meta.config


def test_one_step_from_each_older_format():
    assert sorted(formats.STEPS) == list(range(formats.FORMAT_VERSION))


def test_format_1_run_reads_as_today(tiny_run, tmp_path):
    new = load_run(tiny_run)
    old = load_run(_old_run(tiny_run, tmp_path / "v1", 1))
    assert (old.meta.format_version, new.meta.format_version) == (1, formats.FORMAT_VERSION)
    _assert_read_as_today(old, new)
    assert old.problems == new.problems


def test_format_0_run_reads_as_format_1_and_says_so(tiny_run, tmp_path):
    new = load_run(tiny_run)
    old = load_run(_old_run(tiny_run, tmp_path / "v0", None))
    assert old.meta.format_version == 0
    _assert_read_as_today(old, new)
    assert old.problems == formats.notes(0) + new.problems
    assert "meta.json has no format_version" in old.problems[0]


def test_resume_rewrites_an_older_run_in_todays_format(tiny_run, tiny_config, cache_dir, tmp_path):
    old = _old_run(tiny_run, tmp_path / "v1", 1)
    assert run_cli("--config", str(tiny_config), "--out", str(old), "--resume", cache=cache_dir) == 0
    meta = json.loads((old / "meta.json").read_text())
    assert meta["format_version"] == formats.FORMAT_VERSION and meta["segments"][-1]["cells_todo"] == 0
    store = RunStore(old)
    for key in store.done():
        row, raw = store.read_part(key)
        assert {*V1_AXES, "truth_error", "flop"} <= set(row) and set(V1_AXES) <= set(raw)
    cells, today = pd.read_csv(old / "cells.csv"), pd.read_csv(tiny_run / "cells.csv")
    assert list(cells.columns) == list(today.columns)
    pd.testing.assert_frame_equal(cells.drop(columns=list(V1_TRUTH)), today.drop(columns=list(V1_TRUTH)),
                                  check_exact=True)
    _assert_read_as_today(load_run(old), load_run(tiny_run))


def test_rows_of_a_format_1_table_are_cells_at_the_first_levels():
    cast = Cell("log_space", "float16", 10, "untrained-k2", "logits", "cpu")
    rows = pd.DataFrame([{**cast.axes(), "precision": np.nan, "proposal": np.nan},
                         {k: v for k, v in cast.axes().items() if k not in V1_AXES}])
    for table in (rows.iloc[:1], rows.iloc[1:][["estimator", "dtype", "n_samples", "model",
                                                 "parametrization", "device"]]):
        upgraded = formats.upgrade("raw", table, 1)
        assert list(upgraded.columns[:len(cast.axes())]) == list(cast.axes())
        assert Cell.of(upgraded.to_dict("records")[0]) == cast
    assert formats.upgrade("raw", rows, formats.FORMAT_VERSION) is rows  # today's format: as it is


@pytest.mark.parametrize("version", [formats.FORMAT_VERSION + 1, "2", 1.5, -1, True])
def test_unknown_formats_are_refused(tiny_run, tmp_path, version):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    meta = json.loads((run / "meta.json").read_text())
    (run / "meta.json").write_text(json.dumps({**meta, "format_version": version}))
    with pytest.raises(RunError) as err:
        load_run(run)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(run / "meta.json")) and repr(version) in msg
    if version == formats.FORMAT_VERSION + 1:
        assert "newer lvm-bench" in msg
    with pytest.raises(RunError):  # nor resumed
        RunStore(run).read_meta()


@pytest.mark.parametrize("name", ["baseline", "full"])
def test_committed_runs_read_in_todays_format(name):
    path = ROOT / "results" / name
    written = pd.read_csv(path / "cells.csv")
    run = load_run(path)
    assert run.meta.format_version == 1 and run.problems == []
    assert len(run.cells) == len(written) and set(written) <= set(run.cells)
    assert {*V1_LACKS} <= set(run.cells) and run.cells[list(V1_AXES)].notna().all().all()
    assert {*V1_AXES} <= set(run.meta.grid)
    ok = run.cells[run.cells["status"] == "ok"]
    assert ok["flop"].notna().all() and ok["truth_error"].notna().all()
