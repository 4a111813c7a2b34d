"""`lvm-bench compare BASELINE NEW`: what changed between two runs, and whether it matters.

Cells are matched on their axes (estimator, dtype, n_samples, model,
parametrization, device); only cells measured (status "ok") in both runs are
compared. Per cell and metric the report gives the baseline value, the new
value and the change, and flags a change only when it is statistically
meaningful:

``underflow_rate``
    regression when the new rate lies above the baseline's 95% Wilson interval
    (``underflow_ci_high``), improvement when below it (``underflow_ci_low``).
``nonfinite_rate``
    regression when it goes from 0 to > 0, improvement from > 0 to 0.
``bias``
    regression when ``|new - baseline| > k * SE`` and ``|bias|`` grew,
    improvement when it shrank, with ``SE = sqrt(SE_base^2 + SE_new^2)``
    (the runs treated as independent; when both share the ground truth and
    the draws this overstates the SE of the difference, so the rule errs on
    the side of not flagging). Each run's SE is the larger of cells.csv's
    ``bias_se`` and, from the raw rows, the SE over repeats of the
    datapoint-mean error: ``bias_se`` treats the datapoints as independent,
    but every datapoint of a repeat uses the same draws, and their errors are
    correlated (0.3 for the untrained K = 2 decoder: ``bias_se`` is then 3x
    too small at B = 32).
``rounding_error_mean``
    the same rule, with each run's SE derived from the raw per-estimate rows:
    the larger of ``std(|estimate - replay_float64|, ddof=1) / sqrt(n)`` over
    the cell's finite rows and the SE over repeats of the datapoint-mean (the
    same correlation). Not judged when a run has no raw file.
``terms_per_s``
    regression when ``baseline / new > throughput_factor``, improvement when
    ``new / baseline > throughput_factor``; judged only when both runs' meta.json
    report the same hardware (:func:`bench.environment.hardware_key`) and the
    same executor, and only for cells whose median timed run takes at least
    ``min_time`` (default 10 ms: shorter ones are dominated by scheduler noise;
    back-to-back runs here flagged 77 of 504 cells, median 0.9 ms); otherwise
    reported and marked "not judged".

Both SEs get a floor, ``unit_roundoff(dtype) * scale``, with scale the mean
``|replay_float64|`` of the cell's raw rows (the size of the log p(x) being
rounded; ``|value|`` without raw rows): a change smaller than one rounding of
the estimate itself is never flagged, so deterministic cells whose SE is 0 do
not flag on last-bit noise.

A cell measured in the baseline that *failed* in the new run is a regression
(metric ``status``); cells measured in one run only (absent, skipped or failed
in the other) are listed, never dropped. Exit code: 0 nothing regressed, 1 a
regression, 2 bad input (:class:`CompareError`, a ValueError, or RunError).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lvm.numerics import dtype_facts

from .config import PARAM_NAMES
from .environment import hardware_key
from .store import load_raw, load_run

METRICS = ("underflow_rate", "nonfinite_rate", "bias", "rounding_error_mean", "terms_per_s")
MIN_TIME = 0.01  # s: cells timed faster than this are dominated by scheduler noise, not judged
REGRESSION, IMPROVEMENT, OK, NOT_JUDGED = "regression", "improvement", "ok", "not judged"
MARKDOWN_LIMIT = 60_000  # GitHub comments hold 65,536 characters


class CompareError(ValueError):
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
        return cell_label(self.cell)


@dataclass
class Comparison:
    baseline: str
    new: str
    k: float
    throughput_factor: float
    hardware_match: bool
    timings_judged: bool
    rows: list[Change]
    only_in_baseline: list[dict[str, Any]]
    only_in_new: list[dict[str, Any]]
    not_measured: int = 0  # cells in both tables that neither run measured
    notes: list[str] = field(default_factory=list)
    hardware: dict[str, Any] = field(default_factory=dict)

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
        return (f"{self.n_cells} cells compared: {reg} regression{'s' * (reg != 1)}, "
                f"{imp} improvement{'s' * (imp != 1)}; {len(self.only_in_baseline)} cells only in "
                f"the baseline, {len(self.only_in_new)} only in the new run"
                + (f", {self.not_measured} measured in neither" if self.not_measured else ""))

    def _header(self) -> list[tuple[str, str]]:
        hw = self.hardware.get("new") or {}
        where = f"{hw.get('cpu')}, {hw.get('cpu_count')} CPUs" + "".join(
            f", {g.get('name')}" for g in hw.get("gpus", []))
        timing = ("same hardware: throughput judged" if self.timings_judged else
                  "throughput reported, not judged: " + ("different executors" if self.hardware_match
                                                         else "different hardware"))
        return [("baseline", self.baseline), ("new", self.new),
                ("rules", f"k = {self.k:g} SE (bias, rounding error), baseline 95% Wilson interval "
                          f"(underflow), 0 -> >0 (non-finite), x{self.throughput_factor:g} (throughput)"),
                ("timings", f"{timing} ({where})")]

    # ------------------------------------------------------------------ renderers

    def to_json(self) -> str:
        def rows(changes):
            return [_clean({**asdict(c), "label": c.label}) for c in changes]

        doc = {"baseline": self.baseline, "new": self.new, "k": self.k,
               "throughput_factor": self.throughput_factor, "hardware_match": self.hardware_match,
               "timings_judged": self.timings_judged, "exit_code": self.exit_code,
               "summary": self.summary(), "n_cells": self.n_cells,
               "regressions": rows(self.regressions), "improvements": rows(self.improvements),
               "only_in_baseline": _clean(self.only_in_baseline), "only_in_new": _clean(self.only_in_new),
               "not_measured": self.not_measured, "notes": self.notes,
               "hardware": _clean(self.hardware), "rows": rows(self.rows)}
        return json.dumps(doc, indent=2)

    def to_table(self) -> str:
        out = ["lvm-bench compare", *(f"{k + ':':<10}{v}" for k, v in self._header()), "", self.summary()]
        out += [f"note: {n}" for n in self.notes]
        cols = ["cell", "metric", "baseline", "new", "change", "rule"]
        for title, changes in (("REGRESSIONS", self.regressions), ("IMPROVEMENTS", self.improvements)):
            if changes:
                out += ["", f"{title} ({len(changes)})",
                        *_text_table(cols, [_change_cells(c) for c in changes])]
        for title, cells in (("ONLY IN BASELINE", self.only_in_baseline), ("ONLY IN NEW", self.only_in_new)):
            if cells:
                out += ["", f"{title} ({len(cells)})",
                        *_text_table(["cell", "other run"], [[cell_label(c), c["other"]] for c in cells])]
        if self.rows:
            head, body = self._wide()
            out += ["", f"ALL COMPARED CELLS ({self.n_cells}; baseline -> new; "
                    "! regression, + improvement, ? not judged)", *_text_table(head, body)]
        return "\n".join(out) + "\n"

    def to_markdown(self) -> str:
        """For a pull-request comment: kept under GitHub's 65,536 characters, regressions first."""
        reg = self.regressions
        verdict = (f"**{len(reg)} regression{'s' * (len(reg) != 1)}**" if reg
                   else "**no regression**")
        out = [f"### lvm-bench compare: {verdict}", "", self.summary() + ".", ""]
        out += [f"- {k}: {v}" for k, v in self._header()]
        out += [f"- note: {n}" for n in self.notes]
        budget = [MARKDOWN_LIMIT - sum(len(line) + 1 for line in out) - 1000]

        def fit(lines: list[str]) -> list[str]:
            kept = []
            for line in lines:
                if len(line) + 1 > budget[0]:
                    return [*kept, "", f"{len(lines) - len(kept)} more rows left out to fit a comment: "
                                       "see --format json"]
                kept.append(line)
                budget[0] -= len(line) + 1
            return kept

        cols = ["cell", "metric", "baseline", "new", "change", "rule"]
        for title, changes in (("Regressions", reg), ("Improvements", self.improvements)):
            if changes:
                out += ["", f"#### {title} ({len(changes)})", "",
                        *fit(_md_table(cols, [_change_cells(c) for c in changes]))]
        for title, cells in (("Only in the baseline", self.only_in_baseline),
                             ("Only in the new run", self.only_in_new)):
            if cells:
                out += ["", f"#### {title} ({len(cells)})", "",
                        *fit(_md_table(["cell", "other run"], [[cell_label(c), c["other"]] for c in cells]))]
        if self.rows:
            head, body = self._wide()
            out += ["", "<details><summary>All compared cells (baseline &rarr; new; ! regression, "
                    "+ improvement, ? not judged)</summary>", "", *fit(_md_table(head, body)),
                    "", "</details>"]
        return "\n".join(out) + "\n"

    def _wide(self) -> tuple[list[str], list[list[str]]]:
        """One row per cell, one column per metric: 'baseline -> new' with a verdict mark."""
        mark = {REGRESSION: "! ", IMPROVEMENT: "+ ", NOT_JUDGED: "? ", OK: ""}
        by_cell: dict[tuple, dict[str, Change]] = {}
        for r in self.rows:
            by_cell.setdefault(tuple(r.cell.values()), {})[r.metric] = r
        head = ["cell", *METRICS]
        body = []
        for changes in by_cell.values():
            first = next(iter(changes.values()))
            line = [first.label]
            for m in METRICS:
                c = changes.get(m)
                if c is None:
                    line.append("")
                elif _missing(c.baseline) and _missing(c.new):
                    line.append("n/a")
                else:
                    line.append(f"{mark[c.verdict]}{_fmt(c.baseline, m)} -> {_fmt(c.new, m)}")
            if "status" in changes:
                line[0] += " (failed in new)"
            body.append(line)
        return head, body


