"""bench/ by concern: each sub-package imports only what its docstring allows, and the top level
holds the run itself and nothing else."""

import ast
import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
# What each sub-package must not import (DESIGN.md, "Layout"); its docstring says the same.
FORBIDDEN = {
    "cells": ("report", "gate"),
    "traffic": ("cells", "report", "gate"),
    "machine": ("cells", "report", "gate"),
    "gate": ("report",),
    "report": ("gate",),
}
# The run itself: the CLI, its config, plan -> build -> measure -> record, its progress, the store, merging runs,
# and the statistics that cells, the gate and the report share.
TOP_LEVEL = {"__init__", "cli", "config", "runner", "progress", "store", "merge", "stats"}


def bench_imports(path: Path) -> set[str]:
    """Every ffnbench.bench module or package a file imports, at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("ffnbench.bench")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ffnbench.bench"):
            found.add(node.module)
            # `from ffnbench.bench.cells import latency` imports the module ffnbench.bench.cells.latency
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


@pytest.mark.parametrize("package", list(FORBIDDEN))
def test_a_sub_package_imports_nothing_its_docstring_forbids(package):
    doc = importlib.import_module(f"ffnbench.bench.{package}").__doc__
    assert all(f"`ffnbench.bench.{other}`" in doc.split("Must not import")[1] for other in FORBIDDEN[package])
    modules = sorted((BENCH / package).glob("*.py"))
    assert len(modules) > 2
    broken = {path.name: sorted(name for name in bench_imports(path) for other in FORBIDDEN[package]
                                if name == f"ffnbench.bench.{other}" or name.startswith(f"ffnbench.bench.{other}."))
              for path in modules}
    assert not {k: v for k, v in broken.items() if v}


def test_the_rule_finds_a_forbidden_import(tmp_path):
    """The check above can fail: a function-local import of the report from a cell is found."""
    module = tmp_path / "cell.py"
    module.write_text("def f():\n    from ffnbench.bench.report import timing\n    return timing\n")
    assert "ffnbench.bench.report.timing" in bench_imports(module)


def test_the_top_level_holds_the_run_itself():
    assert {p.stem for p in BENCH.glob("*.py")} == TOP_LEVEL
    assert {p.name for p in BENCH.iterdir() if p.is_dir() and p.name != "__pycache__"} == set(FORBIDDEN)
