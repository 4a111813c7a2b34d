"""The report's figures, in the order they are numbered: the main ones, then the sections'.

:data:`FIGURES` is the one list. A run's report lists the figures of :func:`listed` (every main
figure and the theory figure; a section's figure of an axis only where the run measured a level
of that axis other than its default), and the caption of the i-th of them reads "Figure i". The
file keeps its stem whatever the run: a run without autocast cells writes fig9_theory.png and
captions it Figure 8. Every figure is drawn from a :class:`bench.run.store.Run` and its
:class:`bench.report.analysis.Order` (:class:`bench.report.plotkit.Plot`) and none runs a model:
:mod:`bench.report.figures.errors` holds those of the estimates' errors,
:mod:`bench.report.figures.causes` those of their causes and cost, each section module its own.
"""

from __future__ import annotations

from bench.report.figures import causes, errors
from bench.report.plotkit import Plot
from bench.report.sections import engine, precision, proposal, theory
from bench.run.store import Run

MAIN: tuple[Plot, ...] = (errors.UNDERFLOW, errors.BIAS, errors.VARIANCE, causes.LOGLIK, causes.THROUGHPUT,
                          errors.HEATMAP, causes.K2)
FIGURES: tuple[Plot, ...] = (*MAIN, precision.SECTION.plot, theory.SECTION.plot, proposal.SECTION.plot,
                             engine.SECTION.plot)


def listed(run: Run) -> list[Plot]:
    """The figures of ``run``'s report in order: the caption of the i-th (from 1) reads Figure i."""
    return [p for p in FIGURES if p.listed(run)]
