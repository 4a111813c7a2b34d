"""`lvm-bench report RUN`: findings, summary tables, figures and environment of a run.

Writes ``report.md``, a self-contained ``report.html`` (figures inlined as
base64 PNG), ``figures/*.png|svg`` and ``tables/summary.csv|md``. Every
sentence of the findings is computed from the run's own numbers; the output is
byte-identical when regenerated from the same run (only meta.json's timestamps
appear in it).

This module only puts the pieces together: the run is read by :mod:`bench.run.store`, the
numbers come from :mod:`bench.report.analysis`, the sections beside the summary from the registry
:data:`bench.report.sections.SECTIONS`, the figures from :data:`bench.report.figures.FIGURES` (which
draw stored data and never run a model), and the page is written by :mod:`bench.report.render`.
No section or figure has a case of its own here.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from bench.report import analysis as A
from bench.report import render
from bench.report.analysis import shown
from bench.report.figures import FIGURES, listed
from bench.report.findings import Finding, findings
from bench.report.plotkit import DPI, FigureSpec, save, style
from bench.report.render import plural
from bench.report.sections import SECTIONS
from bench.run.store import Run, RunError, atomic_write, load_run, write_text

__all__ = ["build_figures", "write_report"]


def build_figures(run: Run) -> list[FigureSpec]:
    """The figures the run's report lists (:func:`bench.report.figures.listed`), in order: each
    drawn, or with the reason it is not."""
    plots = listed(run)
    if run.ok.empty:
        return [p.spec("", skipped="the run has no measured cell.") for p in plots]
    o = A.order(run)
    return [p.draw(run, o) for p in plots]


def side_tables(run: Run) -> dict[str, pd.DataFrame]:
    """The sections' tables by CSV name, each computed once (empty where the run has no such cells)."""
    return {t.name: t.make(run) for s in SECTIONS for t in s.tables}


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
    for section in SECTIONS:
        b += section.blocks(tables)
    b.append(("h2", "Figures"))
    for i, s in enumerate(specs, 1):  # the i-th figure listed is Figure i, whatever its file's stem
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
    for plot in FIGURES:  # a figure a previous report drew but this one cannot: remove it
        if not any(s.name == plot.stem and s.figure is not None for s in specs):
            for ext in (".png", ".svg"):
                (fig_dir / f"{plot.stem}{ext}").unlink(missing_ok=True)
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
