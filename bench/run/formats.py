"""Results formats: what a run directory holds at each version, and the one reader of older ones.

meta.json's ``format_version`` names the format of the whole directory (meta.json, cells.csv,
the raw file, parts/). lvm-bench writes :data:`FORMAT_VERSION` and reads every older format
through :func:`upgrade`, one step per version, so that what reads a run (``load_run`` and so
report and compare, ``--resume``) sees today's format only and no other module knows an old
one. A format newer than this code is refused (:func:`written_version`).

Format 3 (issue 24 on): format 2 with the ``engine`` axis (after ``proposal``, in meta.json's
  grid, cells.csv and the raw rows) and the cells.csv column ``compile_s`` (after ``time_runs``).
  v2 -> v3 adds them at ``eager`` and 0 s: every older cell ran eagerly, compiling nothing.

Format 2 (issue 21 to 24): format 1 as it was last written, every part of it now required.
  meta.json's config lists every axis of the grid; cells.csv and the raw rows have every axis as
  a column, none blank; cells.csv has the metric columns ``flop``, ``truth_error``,
  ``bias_resolved`` and ``mc_bias_resolved``. A cell's key (``Cell.key``, which names its files
  in parts/) leaves out an axis of ``AXIS_DEFAULTS`` at its first level, so that keys stay the
  same when such an axis is added. v1 -> v2 adds what a format-1 run lacks of this.

Format 1 (the first sweep, de8be1d, to issue 21): the same files, but columns were added
  during its life without a new version, so a format-1 run may lack any of: ``flop`` (ae1cd78),
  ``precision`` (08d8ada), ``truth_error`` with ``bias_resolved`` and ``mc_bias_resolved``
  (eb2cfca), ``proposal`` (4a8adab); a run resumed across one of those has the new column
  blank in its older rows.

Format 0: a meta.json without ``format_version``. lvm-bench wrote one from its first sweep on,
  so no lvm-bench made such a directory; it is read as format 1 and says so (v0 -> v1 adds
  nothing else).

Each step only adds what is absent (or blank), so applying it to tables that already have
it changes nothing: a ``--resume`` interrupted while it rewrites old parts can run again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from bench.run.config import AXIS_DEFAULTS
from bench.run.metrics import resolved
from bench.run.timing import estimate_flop
from lvm import zoo
from lvm.errors import InputError

FORMAT_VERSION = 3


class RunError(InputError):
    """A results directory that cannot be used as asked."""


def written_version(meta: dict, source: Any) -> int:
    """The format meta.json (read from ``source``) declares: 0 when it declares none; RunError
    when it is newer than this lvm-bench or not a format number."""
    version = meta.get("format_version")
    if version is None:
        return 0
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise RunError(f"{source}: format_version {version!r} is not a results format; accepted: "
                       f"a whole number from 1 to {FORMAT_VERSION}")
    if version > FORMAT_VERSION:
        raise RunError(f"{source}: results format {version} was written by a newer lvm-bench; this one "
                       f"reads formats up to {FORMAT_VERSION}: upgrade lvm-bench to read it")
    return version


def _same(table):
    return table


@dataclass(frozen=True)
class Step:
    """From one format to the next: what each file of the older one lacked, added."""

    note: str | None = None  # what a run of the older format should say to its reader
    meta: Callable[[dict], dict] = _same
    cells: Callable[[pd.DataFrame], pd.DataFrame] = _same
    raw: Callable[[pd.DataFrame], pd.DataFrame] = _same


def _insert(frame: pd.DataFrame, name: str, values: Any, after: str) -> pd.DataFrame:
    """``frame`` with the column ``name`` placed where a newer writer puts it: after ``after``
    (at the end when ``frame`` lacks that)."""
    frame = frame.copy()
    at = frame.columns.get_loc(after) + 1 if after in frame else len(frame.columns)
    frame.insert(at, name, values)
    return frame


# ----------------------------------------------------------------------------- format 1 -> 2

# the axes format 1 gained: an older row is at their first level
_V1_AXES = {axis: AXIS_DEFAULTS[axis] for axis in ("precision", "proposal")}


def _v1_axes(frame: pd.DataFrame) -> pd.DataFrame:
    """precision, then proposal, after device: absent or blank, at their first level."""
    after = "device"
    for axis, first in _V1_AXES.items():
        if axis in frame:
            if frame[axis].isna().any():
                frame = frame.assign(**{axis: frame[axis].astype(object).fillna(first)})
        else:
            frame = _insert(frame, axis, first, after)
        after = axis
    return frame


def _v1_meta(meta: dict) -> dict:
    """A config from before an axis lists its one level."""
    grid = (meta.get("config") or {}).get("grid")
    if not isinstance(grid, dict) or all(axis in grid for axis in _V1_AXES):
        return meta
    added = {axis: [first] for axis, first in _V1_AXES.items() if axis not in grid}
    return {**meta, "config": {**meta["config"], "grid": {**grid, **added}}}


def _number(frame: pd.DataFrame, name: str) -> pd.Series:
    return pd.to_numeric(frame[name], errors="coerce")


def _v1_truth_error(cells: pd.DataFrame) -> pd.DataFrame:
    """Before eb2cfca a cell recorded only truth_se_max, the largest digit error: it stands in for
    truth_error (the mean that newer runs record), and the resolution flags follow from it."""
    if "truth_error" in cells or not {"truth_se_max", "bias", "mc_bias"} <= set(cells):
        return cells
    ok = (cells["status"] == "ok").to_numpy() if "status" in cells else np.ones(len(cells), bool)
    error = _number(cells, "truth_se_max")
    flags = resolved(_number(cells, "bias").to_numpy(), _number(cells, "mc_bias").to_numpy(),
                     error.to_numpy())
    cells = _insert(cells, "truth_error", error, "ess")
    after = "truth_error"
    for name, flag in flags.items():  # as a newer writer records them: for measured cells only
        cells = _insert(cells, name, np.where(ok, flag, np.nan), after)
        after = name
    return cells


def _v1_flop(cells: pd.DataFrame) -> pd.DataFrame:
    """Before ae1cd78 a cell did not record its FLOP: those of the model's zoo architecture
    (bench.run.timing.estimate_flop, as the cell runner counts them for the prior proposal, the
    only one then) for measured cells; NaN for a model the zoo does not know."""
    if "flop" in cells or not {"model", "n_data", "n_samples"} <= set(cells):
        return cells
    archs = {m: _architecture(m) for m in cells["model"].unique()}
    ok = cells["status"] == "ok" if "status" in cells else pd.Series(True, index=cells.index)
    flop = [float(estimate_flop(archs[m], int(b), int(n))) if ok_ and archs[m] and np.isfinite(b) and
            np.isfinite(n) else np.nan
            for m, b, n, ok_ in zip(cells["model"], _number(cells, "n_data"), _number(cells, "n_samples"), ok,
                                    strict=True)]
    return _insert(cells, "flop", flop, "unit_roundoff")


def _architecture(model: Any) -> dict | None:
    try:
        return zoo.parse(str(model)).architecture()
    except InputError:
        return None


def _v1_cells(cells: pd.DataFrame) -> pd.DataFrame:
    return _v1_flop(_v1_truth_error(_v1_axes(cells)))


# ----------------------------------------------------------------------------- format 2 -> 3


def _v2_axes(frame: pd.DataFrame) -> pd.DataFrame:
    if "engine" in frame:
        return frame
    return _insert(frame, "engine", AXIS_DEFAULTS["engine"], "proposal")


def _v2_cells(cells: pd.DataFrame) -> pd.DataFrame:
    cells = _v2_axes(cells)
    if "compile_s" in cells:
        return cells
    ok = cells["status"] == "ok" if "status" in cells else pd.Series(True, index=cells.index)
    return _insert(cells, "compile_s", np.where(ok, 0.0, np.nan), "time_runs")


def _v2_meta(meta: dict) -> dict:
    grid = (meta.get("config") or {}).get("grid")
    if not isinstance(grid, dict) or "engine" in grid:
        return meta
    return {**meta, "config": {**meta["config"], "grid": {**grid, "engine": [AXIS_DEFAULTS["engine"]]}}}


# ----------------------------------------------------------------------------- the steps

STEPS: dict[int, Step] = {
    0: Step(note="meta.json has no format_version (an older results format): it is read as format 1"),
    1: Step(meta=_v1_meta, cells=_v1_cells, raw=_v1_axes),
    2: Step(meta=_v2_meta, cells=_v2_cells, raw=_v2_axes),
}


def upgrade(kind: str, table: Any, version: int) -> Any:
    """``table`` (``kind``: "meta" for meta.json as a dict, "cells" or "raw" for those frames),
    read from a run of format ``version``, in today's format."""
    for v in range(version, FORMAT_VERSION):
        table = getattr(STEPS[v], kind)(table)
    return table


def notes(version: int) -> list[str]:
    """What a run of format ``version`` says to its reader beyond its tables (see Format 0)."""
    return [STEPS[v].note for v in range(version, FORMAT_VERSION) if STEPS[v].note]
