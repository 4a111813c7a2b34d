"""Where cells run: in this process, or on a dask.distributed cluster.

An executor's ``map(ctx, cells)`` yields ``(key, row, raw)`` as cells finish,
in any order; the client alone writes the run directory, so resume and the
final tables are the same whichever executor ran the cells. The unit of work is
a group of cells that share draws and decoder passes (:func:`bench.run.cell.groups`).
"""

from __future__ import annotations

import dataclasses
import os
import platform

from bench.run.cell import Context, failed_row, groups, run_group
from bench.run.config import Cell, Config
from bench.run.environment import fix_float32_matmul
from bench.run.store import RunError
from lvm.runtime import device_unavailable

SPAWN_ENV = "distributed.nanny.pre-spawn-environ"
INSTALL_HINT = ("--executor dask needs the optional extra: pip install 'lvm-bench[dask]' "
                "(dask and distributed)")


class LocalExecutor:
    """In-process, one cell at a time: keeps timings clean."""

    name = "local"

    def __init__(self):
        self.failed: list[dict] = []

    @staticmethod
    def skip_reason(device: str) -> str | None:
        return device_unavailable(device)

    def check(self) -> None:
        """Nothing to reach: cells run in this process."""

    def map(self, ctx: Context, cells: list[Cell], *, progress: bool = True):
        from tqdm.auto import tqdm

        bar = tqdm(total=len(cells), desc="cells", unit="cell", disable=not progress, dynamic_ncols=True)
        for group in groups(cells):
            c = group[0]
            bar.set_postfix_str(f"{c.model} N={c.n_samples} {c.device}", refresh=False)
            try:
                done = run_group(ctx, group)
            except Exception as e:  # noqa: BLE001 - recorded, the run goes on
                self.failed.extend(failed_row(cell, e) for cell in group)
                bar.update(len(group))
                continue
            for key, row, raw in done:
                bar.update()
                if raw is None:  # this cell failed alone: run_group measured the rest of its group
                    self.failed.append(row)
                    continue
                row["worker"] = "local"
                yield key, row, raw
        bar.close()


# One Context per worker process and config, built on first use.
_CONTEXTS: dict[tuple, Context] = {}


def remote_group(config_data: dict, source: str, cells: list[tuple], cache_dir: str | None):
    """Run one group of cells on a dask worker: a pure function of (config, cells)."""
    fix_float32_matmul()
    key = (repr(config_data), cache_dir)
    if key not in _CONTEXTS:
        _CONTEXTS[key] = Context(Config(config_data, source), cache_dir=cache_dir)
    done = run_group(_CONTEXTS[key], [Cell(*c) for c in cells])
    try:
        from distributed import get_worker

        worker = get_worker().address
    except (ImportError, ValueError):
        worker = f"{platform.node()}:{os.getpid()}"
    for _, row, raw in done:
        if raw is not None:
            row["worker"] = worker
    return done


class DaskExecutor:
    """Cells as dask tasks: retried on a lost worker, GPU cells only on GPU workers.

    ``scheduler=None`` starts a LocalCluster on the loopback interface with
    ``n_workers`` single-threaded worker processes.
    """

    name = "dask"

    def __init__(self, scheduler: str | None = None, *, n_workers: int = 2, retries: int = 2):
        try:
            import distributed  # noqa: F401
        except ImportError as e:
            raise RunError(INSTALL_HINT) from e
        self.scheduler, self.n_workers, self.retries = scheduler, n_workers, retries
        self.failed: list[dict] = []
        self._conn = None

    def _connect(self):
        if self._conn is None:
            self._conn = self._client()
        return self._conn[0]

    def check(self) -> None:
        """Reach the cluster now, before the run directory is written (RunError if unreachable)."""
        self._connect()

    def skip_reason(self, device: str) -> str | None:
        """GPU cells run only where a worker declares a GPU resource (``--resources GPU=1``)."""
        if device == "cpu":
            return None
        workers = self._connect().scheduler_info()["workers"].values()
        if not any(w.get("resources", {}).get("GPU", 0) >= 1 for w in workers):
            return (f"no dask worker declares a GPU resource for device {device} "
                    "(start one with --resources GPU=1)")
        return None

    def close(self) -> None:
        if self._conn is not None:
            client, cluster = self._conn
            client.close()
            if cluster is not None:
                cluster.close()
            self._conn = None

    def _client(self):
        from distributed import Client, LocalCluster

        if self.scheduler:
            try:
                return Client(self.scheduler, timeout="20s"), None
            except (OSError, ValueError) as e:  # ValueError: an address distributed cannot parse
                raise RunError(f"--scheduler {self.scheduler!r}: cannot connect ({e}); accepted: "
                               "tcp://HOST:PORT of a running scheduler") from e
        import dask

        # One task thread per worker process: one timed cell at a time per worker. dask's
        # default MALLOC_TRIM_THRESHOLD_=65536 for workers makes glibc hand every freed
        # multi-megabyte tensor back to the OS and fault it in again on the next chunk: it
        # slowed the decoder passes by half and more. Unset here unless the user's environment
        # sets it; workers of an outside cluster need the same (docs/guide.md).
        with dask.config.set({f"{SPAWN_ENV}.MALLOC_TRIM_THRESHOLD_": None}):
            cluster = LocalCluster(n_workers=self.n_workers, threads_per_worker=1, processes=True,
                                   host="127.0.0.1", dashboard_address=None)
        return Client(cluster), cluster

    def map(self, ctx: Context, cells: list[Cell], *, progress: bool = True):
        from distributed import as_completed
        from tqdm.auto import tqdm

        client = self._connect()
        try:
            cfg = ctx.config
            futures = {}
            data = cfg.to_dict()  # one copy for all cells
            # the longest groups (largest N) first, so no worker is left with one at the end: submitted
            # in that order (a worker starts the first task it gets) and with that priority
            for group in sorted(groups(cells), key=lambda g: -g[0].n_samples):
                c = group[0]
                resources = {"GPU": 1} if c.device in ("cuda", "mps") else None
                f = client.submit(remote_group, data, cfg.source, [dataclasses.astuple(g) for g in group],
                                  ctx.cache_dir, key=f"group-{c.model}-{c.device}-{c.n_samples}-{c.key}",
                                  pure=False, retries=self.retries, resources=resources,
                                  priority=c.n_samples)
                futures[f] = group
            bar = tqdm(total=len(cells), desc="cells", unit="cell", disable=not progress)
            for f in as_completed(futures):
                group = futures[f]
                bar.update(len(group))
                try:
                    done = f.result()
                except Exception as e:  # noqa: BLE001 - recorded, the run goes on
                    self.failed.extend(failed_row(c, e) for c in group)
                    continue
                for key, row, raw in done:
                    if raw is None:  # this cell failed alone
                        self.failed.append(row)
                    else:
                        yield key, row, raw
            bar.close()
        finally:
            self.close()


def make_executor(name: str, scheduler: str | None = None, n_workers: int = 2):
    if name == "local":
        if scheduler:
            raise RunError(f"--scheduler {scheduler!r} needs --executor dask")
        return LocalExecutor()
    if name == "dask":
        if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
            raise RunError(f"--workers {n_workers!r} is invalid; accepted: a positive integer")
        return DaskExecutor(scheduler, n_workers=n_workers)
    raise RunError(f"--executor {name!r} is not supported; accepted: local, dask")
