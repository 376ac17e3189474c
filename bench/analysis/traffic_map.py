"""Your traffic on the map: a capture's drift statistics (`ffnbench capture`) placed on a run's
dose-response axes — mean shift by `abs_mean_shift_std`, request magnitude by `rms_spread` — by
comparing them with the same statistics the run measured at each dose level, and what each design's
fp32 health and the verdict are at the nearest levels. Both statistics are free of the model's
width and of a request's overall scale, so a capture from any model reads against the pair's."""

import json
from pathlib import Path

import numpy as np

from ffnbench.bench.analysis.evidence import Run
from ffnbench.bench.traffic.scenarios import MAGNITUDES, SHIFTS
from ffnbench.errors import UsageError

AXES = (("shift", SHIFTS, "abs_mean_shift_std"), ("magnitude", MAGNITUDES, "rms_spread"))


def read_capture(path: Path) -> dict:
    """The capture's JSON record (given the .json or the .safetensors beside it)."""
    path = Path(path)
    record_path = path.with_suffix(".json") if path.suffix == ".safetensors" else path
    try:
        record = json.loads(record_path.read_text())
    except FileNotFoundError:
        raise UsageError(f"--traffic: no capture record at {record_path}; give a file `ffnbench capture` wrote") \
            from None
    except (json.JSONDecodeError, UnicodeDecodeError, IsADirectoryError):
        raise UsageError(f"--traffic: {path} is not a capture (not its JSON record); give a file `ffnbench capture` "
                         "wrote") from None
    if not isinstance(record, dict) or record.get("kind") != "ffnbench.capture" or not record.get("layers"):
        raise UsageError(f"--traffic: {path} is not a capture (kind ffnbench.capture with per-layer statistics); "
                         "give a file `ffnbench capture` wrote")
    return record


def statistic(record: dict, name: str) -> float | None:
    values = [layer.get(name) for layer in record["layers"].values()]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _levels(lm: dict, axis: dict, name: str) -> list[tuple[float, str, float]]:
    """(dose, scenario, the statistic measured there: mean over designs, seeds and layers)."""
    out = []
    for scenario, dose in sorted(axis.items(), key=lambda kv: kv[1]):
        cells = [c for d in "AB" for c in lm.get((d, "fp32", scenario), []) if c.get("drift_stats")]
        values = [layer[name] for c in cells for layer in c["drift_stats"] if layer.get(name) is not None]
        if values:
            out.append((dose, scenario, float(np.mean(values))))
    return out


def place(runs: list[Run], capture: Path) -> dict:
    """{capture, axes: [{axis, statistic, value, nearest: [{scenario, dose, measured, health, verdict}], reading}]}."""
    record = read_capture(capture)
    out = {"capture": str(capture), "checkpoint": record.get("checkpoint"), "axes": []}
    for run in runs:
        _, doses = run.indexed
        group = doses.get(("trained", "ffn-input")) or doses.get(("drift", "ffn-input")) or \
            next(iter(doses.values()), None)
        if group is None:
            continue
        from ffnbench.bench.analysis import verdicts  # scipy.stats, for runs with dose cells only

        found = verdicts.comparisons(group, run.threshold)
        for axis, levels, name in AXES:
            value = statistic(record, name)
            measured = _levels(group, levels, name)
            if value is None or len(measured) < 2:
                continue
            nearest = _bracket(measured, value)
            rows = [{"scenario": s, "dose": dose, "measured": stat,
                     "health": {d: verdicts.health({k: v for k, v in group.items() if k[0] == d}, s, run.threshold)
                                is None for d in "AB"},
                     "verdict": verdicts.summary(found, s)} for dose, s, stat in nearest]
            out["axes"].append({"axis": axis, "statistic": name, "value": value, "run": run.name,
                                "nearest": rows, "reading": _reading(axis, name, value, rows)})
        break
    return out


def _bracket(measured: list[tuple[float, str, float]], value: float) -> list[tuple[float, str, float]]:
    """The two measured levels around the value (or the nearest one, outside the range measured)."""
    below = [m for m in measured if m[2] <= value]
    above = [m for m in measured if m[2] > value]
    if below and above:
        return [max(below, key=lambda m: m[2]), min(above, key=lambda m: m[2])]
    return [max(below, key=lambda m: m[2])] if below else [min(above, key=lambda m: m[2])]


def _reading(axis: str, name: str, value: float, rows: list[dict]) -> str:
    where = (f"between {rows[0]['dose']:g} and {rows[1]['dose']:g} ({rows[0]['scenario']}, {rows[1]['scenario']})"
             if len(rows) == 2 else f"beyond the levels measured, nearest {rows[0]['dose']:g} ({rows[0]['scenario']})")
    healthy = {d: all(r["health"][d] for r in rows) for d in "AB"}
    state = ("both designs stay healthy" if all(healthy.values()) else "neither design stays healthy"
             if not any(healthy.values()) else f"{'A' if healthy['A'] else 'B'} stays healthy and "
                                               f"{'B' if healthy['A'] else 'A'} does not")
    said = ", ".join(f"{r['scenario']}: {r['verdict'] or 'not compared'}" for r in rows)
    return f"your traffic's {name} {value:.3g} sits on the {axis} axis {where}, where {state} (verdicts {said})"
