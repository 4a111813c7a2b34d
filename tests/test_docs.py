"""Every command shown in a shell block (```sh, ```bash, ```console) of README.md and docs/*.md is
run here or checked, so a documented command cannot quietly stop working.

- ``lvm-bench run ...``: first exactly as written, in this process, with the sweep itself
  stubbed out: the config is read, overridden and validated and its cells listed as the user
  sees them (``[limits]`` included); fast. Then for real (slow), with overrides appended that
  shrink the run but keep the command's own config: B = 2, R = 2, N in {1, 10} unless the
  command names N, importance-sampled truth from 200 draws, and only models that need no
  training unless the command names them.
- ``lvm-bench report | compare``: run on a copy of the tiny run (``tiny_run``) wherever the
  command names a run that the same line did not make. ``diagnose``: on 4 digits. ``train``:
  2 steps into a temporary directory. ``models``: as written.
- Tools (pip, tox, pytest, dask, git, bash) are checked, not run: an extra, tox env, marker or path
  they name must exist.
- A trailing ``# exit N`` comment states the exit code a command must give (default 0); a
  command whose arguments hold a placeholder in capitals (``tcp://SCHEDULER:8786``) is
  validated, not run. Any other command fails the test until it is accounted for here.

Commands run with the working directory a temporary one, so ``results/...`` lands there.
"""

from __future__ import annotations

import re
import shlex
import shutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = ("sh", "bash", "console")
PLACEHOLDER = re.compile(r"\b[A-Z][A-Z_]{3,}\b(?![=_])")  # SCHEDULER, BASELINE; not VAR=, not $LVM_X
SHRINK = ("--set", "run.n_data=2", "--set", "run.repeats=2", "--set", "run.warmup=0",
          "--set", "run.reference=importance", "--set", "run.reference_samples=200",
          "--set", "run.time_budget=0.01", "--set", "grid.n_samples=1,10")
TOOLS = ("pip", "tox", "pytest", "dask", "git", "bash")


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()

    @property
    def tool(self) -> str:
        """``lvm-bench``, or the tool a ``python -m TOOL`` or ``TOOL`` line runs."""
        a = self.argv
        return a[2] if len(a) > 2 and a[0].startswith("python") and a[1] == "-m" else a[0]

    @property
    def args(self) -> tuple[str, ...]:
        return self.argv[3:] if self.tool != self.argv[0] else self.argv[1:]


@dataclass(frozen=True)
class Snippet:
    """One command line of a shell block: commands joined by ``&&``."""

    where: str
    text: str
    commands: tuple[Command, ...]
    expect: int = 0
    placeholder: str | None = field(default=None)


def _lines(lang: str, body: str) -> list[tuple[int, str]]:
    out, pending, start = [], "", 0
    for i, raw in enumerate(body.splitlines()):
        line = raw.rstrip()
        if lang == "console":
            if not (line.startswith("$ ") or pending):
                continue
            line = line.removeprefix("$ ")
        if pending:
            line = line.strip()
        else:
            start = i
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full and not full.startswith("#"):
            out.append((start, full))
    return out


def _parse(text: str) -> tuple[tuple[Command, ...], int]:
    m = re.search(r"#\s*exit (\d+)\s*$", text)
    commands, parts = [], [[]]
    for word in shlex.split(text, comments=True):
        if word == "&&":
            parts.append([])
        else:
            parts[-1].append(word)
    for tokens in parts:
        env = []
        while tokens and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", tokens[0]):
            name, _, value = tokens.pop(0).partition("=")
            env.append((name, value))
        commands.append(Command(tuple(tokens), tuple(env)))
    return tuple(commands), int(m.group(1)) if m else 0


def snippets() -> list[Snippet]:
    out = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for block in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.M | re.S):
            if block.group(1) not in SHELL:
                continue
            first = text[:block.start(2)].count("\n") + 1
            for offset, line in _lines(block.group(1), block.group(2)):
                commands, expect = _parse(line)
                ph = PLACEHOLDER.search(" ".join(w for c in commands for w in c.argv))
                out.append(Snippet(f"{doc.relative_to(ROOT)}:{first + offset}", line, commands, expect,
                                   ph.group(0) if ph else None))
    return out


