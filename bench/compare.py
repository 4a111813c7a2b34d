"""`lvm-bench compare BASELINE NEW`: what changed between two runs, and whether it matters.

Cells are matched on their axes (:class:`bench.run.config.Cell`); only cells measured
(status "ok") in both runs are compared. Which metrics are judged, and by which rule, is
declared once in the metric registry (:data:`bench.run.metrics.METRICS`); the rules are here:

``wilson`` (underflow_rate)
    regression when the new rate lies above the baseline's 95% Wilson interval
    (``underflow_ci_high``), improvement when below it (``underflow_ci_low``).
``appears`` (nonfinite_rate)
    regression when it goes from 0 to > 0, improvement from > 0 to 0.
``se`` (bias, rounding_error_mean)
    regression when ``|new - baseline| > se_threshold * SE`` and the error grew (improvement: it shrank),
    ``SE = sqrt(SE_base^2 + SE_new^2)``: the runs taken as independent, which errs towards not
    flagging. Each run's SE is never below the SE over repeats from the raw rows (the digits of
    a repeat share its draws, so their errors are correlated); rounding_error_mean is not judged
    without raw rows. A floor ``unit_roundoff(dtype) * mean |replay_float64|`` keeps last-bit
    noise of deterministic cells quiet.
``factor`` (terms_per_s)
    regression when ``baseline / new > throughput_factor``, improvement when
    ``new / baseline > throughput_factor``; judged only when both runs used the same executor on
    the same hardware identity (CPU, cores, threads, ISA, GPUs, matmul ceilings:
    :func:`bench.run.environment.identity_mismatches`, whose reasons the notes list), and only
    for cells whose median timed run takes at least ``min_time`` (shorter: scheduler noise).

A cell measured in the baseline that *failed* or is absent in the new run is a regression
(metric ``status``), and so is a judged metric that was a number in the baseline and is none
in the new run; cells measured in one run only are listed, never dropped. A run that is not
finished, lacks a judged metric column or has rows without cell coordinates cannot be judged
(exit 2). :func:`run` is the verb; its exit code: 0 nothing regressed, 1 a regression, 2 bad input
(:class:`CompareError`, :class:`bench.run.store.RunError`). Rendering: :mod:`bench.report.render`.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.report import render
from bench.run import formats
from bench.run.config import Cell
from bench.run.environment import identity_mismatches
from bench.run.metrics import JUDGED, METRICS, Metric, RawStats, raw_stats
from bench.run.store import Run, load_run
from lvm.axes import AXES
from lvm.errors import InputError
from lvm.numerics import dtype_facts

SE_THRESHOLD = 4.0  # standard errors of a change that count as one (bias, rounding error)
THROUGHPUT_FACTOR = 1.25  # a slow-down (speed-up) by more than this factor counts
MIN_TIME = 0.01  # s: cells timed faster than this are dominated by scheduler noise, not judged
REGRESSION, IMPROVEMENT, OK, NOT_JUDGED = "regression", "improvement", "ok", "not judged"
STATUS = Metric("status", "text", "whether the cell was measured")


class CompareError(InputError):
    """Two runs that cannot be compared (exit code 2)."""


@dataclass
class Change:
    """One metric of one cell in both runs, and the verdict on its change."""

    cell: dict[str, Any]
    metric: str
    baseline: Any
    new: Any
    change: float | None  # new - baseline; for terms_per_s the ratio new / baseline
    verdict: str  # regression | improvement | ok | not judged
    rule: str  # why: the threshold the change was held against
    se: float | None = None  # the standard error used (bias, rounding_error_mean)

    @property
    def label(self) -> str:
        return Cell.of(self.cell).label

    def fmt(self, value: Any) -> str:
        return METRICS.get(self.metric, STATUS).fmt(value)

    def fmt_change(self) -> str:
        return METRICS.get(self.metric, STATUS).fmt_change(self.change)


@dataclass
class Comparison:
    baseline: str
    new: str
    se_threshold: float
    throughput_factor: float
    hardware_match: bool
    timings_judged: bool
    rows: list[Change]
    only_in_baseline: list[dict[str, Any]]
    only_in_new: list[dict[str, Any]]
    not_measured: int = 0  # cells in both tables that neither run measured
    notes: list[str] = field(default_factory=list)
    hardware: dict[str, Any] = field(default_factory=dict)
    metrics: tuple[str, ...] = tuple(m.name for m in JUDGED)
    hardware_mismatches: list[str] = field(default_factory=list)  # why hardware_match is False

    @property
    def regressions(self) -> list[Change]:
        return [r for r in self.rows if r.verdict == REGRESSION]

    @property
    def improvements(self) -> list[Change]:
        return [r for r in self.rows if r.verdict == IMPROVEMENT]

    @property
    def n_cells(self) -> int:
        return len({tuple(r.cell.values()) for r in self.rows})

    @property
    def exit_code(self) -> int:
        return 1 if self.regressions else 0

    def summary(self) -> str:
        reg, imp = len(self.regressions), len(self.improvements)
        return (f"{self.n_cells} cells compared: {render.plural(reg, 'regression')}, "
                f"{render.plural(imp, 'improvement')}; {len(self.only_in_baseline)} cells only in "
                f"the baseline, {len(self.only_in_new)} only in the new run"
                + (f", {self.not_measured} measured in neither" if self.not_measured else ""))

    def header(self) -> list[tuple[str, str]]:
        hw, k = self.hardware.get("new") or {}, self.se_threshold
        where = f"{hw.get('cpu')}, {hw.get('cpu_count')} CPUs" + "".join(
            f", {g.get('name')}" for g in hw.get("gpus", []))
        timing = ("same hardware: throughput judged" if self.timings_judged else
                  "throughput reported, not judged: " + ("different executors" if self.hardware_match
                                                         else "different hardware (see notes)"))
        return [("baseline", self.baseline), ("new", self.new),
                ("rules", f"k = {k:g} SE (bias, rounding error), baseline 95% Wilson interval "
                          f"(underflow), 0 -> >0 (non-finite), x{self.throughput_factor:g} (throughput)"),
                ("timings", f"{timing} ({where})")]

    def render(self, fmt: str = "text") -> str:
        """The report as ``"text"``, ``"markdown"`` or ``"json"`` (see ``render.comparison``)."""
        return render.comparison(self, fmt)


def _config_differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            diffs += _config_differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            diffs.append(f"{prefix}{key}: {va!r} -> {vb!r}")
    return diffs


# ---------------------------------------------------------------------- the rules


def _f(row: dict, key: str) -> float:
    try:
        return float(row.get(key))  # None: TypeError
    except (TypeError, ValueError):
        return float("nan")


def _floor(dtype: str, scale: float, *values: float) -> float:
    """unit roundoff of the cell's dtype x the size of what it rounds (see the module docstring)."""
    try:
        u = dtype_facts(dtype).unit_roundoff
    except InputError:  # a dtype this version does not know: its float64 floor
        u = dtype_facts("float64").unit_roundoff
    if not math.isfinite(scale):
        scale = max((abs(v) for v in values if math.isfinite(v)), default=0.0)
    return u * scale


