"""Versions of the stack: results and baselines are comparable only between identical stacks."""

import platform
from importlib import metadata

STACK = ("ffnbench", "torch", "onnx", "onnxruntime", "onnxscript", "numpy", "bitsandbytes", "safetensors")
# What turns recorded samples into intervals, tests and plots: recorded beside the stack, but a run
# measured on one stack is the same measurement whichever of these later summarises it.
ANALYSIS = ("scipy", "matplotlib")


def stack_versions() -> dict[str, str | None]:
    """Installed version of each stack package (None when absent), read without importing it."""
    return {"python": platform.python_version(), **_versions(STACK)}


def analysis_versions() -> dict[str, str | None]:
    return _versions(ANALYSIS)


def _versions(names: tuple[str, ...]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
