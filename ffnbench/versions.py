"""Versions of the stack: results and baselines are comparable only between identical stacks."""

import platform
from importlib import metadata

STACK = ("ffnbench", "torch", "onnx", "onnxruntime", "onnxscript", "numpy", "bitsandbytes", "safetensors")


def stack_versions() -> dict[str, str | None]:
    """Installed version of each stack package (None when absent), read without importing it."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in STACK:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
