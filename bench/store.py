"""The results directory: atomic writes, resumable per-cell parts, loading runs.

Layout of ``results/<run>/``::

    meta.json        config, seeds, versions, hardware, git, data and model identity
    cells.csv        one row per cell: the axes as columns, then the metrics
    raw.parquet      one row per (cell, datapoint, repeat) estimate (raw.csv.gz without pyarrow)
    loglik.csv.gz    float64 log p(x|z) for 512 prior draws per digit and model (Figure 4)
    parts/           one finished cell per file; what --resume reads
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

FORMAT_VERSION = 1


class RunError(ValueError):
    """A results directory that cannot be used as asked."""


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any, *, sort_keys: bool = True) -> None:
    text = json.dumps(obj, indent=2, sort_keys=sort_keys, default=str)
    atomic_write(path, lambda p: p.write_text(text + "\n"))


def has_parquet() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


class RunStore:
    """One run directory."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.parts = self.root / "parts"

    @property
    def meta_path(self) -> Path:
        return self.root / "meta.json"

    def exists(self) -> bool:
        return self.meta_path.exists() or self.parts.exists()

    def prepare(self, *, resume: bool, force: bool) -> None:
        """Check the directory can take this run; never overwrite without --force."""
        if self.root.exists() and not self.root.is_dir():
            raise RunError(f"--out {self.root}: exists and is not a directory")
        if self.exists() and not (resume or force):
            raise RunError(f"--out {self.root}: already holds a run; use --resume to continue it "
                           "or --force to replace it (or choose another --out)")
        if resume and not self.exists():
            raise RunError(f"--resume: {self.root} holds no run to resume")
        if force and not resume and self.exists():
            for name in ("parts", "figures", "tables"):
                shutil.rmtree(self.root / name, ignore_errors=True)
            for f in ("meta.json", "cells.csv", "raw.parquet", "raw.csv.gz", "loglik.csv.gz",
                      "report.md", "report.html"):
                (self.root / f).unlink(missing_ok=True)
        try:
            self.parts.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunError(f"--out {self.root}: cannot create ({e.strerror})") from e

    def read_meta(self) -> dict:
        if not self.meta_path.exists():
            raise RunError(f"{self.root} is not a run: meta.json is missing")
        try:
            return json.loads(self.meta_path.read_text())
        except json.JSONDecodeError as e:
            raise RunError(f"{self.meta_path}: not valid JSON ({e})") from e

    def write_meta(self, meta: dict) -> None:
        write_json(self.meta_path, {"format_version": FORMAT_VERSION, **meta})

    def done(self) -> set[str]:
        """Keys of the finished cells (both files of a part present)."""
        if not self.parts.exists():
            return set()
        return {p.name.removesuffix(".json") for p in self.parts.glob("*.json")
                if (self.parts / (p.name.removesuffix(".json") + ".raw.csv.gz")).exists()}

    def write_part(self, key: str, row: dict, raw: pd.DataFrame) -> None:
        """Save one finished cell: the raw rows first, then the summary that marks it done."""
        atomic_write(self.parts / f"{key}.raw.csv.gz",
                     lambda p: raw.to_csv(p, index=False, compression="gzip"))
        write_json(self.parts / f"{key}.json", row, sort_keys=False)  # keeps column order

    def read_part(self, key: str) -> tuple[dict, pd.DataFrame]:
        row = json.loads((self.parts / f"{key}.json").read_text())
        return row, pd.read_csv(self.parts / f"{key}.raw.csv.gz")

    def write_tables(self, order: list[str], skipped: list[dict] | None = None) -> pd.DataFrame:
        """cells.csv (grid order, finished and skipped cells) and the raw file, atomically."""
        done = self.done()
        rows, raws = [], []
        for key in order:
            if key in done:
                row, raw = self.read_part(key)
                rows.append(row)
                raws.append(raw)
        rows += skipped or []
        cells = pd.DataFrame(rows)
        atomic_write(self.root / "cells.csv", lambda p: cells.to_csv(p, index=False))
        if raws:
            raw = pd.concat(raws, ignore_index=True)
            if has_parquet():
                atomic_write(self.root / "raw.parquet", lambda p: raw.to_parquet(p, index=False))
            else:
                atomic_write(self.root / "raw.csv.gz",
                             lambda p: raw.to_csv(p, index=False, compression="gzip"))
        return cells


def load_run(path: str | os.PathLike) -> tuple[pd.DataFrame, dict]:
    """(cells table, meta) of a finished or partial run; RunError if it is not a run."""
    root = Path(path)
    if not root.is_dir():
        raise RunError(f"{root}: no such run directory")
    meta = RunStore(root).read_meta()
    cells_path = root / "cells.csv"
    if not cells_path.exists():
        raise RunError(f"{root}: cells.csv is missing (the run wrote no finished cell)")
    return pd.read_csv(cells_path), meta


def load_raw(path: str | os.PathLike) -> pd.DataFrame | None:
    """The per-estimate rows of a run, or None when the run has no raw file."""
    root = Path(path)
    if (root / "raw.parquet").exists() and has_parquet():
        return pd.read_parquet(root / "raw.parquet")
    if (root / "raw.csv.gz").exists():
        return pd.read_csv(root / "raw.csv.gz")
    return None
