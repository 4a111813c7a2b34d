"""What a report section declares: its tables, its figure, its findings and the axis it compares.

A section is one module of :mod:`bench.report.sections` ending in ``SECTION = Section(...)``;
the registry (:data:`bench.report.sections.SECTIONS`, in report order) and the figure list
(:data:`bench.report.figures.FIGURES`) name it once each, and :mod:`bench.report.page` and
:mod:`bench.report.findings` loop over them with no case of their own for any section. Its
functions read the run through :meth:`bench.run.store.Run.at`: ``run.at(axis)`` for the cells of
every level of the axis it compares, every other axis at its default.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from bench.report.analysis import Finding, Order
from bench.report.plotkit import FigureSpec, Plot
from bench.run.store import Run


@dataclass(frozen=True)
class Table:
    """One table of a section: ``make`` computes it from the run (every row, written to
    tables/<name>.csv; an empty frame: the run cannot fill it, and no CSV), ``display`` turns it into
    the text table of the report, under ``heading`` where the section has several."""

    name: str
    make: Callable[[Run], pd.DataFrame]
    display: Callable[[pd.DataFrame], pd.DataFrame]
    heading: str | None = None


@dataclass(frozen=True)
class Section:
    """A report section beside the summary.

    stem, title, figure
        Its figure: the file stem (figures/<stem>.png|svg), the title, and the function drawing it
        from the run and its order (or saying why it is not drawn).
    heading, intro
        The section's heading and the paragraph under it, shown where one of its tables is filled.
    compares
        The axis it sets side by side (its levels in the same table and figure), or None for a
        section that holds the run against something else (theory). A section of an axis lists
        its figure only where the run has a cell at a level of that axis other than its default.
    tables
        Its tables, in the order shown.
    findings
        Functions of the run each returning one :class:`bench.report.analysis.Finding` or None,
        in the order the findings list shows them.
    """

    stem: str
    title: str
    figure: Callable[[Run, Order], FigureSpec]
    heading: str
    intro: str
    compares: str | None
    tables: tuple[Table, ...]
    findings: tuple[Callable[[Run], Finding | None], ...]

    @property
    def plot(self) -> Plot:
        """Its figure as :data:`bench.report.figures.FIGURES` lists it."""
        return Plot(self.stem, self.title, self.figure, self.compares)

    def blocks(self, tables: dict[str, pd.DataFrame]) -> list[tuple]:
        """The section as :func:`bench.report.render.page`'s blocks, from its tables as computed
        (by name): nothing where every one is empty."""
        filled = [(t, tables[t.name]) for t in self.tables if not tables[t.name].empty]
        if not filled:
            return []
        b: list[tuple] = [("h2", self.heading), ("p", self.intro)]
        for t, frame in filled:
            b += [*([("h3", t.heading)] if t.heading else []), ("table", t.display(frame))]
        return b