# ---------------------------------------------------------------------- helpers

def cell_label(cell: dict[str, Any]) -> str:
    return (f"{cell['estimator']} {cell['dtype']} N={cell['n_samples']} {cell['model']} "
            f"{cell['parametrization']} {cell['device']}")


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN and infinities as None, numpy scalars as Python ones."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, (float, np.floating)) and math.isnan(v))


def _fmt(v: Any, metric: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    v = float(v)
    if math.isnan(v):
        return "n/a"
    if metric in ("underflow_rate", "nonfinite_rate"):
        return f"{100 * v:.3g}%"
    if metric == "terms_per_s":
        return f"{v:.3g}/s"
    return f"{v:.4g}"


def _fmt_change(c: Change) -> str:
    if c.change is None or (isinstance(c.change, float) and math.isnan(c.change)):
        return "-"
    if c.metric == "terms_per_s":
        return f"x{c.change:.3g}"
    if c.metric in ("underflow_rate", "nonfinite_rate"):
        return f"{100 * c.change:+.3g} pts"
    return f"{c.change:+.3g}"


def _change_cells(c: Change) -> list[str]:
    return [c.label, c.metric, _fmt(c.baseline, c.metric), _fmt(c.new, c.metric), _fmt_change(c), c.rule]


def _text_table(head: list[str], body: list[list[str]]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*head).rstrip(), fmt.format(*("-" * w for w in widths)),
            *(fmt.format(*map(str, row)).rstrip() for row in body)]