SNIPPETS = snippets()
COMMANDS = [(s, c) for s in SNIPPETS for c in s.commands]


def _param(s: Snippet, *extra, slow: bool = False):
    return pytest.param(s, *extra, id=s.where, marks=[pytest.mark.slow] if slow else [])


def _is_slow(s: Snippet) -> bool:
    return any(c.tool == "lvm-bench" and c.args[:1] in (("run",), ("report",), ("diagnose",))
               for c in s.commands)


def test_the_docs_show_commands_and_each_is_accounted_for():
    assert len(SNIPPETS) >= 20, [s.where for s in SNIPPETS]
    unknown = [f"{s.where}: {c.argv[0]}" for s, c in COMMANDS if c.tool not in ("lvm-bench", *TOOLS)]
    assert not unknown, "commands neither run nor checked by tests/test_docs.py"
    verbs = {c.args[0] for _, c in COMMANDS if c.tool == "lvm-bench"}
    assert {"run", "report", "compare", "diagnose", "train", "models"} <= verbs
    assert not [s.where for s in SNIPPETS if s.placeholder and any(
        c.tool == "lvm-bench" and c.args[0] != "run" for c in s.commands)], "only runs may hold placeholders"


def test_the_readme_quickstart_is_kept_verbatim():
    """.ci/run names the README's second Quickstart line; both must stay as they are."""
    readme = [s for s in SNIPPETS if s.where.startswith("README.md")]
    quickstart = [s.text for s in readme[:2]]
    assert quickstart == [
        'python3.11 -m pip install "torch==2.13.0" -e ".[parquet]" && lvm-bench run --report',
        "python3.11 -m pip install tox && python3.11 -m tox -e py311"]
    assert "## Quickstart" in (ROOT / "README.md").read_text()
    assert "python3.11 -m tox -e py311" in (ROOT / ".ci" / "run").read_text()


# ----------------------------------------------------------------------------- tools: checked


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _tox_envs() -> set[str]:
    text = (ROOT / "tox.ini").read_text()
    listed = re.search(r"^envlist\s*=\s*(.+)$", text, re.M).group(1)
    return {e.strip() for e in listed.split(",")} | set(re.findall(r"^\[testenv:([\w-]+)\]", text, re.M))


def _check_pip(args: tuple[str, ...]) -> None:
    assert args[0] == "install"
    extras = _pyproject()["project"]["optional-dependencies"]
    tox_pin = re.search(r"torch==[\w.]+", (ROOT / "tox.ini").read_text()).group(0)
    for a in args[1:]:
        spec = re.fullmatch(r"(\.[\w/.-]*)(?:\[([\w,]+)\])?", a)
        if spec:
            assert (ROOT / spec.group(1) / "pyproject.toml").exists(), a
            assert set(filter(None, (spec.group(2) or "").split(","))) <= set(extras), (a, sorted(extras))
        elif a.startswith("torch=="):
            assert a == tox_pin, f"{a} differs from tox.ini's {tox_pin}"
        else:
            assert a == "-e" or re.fullmatch(r"[A-Za-z][\w-]*", a), a


def _check_tox(args: tuple[str, ...]) -> None:
    assert args[0] == "-e" and set(args[1].split(",")) <= _tox_envs(), (args, sorted(_tox_envs()))


def _check_pytest(args: tuple[str, ...]) -> None:
    markers = {m.split(":")[0] for m in _pyproject()["tool"]["pytest"]["ini_options"]["markers"]}
    it = iter(args)
    for a in it:
        if a == "-m":
            words = set(re.findall(r"\w+", next(it))) - {"and", "or", "not"}
            assert words <= markers, (words, markers)
        elif a == "-c" or not a.startswith("-"):
            path = next(it) if a == "-c" else a
            assert (ROOT / path).exists(), path
        elif a.startswith("--benchmark"):
            assert any(d.startswith("pytest-benchmark") for d in _pyproject()["project"][
                "optional-dependencies"]["test"]), a


