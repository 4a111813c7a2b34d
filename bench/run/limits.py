"""``[limits]``: caps on N for the cells at a level of an axis, or at several levels at once.

A key of ``max_n_samples`` names one level (``float16``, ``prob_space``, ``autocast``, ``encoder``,
``iwae-k2``) or several joined by ``+`` (``"float16+encoder"``: the cells at all of them). A key
binds when the grid has every level it names. A key naming valid levels that the grid (as
overridden on the command line) lacks is inert: it caps nothing and the run lists it in meta.json
``limits_inert``, so ``--model`` or ``--dtype`` can narrow a config without editing its limits. A
key naming anything that is no level at all is the config's error (:mod:`bench.run.config`).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from lvm import sources
from lvm.errors import InputError

JOIN = "+"


def known_level(level: str, vocabulary: Iterable[str]) -> bool:
    """A level of some axis, in this grid or not: one of ``vocabulary`` (the dtypes, built-in
    estimators, precision policies and proposals), an outside estimator, or a model spec that
    lvm.sources accepts as it is (a zoo name, an import path)."""
    if level in vocabulary or sources.estimator_path(level):
        return True
    try:
        return sources.parse_model(level).label == level
    except InputError:
        return False


def levels(key: str) -> list[str]:
    """The levels a cap key names."""
    return key.split(JOIN)


def problem(limits: dict, active: Iterable[str], vocabulary: Iterable[str],
            labels: Iterable[str]) -> str | None:
    """What is wrong with a ``[limits]`` table, or None. ``active``: the levels of the grid;
    ``vocabulary``: the dtypes, built-in estimators, precision policies, proposals and engines; ``labels``:
    the grid's model labels (for the message)."""
    caps, active, vocabulary = limits["max_n_samples"], set(active), list(vocabulary)
    for key, cap in caps.items():
        unknown = [v for v in levels(key) if v not in active and not known_level(v, vocabulary)]
        if unknown or isinstance(cap, bool) or not isinstance(cap, int) or cap <= 0:
            close = difflib.get_close_matches(unknown[0], [*active, *vocabulary], n=1) if unknown else []
            hint = f" ({unknown[0]!r} is no level; did you mean {close[0]!r}?)" if close else ""
            return (f"limits.max_n_samples.{key} = {cap!r}{hint}; accepted: a dtype, an estimator, a "
                    f"precision policy, a proposal or an engine ({', '.join(vocabulary)}), an outside "
                    "estimator, or a "
                    f"model (a zoo name, an import path or a label of the grid: {', '.join(labels)}), or "
                    f"several joined by {JOIN!r} (the cells at all of them), mapped to a positive integer; "
                    "a key naming levels the grid lacks caps nothing")
    for key, why in limits["reasons"].items():
        if key not in caps or not isinstance(why, str):
            return (f"limits.reasons.{key} = {why!r}; accepted: a text, for a key of limits.max_n_samples "
                    f"({', '.join(caps) or 'none'})")
    return None


def inert(caps: dict[str, int], active: Iterable[str]) -> list[str]:
    """The cap keys that name a level the grid lacks: they exclude no cell."""
    active = set(active)
    return [key for key in caps if not set(levels(key)) <= active]


def exclusion(cell_levels: tuple[str, ...], n_samples: int, limits: dict) -> str | None:
    """Why the caps leave out the cell at ``cell_levels`` and N = ``n_samples``, or None. Single
    levels in axis order, then combinations: the last cap that excludes names the reason."""
    caps, reasons = limits["max_n_samples"], limits["reasons"]
    reason = None
    keys = [v for v in cell_levels if v in caps] + [k for k in caps if JOIN in k]
    for key in keys:
        if set(levels(key)) <= set(cell_levels) and n_samples > caps[key]:
            why = reasons.get(key)
            reason = f"limits.max_n_samples.{key} = {caps[key]}" + (f": {why}" if why else "")
    return reason
