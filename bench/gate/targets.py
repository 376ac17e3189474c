"""Time targets, shown by running the presets and configs as a user would (not by timed tests):

    python -m ffnbench.bench.gate.targets [--presets quick,default] [--configs examples/latency-7b.toml]

Each runs end to end, export included, into a fresh directory with a cold artifact cache.
Targets on the project's 2-core machine: quick <= 90 s, default <= 600 s, full <= 45 min,
examples/latency-7b.toml <= 15 min.
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS_S = {"quick": 90.0, "default": 600.0, "full": 2700.0, "latency-7b": 900.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="quick,default")
    parser.add_argument("--configs", default="", help="run configs (TOML), comma-separated")
    args = parser.parse_args()
    exe = str(Path(sys.executable).parent / "ffnbench")
    runs = [(p, ["--preset", p]) for p in args.presets.split(",") if p]
    runs += [(Path(c).stem, ["--config", c]) for c in args.configs.split(",") if c]
    missed = 0
    for name, how in runs:
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            subprocess.run([exe, "run", *how, "--out", str(Path(tmp) / name)], check=True, stdout=subprocess.DEVNULL)
            seconds = time.perf_counter() - started
        target = TARGETS_S.get(name)
        ok = target is None or seconds <= target
        missed += not ok
        said = f"target {target:.0f} s: {'met' if ok else 'MISSED'}" if target else "no target"
        print(f"{name}: {seconds:.0f} s end to end ({said})")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