def _md_table(head: list[str], body: list[list[str]]) -> list[str]:
    def esc(x: Any) -> str:
        return str(x).replace("|", "\\|")

    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *("| " + " | ".join(esc(x) for x in row) + " |" for row in body)]


def _f(row: dict, key: str) -> float:
    try:
        v = row.get(key)
        return float("nan") if v is None else float(v)
    except (TypeError, ValueError):
        return float("nan")


# ---------------------------------------------------------------------- loading

def _cells(path: str | Path) -> tuple[pd.DataFrame, dict]:
    cells, meta = load_run(path)
    missing = [c for c in (*PARAM_NAMES, "status") if c not in cells.columns]
    if missing:
        raise CompareError(f"{path}: cells.csv lacks the columns {', '.join(missing)}; "
                           "is this a run made by `lvm-bench run`?")
    cells = cells.copy()
    cells["n_samples"] = cells["n_samples"].astype(int)
    for p in PARAM_NAMES:
        if p != "n_samples":
            cells[p] = cells[p].astype(str)
    return cells, meta


def _key(row: dict) -> tuple:
    return tuple(int(row[p]) if p == "n_samples" else str(row[p]) for p in PARAM_NAMES)


def _cell(key: tuple) -> dict[str, Any]:
    return dict(zip(PARAM_NAMES, key, strict=True))


