"""bench: the sweep harness, metrics, reports and regression checks of lvm-bench.

The public API is re-exported here lazily, so that importing ``bench`` (and so
``lvm-bench --help``) does not load torch or pandas.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Cell": "run.config", "Config": "run.config", "ConfigError": "run.config", "load_config": "run.config",
    "Run": "run.store", "RunError": "run.store", "RunStore": "run.store", "load_run": "run.store",
    "METRICS": "run.metrics", "Metric": "run.metrics",
    "run_group": "run.cell", "run_sweep": "run.sweep",
    "compare_runs": "compare", "write_report": "report.page",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        return getattr(module, "run" if name == "run_sweep" else name)
    raise AttributeError(f"module 'bench' has no attribute {name!r}")
