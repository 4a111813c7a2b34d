"""Sweep configuration: TOML schema, validation, command-line overrides, grid expansion.

The grid is declared as data, like asv's ``params``/``param_names``: every
axis is a list, the cells are their product, minus what ``[limits]`` and the
estimator registry exclude (each exclusion is kept with its reason).
"""

from __future__ import annotations

import copy
import difflib
import itertools
import re
import tomllib
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

from bench.run import limits
from lvm import engine as lvm_engine
from lvm import sources, zoo
from lvm.axes import (
    AUTOCAST_DTYPES,
    AXES,
    AXIS_DEFAULTS,
    DTYPES,
    ENGINES,
    ESTIMATORS,
    LEVELS,
    OUTSIDE,
    PRECISIONS,
    PROPOSALS,
)
from lvm.errors import InputError

# The axes and their levels are lvm.axes' (imported here also for this module's callers).
MAX_N_SAMPLES = 10**8  # a bound, so that a typo (10^12) is an error rather than a run that never ends

SCHEMA: dict[str, dict[str, type | tuple[type, ...]]] = {
    "run": {"name": str, "seed": int, "dataset": str, "split": str, "n_data": int, "repeats": int,
            "warmup": int, "time_budget": float, "reference": str, "reference_samples": int,
            "reference_se": float, "threads": int},
    "grid": {k: list for k in AXES},
    "limits": {"max_n_samples": dict, "reasons": dict},
}
DEFAULTS: dict[str, dict[str, Any]] = {
    "run": {"name": "run", "seed": 0, "dataset": "mnist-5k", "split": "test", "n_data": 32,
            "repeats": 5, "warmup": 1, "time_budget": 0.25, "reference": "auto", "reference_samples": 20480,
            "reference_se": 1e-3, "threads": 1},
    "grid": {axis: [level] for axis, level in AXIS_DEFAULTS.items()},
    "limits": {"max_n_samples": {}, "reasons": {}},
}


class ConfigError(InputError):
    """A config that cannot be run; the message says what and what is accepted."""


def estimator_spec(name: str) -> dict[str, Any]:
    """The spec of an ``estimator`` axis value: a built-in one, or an outside estimator's
    (an import path, or an entry-point name: :mod:`lvm.sources`)."""
    if name in ESTIMATORS:
        return ESTIMATORS[name]
    path = sources.estimator_path(name)
    if path is None:
        raise ConfigError(f"estimator {name!r} is unknown{_suggest(name, ESTIMATORS)}; accepted: "
                          f"{', '.join(ESTIMATORS)}, package.module:function, or an entry point of "
                          f"{sources.ENTRY_POINTS!r}")
    return {**OUTSIDE, "path": path}


def model_facts(label: str) -> tuple[str, int | None]:
    """(state, latent dimension) of a model label: the zoo family and K, or ("outside", None)
    (an outside model's K is known once it is loaded)."""
    try:
        spec = zoo.parse(label)
    except InputError:
        return "outside", None
    return spec.family, spec.latent_dim


@dataclass(frozen=True)
class Cell:
    """One grid point. ``key`` is stable and names its files."""

    estimator: str
    dtype: str
    n_samples: int
    model: str
    parametrization: str
    device: str
    precision: str = "cast"
    proposal: str = "prior"
    engine: str = "eager"

    @classmethod
    def of(cls, row: dict[str, Any]) -> Cell:
        """The cell of a row that has the axes as keys (a dict, a cells.csv or raw row: a run of an
        older format has them once :mod:`bench.run.formats` has read it)."""
        try:
            return cls(*(int(row[p]) if p == "n_samples" else str(row[p]) for p in AXES))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"a row lacks a valid cell coordinate ({e!r}); accepted: "
                              f"{', '.join(AXES)} with an integer n_samples") from e

    @property
    def key(self) -> str:
        """Names the cell's files and identifies it across runs. An axis of AXIS_DEFAULTS is named
        only off its first level ("cast", "prior"), so that keys stay the same when such an axis is
        added (the key rule of results format 2, :mod:`bench.run.formats`)."""
        return "__".join(str(getattr(self, p)) for p in AXES
                         if p not in AXIS_DEFAULTS or getattr(self, p) != AXIS_DEFAULTS[p])

    @property
    def label(self) -> str:
        """The cell for people: ``log_space float32 N=100 untrained-k2 logits cpu``."""
        return " ".join([self.estimator, self.dtype, f"N={self.n_samples}", self.model, self.parametrization,
                         self.device, *(getattr(self, p) for p, d in AXIS_DEFAULTS.items()
                                        if getattr(self, p) != d)])

    def axes(self) -> dict[str, Any]:
        """The axes as a dict, in grid order."""
        return {p: getattr(self, p) for p in AXES}

    def coords(self) -> dict[str, Any]:
        """The axes and what follows from them: the columns cells.csv starts with."""
        state, latent_dim = model_facts(self.model)
        info = estimator_spec(self.estimator)
        return {**self.axes(),
                "state": state, "latent_dim": latent_dim,
                "space": info["space"], "form": info["form"],
                "accumulate_dtype": info["accumulate"] or self.dtype}