def _check_dask(args: tuple[str, ...]) -> None:
    assert args[0] in ("scheduler", "worker"), args
    assert any(d.startswith("distributed") for d in _pyproject()["project"]["optional-dependencies"]["dask"])


def _check_git(args: tuple[str, ...]) -> None:
    assert args[0] in ("clone", "checkout", "switch", "status", "diff", "log"), args


# bash runs only the GPU run's scripts: their dry run is tests/test_gpu.py's
BASH_SCRIPTS = {"scripts/gpu_run.sh": {"--dry-run", "--no-install"}, "scripts/gpu_wheels.sh": set()}


def _check_bash(args: tuple[str, ...]) -> None:
    assert args[0] in BASH_SCRIPTS and (ROOT / args[0]).is_file(), args
    assert set(args[1:]) <= BASH_SCRIPTS[args[0]], args


@pytest.mark.parametrize("snippet, command", [
    pytest.param(s, c, id=f"{s.where}-{c.tool}") for s, c in COMMANDS if c.tool in TOOLS])
def test_tool_commands_name_what_exists(snippet, command):
    {"pip": _check_pip, "tox": _check_tox, "pytest": _check_pytest, "dask": _check_dask,
     "git": _check_git, "bash": _check_bash}[command.tool](command.args)
    for name, _ in command.env:
        assert name in ("BENCH_NAME", "CUDA_VISIBLE_DEVICES", "PYTHONPATH"), name


# ----------------------------------------------------------------------------- lvm-bench: run


@pytest.fixture
def workspace(tmp_path, monkeypatch, cache_dir):
    """The documented commands' working directory, with the tests' model and ground-truth cache."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LVM_CACHE_DIR", cache_dir)
    return tmp_path


def _environment(command: Command, monkeypatch) -> None:
    for name, value in command.env:
        if name == "PYTHONPATH":
            monkeypatch.syspath_prepend(str(ROOT / value))
            value = str(ROOT / value)
        monkeypatch.setenv(name, value)


def _validate(command: Command, monkeypatch, capsys):
    """``lvm-bench run ...`` exactly as written, the sweep stubbed: (exit code, config, out, stderr)."""
    seen = {}

    def sweep(config, out, **kw):
        seen.update(config=config, out=Path(out))
        return pd.DataFrame({"status": pd.Series([], dtype=object)})

    with monkeypatch.context() as m:
        m.setattr("bench.run.sweep.run", sweep)
        m.setattr("bench.report.page.write_report", lambda run, out=None: Path(run) / "report.md")
        rc = main(list(command.args))
    return rc, seen.get("config"), seen.get("out"), capsys.readouterr().err


RUNS = [(s, c) for s, c in COMMANDS if c.tool == "lvm-bench" and c.args[0] == "run"]


@pytest.mark.parametrize("snippet, command", [pytest.param(s, c, id=s.where) for s, c in RUNS])
def test_run_commands_validate_as_written(snippet, command, workspace, monkeypatch, capsys):
    if "dask" in command.args:
        pytest.importorskip("distributed", reason="the dask extra is not installed")
    _environment(command, monkeypatch)
    rc, config, out, err = _validate(command, monkeypatch, capsys)
    assert rc == 0, f"{snippet.where}: `{snippet.text}` exits {rc}: {err}"
    cells, _ = config.cells()
    assert cells and not out.exists(), "validation wrote nothing and found cells"


def _shrunk_run(command: Command, monkeypatch, capsys, cache_dir: str):
    """The command's arguments with the shrinking overrides appended, and its config as written."""
    _, config, _, _ = _validate(command, monkeypatch, capsys)
    from lvm import zoo

    trains = [m for m, spec in config.models.items()
              if not spec.outside and zoo.is_trained(m) and m not in zoo.SHIPPED]
    keep = [m for m in config.grid["model"] if m not in trains]
    models = ("--set", f"grid.model={','.join(keep)}") if trains and keep else ()
    return [*command.args, *SHRINK, *models, "--cache-dir", cache_dir, "--no-progress"], config


def _seed_runs(runs: list[str], made: set[str], request) -> set[str]:
    """Copy the tiny run to each run directory in ``runs`` that this line did not make."""
    seeded = set()
    for a in runs:
        if a not in made:
            if not Path(a).exists():
                shutil.copytree(request.getfixturevalue("tiny_run"), a)
            seeded.add(a)
    return seeded


