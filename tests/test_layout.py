"""bench/ by concern: each sub-package imports only what its docstring allows, and the top level
holds the run itself and nothing else."""

import ast
import importlib
import tomllib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
# What each sub-package must not import (the project's design notes, "Layout"); its docstring says the same.
FORBIDDEN = {
    "cells": ("report", "gate"),
    "traffic": ("cells", "report", "gate"),
    "machine": ("cells", "report", "gate"),
    "gate": ("report",),
    "report": ("gate",),
    "analysis": ("report", "gate"),
}
# The run itself: the CLI and its arguments, its config, the config's checks and the studies it composes,
# the runner (plan -> subjects -> measure -> record), its progress, the store and its record formats,
# merging runs, and the statistics that cells, the gate and the report share.
TOP_LEVEL = {"__init__", "cli", "cli_parser", "config", "config_check", "config_toml", "studies", "runner", "progress",
             "store", "records", "merge", "stats"}


def module_name(path: Path) -> str:
    return "ffnbench.bench." + ".".join(path.relative_to(BENCH).with_suffix("").parts).removesuffix(".__init__")


def bench_imports(path: Path) -> set[str]:
    """Every ffnbench.bench module or package a file imports at run time, at any depth of the file
    (imports under `if TYPE_CHECKING:` are for annotations only and do not count)."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
                   for n in ast.walk(block)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: a relative import; name ffnbench.bench modules in full")
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("ffnbench.bench")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ffnbench.bench"):
            found.add(node.module)
            # `from ffnbench.bench.cells import latency` imports the module ffnbench.bench.cells.latency
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def closure(start: str, graph: dict[str, set[str]]) -> set[str]:
    """Every bench module that importing `start` imports, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        for name in graph.get(todo.pop(), ()):
            if name in graph and name not in seen:
                seen.add(name)
                todo.append(name)
    return seen


GRAPH = {module_name(path): bench_imports(path) for path in BENCH.rglob("*.py")}


@pytest.mark.parametrize("package", list(FORBIDDEN))
def test_a_sub_package_imports_nothing_its_docstring_forbids(package):
    """Directly or through any other bench module (the top level's included)."""
    doc = importlib.import_module(f"ffnbench.bench.{package}").__doc__
    assert all(f"`ffnbench.bench.{other}`" in doc.split("Must not import")[1] for other in FORBIDDEN[package])
    modules = [name for name in GRAPH if name.startswith(f"ffnbench.bench.{package}.")]
    assert len(modules) >= 2
    broken = {name: sorted(m for m in closure(name, GRAPH) for other in FORBIDDEN[package]
                           if m.startswith(f"ffnbench.bench.{other}."))
              for name in modules}
    assert not {k: v for k, v in broken.items() if v}


def test_the_rule_finds_a_forbidden_import_through_another_module(tmp_path):
    """The check above can fail: a function-local import of the report, reached from a machine module
    through the top level, is found; an annotation-only one is not."""
    module = tmp_path / "cell.py"
    module.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ffnbench.bench.gate import gate\n"
                      "def f():\n    from ffnbench.bench.report import timing\n    return timing\n")
    assert bench_imports(module) == {"ffnbench.bench.report", "ffnbench.bench.report.timing"}
    graph = {"ffnbench.bench.machine.x": {"ffnbench.bench.config"}, "ffnbench.bench.config": {"ffnbench.bench.cells.y"},
             "ffnbench.bench.cells.y": set()}
    assert closure("ffnbench.bench.machine.x", graph) == {"ffnbench.bench.config", "ffnbench.bench.cells.y"}


def test_every_sub_package_is_packaged():
    pyproject = tomllib.loads((BENCH.parent / "pyproject.toml").read_text())
    assert {f"ffnbench.bench.{p}" for p in FORBIDDEN} <= set(pyproject["tool"]["setuptools"]["packages"])


def test_the_top_level_holds_the_run_itself():
    assert {p.stem for p in BENCH.glob("*.py")} == TOP_LEVEL
    assert {p.name for p in BENCH.iterdir() if p.is_dir() and p.name != "__pycache__"} == set(FORBIDDEN)


# One concern per module: a module that outgrows these wants splitting by concern, not a bigger file.
MAX_MODULE_LINES, MAX_CLASS_LINES = 400, 200


def sizes(path: Path) -> tuple[int, dict[str, int]]:
    """(lines of the file, lines of each class: its last line's number minus its first's, plus one)."""
    text = path.read_text()
    classes = {node.name: node.end_lineno - node.lineno + 1 for node in ast.walk(ast.parse(text))
               if isinstance(node, ast.ClassDef)}
    return len(text.splitlines()), classes


def test_every_bench_module_and_class_stays_small():
    too_long = {}
    for path in sorted(BENCH.rglob("*.py")):
        lines, classes = sizes(path)
        name = path.relative_to(BENCH).as_posix()
        if lines >= MAX_MODULE_LINES:
            too_long[name] = lines
        too_long |= {f"{name}:{cls}": n for cls, n in classes.items() if n >= MAX_CLASS_LINES}
    assert not too_long, f"split by concern (modules < {MAX_MODULE_LINES} lines, classes < {MAX_CLASS_LINES}): " \
                         f"{too_long}"


def test_the_size_rule_counts_a_long_class_and_a_long_module(tmp_path):
    """The check above can fail: a 200-line class and a 400-line module are counted as such."""
    body = "\n".join(f"    x{i} = {i}" for i in range(199))
    module = tmp_path / "big.py"
    module.write_text(f"class Big:\n{body}\n" + "\n" * 199 + "y = 1\n")
    assert sizes(module) == (400, {"Big": 200})
