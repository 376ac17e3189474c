"""Which timed cells get a kernel-path diagnosis, and the measured alternatives beside them.

At decode: where one weight width's p50 spreads more than kernel_paths.SPREAD×. At prefill: each
quantized cell that is not shown faster than fp32 in its own runtime (ONNX Runtime's fp32 for ONNX
artifacts, torch's for modules). A diagnosed cell records `kernel_path`; an artifact with a cheaper
neighbour records it timed side by side and scored on the same inputs (`alternative`): HQQ's float
zero points against uint8 ones, MatMulNBits' accuracy_level against the other one.
"""

from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from ffnbench.bench.cells import latency, metrics
from ffnbench.bench.cells.ort_runnable import OrtRunnable
from ffnbench.bench.config import RunConfig
from ffnbench.bench.machine import kernel_paths
from ffnbench.quant import RECIPES

# A prefill cell whose time ratio to fp32 has an upper 95 % bound at or above this is diagnosed.
PREFILL_NOT_FASTER = 1.0


def diagnose(shape: str, subjects: dict, records: dict, entries: dict, timings: dict, config: RunConfig) -> None:
    bits = {key: RECIPES[config.recipe_spec(r["recipe"])[0]].bits for key, r in records.items() if key in timings}
    chosen = _spread_at_decode(bits, records, timings) if shape == "decode" else _not_faster(bits, entries, timings)
    for key, compared in chosen.items():
        entry, record = entries[key], records[key]
        found = kernel_paths.diagnose(entry["runnable"], entry["x"]) | {"bits": bits[key], "shape": shape, **compared}
        subject = subjects[record["design"]]
        if kernel_paths.float_zero_points(found):
            found["alternative"] = _alternative(subject, entry, config, partial(_uint8, subject, entry, record))
        elif shape == "prefill" and (level := kernel_paths.accuracy_level(found)) is not None:
            found["alternative"] = _alternative(subject, entry, config,
                                                partial(_other_level, subject, record, entry, level))
        record["kernel_path"] = found


def _spread_at_decode(bits: dict, records: dict, timings: dict) -> dict[str, dict]:
    decode = {key: {"design": records[key]["design"], "bits": b, "p50_ms": timings[key]["p50_ms"]}
              for key, b in bits.items()}
    chosen = {}
    for keys in kernel_paths.spread_groups(decode):
        fastest = min(keys, key=lambda k: decode[k]["p50_ms"])
        chosen |= {key: {"fastest": records[fastest]["recipe"],
                         "vs_fastest": decode[key]["p50_ms"] / decode[fastest]["p50_ms"]} for key in keys}
    return chosen


def _not_faster(bits: dict, entries: dict, timings: dict) -> dict[str, dict]:
    chosen = {}
    for key, b in bits.items():
        reference = "fp32_ort" if isinstance(entries[key]["runnable"], OrtRunnable) else "fp32_torch"
        ratio = timings[key].get(f"vs_{reference}")
        if b < 32 and ratio and kernel_paths.not_shown_faster(ratio, PREFILL_NOT_FASTER):
            chosen[key] = {"reference": reference, "vs_reference": ratio}
    return chosen


def _uint8(subject, entry: dict, record: dict) -> tuple[Path, str, dict]:
    out = subject.artifacts / "diagnosis" / (Path(record["artifact"]["dir"]).name + "-uint8-zero-points.onnx")
    return (kernel_paths.uint8_variant(entry["runnable"].path, subject.export.path, out),
            "uint8 zero points (HQQ's scales; zero points rounded to 0..15; weights requantized)",
            {"base": record["recipe"], "zero_points": "uint8"})


def _other_level(subject, record: dict, entry: dict, level: int) -> tuple[Path, str, dict]:
    other = 0 if level == 4 else 4  # levels 0-3 all compute in fp32 on CPU
    out = subject.artifacts / "diagnosis" / (Path(record["artifact"]["dir"]).name + f"-accuracy-level-{other}.onnx")
    return (kernel_paths.accuracy_level_variant(entry["runnable"].path, out, other),
            f"accuracy_level {other} ({kernel_paths.ACCURACY_LEVELS[other]}; the same 4-bit weights)",
            {"base": record["recipe"], "accuracy_level": other})


def _alternative(subject, entry: dict, config: RunConfig, build: Callable[[], tuple[Path, str, dict]]) -> dict:
    """The variant `build` writes (its path, what it is, its recipe table) timed beside the recipe at
    the cell's shape, and both scored on the latency scenario's accuracy inputs (centered SQNR
    against fp32)."""
    try:
        path, what, as_recipe = build()
        variant = OrtRunnable(path, threads=config.threads, spinning=config.latency.ort_spinning)
        fns = {"recipe": entry["runnable"].timed_call(entry["x"]), "variant": variant.timed_call(entry["x"])}
        samples, _ = latency.interleaved(fns, config.latency)
        scenario = config.latency_scenario()
        reference, _ = subject.reference(scenario)

        def centered_db(runnable) -> float:
            y = np.concatenate([runnable.run(b) for b in subject.batches(scenario)])
            return metrics.output_metrics(reference, y, subject.head)["centered_sqnr_db"]

        return {"what": what, "as_recipe": as_recipe, "path": path.relative_to(subject.artifacts.parent).as_posix(),
                "p50_ms": float(np.median(samples["variant"])), "recipe_p50_ms": float(np.median(samples["recipe"])),
                "speedup": latency.ratio(samples["recipe"], samples["variant"]), "scenario": scenario,
                "centered_sqnr_db": centered_db(variant), "recipe_centered_sqnr_db": centered_db(entry["runnable"])}
    except Exception as e:  # the diagnosis goes without its alternative, not the cells
        return {"error": f"{type(e).__name__}: {e}"}
