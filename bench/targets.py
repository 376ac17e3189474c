"""Time targets, shown by running the presets as a user would (not by timed tests):

    python -m ffnbench.bench.targets [--presets quick,default]

Each preset runs end to end, export included, into a fresh directory with a cold artifact cache.
Targets on the project's 2-core machine: quick <= 90 s, default <= 600 s.
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS_S = {"quick": 90.0, "default": 600.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="quick,default")
    args = parser.parse_args()
    exe = str(Path(sys.executable).parent / "ffnbench")
    missed = 0
    for preset in args.presets.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            subprocess.run([exe, "run", "--preset", preset, "--out", str(Path(tmp) / preset)], check=True,
                           stdout=subprocess.DEVNULL)
            seconds = time.perf_counter() - started
        target = TARGETS_S.get(preset)
        ok = target is None or seconds <= target
        missed += not ok
        print(f"{preset}: {seconds:.0f} s end to end (target {target:.0f} s: {'met' if ok else 'MISSED'})")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
