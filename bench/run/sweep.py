"""Run the grid: the orchestration around the cells (store, meta, resume, progress).

What one cell measures is :mod:`bench.run.cell`; where cells run is :mod:`bench.run.executors`;
this module prepares the run directory, writes the per-run figure data and meta.json, and
hands the cells that are still to do to the executor.
"""

from __future__ import annotations

import errno
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

import lvm
from bench.run import environment
from bench.run.cell import LOGLIK_SAMPLES, MAX_RUNS, Context, skipped_row
from bench.run.config import Cell, Config
from bench.run.executors import LocalExecutor
from bench.run.store import RunError, RunStore, atomic_write
from bench.run.timing import matmul_peak_gflops
from lvm.numerics import DTYPES
from lvm.runtime import device_unavailable, set_torch_threads


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def matmul_peaks(devices: list[str], n_threads: int) -> dict:
    """The machine's n x n matrix-product rate per device and dtype (GFLOP/s), at the cells' threads."""
    out = {}
    with set_torch_threads(n_threads):
        for d in devices:
            if device_unavailable(d) is None:
                out[d] = {name: round(matmul_peak_gflops(dt, d), 2) for name, dt in DTYPES.items()}
    return out


def _write_figure_data(store: RunStore, ctx: Context, models: list[str]) -> None:
    """loglik.csv.gz (Figure 4) and k2.npz (Figure 7), once per run, at the cells' threads."""
    with set_torch_threads(ctx.config.run["threads"]):
        if not (store.root / "loglik.csv.gz").exists():
            ll = pd.concat([ctx.loglik_sample(m) for m in models], ignore_index=True)
            atomic_write(store.root / "loglik.csv.gz", lambda f: ll.to_csv(
                f, index=False, compression={"method": "gzip", "mtime": 0}))
        k2 = [m for m in models if not ctx.config.models[m].outside and ctx.exact(m).latent_dim == 2]
        if k2 and not (store.root / "k2.npz").exists():
            arrays = {f"{m}/{k}": v for m in k2 for k, v in ctx.k2_arrays(m).items()}
            atomic_write(store.root / "k2.npz", lambda f: np.savez_compressed(f, **arrays))


def _finish(store: RunStore, meta: dict, ctx: Context, order: list[str], skipped: list[dict],
            skip_keys: set[str], failed: list[dict], t0: float) -> pd.DataFrame:
    """The tables and the final meta.json of a segment, however it ended: complete, failed
    (some cells raised) or interrupted (resume continues it)."""
    meta["status"] = "interrupted"  # what meta.json says if writing the tables fails
    meta["segments"][-1].update({"ended": _now(), "seconds": round(time.perf_counter() - t0, 1)})
    try:
        failed_rows = [{k: v for k, v in f.items() if k != "traceback"} for f in failed]
        table = store.write_tables(order, skipped + failed_rows)
    except BaseException:
        store.write_meta(meta)
        raise
    meta["truth"] = {k: {kk: v[kk] for kk in ("method", "seconds", "meta")}
                     | {"se_max": float(np.max(v["se"]))} for k, v in ctx.truths.items()}
    meta.setdefault("models", {}).update(ctx.model_identity())
    complete = store.done() >= set(order) - skip_keys
    meta["status"] = "complete" if complete else "failed" if failed else "interrupted"
    meta["failed_cells"] = failed
    ran = table[table["status"] == "ok"] if "status" in table else table.iloc[:0]
    meta["placement"] = {Cell.of(r).key: {"host": r.get("host"), "worker": r.get("worker"),
                                          "device": r["device"]}
                         for r in ran.to_dict("records")}
    meta["ended"] = _now()
    meta["wall_seconds"] = round(sum(s.get("seconds", 0) for s in meta["segments"]), 1)
    store.write_meta(meta)
    return table


