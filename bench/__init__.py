"""Benchmark side: scenarios, runnables, metrics, runs, reports, the CI gate and the CLI.

Scripted use, the same run as `ffnbench run`:

    from ffnbench.bench import preset_config, run
    results = run(preset_config("quick"), "runs/quick")   # one dict per cell

Names resolve on first use, so the CLI can set up the process (thread wait policy) before torch
is imported.
"""

import importlib

_EXPORTS = {"RunConfig": "ffnbench.bench.config", "load_toml": "ffnbench.bench.config_toml",
            "preset_config": "ffnbench.bench.config", "run": "ffnbench.bench.runner"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ffnbench.bench' has no attribute '{name}'")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