def _rule_wilson(cell, metric, base, new, **_) -> Change:
    b, n = _f(base, metric), _f(new, metric)
    lo, hi = _f(base, "underflow_ci_low"), _f(base, "underflow_ci_high")
    if not all(math.isfinite(v) for v in (b, n, lo, hi)):
        return Change(cell, metric, b, n, n - b, NOT_JUDGED, "no rate or interval")
    ci = f"baseline 95% Wilson [{100 * lo:.3g}%, {100 * hi:.3g}%]"
    verdict = REGRESSION if n > hi else IMPROVEMENT if n < lo else OK
    where = "above" if n > hi else "below" if n < lo else "inside"
    return Change(cell, metric, b, n, n - b, verdict, f"{where} {ci}")


def _rule_appears(cell, metric, base, new, **_) -> Change:
    b, n = _f(base, metric), _f(new, metric)
    if not (math.isfinite(b) and math.isfinite(n)):
        return Change(cell, metric, b, n, None, NOT_JUDGED, "no rate")
    verdict = REGRESSION if b == 0 and n > 0 else IMPROVEMENT if b > 0 and n == 0 else OK
    rule = {REGRESSION: "new non-finite estimates (was 0)", IMPROVEMENT: "no non-finite estimate now",
            OK: "flagged only from 0 to > 0 or back"}[verdict]
    return Change(cell, metric, b, n, n - b, verdict, rule)


