"""bench: the sweep harness, metrics, reports and regression checks of lvm-bench.

The public API is re-exported here lazily, so that importing ``bench`` (and so
``lvm-bench --help``) does not load torch or pandas.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Cell": "config", "Config": "config", "ConfigError": "config", "load_config": "config",
    "Run": "store", "RunError": "store", "RunStore": "store", "load_run": "store",
    "METRICS": "metrics", "Metric": "metrics",
    "run_group": "cell", "run": "sweep",
    "compare_runs": "compare", "write_report": "report",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'bench' has no attribute {name!r}")
