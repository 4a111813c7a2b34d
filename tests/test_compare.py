"""`lvm-bench compare`: same run -> 0, a degraded estimator -> 1 naming cells and metrics, bad input -> 2."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from tiny import tiny_toml

import bench.run.cell
from bench.cli import main
from bench.compare import (
    IMPROVEMENT,
    NOT_JUDGED,
    OK,
    REGRESSION,
    Change,
    CompareError,
    Comparison,
    compare_runs,
    judge_cell,
)
from bench.run.config import Cell
from bench.run.metrics import RawStats
from lvm.axes import AXES

pytestmark = pytest.mark.slow  # every test here runs sweeps or subprocesses

OFFSET = 1.0  # nats the degraded estimator adds to every log-space estimate


# The shared tiny sweep is too noisy for a 1-nat test (bfloat16, N = 1): this module runs its own
# pair on a smaller, well-conditioned grid: 2 estimators x 2 dtypes x 2 N, one model and
# parametrization; the cuda cells are skipped on a machine without CUDA (measured in neither run).
TINY = tiny_toml(run={"name": "tiny-compare", "n_data": 4, "reference_samples": 500},
                 grid={"estimator": ["prob_space", "log_space"], "dtype": ["float32", "float64"],
                       "n_samples": [10, 100], "parametrization": ["logits"]})


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache_dir) -> dict[str, Path]:
    """A baseline run and one made with a log-space estimator that is off by OFFSET nats."""
    d = tmp_path_factory.mktemp("compare")
    cfg = d / "tiny.toml"
    cfg.write_text(TINY)
    args = ["run", "--config", str(cfg), "--cache-dir", cache_dir, "--no-progress"]
    assert main([*args, "--out", str(d / "base")]) == 0
    real = bench.run.cell._tables

    def degraded(cell, ests, replay, truth, timing):  # the estimates shift, their float64 replays do not
        if cell.estimator == "log_space":
            ests = [dataclasses.replace(e, log_px=e.log_px + OFFSET) for e in ests]
        return real(cell, ests, replay, truth, timing)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bench.run.cell, "_tables", degraded)
        assert main([*args, "--out", str(d / "degraded")]) == 0
    return {"base": d / "base", "degraded": d / "degraded"}


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to, ignore=shutil.ignore_patterns("parts"))
    return to


def _edit_cells(run: Path, edit) -> None:
    cells = pd.read_csv(run / "cells.csv")
    cells = edit(cells)
    cells.to_csv(run / "cells.csv", index=False)


def _edit_meta(run: Path, edit) -> None:
    meta = json.loads((run / "meta.json").read_text())
    edit(meta)
    (run / "meta.json").write_text(json.dumps(meta))


def _ok_cells(run: Path) -> pd.DataFrame:
    cells = pd.read_csv(run / "cells.csv")
    return cells[cells.status == "ok"]


def _label(r) -> str:
    return Cell.of(r).label


# ------------------------------------------------------------------ end to end


@pytest.mark.parametrize("fmt", ["text", "markdown", "json"])
def test_same_run_exits_0(runs, fmt, tmp_path, capsys):
    out = tmp_path / f"report.{fmt}"
    assert main(["compare", str(runs["base"]), str(runs["base"]), "--format", fmt,
                 "--out", str(out), "--min-time", "0"]) == 0
    text = capsys.readouterr().out
    assert out.read_text() == text
    n = len(_ok_cells(runs["base"]))
    if fmt == "json":
        doc = json.loads(text)  # strict JSON: NaN written as null
        assert doc["exit_code"] == 0 and doc["regressions"] == [] and doc["n_cells"] == n
        assert doc["hardware_match"] and doc["timings_judged"]
        assert len(doc["rows"]) == 5 * n
    else:
        assert f"{n} cells compared: 0 regressions" in text
    comp = compare_runs(runs["base"], runs["base"], min_time=0)
    assert isinstance(comp, Comparison) and comp.exit_code == 0
    assert {r.verdict for r in comp.rows} <= {OK, NOT_JUDGED}
    # not judged only where there is nothing to judge: bias / rounding of fully underflowed cells
    for r in comp.rows:
        if r.verdict == NOT_JUDGED:
            assert r.metric in ("bias", "rounding_error_mean") and math.isnan(r.baseline)


def test_degraded_estimator_exits_1_and_names_cells_and_metrics(runs, capsys):
    assert main(["compare", str(runs["base"]), str(runs["degraded"])]) == 1
    text = capsys.readouterr().out
    comp = compare_runs(runs["base"], runs["degraded"])
    # timings of millisecond cells on a shared machine are noise: judge the numbers only here
    flagged = {(r.label, r.metric) for r in comp.regressions if r.metric != "terms_per_s"}
    log_cells = [_label(r) for r in _ok_cells(runs["base"]).to_dict("records")
                 if r["estimator"] == "log_space"]
    assert log_cells
    assert flagged == {(c, m) for c in log_cells for m in ("bias", "rounding_error_mean")}
    for r in comp.regressions:
        if r.metric == "bias":
            assert r.change == pytest.approx(OFFSET, abs=1e-9)
            assert r.change > 4 * r.se
    regressions_section = text.split("REGRESSIONS")[1].split("ALL COMPARED")[0]
    for c in log_cells:
        for m in ("bias", "rounding_error_mean"):
            assert re.search(rf"^{re.escape(c)}\s+{m}\s", regressions_section, re.M), (c, m)
    md = comp.render("markdown")
    assert "regression" in md.splitlines()[0] and f"| {log_cells[0]} | bias |" in md
    doc = json.loads(comp.render("json"))
    assert doc["exit_code"] == 1
    assert {(r["label"], r["metric"]) for r in doc["regressions"]} >= flagged


def test_cells_in_one_run_only_are_listed(runs, tmp_path, capsys):
    new = _copy(runs["base"], tmp_path / "new")
    ok = _ok_cells(runs["base"])
    dropped, skipped, failed = (ok.iloc[i] for i in range(3))

    def edit(cells):
        def where(r):
            m = pd.Series(True, index=cells.index)
            for p in AXES:
                m &= cells[p] == r[p]
            return m

        cells.loc[where(skipped), ["status", "reason"]] = ["skipped", "CUDA is not available"]
        cells.loc[where(failed), ["status", "reason"]] = ["failed", "RuntimeError: boom"]
        extra = cells[where(dropped)].assign(n_samples=12345)  # a cell the baseline never had
        return pd.concat([cells[~where(dropped)], extra], ignore_index=True)

    _edit_cells(new, edit)
    comp = compare_runs(runs["base"], new)
    only_b = {_label(c): c["other"] for c in comp.only_in_baseline}
    assert only_b == {_label(dropped): "absent from the new run",
                      _label(skipped): "skipped in the new run: CUDA is not available"}
    assert [_label(c) for c in comp.only_in_new] == [_label(dict(dropped, n_samples=12345))]
    # a cell that ran before and fails now, or is gone, is a regression, not a silent drop
    status = {(r.label, r.baseline, r.new) for r in comp.regressions if r.metric == "status"}
    assert status == {(_label(failed), "ok", "failed"), (_label(dropped), "ok", "absent")}
    assert main(["compare", str(runs["base"]), str(new)]) == 1
    text = capsys.readouterr().out
    assert "ONLY IN BASELINE (2)" in text and "ONLY IN NEW (1)" in text
    assert _label(dropped) in text and "N=12345" in text and "RuntimeError: boom" in text
    md = comp.render("markdown")
    assert "#### Only in the baseline (2)" in md and "#### Only in the new run (1)" in md
    doc = json.loads(comp.render("json"))
    assert len(doc["only_in_baseline"]) == 2 and len(doc["only_in_new"]) == 1


def test_throughput_judged_only_on_the_same_hardware(runs, tmp_path, capsys):
    base = _copy(runs["base"], tmp_path / "base")
    _edit_cells(base, lambda c: c.assign(time_median_s=0.005))  # whatever this machine's speed
    slow = _copy(base, tmp_path / "slow")

    def halve(cells):
        cells["terms_per_s"] = cells["terms_per_s"] / 2
        return cells

    _edit_cells(slow, halve)
    # cells timed at 5 ms are by default too short to judge, and said so
    short = compare_runs(base, slow)
    assert short.exit_code == 0
    assert all(r.verdict == NOT_JUDGED and "min_time" in r.rule
               for r in short.rows if r.metric == "terms_per_s")
    comp = compare_runs(base, slow, min_time=0)
    assert comp.hardware_match and comp.timings_judged
    n = len(_ok_cells(runs["base"]))
    assert [r.metric for r in comp.regressions] == ["terms_per_s"] * n
    assert all(r.change == pytest.approx(0.5) for r in comp.regressions)
    # a slow-down within the factor is not flagged
    assert compare_runs(base, slow, throughput_factor=2.5, min_time=0).exit_code == 0
    # another machine: the same numbers are reported, not judged
    _edit_meta(slow, lambda m: m["environment"]["hardware"].update(cpu="Some Other CPU"))
    comp = compare_runs(base, slow)
    assert not comp.hardware_match and not comp.timings_judged and comp.exit_code == 0
    tput = [r for r in comp.rows if r.metric == "terms_per_s"]
    assert len(tput) == n and all(r.verdict == NOT_JUDGED for r in tput)
    assert all(r.change == pytest.approx(0.5) for r in tput)
    assert main(["compare", str(base), str(slow)]) == 0
    text = capsys.readouterr().out
    assert "not judged: different hardware" in text
    # a faster run on the same machine is an improvement, never a failure
    fast = _copy(base, tmp_path / "fast")
    _edit_cells(fast, lambda c: c.assign(terms_per_s=c["terms_per_s"] * 2))
    comp = compare_runs(base, fast, min_time=0)
    assert comp.exit_code == 0 and [r.metric for r in comp.improvements] == ["terms_per_s"] * n


@pytest.mark.parametrize("edit, reason", [
    # same model string and cores, another kind of machine: the capability, a flag, a ceiling
    (lambda m: m["environment"]["hardware"].update(cpu_capability="SOMETHING_ELSE"),
     "cpu_capability: {} vs SOMETHING_ELSE"),
    (lambda m: m["environment"]["hardware"].update(isa_flags={"avx512_bf16": "other"}), "isa_flags"),
    (lambda m: m["matmul_peak_gflops"]["cpu"].update(float32=m["matmul_peak_gflops"]["cpu"]["float32"] * 100),
     "matmul ceiling cpu/float32: "),
    # a baseline made before hardware identity was recorded (as results/baseline is)
    (lambda m: m["environment"]["hardware"].pop("cpu_capability"),
     "the new run does not record cpu_capability (made before lvm-bench recorded it)"),
])
def test_throughput_not_judged_when_hardware_identity_differs(runs, tmp_path, capsys, edit, reason):
    base = _copy(runs["base"], tmp_path / "base")
    _edit_cells(base, lambda c: c.assign(time_median_s=0.5))  # long enough to be judged
    other = _copy(base, tmp_path / "other")
    _edit_cells(other, lambda c: c.assign(terms_per_s=c["terms_per_s"] / 2))
    _edit_meta(other, edit)
    hw = json.loads((base / "meta.json").read_text())["environment"]["hardware"]
    reason = reason.format(hw.get("cpu_capability"))
    comp = compare_runs(base, other, min_time=0)
    assert not comp.hardware_match and not comp.timings_judged and comp.exit_code == 0
    assert [m for m in comp.hardware_mismatches if m.startswith(reason)], comp.hardware_mismatches
    tput = [r for r in comp.rows if r.metric == "terms_per_s"]
    assert tput and all(r.verdict == NOT_JUDGED for r in tput)
    assert main(["compare", str(base), str(other)]) == 0
    text = capsys.readouterr().out
    assert "not judged: different hardware" in text and reason in text
    assert "- note: throughput is reported, not judged" in comp.render("markdown")
    assert reason in comp.render("markdown")
    assert json.loads(comp.render("json"))["hardware_mismatches"] == comp.hardware_mismatches
    # and the other way round
    assert not compare_runs(other, base).hardware_match


@pytest.mark.parametrize("case, message", [
    ("missing", "no such run directory"),
    ("not_a_run", "is not a run: meta.json is missing"),
    ("no_cells", "cells.csv is missing"),
    ("no_common", "no common cells"),
])
def test_bad_input_exits_2(runs, tmp_path, capsys, case, message):
    new = tmp_path / "new"
    if case == "not_a_run":
        new.mkdir()
        (new / "cells.csv").write_text("a,b\n1,2\n")
    elif case == "no_cells":
        new = _copy(runs["base"], new)
        (new / "cells.csv").unlink()
    elif case == "no_common":
        new = _copy(runs["base"], new)
        _edit_cells(new, lambda c: c.assign(model="untrained-k8"))
        _edit_meta(new, lambda m: m["config"]["grid"].update(model=["untrained-k8"]))
    assert main(["compare", str(runs["base"]), str(new)]) == 2
    err = capsys.readouterr().err
    assert message in err
    if case == "no_common":
        assert "configs differ in grid.model" in err


def test_bad_options_exit_2(runs, capsys):
    assert main(["compare", str(runs["base"]), str(runs["base"]), "--se-threshold", "0"]) == 2
    assert "accepted: a positive number" in capsys.readouterr().err
    assert main(["compare", str(runs["base"]), str(runs["base"]), "--throughput-factor", "0.5"]) == 2
    with pytest.raises(CompareError):
        compare_runs(runs["base"], runs["base"], se_threshold=float("nan"))


def test_rounding_error_not_judged_without_raw_rows(runs, tmp_path):
    new = _copy(runs["degraded"], tmp_path / "new")
    for f in ("raw.parquet", "raw.csv.gz"):
        (new / f).unlink(missing_ok=True)
    comp = compare_runs(runs["base"], new)
    rnd = [r for r in comp.rows if r.metric == "rounding_error_mean" and not math.isnan(r.baseline)]
    assert rnd and all(r.verdict == NOT_JUDGED and "raw" in r.rule for r in rnd)
    assert any("no raw rows" in n for n in comp.notes)


def test_markdown_fits_a_pull_request_comment():
    cells = [dict(zip(AXES,
                      ("log_space", "float32", n, "untrained-k2", "logits", "cpu", "cast", "prior", "eager"),
                      strict=True))
             for n in range(1, 3001)]
    rows = [Change(c, "bias", -0.1, 0.9, 1.0, REGRESSION, "|change| > 4 x SE 0.01", 0.01) for c in cells]
    only = [{**c, "other": "absent from the new run"} for c in cells[:500]]
    comp = Comparison("a", "b", 4.0, 1.25, True, True, rows, only, [], 0, [], {})
    md = comp.render("markdown")
    assert len(md) < 65_536
    assert "#### Regressions (3000)" in md and "more rows left out to fit a comment" in md
    assert comp.render("text").count("N=2999 ") == 2  # the terminal keeps everything


# ------------------------------------------------------------------ the rules, one by one

CELL = dict(zip(AXES, ("log_space", "float64", 100, "untrained-k2", "logits", "cpu", "cast", "prior",
                      "eager"), strict=True))
BASE = {"underflow_rate": 0.0, "underflow_ci_low": 0.0, "underflow_ci_high": 0.1379, "nonfinite_rate": 0.0,
        "bias": -0.05, "bias_se": 0.01, "rounding_error_mean": 0.0, "terms_per_s": 1e5}


EXACT = (RawStats(0.0, float("nan"), 550.0), RawStats(0.0, float("nan"), 550.0))  # |log p| ~ 550


def _verdicts(new: dict, base: dict = BASE, raw=EXACT, **kw) -> dict:
    kw = {"se_threshold": 4.0, "throughput_factor": 1.25, "timings_judged": True} | kw
    return {c.metric: c for c in judge_cell(CELL, base, {**base, **new}, raw=raw, **kw)}


def test_rule_underflow_outside_the_baseline_wilson_interval():
    assert _verdicts({"underflow_rate": 0.125})["underflow_rate"].verdict == OK  # 3/24, inside
    assert _verdicts({"underflow_rate": 0.25})["underflow_rate"].verdict == REGRESSION
    full = {**BASE, "underflow_rate": 1.0, "underflow_ci_low": 0.8620, "underflow_ci_high": 1.0}
    assert _verdicts({"underflow_rate": 0.9}, base=full)["underflow_rate"].verdict == OK
    assert _verdicts({"underflow_rate": 0.5}, base=full)["underflow_rate"].verdict == IMPROVEMENT


def test_rule_new_nonfinite_values():
    assert _verdicts({"nonfinite_rate": 1 / 24})["nonfinite_rate"].verdict == REGRESSION
    some = {**BASE, "nonfinite_rate": 0.5}
    assert _verdicts({"nonfinite_rate": 0.9}, base=some)["nonfinite_rate"].verdict == OK
    assert _verdicts({"nonfinite_rate": 0.0}, base=some)["nonfinite_rate"].verdict == IMPROVEMENT


def test_rule_bias_k_standard_errors_of_the_difference():
    se = math.hypot(0.01, 0.01)
    assert _verdicts({"bias": -0.05 - 3.9 * se})["bias"].verdict == OK
    v = _verdicts({"bias": -0.05 - 4.1 * se})["bias"]
    assert v.verdict == REGRESSION and v.se == pytest.approx(se)
    assert _verdicts({"bias": -0.05 - 3 * se}, se_threshold=2)["bias"].verdict == REGRESSION
    assert _verdicts({"bias": -0.05 + 4.5 * se})["bias"].verdict == IMPROVEMENT  # closer to 0
    # a number before, none now (every estimate underflowed, or a broken table): a regression
    v = _verdicts({"bias": float("nan")})["bias"]
    assert v.verdict == REGRESSION and "none in the new run" in v.rule
    assert _verdicts({"bias": -0.05}, base={**BASE, "bias": float("nan")})["bias"].verdict == NOT_JUDGED


def test_rule_rounding_error_floor_keeps_deterministic_cells_quiet():
    # float64, SE 0 in both runs (every |estimate - replay| identical), |log p| ~ 550:
    # equal values and last-bit differences are not flagged, a real change is
    u64 = 2.0**-53
    assert _verdicts({})["rounding_error_mean"].verdict == OK
    assert _verdicts({"rounding_error_mean": 2 * u64 * 550})["rounding_error_mean"].verdict == OK
    v = _verdicts({"rounding_error_mean": 1e-9})["rounding_error_mean"]
    assert v.verdict == REGRESSION and v.se == pytest.approx(u64 * 550)
    # with real spread, the SE from the raw rows (std / sqrt(n), both runs) sets the bar
    noisy = (RawStats(2e-6, float("nan"), 550.0), RawStats(2e-6, float("nan"), 550.0))
    base = {**BASE, "rounding_error_mean": 1e-5}
    assert _verdicts({"rounding_error_mean": 1.9e-5}, base=base, raw=noisy)[
        "rounding_error_mean"].verdict == OK
    assert _verdicts({"rounding_error_mean": 2.2e-5}, base=base, raw=noisy)[
        "rounding_error_mean"].verdict == REGRESSION


def test_rule_bias_se_never_below_the_repeat_se():
    """Datapoints of a repeat share its draws: the SE over repeats is a floor under bias_se."""
    correlated = (RawStats(0.0, 0.03, 550.0), RawStats(0.0, 0.03, 550.0))
    v = _verdicts({"bias": -0.05 - 4.1 * math.hypot(0.01, 0.01)}, raw=correlated)["bias"]
    assert v.verdict == OK and v.se == pytest.approx(math.hypot(0.03, 0.03))


def test_rule_throughput_factor_and_hardware():
    assert _verdicts({"terms_per_s": 1e5 / 1.2})["terms_per_s"].verdict == OK
    assert _verdicts({"terms_per_s": 1e5 / 1.3})["terms_per_s"].verdict == REGRESSION
    assert _verdicts({"terms_per_s": 1e5 / 1.3}, throughput_factor=1.5)["terms_per_s"].verdict == OK
    assert _verdicts({"terms_per_s": 1e5 / 3}, timings_judged=False)["terms_per_s"].verdict == NOT_JUDGED
    assert _verdicts({"terms_per_s": 1e5 * 1.3})["terms_per_s"].verdict == IMPROVEMENT


# ------------------------------------------------- a gate that does not pass broken runs (issue 13, 8)

def test_an_unfinished_new_run_exits_2(runs, tmp_path, capsys):
    new = _copy(runs["base"], tmp_path / "new")
    _edit_meta(new, lambda m: m.update(status="interrupted"))
    assert main(["compare", str(runs["base"]), str(new)]) == 2
    assert "'interrupted', not complete" in capsys.readouterr().err


def test_a_table_without_its_metric_columns_exits_2(runs, tmp_path, capsys):
    new = _copy(runs["base"], tmp_path / "new")
    _edit_cells(new, lambda c: c.drop(columns=["bias", "underflow_rate"]))
    assert main(["compare", str(runs["base"]), str(new)]) == 2
    assert "lacks the judged metric column(s) underflow_rate, bias" in capsys.readouterr().err


def test_rows_without_coordinates_exit_2(runs, tmp_path, capsys):
    new = _copy(runs["base"], tmp_path / "new")
    _edit_cells(new, lambda c: c.assign(n_samples=c.n_samples.where(c.index != 2)))
    assert main(["compare", str(runs["base"]), str(new)]) == 2
    assert "lack a cell coordinate (row 4 of the file)" in capsys.readouterr().err


def test_metrics_that_are_no_longer_numbers_are_regressions(runs, tmp_path):
    new = _copy(runs["base"], tmp_path / "new")
    _edit_cells(new, lambda c: c.assign(bias="n/a", rounding_error_mean="oops"))
    comp = compare_runs(runs["base"], new)
    lost = {(r.label, r.metric) for r in comp.regressions}
    ok = _ok_cells(runs["base"]).to_dict("records")
    was_number = {(_label(r), m) for r in ok for m in ("bias", "rounding_error_mean") if math.isfinite(r[m])}
    assert was_number and lost >= was_number
    assert comp.exit_code == 1


def test_a_truncated_table_fails_the_gate(runs, tmp_path):
    new = _copy(runs["base"], tmp_path / "new")
    _edit_cells(new, lambda c: c.iloc[:3])
    comp = compare_runs(runs["base"], new)
    absent = [r for r in comp.regressions if r.metric == "status" and r.new == "absent"]
    measured_later = [r for r in _ok_cells(runs["base"]).index if r >= 3]
    assert len(absent) == len(measured_later) > 0 and comp.exit_code == 1
