"""The command line's contract: bad input exits 2 with its message, a bug keeps its traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import bench.cli
from bench.cli import main
from lvm.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def test_help_does_not_import_torch_or_pandas():
    code = ("import sys\nfrom bench.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n"
            "    pass\nprint(sorted(m for m in ('torch', 'pandas', 'seaborn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "usage: lvm-bench" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_input_error_exits_2_with_its_message(monkeypatch, capsys):
    def bad(args):
        raise InputError("--thing 'x' is invalid; accepted: y")

    monkeypatch.setattr(bench.cli, "_models", bad)
    assert main(["models"]) == 2
    assert "lvm-bench models: error: --thing 'x' is invalid; accepted: y" in capsys.readouterr().err


def test_a_bug_keeps_its_traceback(monkeypatch):
    def buggy(args):
        raise ValueError("a bug deep inside, not bad input")

    monkeypatch.setattr(bench.cli, "_models", buggy)
    with pytest.raises(ValueError, match="a bug deep inside"):
        main(["models"])
