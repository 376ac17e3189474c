"""The committed baseline for this machine class gates a fresh quick run's accuracy (latency is
left to `make bench`-style runs: tests never judge speed)."""

import dataclasses
from pathlib import Path

import pytest

from ffnbench.bench import preset_config, run
from ffnbench.bench.gate.checks import checks
from ffnbench.bench.gate.gate import gate, load_baseline
from ffnbench.bench.machine.isa import cpu_info, machine_class

BASELINES = Path(__file__).resolve().parents[1] / "baselines"


# The classes this project's machines and CI come in; each must have its baseline.
FLEET = ("cpu-avx2", "cpu-avx512-vnni", "cpu-amx")


@pytest.mark.parametrize("name", FLEET)
def test_every_fleet_class_has_a_quick_baseline_of_its_own(name):
    baseline = load_baseline(BASELINES / f"{name}.json")
    assert baseline["machine_class"] == name and baseline["config"]["preset"] == "quick"
    assert all(cell["status"] == "ok" for cell in baseline["cells"].values())


def test_a_fresh_quick_run_passes_the_committed_baseline(tmp_path):
    name = machine_class(cpu_info()["isa"])
    path = BASELINES / f"{name}.json"
    if not path.exists():
        assert name not in FLEET
        pytest.skip(f"no committed baseline for machine class {name} (have: "
                    f"{', '.join(p.stem for p in BASELINES.glob('*.json')) or 'none'}); "
                    "`make baseline` writes one (README, 'A baseline for a new machine class')")
    baseline = load_baseline(path)
    assert baseline["config"]["preset"] == "quick"
    config = preset_config("quick")
    config.latency = dataclasses.replace(config.latency, enabled=False)
    # Every accuracy cell the baseline holds is gated, the trained pair's whole-model (lm) cells
    # too where it holds them (baselines written before the quick preset had lm cells hold none).
    if not any(cell["kind"] == "lm" for cell in baseline["cells"].values()):
        config.downstream = dataclasses.replace(config.downstream, recipes=[])
    run(config, tmp_path / "run", progress=False)
    result = gate(path, tmp_path / "run", checks(), only="accuracy")
    assert result.passed, [(f.cell, f.metric, f.baseline, f.new) for f in result.failures] + result.missing
    gated = {key for key, cell in baseline["cells"].items() if cell["kind"] in ("accuracy", "lm")}
    assert {f.cell for f in result.findings} == gated and len(gated) >= 20
