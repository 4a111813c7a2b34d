"""The results directory: atomic writes, resumable per-cell parts, and one typed run loader.

Layout of ``results/<run>/``::

    meta.json        config, seeds, versions, hardware, git, data and model identity
    cells.csv        one row per cell: the axes as columns, then the metrics
    raw.parquet      one row per (cell, datapoint, repeat) estimate (raw.csv.gz without pyarrow)
    loglik.csv.gz    float64 log p(x|z) for 512 prior draws per digit and model (Figure 4)
    k2.npz           what Figure 7 draws for each K = 2 model (digit, decoded grid, posterior, draws)
    parts/           one finished cell per file; what --resume reads

``load_run`` is the one way to read a run back: report and compare both use it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.run.config import AXIS_DEFAULTS, PARAM_NAMES, Cell, model_facts
from bench.run.metrics import NUMERIC, resolved
from lvm._io import atomic_write  # the one atomic, fsynced write; callers get a binary file
from lvm.errors import InputError

FORMAT_VERSION = 1
RUN_FILES = ("meta.json", "cells.csv", "raw.parquet", "raw.csv.gz", "loglik.csv.gz", "k2.npz",
             "report.md", "report.html")
RUN_DIRS = ("parts", "figures", "tables")


PART_KEY = "_part"  # a part's own record: its raw file's row count and sha256 (not a cells.csv column)
# columns older runs lack and are derived: flop by bench.report.analysis.cell_flop; the truth's
# resolution from truth_se_max (the largest digit error, where newer runs use the mean)
DERIVABLE = ("flop", "truth_error", "bias_resolved", "mc_bias_resolved")


def _alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


class RunError(InputError):
    """A results directory that cannot be used as asked."""


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path: Path, obj: Any, *, sort_keys: bool = True) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys, default=str) + "\n")


def has_parquet() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(obj, dict):
        raise RunError(f"{path}: expected a JSON object, found {type(obj).__name__}")
    return obj


class RunStore:
    """One run directory, as the sweep writes it."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.parts = self.root / "parts"
        self.rejected: list[tuple[str, str]] = []  # (cell key, why) of the damaged parts done() last found

    @property
    def meta_path(self) -> Path:
        return self.root / "meta.json"

    def exists(self) -> bool:
        """Whether the directory holds a run: meta.json, or parts/ with anything in it (an empty
        parts/ left by an interrupt before meta.json was written holds nothing to keep)."""
        return self.meta_path.exists() or (self.parts.is_dir() and any(self.parts.iterdir()))

    def check(self, *, resume: bool, force: bool) -> None:
        """Whether the directory can take this run, writing nothing: never overwrite without --force."""
        if self.root.exists() and not self.root.is_dir():
            raise RunError(f"--out {self.root}: exists and is not a directory")
        if self.exists() and not (resume or force):
            raise RunError(f"--out {self.root}: already holds a run; use --resume to continue it "
                           "or --force to replace it (or choose another --out)")
        if resume and not self.meta_path.exists():
            raise RunError(f"--resume: {self.root} holds no run to resume (no meta.json)")

    @property
    def lock_path(self) -> Path:
        return self.root / ".lock"

    def acquire(self) -> None:
        """Take the directory's lock (a file holding this process's host and pid): RunError naming
        the holder while another live process on this host holds it; a lock whose process is
        gone (killed, crashed) is stale and taken over."""
        self.root.mkdir(parents=True, exist_ok=True)
        me = f"{socket.gethostname()} {os.getpid()}"
        for _ in range(2):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.lock_path.read_text(errors="replace").split()
                host, pid = (holder + ["?", "?"])[:2]
                if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
                    self.lock_path.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                raise RunError(f"--out {self.root} is in use by process {pid} on {host} (lock file "
                               f"{self.lock_path}); wait for it to end, or stop it, then --resume") from None
            with os.fdopen(fd, "w") as f:
                f.write(me + "\n")
            return
        raise RunError(f"--out {self.root}: could not take the lock {self.lock_path}")

    def release(self) -> None:
        """Drop the lock if this process holds it."""
        try:
            if self.lock_path.read_text().split()[1:2] == [str(os.getpid())]:
                self.lock_path.unlink()
        except (OSError, IndexError):
            pass

    def start(self, meta: dict, *, resume: bool, force: bool) -> None:
        """Begin writing, once every check has passed: take the lock, with --force remove the old
        run's files, then meta.json first and parts/ second, so a directory with parts/ always
        has meta.json. The caller releases the lock."""
        try:
            self.acquire()
        except OSError as e:
            raise RunError(f"--out {self.root}: cannot create ({e.strerror})") from e
        try:
            self.check(resume=resume, force=force)  # again, under the lock: another run may have begun
            if force and not resume and self.exists():
                for name in RUN_DIRS:
                    shutil.rmtree(self.root / name, ignore_errors=True)
                for f in RUN_FILES:
                    (self.root / f).unlink(missing_ok=True)
            self.write_meta(meta)
            self.parts.mkdir(exist_ok=True)
        except OSError as e:  # a full disk included: nothing half-written, the lock released
            self.release()
            raise RunError(f"--out {self.root}: cannot write ({e.strerror})") from e
        except BaseException:
            self.release()
            raise

    def read_meta(self) -> dict:
        if not self.meta_path.exists():
            raise RunError(f"{self.root} is not a run: meta.json is missing (expected a directory "
                           "written by `lvm-bench run`)")
        return _read_json(self.meta_path)

    def write_meta(self, meta: dict) -> None:
        write_json(self.meta_path, {"format_version": FORMAT_VERSION, **meta})

    def done(self) -> set[str]:
        """Keys of the finished cells: both files of a part present and intact. A damaged part
        (unreadable JSON, a raw file that does not match the checksum recorded with it) is not
        done, so its cell runs again and overwrites it; ``rejected`` says which and why. Reads
        only: it runs before the lock is taken."""
        self.rejected = []
        if not self.parts.exists():
            return set()
        keys = {p.name.removesuffix(".json") for p in self.parts.glob("*.json")
                if (self.parts / (p.name.removesuffix(".json") + ".raw.csv.gz")).exists()}
        for key in sorted(keys):
            why = self._part_problem(key)
            if why is not None:
                self.rejected.append((key, why))
                keys.discard(key)
        return keys

    def _part_problem(self, key: str) -> str | None:
        """What is wrong with a part, or None."""
        jpath, rpath = self.parts / f"{key}.json", self.parts / f"{key}.raw.csv.gz"
        try:
            row = json.loads(jpath.read_text())
            check = row[PART_KEY]
            data = rpath.read_bytes()
        except (OSError, ValueError, KeyError, TypeError) as e:
            return f"{jpath.name} is unreadable or lacks its {PART_KEY!r} record ({type(e).__name__})"
        if hashlib.sha256(data).hexdigest() != check.get("raw_sha256"):
            return f"{rpath.name} does not match the checksum recorded in {jpath.name}"
        return None

    def write_part(self, key: str, row: dict, raw: pd.DataFrame) -> None:
        """Save one finished cell: the raw rows first, then the summary that marks it done, with
        the raw file's row count and sha256 so that resume can tell an intact part."""
        buf = io.BytesIO()
        raw.to_csv(buf, index=False, compression={"method": "gzip", "mtime": 0})
        data = buf.getvalue()
        atomic_write(self.parts / f"{key}.raw.csv.gz", lambda f: f.write(data))
        check = {"raw_rows": len(raw), "raw_sha256": hashlib.sha256(data).hexdigest()}
        write_json(self.parts / f"{key}.json", {**row, PART_KEY: check}, sort_keys=False)  # column order

    def read_part(self, key: str) -> tuple[dict, pd.DataFrame]:
        row = _read_json(self.parts / f"{key}.json")
        row.pop(PART_KEY, None)
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
        atomic_write(self.root / "cells.csv", lambda f: cells.to_csv(f, index=False))
        if raws:
            raw = pd.concat(raws, ignore_index=True)
            if has_parquet():
                atomic_write(self.root / "raw.parquet", lambda f: raw.to_parquet(f, index=False))
            else:
                atomic_write(self.root / "raw.csv.gz", lambda f: raw.to_csv(
                    f, index=False, compression={"method": "gzip", "mtime": 0}))
        return cells