def run(config: Config, out: str | Path, *, resume: bool = False, force: bool = False,
        progress: bool = True, cache_dir: str | None = None, executor=None) -> pd.DataFrame:
    """Run (or resume) the sweep into ``out``; return the cells table.

    Every check that can fail (the directory, the config against a resumed run, the data,
    each model, each ground truth, the executor) runs before anything is written, so a bad
    input leaves ``out`` as it was, a run replaced with ``force`` included.
    """
    t0 = time.perf_counter()
    store = RunStore(out)
    store.check(resume=resume, force=force)
    config.runnable()  # a grid of nothing is refused before the models and the truth are loaded
    meta = {}
    if resume:
        meta = store.read_meta()
        if meta.get("config") != config.to_dict():
            raise RunError(f"--resume: the config differs from the one {store.root} was started with; "
                           "resume with the same config or start a new --out")
    executor = executor or LocalExecutor()
    ctx = Context(config, cache_dir=cache_dir, progress=progress)
    executor.check()  # before the ground truth, which can take minutes
    for name in config.models:  # models and ground truth first, once, before any cell is timed
        ctx.truth(name)  # at torch's default threads, as before: cached, and the longest serial step
    ctx.probe_estimators()  # an outside estimator that fails or returns the wrong shape: before writing
    cells, excluded = config.runnable(ctx.unavailable())
    order = [c.key for c in cells]
    reasons = {d: executor.skip_reason(d) for d in config.grid["device"]}
    done = store.done() if resume else set()  # --force replaces the old parts: none of them counts
    for key, why in store.rejected if resume else ():
        print(f"lvm-bench run: the part of {key} is damaged ({why}); it runs again", file=sys.stderr)
    skipped = [skipped_row(c, reasons[c.device], config.run) for c in cells if reasons[c.device]]
    skip_keys = {c.key for c in cells if reasons[c.device]}
    todo = [c for c in cells if c.key not in done and c.key not in skip_keys]
    meta.update({
        "config": config.to_dict(), "config_source": config.source,
        "seeds": {"root": config.run["seed"],
                  "draws": "SeedSequence([root, crc32(model), n_samples, repeat]); blocks of "
                           f"{lvm.draws.BLOCK} draws from SeedSequence([seed, block])",
                  "figures": f"{LOGLIK_SAMPLES} draws per model as for repeat 2**31 - 1",
                  "binarization": 0},
        "timing": {"budget_s": config.run["time_budget"], "max_runs": MAX_RUNS,
                   "warmup": f"{config.run['warmup']} untimed call(s) on min(N, "
                             f"{lvm.kernels.CHUNK}) draws",
                   "shared": "one timing per (estimator, dtype, N, device, network architecture); "
                             "cells.csv timed_model names the model whose weights ran"},
        "dataset": ctx.dataset.identity, "n_cells": len(cells), "excluded_cells": excluded,
        "limits_inert": config.inert_limits(),
        "skipped_cells": len(skipped), "status": "running",
    })
    meta.setdefault("started", _now())
    meta.setdefault("environment", environment.describe(exclude=store.root))
    meta["float32_matmul"] = environment.fix_float32_matmul()  # before any timing, also on resume
    meta.setdefault("matmul_peak_gflops", matmul_peaks(config.grid["device"], config.run["threads"]))
    meta.setdefault("segments", []).append({"started": _now(), "cells_todo": len(todo),
                                            "parts_rejected": dict(store.rejected)})
    store.start(meta, resume=resume, force=force)
    meta["executor"] = executor.name
    failed: list[dict] = executor.failed
    disk_full: OSError | None = None
    table = pd.DataFrame()
    try:
        _write_figure_data(store, ctx, list(config.models))
        for key, row, raw in executor.map(ctx, todo, progress=progress):
            store.write_part(key, row, raw)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        disk_full = e
    finally:
        try:
            table = _finish(store, meta, ctx, order, skipped, skip_keys, failed, t0)
            measured = int((table["status"] == "ok").sum()) if "status" in table else 0
            table.attrs["previous_run"] = store.settle(meta["status"] in ("complete", "failed"), measured)
        except OSError as e:  # the disk filled up while the tables were written
            if e.errno != errno.ENOSPC:
                raise
            disk_full = disk_full or e
        finally:
            store.release()
    if disk_full is not None:
        raise RunError(f"--out {store.root}: the disk is full ({disk_full.filename or 'writing a part'}); "
                       f"finished cells are saved: free space, then continue with `lvm-bench run --resume "
                       f"--out {store.root}`")
    return table
