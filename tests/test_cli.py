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


def test_run_has_a_flag_for_every_axis_in_grid_order():
    from lvm.axes import AXES

    assert tuple(bench.cli.AXIS_FLAGS) == AXES  # written out there: lvm.axes imports torch
    assert all(flag == axis.replace("_", "-") for axis, flag in bench.cli.AXIS_FLAGS.items())


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


# ------------------------------------------------ messages that name the file (issue 13, item 12)

def test_a_binary_config_is_named_not_a_traceback(tmp_path, capsys):
    bad = tmp_path / "model.pt"
    bad.write_bytes(bytes(range(256)))
    assert main(["run", "--config", str(bad), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"--config '{bad}': not a text file" in err and not (tmp_path / "o").exists()


def test_train_into_an_existing_file_fails_before_training(tmp_path, capsys, monkeypatch):
    from lvm import train

    monkeypatch.setattr(train, "train", lambda *a, **k: pytest.fail("trained before checking --out"))
    target = tmp_path / "file"
    target.write_text("keep me")
    assert main(["train", "prior-iwae-k3", "--out", str(target), "--no-progress"]) == 2
    assert "is an existing file" in capsys.readouterr().err and target.read_text() == "keep me"


@pytest.mark.parametrize("text", ["", "a,b\n1,2,3,4\n5\n", "\x00\x01garbage\xff"])
def test_compare_on_a_broken_cells_table_exits_2_naming_it(tiny_run, tmp_path, capsys, text):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("parts"))
    (run / "cells.csv").write_bytes(text.encode("latin-1"))
    assert main(["compare", str(tiny_run), str(run)]) == 2
    assert str(run / "cells.csv") in capsys.readouterr().err
