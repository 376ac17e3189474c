"""Shared fixtures: tiny configs, seeded inputs, and the path of the installed console script."""

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
    """The peaks cache goes to a temporary folder, not the user's ~/.cache; measured once a session."""
    import os

    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def ffnbench_exe() -> str:
    exe = Path(sys.executable).parent / "ffnbench"
    return str(exe) if exe.exists() else shutil.which("ffnbench")
