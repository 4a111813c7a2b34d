"""One spelling per flag across verbs; the old spellings still work and say the new one once."""

from __future__ import annotations

import pytest

import bench.compare
import bench.diagnose
from bench.cli import main


@pytest.fixture
def calls(monkeypatch) -> list[tuple[str, tuple, dict]]:
    """The typed verb functions, replaced by recorders: what the parser hands them."""
    seen = []
    for module in (bench.compare, bench.diagnose):
        def record(*args, _name=module.__name__, **kw):
            seen.append((_name, args, kw))
            return 0
        monkeypatch.setattr(module, "run", record)
    return seen


COMPARE_DEFAULTS = {"se_threshold": 4.0, "throughput_factor": 1.25, "min_time": 0.01, "fmt": "text",
                    "out": None}


@pytest.mark.parametrize(("flags", "given", "old", "new"), [
    (["--output", "r.md"], {"out": "r.md"}, "--output", "--out"),
    (["--k", "3"], {"se_threshold": 3.0}, "--k", "--se-threshold"),
    (["--format", "table"], {"fmt": "text"}, "--format table", "--format text"),
])
def test_an_old_compare_spelling_works_and_names_the_new_one(calls, capsys, flags, given, old, new):
    assert main(["compare", "a", "b", *flags]) == 0
    assert calls == [("bench.compare", ("a", "b"), COMPARE_DEFAULTS | given)]
    err = capsys.readouterr().err.splitlines()
    assert err == [f"lvm-bench compare: warning: {old} is deprecated; use {new}"]


def test_the_parser_defaults_are_the_typed_functions():
    import inspect

    params = inspect.signature(bench.compare.run).parameters
    assert {k: params[k].default for k in COMPARE_DEFAULTS} == COMPARE_DEFAULTS


def test_the_new_compare_spellings_are_quiet(calls, capsys):
    assert main(["compare", "a", "b", "--out", "r.json", "--se-threshold", "2.5", "--format", "json"]) == 0
    assert calls == [("bench.compare", ("a", "b"),
                      COMPARE_DEFAULTS | {"out": "r.json", "se_threshold": 2.5, "fmt": "json"})]
    assert capsys.readouterr().err == ""
    calls.clear()
    assert main(["compare", "a", "b", "--format", "markdown"]) == 0
    assert calls[0][2]["fmt"] == "markdown"


def test_old_and_new_spellings_at_once_warn_once_and_the_last_wins(calls, capsys):
    assert main(["compare", "a", "b", "--k", "3", "--se-threshold", "5", "--output", "x", "--out", "y"]) == 0
    assert calls[0][2] == COMPARE_DEFAULTS | {"se_threshold": 5.0, "out": "y"}
    assert len(capsys.readouterr().err.splitlines()) == 2  # one line per old spelling used


@pytest.mark.parametrize("fmt", ["text", "markdown", "json"])
def test_diagnose_takes_the_same_formats(calls, fmt):
    assert main(["diagnose", "--model", "untrained-k2", "--format", fmt]) == 0
    (name, args, kw), = calls
    assert name == "bench.diagnose" and args == ("untrained-k2",) and kw["fmt"] == fmt
    assert not {"dtypes", "estimators", "precisions", "n_samples"} & set(kw)  # unset lists: run's defaults


def test_diagnose_lists_are_parsed_before_the_call(calls):
    assert main(["diagnose", "--model", "m", "--dtype", "float16, float64", "--n-samples", "10,100",
                 "--precision", "cast", "--no-truth"]) == 0
    kw = calls[0][2]
    assert kw["dtypes"] == ["float16", "float64"] and kw["n_samples"] == [10, 100]
    assert kw["precisions"] == ["cast"] and kw["truth"] is False and "estimators" not in kw


@pytest.mark.parametrize("argv", [["compare", "a", "b", "--format", "html"],
                                  ["diagnose", "--model", "m", "--format", "table"]])
def test_an_unknown_format_is_a_usage_error(calls, capsys, argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and calls == []
    assert "invalid choice" in capsys.readouterr().err


def test_the_typed_functions_refuse_an_unknown_format():
    from lvm.errors import InputError

    with pytest.raises(InputError, match="accepted: text, markdown, json"):
        bench.compare.run("a", "b", fmt="table")
    with pytest.raises(InputError, match="accepted: text, markdown, json"):
        bench.diagnose.run("untrained-k2", fmt="html")


def test_old_spellings_give_the_same_report_end_to_end(tiny_run, tmp_path, capsys):
    old, new = tmp_path / "old.txt", tmp_path / "new.txt"
    assert main(["compare", str(tiny_run), str(tiny_run), "--format", "table", "--k", "3",
                 "--output", str(old)]) == 0
    out_old, err_old = capsys.readouterr()
    assert main(["compare", str(tiny_run), str(tiny_run), "--format", "text", "--se-threshold", "3",
                 "--out", str(new)]) == 0
    out_new, err_new = capsys.readouterr()
    assert out_old == out_new == old.read_text() == new.read_text()
    assert "k = 3 SE" in out_new
    assert [line for line in err_old.splitlines() if "deprecated" in line] == [
        "lvm-bench compare: warning: --format table is deprecated; use --format text",
        "lvm-bench compare: warning: --k is deprecated; use --se-threshold",
        "lvm-bench compare: warning: --output is deprecated; use --out"]
    assert "deprecated" not in err_new
