"""A tiny sweep config for the end-to-end tests (seconds, not minutes), with overrides."""

from __future__ import annotations

import json

RUN = {"name": "tiny", "seed": 3, "n_data": 6, "repeats": 3, "warmup": 0, "reference": "importance",
       "reference_samples": 2000}
GRID = {"estimator": ["prob_space", "log_space", "log_space_acc32"],
        "dtype": ["bfloat16", "float32", "float64"], "n_samples": [1, 10, 100],
        "model": ["untrained-k2"], "parametrization": ["logits", "probs"], "device": ["cpu", "cuda"]}


def tiny_toml(run: dict | None = None, grid: dict | None = None) -> str:
    """TOML text of the tiny config with ``run`` and ``grid`` keys replaced."""
    lines = []
    for section, body in (("run", {**RUN, **(run or {})}), ("grid", {**GRID, **(grid or {})})):
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in body.items()]
    return "\n".join(lines) + "\n"


def run_cli(*args: str, cache: str) -> int:
    """``lvm-bench run ARGS`` in this process, with the tests' model and ground-truth cache."""
    from bench.cli import main

    return main(["run", *args, "--cache-dir", cache, "--no-progress"])
