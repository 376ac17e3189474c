"""Benchmark side: scenarios, runnables, metrics, runs, reports, the CI gate and the CLI.

Scripted use, the same run as `ffnbench run`:

    from ffnbench.bench import RunConfig, preset_config, run
    results = run(preset_config("quick"), "runs/quick")   # one dict per cell
"""

from ffnbench.bench.config import RunConfig, load_toml, preset_config
from ffnbench.bench.runner import run

__all__ = ["RunConfig", "load_toml", "preset_config", "run"]
