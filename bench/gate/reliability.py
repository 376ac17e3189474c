"""Measured reliability of the gate, by running it as CI would:

    python -m ffnbench.bench.gate.reliability [--pairs 10] [--out runs/reliability]

False alarms: the quick preset run pairs+1 times on the same build; each later run is gated
against the first four ways: latency re-measured side by side in this process (--remeasure), and
by workers, each side in its own environment (--old-python, here this same one; five processes a
side, the test over process medians), with recorded latency made strict, and with recorded latency
advisory (no --remeasure). Then a default-size run gated against itself by workers.
Detection: regressions injected, each of which the gate must catch: 1 thread instead of 2
(latency), a bitsandbytes forward run twice and one bitsandbytes recipe (LLM.int8) made 1.2x slower
in the new side's code (latency, re-measured by workers), a 4-bit recipe in place of the int8 one
(accuracy), and QDQ calibrated on the wrong scenario (accuracy).
"""

import argparse
import shutil
import site
import subprocess
import sys
from pathlib import Path

EXE = str(Path(sys.executable).parent / "ffnbench")
CHECKOUT = Path(__file__).resolve().parents[2]  # a source checkout: this tool is for developers

# TorchRunnable.timed_call's line, and what the injected revisions put in its place.
TIMED_CALL = "        return lambda: self._forward(h)\n"
DOUBLED = "        return lambda: (self._forward(h), self._forward(h))\n"
# LLM.int8 modules only: each call spins for a fifth of the warm call's median after the forward.
SLOWER_INT8 = """        if not any(type(m).__name__ == "Linear8bitLt" for m in self.module.modules()):
            return lambda: self._forward(h)
        import statistics
        import time

        def once():
            start = time.perf_counter()
            self._forward(h)
            return time.perf_counter() - start

        extra = 0.2 * statistics.median(once() for _ in range(5))

        def slowed():
            self._forward(h)
            until = time.perf_counter() + extra
            while time.perf_counter() < until:
                pass

        return slowed
"""


def injected_environment(root: Path, timed_call: str) -> Path:
    """Another revision's environment: this checkout's code with TorchRunnable's timed call replaced
    by `timed_call`, over this environment's packages. Returns its interpreter."""
    root = Path(root).resolve()  # .pth lines are read relative to site-packages, so absolute
    package = root / "src" / "ffnbench"
    shutil.copytree(CHECKOUT / "ffnbench", package)
    for sub in ("models", "export", "quant", "bench"):  # the installed layout (pyproject's package-dir)
        shutil.copytree(CHECKOUT / sub, package / sub)
    runnables = package / "bench" / "cells" / "runnables.py"
    if runnables.read_text().count(TIMED_CALL) != 1:
        raise RuntimeError(f"{runnables}: TorchRunnable.timed_call changed; update the injected regression")
    runnables.write_text(runnables.read_text().replace(TIMED_CALL, timed_call))
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    site_packages = next((root / "venv" / "lib").glob("python3*/site-packages"))
    (site_packages / "other_revision.pth").write_text(f"{root / 'src'}\n{site.getsitepackages()[0]}\n")
    return root / "venv" / "bin" / "python"


def doubled_forward_environment(root: Path) -> Path:
    return injected_environment(root, DOUBLED)


def slower_int8_environment(root: Path) -> Path:
    return injected_environment(root, SLOWER_INT8)