@dataclass(frozen=True)
class RawStats:
    """What the raw per-estimate rows of one cell add to its cells.csv row."""

    rounding_se: float  # SE of the mean |estimate - replay_float64|
    bias_se: float  # SE of the mean error over repeats of the datapoint-mean (draws shared); NaN if none
    scale: float  # mean |replay_float64|: the size of the log p(x) being rounded


def _repeat_se(values: np.ndarray) -> float:
    """SE of the mean of an [R, B] table whose rows (repeats) are independent and columns are not.

    Every datapoint of a repeat is estimated from the same draws, so their errors are
    correlated (for the untrained K = 2 decoder, by about 0.3: the independent-rows SE is then
    3x too small at B = 32). Uses the datapoints finite in every repeat.
    """
    keep = np.isfinite(values).all(0)
    if values.shape[0] < 2 or not keep.any():
        return float("nan")
    means = values[:, keep].mean(1)
    return float(means.std(ddof=1) / math.sqrt(len(means)))


def _raw_stats(path: str | Path) -> dict[tuple, RawStats] | None:
    """Per cell :class:`RawStats` from the run's raw file; None when the run has none."""
    raw = load_raw(path)
    need = {*PARAM_NAMES, "repeat", "datapoint", "estimate", "replay_float64"}
    if raw is None or not need <= set(raw.columns):
        return None
    raw = raw.copy()
    est, rep = raw["estimate"].to_numpy(float), raw["replay_float64"].to_numpy(float)
    raw["_rnd"] = np.where(np.isfinite(est) & np.isfinite(rep), np.abs(est - rep), np.nan)
    raw["_err"] = est - raw["truth"].to_numpy(float) if "truth" in raw else np.nan
    raw["_scale"] = np.where(np.isfinite(rep), np.abs(rep), np.nan)
    out = {}
    for key, g in raw.groupby(list(PARAM_NAMES), sort=False):
        rnd = g["_rnd"].to_numpy()
        rnd_fin = rnd[np.isfinite(rnd)]
        row_se = float(rnd_fin.std(ddof=1) / math.sqrt(len(rnd_fin))) if len(rnd_fin) >= 2 else float("nan")
        try:
            table = g.pivot(index="repeat", columns="datapoint", values=["_rnd", "_err"])
        except ValueError:  # duplicated (repeat, datapoint): no repeat structure to use
            rep_rnd = rep_err = float("nan")
        else:
            rep_rnd, rep_err = _repeat_se(table["_rnd"].to_numpy()), _repeat_se(table["_err"].to_numpy())
        # the larger of the two: conservative when the datapoints are correlated and when the
        # few repeats happen to agree
        finite = [v for v in (row_se, rep_rnd) if math.isfinite(v)]
        scale = g["_scale"].dropna()
        out[_key(_cell(key))] = RawStats(max(finite) if finite else float("nan"), rep_err,
                                         float(scale.mean()) if len(scale) else float("nan"))
    return out


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

