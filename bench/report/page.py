"""`lvm-bench report RUN`: findings, summary tables, figures and environment of a run.

Writes ``report.md``, a self-contained ``report.html`` (figures inlined as
base64 PNG), ``figures/*.png|svg`` and ``tables/summary.csv|md``. Every
sentence of the findings is computed from the run's own numbers; the output is
byte-identical when regenerated from the same run (only meta.json's timestamps
appear in it).

This module only puts the pieces together: the run is read by :mod:`bench.run.store`, the
numbers come from :mod:`bench.report.analysis`, the figures from :mod:`bench.report.figures` (which draw
stored data and never run a model), and the page is written by :mod:`bench.report.render`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from bench.report import analysis as A
from bench.report import figures as F
from bench.report import render
from bench.report.analysis import shown
from bench.report.figures import FIGURE_STEMS
from bench.report.findings import Finding, findings
from bench.report.plotkit import DPI, FigureSpec, save, style
from bench.report.render import plural
from bench.report.sections import precision as P
from bench.report.sections import proposal as Q
from bench.report.sections import theory as T
from bench.run.store import Run, RunError, atomic_write, load_run, write_text

__all__ = ["FIGURE_STEMS", "build_figures", "write_report"]
STEMS = (*FIGURE_STEMS, P.STEM, Q.STEM, T.STEM)


def build_figures(run: Run) -> list[FigureSpec]:
    """Every figure (drawn or with the reason it is not)."""
    ok, o = run.ok, A.order(run)
    if ok.empty:
        return [FigureSpec(s, t, "", skipped="the run has no measured cell.") for s, t in F.TITLES.items()]
    return [F.underflow_vs_n(ok, o), F.bias_vs_n(ok, o), F.variance_vs_n(ok, o),
            F.loglik_distribution(run.loglik, o, o.dtypes),
            F.throughput(A.throughput(run), o, run.meta.matmul_peak_gflops),
            F.underflow_heatmap(ok, o), F.k2_posterior(A.k2_panels(run))] + (
                [P.figure(run, o)] if (run.cells["precision"] != "cast").any() else []) + [
                T.figure(run, o)] + ([Q.figure(run, o)] if (run.cells["proposal"] != "prior").any() else [])


def side_tables(run: Run) -> dict[str, pd.DataFrame]:
    """The tables beside the summary, by CSV name, each computed once: cast against autocast,
    prior against encoder, and theory against measurement (empty where the run has no such cells)."""
    return {"precision": P.table(run), "proposal": Q.table(run),
            **{name: make(run) for name, (make, _) in T.TABLES.items()}}


THEORY_HEADS = ("Underflow of probability space: predicted and measured (each model's largest N)",
                "Rounding of the log-sum-exp reduction against its forward error bound",
                "Float64 log-space bias against the delta method")


def _blocks(run: Run, found: list[Finding], summary: pd.DataFrame, specs: list[FigureSpec],
            tables: dict[str, pd.DataFrame]) -> list[tuple]:
    """The report as render.page's blocks, from the side tables :func:`side_tables` made.
    ``run.problems`` is complete only once the figures and findings have read the run's files,
    so this comes last."""
    meta, ok, cells = run.meta, run.ok, run.cells
    counts = cells["status"].value_counts()
    b: list[tuple] = [("h1", f"lvm-bench report: {meta.run.get('name', run.root.name)}")]
    rows = ", ".join(f"{counts[s]:,} {s}" for s in sorted(counts.index))
    b.append(("p", f"{plural(len(ok), 'measured cell')} (rows of cells.csv: {rows}), each on "
                   f"{shown(meta.run.get('n_data'))} test digits × {shown(meta.run.get('repeats'))} "
                   "repeats. Errors are in nats; ground truth is log p(x) from quadrature or a large "
                   "importance-sampling run (see Environment)."))
    if run.problems:
        b.append(("note", "This run is incomplete or partly unreadable; see “What is missing” below."))
    b += [("h2", "Findings"), ("ul", [f.sentence for f in found] or ["No measured cell: nothing to find."])]
    b += [("h2", "Summary by estimator and dtype")]
    if summary.empty:
        b.append(("p", "No measured cell."))
    else:
        b.append(("p", "Underflow rate: share of all estimates that were −∞, pooled over N, models, "
                       "parametrizations and devices, with its Wilson 95% interval. Median rounding error: "
                       "median over cells of the mean |estimate − float64 estimate on the same draws|. Bias "
                       "at the largest N: mean over models and parametrizations of mean(estimate − truth), "
                       "over the cells whose bias the ground truth resolves (|bias| ≥ 10 × its error). "
                       "Throughput: median over models of terms p(x_b|z_i) per second at the largest N. "
                       "Machine-readable: tables/summary.csv."))
        b.append(("table", A.summary_display(summary)))
    versus, against = tables["precision"], tables["proposal"]
    theory = {name: tables[name] for name in T.TABLES}
    if not versus.empty:
        b += [("h2", "Precision policy: cast or autocast"),
              ("p", "Cast runs the model and every reduction in the dtype; autocast keeps the float32 model "
                    "under torch.autocast, which runs linear layers and matrix products in the dtype and "
                    "leaves other ops as its op lists say. Every other table, figure and finding of this "
                    "report reads the cast cells; here both, for each estimator and dtype measured under "
                    "both. Machine-readable: tables/precision.csv."),
              ("table", P.display(versus))]
    if not against.empty:
        b += [("h2", "Proposal: the prior or the trained encoder"),
              ("p", "With the prior as proposal the estimators average p(x|z_i) over z_i ~ N(0, I); with the "
                    "encoder, the weights p(x|z_i) p(z_i) / q(z_i|x) over z_i ~ q(z|x) of the model's own "
                    "trained encoder (the IWAE evaluation protocol). Every other table and figure of this "
                    "report reads the prior cells; here both, for float64 log space and float32 probability "
                    "space (biases the ground truth does not resolve are marked). Machine-readable, every "
                    "estimator, dtype and N: tables/proposal.csv."),
              ("table", Q.display(against))]
    if any(not t.empty for t in theory.values()):
        b += [("h2", "Theory against measurement"),
              ("p", "Each prediction is set beside what the run measured; how each is made and what it "
                    "assumes is in bench/theory.py. Machine-readable, at every N: tables/theory_*.csv.")]
        for (name, t), head in zip(theory.items(), THEORY_HEADS, strict=True):
            if not t.empty:
                b += [("h3", head), ("table", T.TABLES[name][1](t))]
    b.append(("h2", "Figures"))
    for i, s in enumerate(specs, 1):
        b += [("h3", f"Figure {i}. {s.title}"), ("figure", s)]
    b.append(("h2", "What is measured and what is missing"))
    skipped = cells[cells["status"] != "ok"]
    items = [f"{n:,} cell(s) {st}: {r if isinstance(r, str) and r else 'no reason recorded'}"
             for (st, r), n in skipped.groupby(["status", skipped["reason"].fillna("")]).size().items()]
    excluded = pd.Series([e.get("reason", "?") for e in meta.excluded_cells], dtype=object)
    items += [f"{n:,} cell(s) excluded by the grid's rules: {r}"
              for r, n in excluded.value_counts().sort_index().items()]
    b.append(("ul", items + run.problems or ["Nothing: every cell of the grid was measured."]))
    b += [("h2", "Environment"), ("table", pd.DataFrame(A.environment_rows(meta), columns=["", "value"]))]
    return b


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the report of ``run_dir`` into ``out`` (default: the run); return report.html's path."""
    run = load_run(run_dir)
    out = Path(out) if out is not None else run.root
    fig_dir, tab_dir = out / "figures", out / "tables"
    try:
        fig_dir.mkdir(parents=True, exist_ok=True)
        tab_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"--out {out}: cannot create ({e.strerror})") from e
    with style():
        specs = build_figures(run)
        for s in specs:
            if s.figure is not None:
                save(s.figure, fig_dir / s.name)
    for stem in STEMS:  # a figure a previous report drew but this one cannot: remove it
        if not any(s.name == stem and s.figure is not None for s in specs):
            for ext in (".png", ".svg"):
                (fig_dir / f"{stem}{ext}").unlink(missing_ok=True)
    found = findings(run)
    summary = A.summary_table(run)
    atomic_write(tab_dir / "summary.csv", lambda f: summary.to_csv(f, index=False, float_format="%.6g"))
    tables = side_tables(run)
    for name, t in tables.items():  # one CSV per table; a table this run cannot fill is removed
        if t.empty:
            (tab_dir / f"{name}.csv").unlink(missing_ok=True)
        else:
            atomic_write(tab_dir / f"{name}.csv",
                         lambda f, t=t: t.to_csv(f, index=False, float_format="%.6g"))
    disp = A.summary_display(summary)
    numeric = [c for c in disp.columns if c not in render.TEXT_COLUMNS]
    write_text(tab_dir / "summary.md", render.table(disp, "markdown", numeric=numeric) + "\n"
               if not disp.empty else "No measured cell.\n")
    md, page = render.page(_blocks(run, found, summary, specs, tables), fig_dir, DPI)
    write_text(out / "report.md", md)
    write_text(out / "report.html", page)
    return out / "report.html"