def _out(args: list[str], default: str) -> Path:
    return Path(args[args.index("--out") + 1]) if "--out" in args else Path(default)


RUNNABLE = [s for s in SNIPPETS if not s.placeholder and any(c.tool == "lvm-bench" for c in s.commands)]


@pytest.mark.parametrize("snippet", [_param(s, slow=_is_slow(s)) for s in RUNNABLE])
def test_lvm_bench_commands_run(snippet, workspace, monkeypatch, capsys, cache_dir, request):
    made: set[str] = set()
    for command in snippet.commands:
        if command.tool != "lvm-bench":
            continue  # checked by test_tool_commands_name_what_exists
        _environment(command, monkeypatch)
        verb, expect = command.args[0], {snippet.expect}
        args = list(command.args)
        if verb == "run":
            if "dask" in args:
                pytest.importorskip("distributed", reason="the dask extra is not installed")
            args, config = _shrunk_run(command, monkeypatch, capsys, cache_dir)
            if "--resume" in args:  # something to resume: the same run, started first
                assert main([a for a in args if a != "--resume"]) == 0
        elif verb in ("report", "compare"):
            seeded = _seed_runs(args[1:3] if verb == "compare" else args[1:2], made, request)
            if verb == "compare" and len(seeded) < 2:
                expect = {0, 1}  # runs of different configs: a regression is the command's answer
        elif verb == "diagnose":
            args += ["--n-data", "4", "--cache-dir", cache_dir]
        elif verb == "train":
            args += ["--steps", "2", "--out", "checkpoints", "--no-progress"]
        capsys.readouterr()
        rc = main(args)
        out, err = capsys.readouterr()
        assert rc in expect, f"{snippet.where}: `{snippet.text}` exits {rc}, expected {expect}: {err}"
        if verb == "run":
            run_dir = _out(args, f"results/{config.run['name']}")
            made.add(str(run_dir))
            cells = pd.read_csv(run_dir / "cells.csv")
            assert (cells["status"] == "ok").any()
            assert "--report" not in args or (run_dir / "report.html").exists()
        elif verb == "report":
            assert (_out(args, args[1]) / "report.md").exists()
        elif verb == "compare":
            assert out.strip()
        elif verb == "diagnose":
            assert "Recommendation" in out or "no safe setting" in out.lower(), out
        elif verb == "train":
            names = [a for a in command.args[1:] if not a.startswith("-")]
            assert names and all((Path("checkpoints") / f"{n}.pt").exists() for n in names)
        elif verb == "models":
            assert "prior-iwae-k2" in out.split()


# ----------------------------------------------------------------------------- the rest of the docs


def test_toml_examples_are_valid_configs():
    from bench.run.config import validate

    blocks = [b for doc in DOCS for b in re.findall(r"^```toml\n(.*?)^```", doc.read_text(), re.M | re.S)]
    assert blocks
    for block in blocks:
        config = validate(tomllib.loads(block), "a TOML example of the docs")
        assert config.cells()[0]


def _slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_and_images_resolve():
    wrong = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (doc.parent / path).resolve() if path else doc
            if not dest.exists():
                wrong.append(f"{doc.name}: {target}")
            elif anchor and dest.suffix == ".md":
                slugs = {_slug(h) for h in re.findall(r"^#+ (.+)$", dest.read_text(encoding="utf-8"), re.M)}
                if anchor not in slugs:
                    wrong.append(f"{doc.name}: {target} (no such heading)")
    assert not wrong, wrong


def test_the_reference_names_every_cli_verb_and_flag():
    from bench.cli import build_parser

    reference = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
    parser = build_parser()
    verbs = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    missing = [f"{verb} {flag}" for verb, sub in verbs.items() for action in sub._actions
               for flag in action.option_strings if flag.startswith("--") and flag != "--help"
               and f"`{flag}" not in reference]
    missing += [verb for verb in verbs if f"### `lvm-bench {verb}" not in reference]
    assert not missing, missing


def test_the_readme_stays_a_front_page():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200