@dataclass
class Config:
    data: dict[str, dict[str, Any]]
    source: str

    @property
    def run(self) -> dict[str, Any]:
        return self.data["run"]

    @property
    def grid(self) -> dict[str, list]:
        return self.data["grid"]

    @cached_property
    def models(self) -> dict[str, sources.ModelSpec]:
        """grid.model as {label: spec}: labels are what cells.csv's ``model`` column holds."""
        return {ms.label: ms for ms in map(sources.parse_model, self.grid["model"])}

    def cells(self, unavailable: dict[tuple[str, str], str] | None = None
              ) -> tuple[list[Cell], list[dict[str, str]]]:
        """The cells to run, in grid order, and the excluded ones with their reason.
        ``unavailable``: {(model, parametrization or proposal): why} for what a loaded model cannot
        give (a likelihood, an encoder); zoo models without an encoder are known without loading."""
        cells, excluded = [], []
        unavailable = unavailable or {}
        axes = {**self.grid, "model": list(self.models)}
        for combo in itertools.product(*(axes[p] for p in AXES)):
            cell = Cell(*combo)
            reason = (unavailable.get((cell.model, cell.parametrization))
                      or unavailable.get((cell.model, cell.proposal)) or self._exclusion(cell))
            if reason:
                excluded.append({"cell": cell.key, "reason": reason})
            else:
                cells.append(cell)
        return cells, excluded

    def runnable(self, unavailable: dict[tuple[str, str], str] | None = None
                 ) -> tuple[list[Cell], list[dict[str, str]]]:
        """:meth:`cells`, or a ConfigError when none remains: one line naming, for each reason the
        grid's cells are excluded for, how many and one of them (a run of nothing is refused
        before anything is written, so that it never replaces a run under --force)."""
        cells, excluded = self.cells(unavailable)
        if cells:
            return cells, excluded
        by_reason: dict[str, list[str]] = {}
        for e in excluded:
            by_reason.setdefault(e["reason"], []).append(e["cell"])
        why = "; ".join(f"{len(keys)} as {reason} (e.g. {keys[0]})" for reason, keys in by_reason.items())
        raise ConfigError(f"{self.source}: no cell of the grid can run: all {len(excluded)} are excluded: "
                          f"{why}; accepted: a grid with at least one cell that runs")

    def _exclusion(self, cell: Cell) -> str | None:
        """Why the grid's rules leave ``cell`` out, or None."""
        if cell.precision == "autocast" and DTYPES[cell.dtype] not in AUTOCAST_DTYPES:
            return "autocast lowers to float16 or bfloat16 only: at float32 and float64 it is the cast policy"
        if cell.estimator == "log_space_acc32" and cell.dtype in ("float32", "float64"):
            return "float32 accumulation only differs from log_space below float32"
        if cell.engine == "compiled":
            if estimator_spec(cell.estimator)["space"] == "outside":
                return "an outside estimator runs its own code: the engine axis applies to the built-in ones"
            why = lvm_engine.unavailable(cell.device)
            if why:
                return f"the compiled engine cannot run here: {why}"
        if cell.proposal == "encoder":
            if estimator_spec(cell.estimator)["space"] == "outside":
                return "an outside estimator draws its own z: the proposal axis applies to the built-in ones"
            family, _ = model_facts(cell.model)
            if family not in ("outside", *zoo.ENCODER_FAMILIES):
                return (f"model {cell.model!r} has no encoder (zoo families with one: "
                        f"{', '.join(f'{f}-kK' for f in zoo.ENCODER_FAMILIES)})")
        return limits.exclusion((cell.dtype, cell.estimator, cell.precision, cell.proposal, cell.engine,
                                 cell.model),
                                cell.n_samples, self.data["limits"])

    def inert_limits(self) -> list[str]:
        """The ``[limits]`` keys naming a level this grid lacks: they cap nothing (meta.json lists them)."""
        return limits.inert(self.data["limits"]["max_n_samples"], _levels(self.grid, self.models))

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.data)


