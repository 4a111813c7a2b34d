"""Failures stay local: one cell's exception fails that cell alone, with its own reason.

A group's cells share passes (:func:`bench.run.cell.run_group`): one per (dtype, precision, engine,
proposal, repeat) serving several estimators. :func:`isolated` runs a pass so that what one
estimator raises is recorded as that estimator's and the others are measured;
:func:`failure` says what failed a cell, its own estimator's pass or its float64 replay.
"""

from __future__ import annotations

from bench.run.config import Cell, estimator_spec


def isolated(run, names: list[str]) -> tuple[dict, dict[str, Exception]]:
    """``run(names)``, a shared pass, with each estimator's failure its own: (its estimates,
    {estimator: what it raised}). The built-in estimators share one pass and each outside one
    runs alone, in the order :func:`lvm.shared.evaluate` runs them; a shared pass that raises
    runs again estimator by estimator (bit-identical: evaluate's results equal each one's alone)."""
    builtin = [e for e in names if estimator_spec(e)["space"] != "outside"]
    units = ([builtin] if builtin else []) + [[e] for e in names if e not in builtin]
    out: dict = {}
    failed: dict[str, Exception] = {}
    for unit in units:
        try:
            out |= run(unit)
        except Exception as err:  # noqa: BLE001 - told apart below, recorded per estimator
            if len(unit) == 1:
                failed[unit[0]] = err
                continue
            for e in unit:
                try:
                    out |= run([e])
                except Exception as one:  # noqa: BLE001 - recorded as that estimator's
                    failed[e] = one
    return out, failed


def failure(errors: dict, cell: Cell) -> Exception | None:
    """What failed this cell's estimator in its pass, or its float64 replay; None if nothing did."""
    own = errors.get((cell.dtype, cell.precision, cell.proposal, cell.engine, cell.estimator))
    if own is not None:
        return own
    replay = errors.get(("float64", "cast", cell.proposal, "eager", "log_space"))
    if replay is None:
        return None
    why = RuntimeError(f"its float64 log_space replay failed: {type(replay).__name__}: {replay}")
    why.__cause__ = replay
    return why