def _floor(dtype: str, scale: float, *values: float) -> float:
    """unit roundoff of the cell's dtype x the size of what it rounds (see the module docstring)."""
    try:
        u = dtype_facts(dtype).unit_roundoff
    except ValueError:  # a dtype this version does not know: its float64 floor
        u = dtype_facts("float64").unit_roundoff
    if not math.isfinite(scale):
        scale = max((abs(v) for v in values if math.isfinite(v)), default=0.0)
    return u * scale


def _judge_se(cell, metric, b, n, se_b, se_n, k, floor, no_se: str = "no standard error") -> Change:
    """Shared rule of bias and rounding_error_mean: |change| > k * SE, direction by |value|."""
    if not (math.isfinite(b) and math.isfinite(n)):
        why = "no finite estimate in " + ("either run" if not (math.isfinite(b) or math.isfinite(n))
                                          else "the baseline" if not math.isfinite(b) else "the new run")
        return Change(cell, metric, b, n, None, NOT_JUDGED, why)
    if not (math.isfinite(se_b) and math.isfinite(se_n)):
        return Change(cell, metric, b, n, n - b, NOT_JUDGED, no_se)
    se = max(math.sqrt(se_b**2 + se_n**2), floor)
    delta = n - b
    rule = f"|change| {'>' if abs(delta) > k * se else '<='} {k:g} x SE {se:.3g}"
    if abs(delta) <= k * se:
        return Change(cell, metric, b, n, delta, OK, rule, se)
    verdict = REGRESSION if abs(n) > abs(b) else IMPROVEMENT
    return Change(cell, metric, b, n, delta, verdict, rule, se)


def judge_cell(cell: dict, base: dict, new: dict, *, k: float, throughput_factor: float,
               timings_judged: bool, min_time: float = 0.0,
               raw: tuple[RawStats | None, RawStats | None] = (None, None)) -> list[Change]:
    """The verdicts on one cell's metrics (rows of cells.csv as dicts)."""
    out = []
    # underflow: outside the baseline's Wilson interval
    b, n = _f(base, "underflow_rate"), _f(new, "underflow_rate")
    lo, hi = _f(base, "underflow_ci_low"), _f(base, "underflow_ci_high")
    if not (math.isfinite(b) and math.isfinite(n) and math.isfinite(lo) and math.isfinite(hi)):
        out.append(Change(cell, "underflow_rate", b, n, n - b, NOT_JUDGED, "no rate or interval"))
    else:
        ci = f"baseline 95% Wilson [{100 * lo:.3g}%, {100 * hi:.3g}%]"
        verdict = REGRESSION if n > hi else IMPROVEMENT if n < lo else OK
        where = "above" if n > hi else "below" if n < lo else "inside"
        out.append(Change(cell, "underflow_rate", b, n, n - b, verdict, f"{where} {ci}"))
    # non-finite: 0 -> > 0
    b, n = _f(base, "nonfinite_rate"), _f(new, "nonfinite_rate")
    if not (math.isfinite(b) and math.isfinite(n)):
        out.append(Change(cell, "nonfinite_rate", b, n, None, NOT_JUDGED, "no rate"))
    else:
        verdict = REGRESSION if b == 0 and n > 0 else IMPROVEMENT if b > 0 and n == 0 else OK
        rule = {REGRESSION: "new non-finite estimates (was 0)", IMPROVEMENT: "no non-finite estimate now",
                OK: "flagged only from 0 to > 0 or back"}[verdict]
        out.append(Change(cell, "nonfinite_rate", b, n, n - b, verdict, rule))
    # bias and rounding error: k standard errors
    dtype = cell["dtype"]
    rb, rn = raw
    scales = [r.scale for r in (rb, rn) if r is not None and math.isfinite(r.scale)]
    scale = float(np.mean(scales)) if scales else float("nan")
    b, n = _f(base, "bias"), _f(new, "bias")
    se_b, se_n = _f(base, "bias_se"), _f(new, "bias_se")
    if rb is not None and math.isfinite(rb.bias_se):  # datapoints share draws: never below the repeat SE
        se_b = max(se_b, rb.bias_se) if math.isfinite(se_b) else rb.bias_se
    if rn is not None and math.isfinite(rn.bias_se):
        se_n = max(se_n, rn.bias_se) if math.isfinite(se_n) else rn.bias_se
    out.append(_judge_se(cell, "bias", b, n, se_b, se_n, k, _floor(dtype, scale, b, n)))
    b, n = _f(base, "rounding_error_mean"), _f(new, "rounding_error_mean")
    se_b = rb.rounding_se if rb is not None else float("nan")
    se_n = rn.rounding_se if rn is not None else float("nan")
    out.append(_judge_se(cell, "rounding_error_mean", b, n, se_b, se_n, k, _floor(dtype, scale, b, n),
                         "no standard error: no raw rows"))
    # throughput: a factor, on the same hardware only
    b, n = _f(base, "terms_per_s"), _f(new, "terms_per_s")
    if not (math.isfinite(b) and math.isfinite(n) and b > 0 and n > 0):
        out.append(Change(cell, "terms_per_s", b, n, None, NOT_JUDGED, "no timing"))
    else:
        ratio = n / b
        short = min(_f(base, "time_median_s"), _f(new, "time_median_s"))
        if not timings_judged:
            out.append(Change(cell, "terms_per_s", b, n, ratio, NOT_JUDGED, "different hardware or executor"))
        elif math.isfinite(short) and short < min_time:
            out.append(Change(cell, "terms_per_s", b, n, ratio, NOT_JUDGED,
                              f"median time {short * 1e3:.2g} ms < min_time {min_time * 1e3:g} ms"))
        else:
            f = throughput_factor
            verdict = REGRESSION if b / n > f else IMPROVEMENT if ratio > f else OK
            rule = {REGRESSION: f"slower by more than x{f:g}", IMPROVEMENT: f"faster by more than x{f:g}",
                    OK: f"within x{f:g}"}[verdict]
            out.append(Change(cell, "terms_per_s", b, n, ratio, verdict, rule))
    return out


