"""The report's sections beside the summary, in the order the report shows them.

Each is one module ending in ``SECTION``, a :class:`bench.report.sections.protocol.Section`:
:mod:`~bench.report.sections.precision` sets cast beside autocast,
:mod:`~bench.report.sections.proposal` the prior beside the trained encoder,
:mod:`~bench.report.sections.engine` eager beside compiled, and
:mod:`~bench.report.sections.theory` holds the run against theory. A section of a new axis is a
module like precision's, named once here and once in :data:`bench.report.figures.FIGURES`.
"""

from __future__ import annotations

from bench.report.sections import engine, precision, proposal, theory
from bench.report.sections.protocol import Section, Table

__all__ = ["SECTIONS", "Section", "Table"]

SECTIONS: tuple[Section, ...] = (precision.SECTION, proposal.SECTION, engine.SECTION, theory.SECTION)