def _repeat_floor(se: float, stats: RawStats | None) -> float:
    """bias_se, never below the SE over repeats (datapoints of a repeat share its draws)."""
    if stats is None or not math.isfinite(stats.bias_se):
        return se
    return max(se, stats.bias_se) if math.isfinite(se) else stats.bias_se


def _rule_se(cell, metric, base, new, *, se_threshold, raw, **_) -> Change:
    b, n = _f(base, metric), _f(new, metric)
    rb, rn = raw
    if metric == "bias":
        se_b, se_n = _repeat_floor(_f(base, "bias_se"), rb), _repeat_floor(_f(new, "bias_se"), rn)
        no_se = "no standard error"
    else:
        se_b, se_n = (r.rounding_se if r is not None else math.nan for r in raw)
        no_se = "no standard error: no raw rows"
    if not (math.isfinite(b) and math.isfinite(n)):
        why = "no finite estimate in " + ("either run" if not (math.isfinite(b) or math.isfinite(n))
                                          else "the baseline" if not math.isfinite(b) else "the new run")
        return Change(cell, metric, b, n, None, NOT_JUDGED, why)
    if not (math.isfinite(se_b) and math.isfinite(se_n)):
        return Change(cell, metric, b, n, n - b, NOT_JUDGED, no_se)
    scales = [r.scale for r in raw if r is not None and math.isfinite(r.scale)]
    floor = _floor(cell["dtype"], float(np.mean(scales)) if scales else float("nan"), b, n)
    se = max(math.sqrt(se_b**2 + se_n**2), floor)
    delta, k = n - b, se_threshold
    rule = f"|change| {'>' if abs(delta) > k * se else '<='} {k:g} x SE {se:.3g}"
    if abs(delta) <= k * se:
        return Change(cell, metric, b, n, delta, OK, rule, se)
    return Change(cell, metric, b, n, delta, REGRESSION if abs(n) > abs(b) else IMPROVEMENT, rule, se)


def _rule_factor(cell, metric, base, new, *, throughput_factor, timings_judged, min_time, **_) -> Change:
    b, n = _f(base, metric), _f(new, metric)
    if not (math.isfinite(b) and math.isfinite(n) and b > 0 and n > 0):
        return Change(cell, metric, b, n, None, NOT_JUDGED, "no timing")
    ratio = n / b
    short = min(_f(base, "time_median_s"), _f(new, "time_median_s"))
    if not timings_judged:
        return Change(cell, metric, b, n, ratio, NOT_JUDGED, "different hardware or executor")
    if math.isfinite(short) and short < min_time:
        return Change(cell, metric, b, n, ratio, NOT_JUDGED,
                      f"median time {short * 1e3:.2g} ms < min_time {min_time * 1e3:g} ms")
    f = throughput_factor
    verdict = REGRESSION if b / n > f else IMPROVEMENT if ratio > f else OK
    rule = {REGRESSION: f"slower by more than x{f:g}", IMPROVEMENT: f"faster by more than x{f:g}",
            OK: f"within x{f:g}"}[verdict]
    return Change(cell, metric, b, n, ratio, verdict, rule)


RULES = {"wilson": _rule_wilson, "appears": _rule_appears, "se": _rule_se, "factor": _rule_factor}


