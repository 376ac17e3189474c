"""The report's latency part for one model size: time per recipe, bandwidth and roofline at decode,
memory per recipe beside its size on disk, and what ran where one weight width spreads at decode
or a quantized recipe is no faster than fp32 at prefill."""

import json
from pathlib import Path

from ffnbench.bench.cells import latency
from ffnbench.bench.machine import kernel_paths
from ffnbench.bench.report import plots
from ffnbench.bench.report.formatting import number as _f


def section(run, model: str, plot_dir: Path) -> list[str]:
    lines = []
    for shape in ("decode", "prefill"):
        recipes = _recipes(run, model, shape)
        if not recipes:
            continue
        values = {d: [run.lat.get((d, model, r, shape), {}).get("p50_ms") for r in recipes] for d in run.designs}
        errors = {d: [(run.lat[(d, model, r, shape)]["p50_ci_low_ms"], run.lat[(d, model, r, shape)]["p50_ci_high_ms"])
                      if (d, model, r, shape) in run.lat else (0, 0) for r in recipes] for d in run.designs}
        path = plots.bars(recipes, values, errors, "p50 (ms), 95 % CI", f"{shape} latency ({model})",
                          plot_dir / f"latency_{shape}_{model}.png", log=True)
        lines += [f"## Latency at {shape} (model `{model}`)", "", f"![]({path.relative_to(run.dir)})", ""]
        lines += _table(run, model, shape, recipes)
        if shape == "decode":
            lines += _bandwidth(run, model, recipes)
    lines += _memory(run, model, plot_dir)
    lines += _kernel_paths(run, model)
    return lines


def _recipes(run, model: str, shape: str) -> list[str]:
    return [r for r in run.recipes if any((d, model, r, shape) in run.lat for d in run.designs)]


def _table(run, model: str, shape: str, recipes: list[str]) -> list[str]:
    designs = [d for d in run.designs if any((d, model, r, shape) in run.lat for r in recipes)]
    head = " | ".join(f"p50 {d} (ms) | GB/s {d} | roofline {d}" for d in designs)
    rows = [f"| recipe | {head} |", "|---|" + "---|" * 3 * len(designs)]
    bounded, budget = [], None
    for recipe in recipes:
        cells = []
        for design in designs:
            m = run.lat.get((design, model, recipe, shape))
            if not m:
                cells += ["–"] * 3
                continue
            mark = "†" if m.get("stopped_by") == "bounded" else ""
            if mark:
                bounded.append(f"{recipe} ({design}, {m['iterations']} rounds)")
                budget = m.get("max_runnable_seconds")
            cells += [_f(m["p50_ms"], 2) + mark, _f(m.get("achieved_gbps"), 1), _f(m.get("roofline_fraction"), 2)]
        rows.append(f"| {recipe} | " + " | ".join(cells) + " |")
    out = [*rows, ""]
    if bounded:
        out += [f"† Bounded: its first call said {_f(budget, 1)} s of timed work would not hold the minimum rounds, "
                "so it ran fewer, in the same rounds as the others: " + ", ".join(bounded) + ".", ""]
    return out


def _bandwidth(run, model: str, recipes: list[str]) -> list[str]:
    """The decode cell nearest the machine's measured memory bandwidth."""
    peak = ((run.manifest.get("machine") or {}).get("peaks") or {}).get("memory_gbps")
    cells = [(m["achieved_gbps"], d, r) for r in recipes for d in run.designs
             if (m := run.lat.get((d, model, r, "decode"))) and m.get("achieved_gbps")]
    if not cells or not peak:
        return []
    gbps, design, recipe = max(cells)
    return [f"Decode moves the weights once per token, so it is bound by memory bandwidth: GB/s counts the "
            f"artifact's bytes plus the fp32 input and output a call. Nearest the limit: **{recipe}** (design "
            f"{design}), {gbps:.1f} GB/s, {gbps / peak:.0%} of the {peak} GB/s this machine measured "
            "(`ffnbench doctor`).", ""]