def _levels(grid: dict[str, list], labels) -> list[str]:
    """The levels of this grid a ``[limits]`` key can name."""
    return [*grid["dtype"], *grid["estimator"], *grid["precision"], *grid["proposal"], *grid["engine"],
            *labels]


def _suggest(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def builtin_configs() -> list[str]:
    return sorted(p.name.removesuffix(".toml")
                  for p in resources.files("bench").joinpath("configs").iterdir()
                  if p.name.endswith(".toml"))


def _read(name_or_path: str) -> tuple[dict, str]:
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        if name_or_path not in builtin_configs():
            raise ConfigError(f"--config {name_or_path!r}: no such file or built-in config; "
                              f"accepted: a TOML path or one of {', '.join(builtin_configs())}")
        text = resources.files("bench").joinpath("configs", f"{name_or_path}.toml").read_text()
        source = f"builtin:{name_or_path}"
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"--config {name_or_path!r}: cannot read ({e.strerror})") from e
        except UnicodeDecodeError as e:
            raise ConfigError(f"--config {name_or_path!r}: not a text file (byte {e.start} is not "
                              "UTF-8); accepted: a TOML file") from e
        source = str(path)
    try:
        return tomllib.loads(text), source
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"--config {source}: malformed TOML: {e}") from e


def _parse_value(raw: str, kind) -> Any:
    if kind is list:
        return [_scalar(v.strip()) for v in raw.split(",") if v.strip()]
    if kind is dict:
        out = {}
        for part in raw.split(","):
            k, _, v = part.partition(":")
            out[k.strip()] = _scalar(v.strip())
        return out
    return _scalar(raw)


def _scalar(raw: str) -> Any:
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw


def apply_override(data: dict, assignment: str) -> None:
    """Apply ``section.key=value`` (lists comma-separated) to a raw config dict. A table key
    (``limits.max_n_samples=float16:100``) sets the entries it names and keeps the others."""
    key, eq, raw = assignment.partition("=")
    if not eq:
        raise ConfigError(f"--set {assignment!r}: accepted form: section.key=value")
    section, dot, name = key.strip().partition(".")
    if not dot:  # a bare axis or run key
        name = section
        section = "grid" if name in SCHEMA["grid"] else "run" if name in SCHEMA["run"] else ""
    if section not in SCHEMA:
        raise ConfigError(f"--set {assignment!r}: unknown section {section or key!r}"
                          f"{_suggest(section or key, SCHEMA)}; accepted: {', '.join(SCHEMA)}")
    if name not in SCHEMA[section]:
        raise ConfigError(f"--set {assignment!r}: unknown key {section}.{name}"
                          f"{_suggest(name, SCHEMA[section])}; accepted: "
                          f"{', '.join(f'{section}.{k}' for k in SCHEMA[section])}")
    value, body = _parse_value(raw, SCHEMA[section][name]), data.setdefault(section, {})
    merge = isinstance(value, dict) and isinstance(body.get(name), dict)
    body[name] = {**body[name], **value} if merge else value


def load_config(name_or_path: str = "quick", overrides: list[str] | None = None) -> Config:
    """Read a built-in or file config, apply overrides, validate."""
    raw, source = _read(name_or_path)
    for assignment in overrides or []:
        apply_override(raw, assignment)
    return validate(raw, source)


def validate(raw: dict, source: str = "<dict>") -> Config:
    for section, body in raw.items():
        if section not in SCHEMA:
            raise ConfigError(f"{source}: unknown section [{section}]{_suggest(section, SCHEMA)}; "
                              f"accepted: {', '.join(SCHEMA)}")
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        for key, value in body.items():
            if key not in SCHEMA[section]:
                raise ConfigError(f"{source}: unknown key {section}.{key}"
                                  f"{_suggest(key, SCHEMA[section])}; accepted: "
                                  f"{', '.join(SCHEMA[section])}")
            kind = SCHEMA[section][key]
            accepted = (int, float) if kind is float else kind  # a float key takes 1 as well as 1.0
            if kind in (int, float) and isinstance(value, bool) or not isinstance(value, accepted):
                raise ConfigError(f"{source}: {section}.{key} = {value!r} has the wrong type; "
                                  f"accepted: {kind.__name__}")
    data = copy.deepcopy(DEFAULTS)
    for section, body in raw.items():
        data[section].update(body)
    missing = [p for p in AXES if p not in data["grid"]]
    if missing:
        raise ConfigError(f"{source}: [grid] lacks {', '.join(missing)}; every axis needs a list")
    _check_axes(data, source)
    return Config(data, source)