def judge_cell(cell: dict, base: dict, new: dict, *, se_threshold: float, throughput_factor: float,
               timings_judged: bool, min_time: float = 0.0,
               raw: tuple[RawStats | None, RawStats | None] = (None, None)) -> list[Change]:
    """The verdicts on one cell's judged metrics (rows of cells.csv as dicts). A metric that
    was a number in the baseline and is none in the new run is a regression, whatever its rule."""
    out = []
    for m in JUDGED:
        judged = m.rule != "factor" or timings_judged  # timings of other hardware are not judged at all
        if judged and math.isfinite(_f(base, m.name)) and math.isnan(_f(new, m.name)):
            out.append(Change(cell, m.name, _f(base, m.name), _f(new, m.name), None, REGRESSION,
                              "a number in the baseline, none in the new run"))
        else:
            out.append(RULES[m.rule](cell, m.name, base, new, se_threshold=se_threshold, raw=raw,
                                     throughput_factor=throughput_factor, timings_judged=timings_judged,
                                     min_time=min_time))
    return out


# ---------------------------------------------------------------------- two runs


def _other(r: dict | None, which: str) -> str:
    if r is None:
        return f"absent from the {which} run"
    reason = "" if pd.isna(r.get("reason")) else f": {r['reason']}"
    return f"{r.get('status')} in the {which} run{reason}"


def _notes(base: Run, new: Run, mismatches: list[str], same_executor: bool,
           config_diff: list[str]) -> list[str]:
    notes = []
    if mismatches:
        notes.append("throughput is reported, not judged: the runs' hardware identity differs (or a "
                     "run does not record it): " + "; ".join(mismatches))
    elif not same_executor:
        notes.append(f"executors differ ({base.meta.executor} vs {new.meta.executor}): "
                     "throughput is reported, not judged")
    if config_diff:
        notes.append("configs differ: " + "; ".join(config_diff))
    ds_b, ds_n = base.meta.dataset.get("sha256"), new.meta.dataset.get("sha256")
    if ds_b and ds_n and ds_b != ds_n:
        notes.append("the runs used different data (dataset sha256 differs)")
    mb, mn = base.meta.models, new.meta.models
    changed = sorted(m for m in set(mb) & set(mn) if mb[m] != mn[m])
    if changed:
        notes.append("model weights differ for " + ", ".join(changed))
    return notes


def _check_usable(run: Run, which: str) -> None:
    """CompareError (exit 2) unless compare can judge the run: finished, its judged metric
    columns present, every row a cell."""
    if run.meta.status not in ("complete", "failed"):  # every cell ran (failed ones are judged as such)
        raise CompareError(f"the {which} run {run.root} is {run.meta.status!r}, not complete: continue it "
                           f"with `lvm-bench run --resume --out {run.root}` before comparing")
    # as written (load_run drops rows it cannot place), in today's format
    table = formats.upgrade("cells", pd.read_csv(run.root / "cells.csv"), run.meta.format_version)
    lacking = [m.name for m in JUDGED if m.name not in table]
    if lacking:
        raise CompareError(f"{run.root / 'cells.csv'} lacks the judged metric column(s) "
                           f"{', '.join(lacking)}: not a table compare can judge (rewrite it with "
                           "`lvm-bench run --resume`)")
    bad = table[table[list(AXES)].isna().any(axis=1)]
    if len(bad):
        raise CompareError(f"{run.root / 'cells.csv'}: {len(bad)} row(s) lack a cell coordinate (row "
                           f"{int(bad.index[0]) + 2} of the file): a truncated or edited table")