def _memory(run, model: str, plot_dir: Path) -> list[str]:
    recipes = _recipes(run, model, "decode")
    if not recipes:
        return []
    rows, resident = [], {d: [] for d in run.designs}
    for recipe in recipes:
        for design in run.designs:
            decode, prefill = (run.lat.get((design, model, recipe, s)) or {} for s in ("decode", "prefill"))
            cell = decode or prefill
            resident[design].append(cell.get("resident_mb"))
            if cell:
                rows.append(f"| {recipe} | {design} | {_f(cell['model_bytes'] / 1e6, 1)} | "
                            f"{_f(cell.get('resident_mb'))} | {_f(decode.get('peak_call_mb'))} | "
                            f"{_f(prefill.get('peak_call_mb'))} |")
    if not any(v is not None for vs in resident.values() for v in vs):
        reasons = {c.get("memory_unavailable") for c in run.ok if c["kind"] == "latency" and c["model"] == model}
        return ["### Memory", "", "Not measured: " + "; ".join(sorted(r for r in reasons if r)) + ".", ""]
    path = plots.bars(recipes, resident, None, "resident MB (a process each)", f"Memory per recipe ({model})",
                      plot_dir / f"memory_{model}.png", log=True)
    return ["### Memory per recipe", "",
            "Each runnable loaded by a child process that holds nothing else (`bench/cells/memory.py`): `resident_mb` "
            "is what loading it added to that process, `peak_call_mb` the most a first call at that shape rose above "
            "it.",
            "", f"![]({path.relative_to(run.dir)})", "",
            "| recipe | design | on disk (MB) | resident (MB) | peak call, decode (MB) | peak call, prefill (MB) |",
            "|---|---|---|---|---|---|", *rows, ""]


def _kernel_paths(run, model: str) -> list[str]:
    lines = []
    for shape in ("decode", "prefill"):
        cells = [c for c in run.ok if c["kind"] == "latency" and c["model"] == model and c.get("kernel_path")
                 and c["shape"]["name"] == shape]
        if cells:
            lines += _what_ran(run, shape, cells)
    return lines


def _what_ran(run, shape: str, cells: list[dict]) -> list[str]:
    """One shape's diagnosed cells: what ran, why, on which machine class, and measured alternatives."""
    found = cells[0]["kernel_path"]
    where = found.get("machine_class") or (run.manifest.get("machine") or {}).get("machine_class")
    kernels = found.get("int8_kernels") or {}
    on = (f"Measured on machine class `{where}`, whose int8 kernels in ONNX Runtime's MLAS are "
          f"{kernels.get('u8s8_gemm')} for the U8S8 GEMM (`ort-int8-dynamic`) and {kernels.get('matmulnbits')} for "
          "MatMulNBits; another class can take other paths." if kernels else f"Measured on machine class `{where}`.")
    if shape == "decode":
        why = (f"Where recipes of one weight width differ by more than {kernel_paths.SPREAD:.0f}× at decode, each "
               "one's decode calls were profiled (ONNX Runtime's profiler, or torch's for bitsandbytes and torch "
               "modules).")
        head, compared = "× fastest", lambda k: f"{_f(k.get('vs_fastest'), 1)} (vs {k.get('fastest')})"
    else:
        rows = cells[0]["shape"]["batch"] * cells[0]["shape"]["seq"]
        why = (f"Prefill multiplies {rows:,} rows of input by each weight, so arithmetic, not moving the weights, "
               "bounds its time: a 4-bit weight's smaller size buys little there, and its kernel's arithmetic "
               "decides. Each quantized recipe not shown faster than fp32 in its own runtime (the 95 % interval of "
               "its paired time ratio reaching 1) was profiled at prefill.")
        head, compared = "× fp32 [95 % CI]", lambda k: latency.ratio_text(k.get("vs_reference"))
    lines = [f"### What ran at {shape}", "", f"{why} {on}", "",
             f"| design | recipe | bits | p50 (ms) | {head} | what ran |", "|---|---|---|---|---|---|"]
    for c in sorted(cells, key=lambda c: (c["design"], c["kernel_path"].get("bits", 0), c["metrics"]["p50_ms"])):
        k = c["kernel_path"]
        lines.append(f"| {c['design']} | {c['recipe']} | {k.get('bits')} | {c['metrics']['p50_ms']:.2f} | "
                     f"{compared(k)} | {kernel_paths.explain(k)} |")
    for c in cells:
        alt = c["kernel_path"].get("alternative")
        if not alt:
            continue
        if "error" in alt:
            lines += ["", f"- {c['recipe']} ({c['design']}): its alternative could not be measured: {alt['error']}."]
            continue
        table = ", ".join(f"`{key} = {json.dumps(value)}`" for key, value in (alt.get("as_recipe") or {}).items())
        lines += ["", f"- **{c['recipe']} ({c['design']}) with {alt['what']}**: {alt['p50_ms']:.2f} ms against "
                      f"{alt['recipe_p50_ms']:.2f} ms at {shape}, timed side by side (its time over the variant's "
                      f"{latency.ratio_text(alt['speedup'], 1)}); centered SQNR "
                      f"under `{alt['scenario']}` {alt['centered_sqnr_db']:.1f} dB against "
                      f"{alt['recipe_centered_sqnr_db']:.1f} dB." + (f" As a recipe: `[recipe.NAME]` {table}."
                                                                     if table else "")]
    return [*lines, ""]
