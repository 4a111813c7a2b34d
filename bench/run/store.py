"""A run read back: :func:`load_run` is the one way, report and compare both use it.

It reads the run in today's format: :mod:`bench.run.formats` upgrades an older one. Writing a
run directory is :mod:`bench.run.rundir`; its names are importable from here too.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from bench.run import formats
from bench.run.config import AXES, AXIS_DEFAULTS, Cell, model_facts
from bench.run.formats import RunError
from bench.run.metrics import NUMERIC
from bench.run.rundir import RunStore, atomic_write, has_parquet, write_json, write_text
from lvm.errors import InputError

__all__ = ["Meta", "Run", "RunError", "RunStore", "atomic_write", "has_parquet", "load_run", "write_json",
           "write_text"]


# ----------------------------------------------------------------------------- reading a run


@dataclass(frozen=True)
class Meta:
    """meta.json, typed: every field the report and compare read, with its empty default."""

    format_version: int = 0  # the format the run was written in; what load_run returns is today's
    status: str | None = None
    config: dict = field(default_factory=dict)
    config_source: str | None = None
    environment: dict = field(default_factory=dict)
    dataset: dict = field(default_factory=dict)
    seeds: dict = field(default_factory=dict)
    models: dict = field(default_factory=dict)
    truth: dict = field(default_factory=dict)
    matmul_peak_gflops: dict = field(default_factory=dict)
    excluded_cells: list = field(default_factory=list)
    executor: str = "local"
    started: str | None = None
    ended: str | None = None
    wall_seconds: float | None = None

    @classmethod
    def of(cls, data: dict) -> Meta:
        kinds = {f.name: f for f in fields(cls)}
        given = {k: v for k, v in data.items() if k in kinds and v is not None}
        return cls(**given)

    @property
    def run(self) -> dict:
        """The ``[run]`` section of the config."""
        return self.config.get("run") or {}

    @property
    def grid(self) -> dict:
        return self.config.get("grid") or {}

    @property
    def hardware(self) -> dict:
        return self.environment.get("hardware") or {}

    @property
    def git(self) -> dict:
        return self.environment.get("git") or {}

    @property
    def versions(self) -> dict:
        return self.environment.get("versions") or {}


def _numeric_cells(cells: pd.DataFrame) -> pd.DataFrame:
    """Metric columns as numbers (text or absent: NaN), n_samples as int, space filled in."""
    cells = cells.copy()
    for name in (*NUMERIC, "latent_dim"):
        cells[name] = pd.to_numeric(cells[name], errors="coerce") if name in cells else np.nan
    for c in ("space", "reason"):
        if c not in cells:
            cells[c] = np.nan
    cells["n_samples"] = pd.to_numeric(cells["n_samples"], errors="coerce")
    cells = cells.dropna(subset=["n_samples"]).astype({"n_samples": int})
    for p in AXES:
        if p != "n_samples":
            cells[p] = cells[p].astype(str)
    if cells["space"].isna().any():
        cells["space"] = cells["space"].fillna(cells["estimator"].str.split("_").str[0])
    if cells["latent_dim"].isna().any():
        cells["latent_dim"] = cells["latent_dim"].fillna(
            cells["model"].map(lambda m: float(model_facts(m)[1] or np.nan)))
    return cells


@dataclass
class Run:
    """A run read back: cells and meta at once, the large files when first used.

    ``problems`` lists what is missing or unreadable, in words; a run that cannot be read
    at all is a :class:`RunError` from :func:`load_run` instead.
    """

    root: Path
    meta: Meta
    cells: pd.DataFrame
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> pd.DataFrame:
        """The measured cells (status ok) of the cast policy, the prior proposal and the eager
        engine: what the report's figures, tables and findings read (the modules of
        :mod:`bench.report.sections` set the other levels beside them)."""
        return self.at()

    @staticmethod
    def _at_defaults(frame: pd.DataFrame, *axes: str) -> pd.DataFrame:
        """The rows of ``frame`` at the first level of each of ``axes`` (cast, prior); a frame
        made by hand may lack such a column: then every row is at that level."""
        keep = np.ones(len(frame), dtype=bool)
        for axis in axes:
            if axis in frame:
                keep &= (frame[axis] == AXIS_DEFAULTS[axis]).to_numpy()
        return frame[keep]

    def at(self, *vary: str, frame: pd.DataFrame | None = None) -> pd.DataFrame:
        """The measured cells (or the rows of ``frame``: :attr:`raw`, a table made from either) at
        the default level of every axis of AXIS_DEFAULTS except ``vary``, which keep all their
        levels. ``run.at()`` holds what :attr:`ok` holds; ``run.at("precision")`` sets cast beside
        autocast with every other axis at its default. The one way a report module narrows a frame
        to the defaults, so that a new axis is narrowed everywhere by its entry in AXIS_DEFAULTS."""
        unknown = [a for a in vary if a not in AXIS_DEFAULTS]
        if unknown:
            raise ValueError(f"Run.at: {', '.join(unknown)} is not an axis with a default level; "
                             f"accepted: {', '.join(AXIS_DEFAULTS)}")
        if frame is None:
            frame = self.cells[self.cells["status"] == "ok"]
        return self._at_defaults(frame, *(a for a in AXIS_DEFAULTS if a not in vary))

    @cached_property
    def raw(self) -> pd.DataFrame | None:
        """One row per (cell, datapoint, repeat), or None when the run has no raw file."""
        if (self.root / "raw.parquet").exists() and has_parquet():
            raw = pd.read_parquet(self.root / "raw.parquet")
        elif (self.root / "raw.csv.gz").exists():
            raw = pd.read_csv(self.root / "raw.csv.gz")
        else:
            if (self.root / "raw.parquet").exists():  # written where pyarrow was, read where it is not
                self.problems.append("raw.parquet cannot be read without pyarrow (pip install "
                                     "'lvm-bench[parquet]'); what reads the raw rows is left out")
            return None
        return formats.upgrade("raw", raw, self.meta.format_version)

    @cached_property
    def loglik(self) -> pd.DataFrame | None:
        """float64 log p(x|z) per (model, datapoint, draw) (Figure 4), or None, with a problem noted."""
        path = self.root / "loglik.csv.gz"
        if not path.exists():
            self.problems.append("loglik.csv.gz is missing (the per-draw log-likelihoods); Figure 4 is "
                                 "left out")
            return None
        try:
            ll = pd.read_csv(path)
        except Exception as e:  # noqa: BLE001 - a truncated gzip raises EOFError, zlib.error, ...
            self.problems.append(f"loglik.csv.gz cannot be read ({type(e).__name__}); Figure 4 is left out")
            return None
        if not {"model", "datapoint", "loglik"} <= set(ll):
            self.problems.append("loglik.csv.gz lacks the columns model, datapoint, loglik; Figure 4 is "
                                 "left out")
            return None
        return ll

    @cached_property
    def k2(self) -> dict[str, dict[str, np.ndarray]] | None:
        """Figure 7's arrays per K = 2 model (see ``bench.run.cell.k2_arrays``), or None."""
        path = self.root / "k2.npz"
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                out: dict[str, dict[str, np.ndarray]] = {}
                for key in z.files:
                    model, _, name = key.rpartition("/")
                    out.setdefault(model, {})[name] = z[key]
        except Exception as e:  # noqa: BLE001 - a damaged zip raises BadZipFile, ValueError, EOFError, ...
            self.problems.append(f"k2.npz cannot be read ({type(e).__name__}); Figure 7 is left out")
            return None
        return out