def compare_runs(baseline_dir: str | Path, new_dir: str | Path, *, se_threshold: float = SE_THRESHOLD,
                 throughput_factor: float = THROUGHPUT_FACTOR, min_time: float = MIN_TIME) -> Comparison:
    """Compare two run directories (see the module docstring for the rules)."""
    if not (isinstance(se_threshold, (int, float)) and math.isfinite(se_threshold) and se_threshold > 0):
        raise CompareError(f"se_threshold={se_threshold!r}; accepted: a positive number of standard errors")
    if not (isinstance(throughput_factor, (int, float)) and math.isfinite(throughput_factor)
            and throughput_factor >= 1):
        raise CompareError(f"throughput_factor={throughput_factor!r}; accepted: a number >= 1")
    base, new = load_run(baseline_dir), load_run(new_dir)
    for r, which in ((base, "baseline"), (new, "new")):
        _check_usable(r, which)
    base_rows, new_rows = ({Cell.of(r): r for r in x.cells.to_dict("records")} for x in (base, new))

    def ok(r: dict | None) -> bool:
        return r is not None and r.get("status") == "ok"

    common = [c for c in base_rows if ok(base_rows[c]) and ok(new_rows.get(c))]
    config_diff = _config_differences(base.meta.config, new.meta.config)
    if not common:
        why = ("the configs differ in " + "; ".join(config_diff)) if config_diff else "the configs are equal"
        raise CompareError(f"no common cells: no cell was measured in both {baseline_dir} "
                           f"({sum(map(ok, base_rows.values()))} measured) and {new_dir} "
                           f"({sum(map(ok, new_rows.values()))} measured); {why}")
    mismatches = identity_mismatches(base.meta, new.meta)
    same_executor = base.meta.executor == new.meta.executor
    timings_judged = not mismatches and same_executor
    notes = _notes(base, new, mismatches, same_executor, config_diff)
    stats_b, stats_n = raw_stats(base.raw), raw_stats(new.raw)
    if stats_b is None or stats_n is None:
        notes.append("a run has no raw rows: rounding_error_mean is reported, not judged")
    rows: list[Change] = []
    for c in common:
        raw = (stats_b.get(c) if stats_b else None, stats_n.get(c) if stats_n else None)
        rows += judge_cell(c.axes(), base_rows[c], new_rows[c], se_threshold=se_threshold,
                           throughput_factor=throughput_factor, timings_judged=timings_judged,
                           min_time=min_time, raw=raw)
    only_b, only_n = [], []
    for c, r in base_rows.items():
        if ok(r) and not ok(new_rows.get(c)):
            nr = new_rows.get(c)
            if nr is None or nr.get("status") == "failed":  # measured before; absent or crashing now
                rows.append(Change(c.axes(), "status", "ok", "absent" if nr is None else "failed", None,
                                   REGRESSION, _other(nr, "new")))
            if nr is None or nr.get("status") != "failed":
                only_b.append({**c.axes(), "other": _other(nr, "new")})
    for c, r in new_rows.items():
        if ok(r) and not ok(base_rows.get(c)):
            only_n.append({**c.axes(), "other": _other(base_rows.get(c), "baseline")})
    not_measured = sum(1 for c in set(base_rows) & set(new_rows)
                       if not ok(base_rows[c]) and not ok(new_rows[c]))
    hardware = {"baseline": base.meta.hardware, "new": new.meta.hardware}
    return Comparison(str(baseline_dir), str(new_dir), float(se_threshold), float(throughput_factor),
                      not mismatches, timings_judged, rows, only_b, only_n, not_measured, notes, hardware,
                      hardware_mismatches=mismatches)


def run(baseline: str | Path, new: str | Path, *, se_threshold: float = SE_THRESHOLD,
        throughput_factor: float = THROUGHPUT_FACTOR, min_time: float = MIN_TIME, fmt: str = "text",
        out: str | Path | None = None) -> int:
    """The `compare` verb: print the report in ``fmt`` (text, markdown, json), also write it to
    ``out``, and say the summary on stderr; return the exit code (0, or 1 on a regression)."""
    if fmt not in ("text", "markdown", "json"):
        raise CompareError(f"fmt={fmt!r}; accepted: text, markdown, json")
    comp = compare_runs(baseline, new, se_threshold=se_threshold, throughput_factor=throughput_factor,
                        min_time=min_time)
    text = comp.render(fmt)
    sys.stdout.write(text)
    if out is not None:
        try:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).write_text(text)
        except OSError as e:
            raise CompareError(f"--out {out}: cannot write ({e.strerror})") from e
    print(f"lvm-bench compare: {comp.summary()}", file=sys.stderr)
    return comp.exit_code
