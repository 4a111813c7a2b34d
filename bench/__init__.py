"""bench: the sweep harness, metrics, reports and regression checks of lvm-bench."""

from .config import Cell, Config, ConfigError, load_config
from .store import RunError, RunStore, load_raw, load_run
from .sweep import run, run_cell

__all__ = ["Cell", "Config", "ConfigError", "RunError", "RunStore", "load_config", "load_raw",
           "load_run", "run", "run_cell"]