# ----------------------------------------------------------------------------- reading a run


@dataclass(frozen=True)
class Meta:
    """meta.json, typed: every field the report and compare read, with its empty default."""

    format_version: int | None = None
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
    for axis, default in AXIS_DEFAULTS.items():  # runs from before the axis: every cell at its default
        cells[axis] = cells[axis].fillna(default) if axis in cells else default
    if cells["truth_error"].isna().all():  # older runs: the largest digit error stands in for the mean
        cells["truth_error"] = cells["truth_se_max"]
        cells.update(pd.DataFrame(resolved(cells["bias"], cells["mc_bias"], cells["truth_error"]),
                                  index=cells.index))
    cells["n_samples"] = pd.to_numeric(cells["n_samples"], errors="coerce")
    cells = cells.dropna(subset=["n_samples"]).astype({"n_samples": int})
    for p in PARAM_NAMES:
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
        """The measured cells (status ok) of the cast policy and the prior proposal: what the
        report's figures, tables and findings read (:mod:`bench.report.sections.precision` and
        :mod:`bench.report.sections.proposal` set the other levels beside them)."""
        return self.at_defaults(self.cells[self.cells["status"] == "ok"], "precision", "proposal")

    @staticmethod
    def at_defaults(frame: pd.DataFrame, *axes: str) -> pd.DataFrame:
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
        return self.at_defaults(frame, *(a for a in AXIS_DEFAULTS if a not in vary))

    @cached_property
    def raw(self) -> pd.DataFrame | None:
        """One row per (cell, datapoint, repeat), or None when the run has no raw file."""
        if (self.root / "raw.parquet").exists() and has_parquet():
            raw = pd.read_parquet(self.root / "raw.parquet")
        elif (self.root / "raw.csv.gz").exists():
            raw = pd.read_csv(self.root / "raw.csv.gz")
        else:
            return None
        for axis, default in AXIS_DEFAULTS.items():  # a run from before the axis: all at its default
            if axis not in raw:
                raw[axis] = default
        return raw

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
    problems: list[str] = []
    version = meta.format_version
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise RunError(f"{root}: results format {version} was written by a newer lvm-bench; this one "
                       f"reads format {FORMAT_VERSION}: upgrade lvm-bench to read it")
    if version != FORMAT_VERSION:
        what = "no format_version (an older results format)" if version is None else \
            f"results format {version!r}"
        problems.append(f"meta.json has {what}, and this lvm-bench writes format {FORMAT_VERSION}: the "
                        "report shows what it can read; rerun the sweep with `lvm-bench run` for a full one")
    path = root / "cells.csv"
    if not path.exists():
        raise RunError(f"{root}: cells.csv is missing, so there is nothing to read (the run finished "
                       f"no cell; continue it with `lvm-bench run --resume --out {root}`)")
    try:
        cells = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise RunError(f"{path}: cannot be read as a table ({e})") from e
    lacking = [c for c in (*PARAM_NAMES, "status") if c not in cells and c not in AXIS_DEFAULTS]
    if lacking:
        raise RunError(f"{path}: lacks the column(s) {', '.join(lacking)}; results format "
                       f"{version!r} is not one this lvm-bench reads (format {FORMAT_VERSION})")
    absent = [c for c in NUMERIC if c not in cells and c not in DERIVABLE]
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


def _missing_cells(meta: Meta, cells: pd.DataFrame) -> list[str]:
    from bench.run.config import validate

    try:
        expected, _ = validate(meta.config, "meta.json").cells()
    except (InputError, KeyError, TypeError) as e:
        return [f"the grid in meta.json cannot be expanded ({e}); missing cells are not listed"]
    have = {Cell.of(r).key for r in cells[list(PARAM_NAMES)].to_dict("records")}
    lost = [c.key for c in expected if c.key not in have]
    if not lost:
        return []
    shown = ", ".join(lost[:8]) + (f" and {len(lost) - 8} more" if len(lost) > 8 else "")
    return [f"{len(lost)} of the {len(expected)} cells of the grid are not in cells.csv: {shown}"]
