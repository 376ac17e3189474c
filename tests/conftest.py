"""Shared fixtures: tiny configs, seeded inputs, and the path of the installed console script."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from ffnbench.models import preset

DESIGNS = ("A", "B", "ln-swiglu", "rms-gelu")


@pytest.fixture
def tiny():
    """tiny preset config factory: tiny("B", residual=False)."""
    return lambda design, **kw: preset("tiny", design, **kw)


@pytest.fixture
def hidden():
    """Seeded (batch=2, seq=8, d_model=64) hidden states."""
    return torch.randn(2, 8, 64, generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """The user cache (measured peaks, whole-model exports) goes to a temporary folder, not ~/.cache,
    one for the whole test run: with xdist, every worker's base folder sits in one shared parent, so
    a whole model exported by one worker is copied, hash-checked, by the other."""
    import os

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    os.environ["XDG_CACHE_HOME"] = str(shared / "cache")


@pytest.fixture(scope="session")
def ffnbench_exe() -> str:
    exe = Path(sys.executable).parent / "ffnbench"
    return str(exe) if exe.exists() else shutil.which("ffnbench")


@pytest.fixture(scope="session")
def seed_exports(tmp_path_factory):
    """seed_exports(run_dir) puts the tiny preset's fp32 exports (A and B, as `ffnbench run` writes
    them) into run_dir/artifacts, where a run finds them by content instead of exporting again.

    Exporting is most of a tiny run's time; tests of run logic need not repeat it (export itself is
    tested in test_export.py, and this fixture's own run, test_merge's whole run, test_compare's
    runs and the console-script run export for real).
    """
    from ffnbench.bench import RunConfig, run
    from ffnbench.bench.cells.latency import LatencyConfig

    source = tmp_path_factory.mktemp("tiny-exports") / "run"
    run(RunConfig(models=["tiny"], recipes=["fp32"], scenarios=["clean"], n_requests=1, seq_len=4,
                  latency=LatencyConfig(enabled=False)),
        source, progress=False)

    def seed(run_dir: Path) -> Path:
        for export in exports:
            shutil.copytree(export, Path(run_dir) / "artifacts" / export.name)
        return Path(run_dir)

    exports = sorted((source / "artifacts").glob("export-*"))
    assert len(exports) == 2
    seed.exports = {json.loads((e / "manifest.json").read_text())["config"]["design"]: e / "model.onnx"
                    for e in exports}  # design -> model.onnx, for tests that quantize them directly
    return seed
