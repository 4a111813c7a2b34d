"""lvm.axes: the one place the axes and their levels are written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from lvm import axes

ROOT = Path(__file__).resolve().parents[1]


def test_importable_without_pandas():
    code = "import sys, lvm.axes\nprint('pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_harness_reads_the_levels_from_here_not_a_copy():
    """No module of lvm/ or bench/ but this one defines a list of levels: they import them."""
    import ast

    names = {"AXES", "AXIS_DEFAULTS", "DEVICES", "DTYPES", "ESTIMATORS", "OUTSIDE", "PARAMETRIZATIONS",
             "PRECISIONS", "PROPOSALS", "AUTOCAST_DTYPES", "LEVELS", "OUTPUTS", "PARAM_NAMES"}
    copies = []
    for path in sorted([*(ROOT / "lvm").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]):
        if path == ROOT / "lvm" / "axes.py":
            continue
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            targets = node.targets if isinstance(node, ast.Assign) else (
                [node.target] if isinstance(node, ast.AnnAssign) else [])
            copies += [f"{path.relative_to(ROOT)}: {t.id}" for t in targets
                       if isinstance(t, ast.Name) and t.id in names]
    assert copies == []
    import bench.run.config as config
    import lvm.numerics

    assert config.AXES is axes.AXES and config.ESTIMATORS is axes.ESTIMATORS
    assert lvm.numerics.DTYPES is axes.DTYPES


def test_defaults_and_levels_are_levels_of_known_axes():
    assert set(axes.AXIS_DEFAULTS) | set(axes.LEVELS) <= set(axes.AXES)
    assert all(level in axes.LEVELS[axis] for axis, level in axes.AXIS_DEFAULTS.items())
    assert list(axes.LEVELS) == [a for a in axes.AXES if a in axes.LEVELS]  # grid order
    assert set(axes.AUTOCAST_DTYPES) < set(axes.DTYPES.values())
