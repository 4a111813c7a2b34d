"""The layout docs/design.md describes is the code's: one direction of imports, and a module map
that names every module file, no other, each below the modules it imports.

Imports are read with ``ast`` from every module file, imports inside functions included.
``bench/__init__.py`` re-exports lazily by name (``importlib``), which is not an import statement.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DESIGN = ROOT / "docs" / "design.md"
PACKAGES = ("lvm", "bench")
# Layers, lowest first: a module never imports one of a higher layer.
LAYERS = (("lvm",), ("bench.run",), ("bench.report",), ("bench.compare", "bench.diagnose", "bench.trust"),
          ("bench.cli",))
NEVER = ("benchmarks", "tests", "conftest", "tiny")  # top-level names of the suite's own test code


def module_files(*packages: str) -> list[Path]:
    return sorted(p for pkg in packages for p in (ROOT / pkg).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in module_files(*PACKAGES, "benchmarks")}


def imports(path: Path, name: str | None = None) -> set[str]:
    """The modules ``path`` (the module ``name``) imports, as dotted names; ``from pkg import mod``
    names pkg.mod."""
    name = name or module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            for a in node.names:
                full = f"{base}.{a.name}"
                out.add(full if full in MODULES else base)
    return out


def layer(name: str) -> int | None:
    for i, prefixes in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return i
    return None


def test_imports_go_one_way():
    wrong = []
    for path in module_files(*PACKAGES):
        me = layer(module_name(path))
        for imported in imports(path):
            top = imported.split(".")[0]
            if top in NEVER or top.startswith(("test_", "bench_")):
                wrong.append(f"{path.relative_to(ROOT)} imports {imported} (test or benchmark code)")
            other = layer(imported)
            if me is not None and other is not None and other > me:
                wrong.append(f"{path.relative_to(ROOT)} imports {imported}, a higher layer")
    assert not wrong, "\n".join(wrong)


def test_the_layer_check_sees_imports_inside_functions(tmp_path):
    """The check can fail: a bench.run module importing bench.report inside a function is caught."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from bench.report import page\n    from .. import cli\n")
    found = imports(probe, "bench.run.probe")
    assert found == {"bench.report.page", "bench.cli"}
    assert all(layer(m) > layer("bench.run.probe") for m in found)


def module_map() -> list[str]:
    """The paths the "## Module map" block of docs/design.md names, in order."""
    text = DESIGN.read_text(encoding="utf-8")
    block = re.search(r"^## Module map\n.*?^```\w*\n(.*?)^```", text, re.M | re.S)
    assert block, "docs/design.md has no '## Module map' section with a fenced block"
    return [line.split()[0] for line in block.group(1).splitlines()
            if line.strip() and line.split()[0].endswith(".py")]


def test_the_module_map_names_every_module_file_and_no_other():
    named = module_map()
    files = [str(p.relative_to(ROOT)) for p in module_files(*PACKAGES, "benchmarks")]
    assert sorted(set(files) - set(named)) == [], "module files missing from docs/design.md's map"
    assert sorted(set(named) - set(files)) == [], "docs/design.md's map names files that do not exist"
    assert len(named) == len(set(named)), "the map names a file twice"


def test_every_path_design_md_names_exists():
    text = DESIGN.read_text(encoding="utf-8")
    paths = set(re.findall(r"(?<![\w./$-])((?:lvm|bench|benchmarks|tests|docs|results|examples|scripts)"
                           r"/[\w./-]*[\w/])", text))
    assert paths
    assert sorted(p for p in paths if not (ROOT / p).exists()) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_the_module_map_lists_each_module_below_what_it_imports(package):
    order = {module_name(ROOT / p): i for i, p in enumerate(module_map())}
    wrong = []
    for path in module_files(package):
        me = module_name(path)
        for imported in imports(path):
            if imported in order and imported != me and order[imported] > order[me]:
                wrong.append(f"{path.relative_to(ROOT)} imports {imported}, listed below it in the map")
    assert not wrong, "\n".join(wrong)