def _check_axes(data: dict, source: str) -> None:
    from lvm.data import DATASETS

    grid, run = data["grid"], data["run"]
    for axis, options in LEVELS.items():  # the closed axes: lvm.axes is the one list of their levels
        for v in grid[axis]:
            if v not in options:
                raise ConfigError(f"{source}: grid.{axis} value {v!r} is unknown{_suggest(str(v), options)}; "
                                  f"accepted: {', '.join(options)}")
    for n in grid["n_samples"]:
        if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= MAX_N_SAMPLES:
            raise ConfigError(f"{source}: grid.n_samples value {n!r} is invalid; accepted: positive "
                              f"integers up to {MAX_N_SAMPLES:,} (10^8 draws already take hours per cell)")
    for e in grid["estimator"]:
        try:
            spec = estimator_spec(e) if isinstance(e, str) else None
            if spec is None:
                raise ConfigError(f"estimator {e!r} is not a string")
            if spec["space"] == "outside":
                sources.load_estimator(spec["path"])  # imports now: a bad path fails before the run
        except InputError as err:
            raise ConfigError(f"{source}: grid.estimator value {e!r} is invalid: {err}") from err
    labels: dict[str, str] = {}
    for m in grid["model"]:
        try:
            label = sources.parse_model(m).label
        except InputError as e:
            raise ConfigError(f"{source}: grid.model value {m!r} is invalid: {e}") from e
        if label in labels:
            raise ConfigError(f"{source}: grid.model values {labels[label]!r} and {m!r} share the label "
                              f"{label!r}; accepted: distinct labels (write label=<spec>)")
        labels[label] = m
    for axis in AXES:
        if not grid[axis]:
            raise ConfigError(f"{source}: grid.{axis} is empty; accepted: a non-empty list")
        if len(set(map(str, grid[axis]))) != len(grid[axis]):
            raise ConfigError(f"{source}: grid.{axis} = {grid[axis]} repeats a value")
    dataset = run["dataset"]
    if dataset == "synthetic" or dataset not in DATASETS and not (
            sources.IMPORT_PATH.match(dataset) or Path(dataset).is_file()):
        raise ConfigError(f"{source}: run.dataset = {dataset!r} is not supported by the sweep; accepted: "
                          "mnist-5k, mnist, a .npy/.npz or IDX file of 0/1 values, or package.module:factory")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", run["name"]):
        raise ConfigError(f"{source}: run.name = {run['name']!r} is invalid; accepted: letters, digits, "
                          "'.', '_' and '-', starting with a letter or digit (it names results/<name>)")
    if run["seed"] < 0:
        raise ConfigError(f"{source}: run.seed = {run['seed']} is invalid; accepted: an integer >= 0")
    for key in ("n_data", "repeats", "reference_samples", "threads"):
        if run[key] <= 0:
            raise ConfigError(f"{source}: run.{key} = {run[key]} is invalid; accepted: a positive integer")
    if run["repeats"] < 2:
        raise ConfigError(f"{source}: run.repeats = {run['repeats']}; accepted: at least 2 "
                          "(variance and standard errors need repeats)")
    if not run["time_budget"] > 0:
        raise ConfigError(f"{source}: run.time_budget = {run['time_budget']}; accepted: a positive "
                          "number of seconds (the timing budget per cell)")
    if not run["reference_se"] > 0:
        raise ConfigError(f"{source}: run.reference_se = {run['reference_se']}; accepted: a positive "
                          "number of nats (the importance-sampling truth's target standard error)")
    if run["warmup"] < 0:
        raise ConfigError(f"{source}: run.warmup = {run['warmup']}; accepted: 0 or more")
    if run["reference"] not in ("auto", "quadrature", "importance"):
        raise ConfigError(f"{source}: run.reference = {run['reference']!r}; "
                          "accepted: auto, quadrature, importance")
    problem = limits.problem(data["limits"], _levels(grid, labels),
                             (*DTYPES, *ESTIMATORS, *PRECISIONS, *PROPOSALS, *ENGINES), labels)
    if problem:
        raise ConfigError(f"{source}: {problem}")
