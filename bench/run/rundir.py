"""The run directory on disk: its layout, lock, resumable per-cell parts and atomic writes.

Layout of ``results/<run>/``::

    meta.json        config, seeds, versions, hardware, git, data and model identity
    cells.csv        one row per cell: the axes as columns, then the metrics
    raw.parquet      one row per (cell, datapoint, repeat) estimate (raw.csv.gz without pyarrow)
    loglik.csv.gz    float64 log p(x|z) for 512 prior draws per digit and model (Figure 4)
    k2.npz           what Figure 7 draws for each K = 2 model (digit, decoded grid, posterior, draws)
    parts/           one finished cell per file; what --resume reads

What each file holds, by format version, is :mod:`bench.run.formats`; reading a run back is
:func:`bench.run.store.load_run`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.run import formats
from bench.run.formats import FORMAT_VERSION, RunError
from lvm._io import atomic_write  # the one atomic, fsynced write; callers get a binary file

RUN_FILES = ("meta.json", "cells.csv", "raw.parquet", "raw.csv.gz", "loglik.csv.gz", "k2.npz",
             "report.md", "report.html")
RUN_DIRS = ("parts", "figures", "tables")
# Under --force the old run is moved here, not deleted, and stays until the new run has run every cell:
# dropped if it measured one, moved back (byte for byte) if it measured none (RunStore.settle).
ASIDE = ".replaced"


PART_KEY = "_part"  # a part's own record: its raw file's row count and sha256 (not a cells.csv column)


def _alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


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
        self.version: int | None = None  # the format meta.json was written in, once read_meta has read it

    @property
    def meta_path(self) -> Path:
        return self.root / "meta.json"

    def exists(self) -> bool:
        """Whether the directory holds a run: meta.json, or parts/ with anything in it (an empty
        parts/ left by an interrupt before meta.json was written holds nothing to keep)."""
        return (self.meta_path.exists() or (self.parts.is_dir() and any(self.parts.iterdir()))
                or (self.root / ASIDE).is_dir())

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
                self._set_aside()
            if resume:
                self.upgrade_parts()
            self.write_meta(meta)
            self.parts.mkdir(exist_ok=True)
        except OSError as e:  # a full disk included: nothing half-written, the lock released
            self.release()
            raise RunError(f"--out {self.root}: cannot write ({e.strerror})") from e
        except BaseException:
            self.release()
            raise

    def _run_paths(self, root: Path) -> list[Path]:
        return [root / n for n in (*RUN_DIRS, *RUN_FILES) if (root / n).exists()]

    def _remove_run(self) -> None:
        for path in self._run_paths(self.root):
            shutil.rmtree(path) if path.is_dir() else path.unlink()

    def _set_aside(self) -> None:
        """--force: move the old run into ASIDE. When ASIDE already holds one (an earlier --force
        run was interrupted before it ran every cell), that is the last finished run: it stays,
        and the unfinished run in its place is removed."""
        aside = self.root / ASIDE
        if aside.is_dir():
            self._remove_run()
            return
        aside.mkdir()
        for path in self._run_paths(self.root):
            os.replace(path, aside / path.name)

    def settle(self, finished: bool, measured: int) -> str | None:
        """At the end of a segment, the run set aside by --force: dropped when the new run ran
        every cell and measured at least one ("replaced"); moved back in place of the new run,
        byte for byte, when it ran every cell and measured none ("restored"); kept while the new
        run is unfinished (a --resume settles it). None when nothing was set aside."""
        aside = self.root / ASIDE
        if not aside.is_dir() or not finished:
            return None
        if measured:
            shutil.rmtree(aside)
            return "replaced"
        self._remove_run()
        for path in self._run_paths(aside):
            os.replace(path, self.root / path.name)
        aside.rmdir()
        return "restored"

    def read_meta(self) -> dict:
        """meta.json in today's format (:mod:`bench.run.formats`); ``version`` says which it was
        written in. RunError when there is none, or its format is newer than this lvm-bench."""
        if not self.meta_path.exists():
            raise RunError(f"{self.root} is not a run: meta.json is missing (expected a directory "
                           "written by `lvm-bench run`)")
        meta = _read_json(self.meta_path)
        self.version = formats.written_version(meta, self.meta_path)
        return formats.upgrade("meta", meta, self.version)

    def write_meta(self, meta: dict) -> None:
        write_json(self.meta_path, {**meta, "format_version": FORMAT_VERSION})

    def upgrade_parts(self) -> None:
        """Rewrite the finished parts of a run of an older format in today's, so that a resumed run
        is of one format: under the lock, before meta.json says FORMAT_VERSION (the steps add only
        what is absent, so an interrupted rewrite can run again)."""
        if self.version is None:
            self.read_meta()
        if self.version >= FORMAT_VERSION:
            return
        for key in sorted(self.done()):
            row, raw = self.read_part(key)
            cells = formats.upgrade("cells", pd.DataFrame([row]), self.version)
            row = {k: v.item() if isinstance(v, np.generic) else v for k, v in cells.iloc[0].items()}
            self.write_part(key, row, formats.upgrade("raw", raw, self.version))

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