def compare_runs(baseline_dir: str | Path, new_dir: str | Path, *, k: float = 4.0,
                 throughput_factor: float = 1.25, min_time: float = MIN_TIME) -> Comparison:
    """Compare two run directories (see the module docstring for the rules)."""
    if not (isinstance(k, (int, float)) and math.isfinite(k) and k > 0):
        raise CompareError(f"k={k!r}; accepted: a positive number of standard errors")
    if not (isinstance(throughput_factor, (int, float)) and math.isfinite(throughput_factor)
            and throughput_factor >= 1):
        raise CompareError(f"throughput_factor={throughput_factor!r}; accepted: a number >= 1")
    base_cells, base_meta = _cells(baseline_dir)
    new_cells, new_meta = _cells(new_dir)
    base_rows = {_key(r): r for r in base_cells.to_dict("records")}
    new_rows = {_key(r): r for r in new_cells.to_dict("records")}

    def ok(r: dict | None) -> bool:
        return r is not None and r.get("status") == "ok"

    common = [key for key in base_rows if ok(base_rows[key]) and ok(new_rows.get(key))]
    config_diff = _config_differences(base_meta.get("config") or {}, new_meta.get("config") or {})
    if not common:
        why = ("the configs differ in " + "; ".join(config_diff)) if config_diff else "the configs are equal"
        raise CompareError(f"no common cells: no cell was measured in both {baseline_dir} "
                           f"({sum(map(ok, base_rows.values()))} measured) and {new_dir} "
                           f"({sum(map(ok, new_rows.values()))} measured); {why}")

    hw_b = (base_meta.get("environment") or {}).get("hardware")
    hw_n = (new_meta.get("environment") or {}).get("hardware")
    hardware_match = bool(hw_b and hw_n) and hardware_key(hw_b) == hardware_key(hw_n)
    same_executor = base_meta.get("executor", "local") == new_meta.get("executor", "local")
    timings_judged = hardware_match and same_executor
    notes = []
    if not hardware_match:
        notes.append("the runs were made on different hardware (or one does not say): "
                     "throughput is reported, not judged")
    elif not same_executor:
        notes.append(f"executors differ ({base_meta.get('executor')} vs {new_meta.get('executor')}): "
                     "throughput is reported, not judged")
    if config_diff:
        notes.append("configs differ: " + "; ".join(config_diff))
    ds_b, ds_n = (base_meta.get("dataset") or {}).get("sha256"), (new_meta.get("dataset") or {}).get("sha256")
    if ds_b and ds_n and ds_b != ds_n:
        notes.append("the runs used different data (dataset sha256 differs)")
    models_b, models_n = base_meta.get("models") or {}, new_meta.get("models") or {}
    changed = sorted(m for m in set(models_b) & set(models_n) if models_b[m] != models_n[m])
    if changed:
        notes.append("model weights differ for " + ", ".join(changed))

    stats_b, stats_n = _raw_stats(baseline_dir), _raw_stats(new_dir)
    if stats_b is None or stats_n is None:
        notes.append("a run has no raw rows: rounding_error_mean is reported, not judged")
    rows: list[Change] = []
    for key in common:
        b, n = base_rows[key], new_rows[key]
        cell = _cell(key)
        raw = (stats_b.get(key) if stats_b else None, stats_n.get(key) if stats_n else None)
        rows += judge_cell(cell, b, n, k=k, throughput_factor=throughput_factor,
                           timings_judged=timings_judged, min_time=min_time, raw=raw)

    def other(r: dict | None, run: str) -> str:
        if r is None:
            return f"absent from the {run} run"
        reason = r.get("reason")
        reason = "" if reason is None or (isinstance(reason, float) and math.isnan(reason)) else f": {reason}"
        return f"{r.get('status')} in the {run} run{reason}"

    only_b, only_n = [], []
    for key, r in base_rows.items():
        if ok(r) and not ok(new_rows.get(key)):
            nr = new_rows.get(key)
            cell = _cell(key)
            if nr is not None and nr.get("status") == "failed":  # it ran before and crashes now
                rows.append(Change(cell, "status", "ok", "failed", None, REGRESSION, other(nr, "new")))
            else:
                only_b.append({**cell, "other": other(nr, "new")})
    for key, r in new_rows.items():
        if ok(r) and not ok(base_rows.get(key)):
            only_n.append({**_cell(key), "other": other(base_rows.get(key), "baseline")})
    both = set(base_rows) & set(new_rows)
    not_measured = sum(1 for key in both if not ok(base_rows[key]) and not ok(new_rows[key]))
    return Comparison(str(baseline_dir), str(new_dir), float(k), float(throughput_factor), hardware_match,
                      timings_judged, rows, only_b, only_n, not_measured, notes,
                      {"baseline": hw_b, "new": hw_n})


def main(args) -> int:
    """The `compare` subcommand: print (and optionally write) the report; return the exit code."""
    comp = compare_runs(args.baseline, args.new, k=args.k, throughput_factor=args.throughput_factor,
                        min_time=getattr(args, "min_time", MIN_TIME))
    fmt = getattr(args, "format", "table") or "table"
    text = {"table": comp.to_table, "markdown": comp.to_markdown, "json": comp.to_json}[fmt]()
    if not text.endswith("\n"):
        text += "\n"
    sys.stdout.write(text)
    if getattr(args, "output", None):
        out = Path(args.output)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text)
        except OSError as e:
            raise CompareError(f"--output {out}: cannot write ({e.strerror})") from e
    print(f"lvm-bench compare: {comp.summary()}", file=sys.stderr)
    return comp.exit_code