def load_run(path: str | os.PathLike) -> Run:
    """Read a run directory; RunError when nothing of it can be used."""
    root = Path(path)
    if not root.is_dir():
        raise RunError(f"{root}: no such run directory")
    meta = Meta.of(RunStore(root).read_meta())
    version = meta.format_version
    problems = formats.notes(version)
    path = root / "cells.csv"
    if not path.exists():
        raise RunError(f"{root}: cells.csv is missing, so there is nothing to read (the run finished "
                       f"no cell; continue it with `lvm-bench run --resume --out {root}`)")
    try:
        _check_rows(path)
        cells = formats.upgrade("cells", pd.read_csv(path), version)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise RunError(f"{path}: cannot be read as a table ({e})") from e
    lacking = [c for c in (*AXES, "status") if c not in cells]
    if lacking:
        raise RunError(f"{path}: lacks the column(s) {', '.join(lacking)}: not a cells table of results "
                       f"format {version}")
    absent = [c for c in NUMERIC if c not in cells]
    if absent and (cells["status"] == "ok").any():
        problems.append(f"cells.csv lacks the metric column(s) {', '.join(absent)}; what needs them is "
                        "left out")
    cells = _numeric_cells(cells)
    if not ((root / "raw.parquet").exists() or (root / "raw.csv.gz").exists()):
        problems.append("the per-estimate file (raw.parquet or raw.csv.gz) is missing; the report does not "
                        "need it, but `lvm-bench compare` and re-analysis do")
    if meta.status != "complete":
        problems.append(f"the run's status is {meta.status!r}, not 'complete': its cells may be partial "
                        "(continue it with `lvm-bench run --resume`)")
    problems += _missing_cells(meta, cells)
    return Run(root, meta, cells, problems)


def _check_rows(path: Path) -> None:
    """RunError naming the file and the row (the header is row 1) when cells.csv is cut or damaged:
    its last row lacks the newline every written row ends with (the file was cut mid-row), or a
    row has another number of fields than the header (pandas would fill the missing ones with
    NaN, and a cell would be read as not measured rather than as damaged)."""
    text = path.read_bytes().decode()  # UnicodeDecodeError: the caller names the file
    if not text:
        return  # pandas' EmptyDataError names it
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
        rows = [(reader.line_num, len(row)) for row in reader]
    except csv.Error as e:
        raise RunError(f"{path}: row {reader.line_num + 1} cannot be read ({e}): a damaged table") from e
    if not text.endswith("\n"):
        raise RunError(f"{path}: row {reader.line_num} is cut (the file ends mid-row, without its newline): "
                       "a truncated table; rewrite it with `lvm-bench run --resume` or use an intact copy")
    for line, n in rows:
        if n != len(header):
            raise RunError(f"{path}: row {line} has {n} fields, the header {len(header)}: a cut or damaged "
                           "table; rewrite it with `lvm-bench run --resume` or use an intact copy")


def _missing_cells(meta: Meta, cells: pd.DataFrame) -> list[str]:
    from bench.run.config import validate

    try:
        expected, _ = validate(meta.config, "meta.json").cells()
    except (InputError, KeyError, TypeError) as e:
        return [f"the grid in meta.json cannot be expanded ({e}); missing cells are not listed"]
    have = {Cell.of(r).key for r in cells[list(AXES)].to_dict("records")}
    lost = [c.key for c in expected if c.key not in have]
    if not lost:
        return []
    shown = ", ".join(lost[:8]) + (f" and {len(lost) - 8} more" if len(lost) > 8 else "")
    return [f"{len(lost)} of the {len(expected)} cells of the grid are not in cells.csv: {shown}"]