def ffnbench(*args) -> int:
    return subprocess.run([EXE, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True).returncode


def run_preset(preset: str, out: Path, *extra) -> Path:
    if ffnbench("run", "--preset", preset, "--no-report", "--out", out, *extra) != 0:
        raise SystemExit(f"run into {out} failed")
    return out


def quick(out: Path, *extra) -> Path:
    return run_preset("quick", out, *extra)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--out", default="runs/reliability")
    args = parser.parse_args()
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=False)
    base = quick(root / "base")
    baseline = root / "baseline.json"
    ffnbench("gate", "--update-baseline", "--baseline", baseline, base)

    alarms = {"remeasured": 0, "remeasured by workers": 0, "recorded, strict": 0, "recorded, advisory": 0}
    for i in range(1, args.pairs + 1):
        run = quick(root / f"same-{i}")
        alarms["recorded, strict"] += ffnbench("gate", "--baseline", baseline, run, "--strict-recorded-latency") != 0
        alarms["recorded, advisory"] += ffnbench("gate", "--baseline", baseline, run) != 0
        alarms["remeasured"] += ffnbench("gate", "--baseline", baseline, run, "--remeasure", base) != 0
        alarms["remeasured by workers"] += ffnbench("gate", "--baseline", baseline, run, "--remeasure", base,
                                                    "--old-python", sys.executable) != 0
        print(f"pair {i}: false alarms so far {alarms}", flush=True)

    # The default size, gated against itself by workers: latency only (the default matrix's timing).
    (root / "default-size.toml").write_text('models = ["default"]\nscenarios = ["clean"]\n[downstream]\nrecipes = []\n'
                                            '[latency]\nmemory = false\ndiagnose = false\n')
    default = run_preset("default", root / "default-size", "--config", root / "default-size.toml")
    ffnbench("gate", "--update-baseline", "--baseline", root / "default-baseline.json", default)
    default_alarm = ffnbench("gate", "--baseline", root / "default-baseline.json", default, "--only", "latency",
                             "--remeasure", default, "--old-python", sys.executable) != 0

    (root / "threads1.toml").write_text("threads = 1\n")
    slow = quick(root / "threads-1", "--config", root / "threads1.toml")
    (root / "qdq.toml").write_text('recipes = ["ort-int8-qdq-minmax"]\nlatency = false\n')
    qdq_clean = quick(root / "qdq-clean", "--config", root / "qdq.toml", "--calibration", "clean")
    qdq_prod = quick(root / "qdq-production", "--config", root / "qdq.toml", "--calibration", "production")
    ffnbench("gate", "--update-baseline", "--baseline", root / "qdq-baseline.json", qdq_clean)
    detections = {
        "1 thread instead of 2 (re-measured)": ffnbench("gate", "--baseline", baseline, slow, "--only", "latency",
                                                        "--remeasure", base),
        "1 thread instead of 2 (recorded, strict)": ffnbench("gate", "--baseline", baseline, slow, "--only",
                                                             "latency", "--strict-recorded-latency"),
        "bitsandbytes forward run twice (re-measured by workers)": ffnbench(
            "gate", "--baseline", baseline, base, "--only", "latency", "--remeasure", base,
            "--old-python", sys.executable, "--new-python", doubled_forward_environment(root / "doubled")),
        "LLM.int8 (bnb-int8) 1.2x slower (re-measured by workers)": ffnbench(
            "gate", "--baseline", baseline, base, "--only", "latency", "--remeasure", base,
            "--old-python", sys.executable, "--new-python", slower_int8_environment(root / "slower-int8")),
        "ort-int4-rtn in place of ort-int8-dynamic": ffnbench("gate", "--baseline", baseline, base, "--only",
                                                              "accuracy", "--as", "ort-int8-dynamic=ort-int4-rtn"),
        "bnb-nf4 in place of bnb-int8": ffnbench("gate", "--baseline", baseline, base, "--only", "accuracy",
                                                 "--as", "bnb-int8=bnb-nf4"),
        "QDQ calibrated on production instead of clean": ffnbench(
            "gate", "--baseline", root / "qdq-baseline.json", qdq_prod, "--only", "accuracy",
            "--as", "ort-int8-qdq-minmax@clean=ort-int8-qdq-minmax@production"),
    }
    print(f"false alarms over {args.pairs} same-build pairs: " + ", ".join(f"{k} {v}" for k, v in alarms.items()))
    print(f"default size gated against itself by workers: {'FALSE ALARM' if default_alarm else 'pass'}")
    for name, code in detections.items():
        print(f"injected: {name}: {'caught (exit 1)' if code == 1 else f'MISSED (exit {code})'}")
    # The targets: the default gate (re-measured) never alarms on the same build and catches all.
    missed = sum(code != 1 for name, code in detections.items() if "strict" not in name)
    return 1 if missed or default_alarm or alarms["remeasured"] or alarms["remeasured by workers"] \
        or alarms["recorded, advisory"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
