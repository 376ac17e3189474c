"""The report's section on users' whole models (kind "whole" cells): per model, what fp32 scores
under each scenario (a verdict needs a model that still works), llama.cpp's figures per recipe and
scenario with 95 % intervals over text windows and drift draws, and the model's own drift and
massive activations at every FFN input, beside the synthetic scenarios'.

One model, no training seeds: the intervals resample windows (within drift draws) only, as the
downstream ones do within a seed (analysis.verdicts.interval).
"""

from pathlib import Path

import numpy as np

from ffnbench.bench.analysis.verdicts import interval
from ffnbench.bench.report import plots
from ffnbench.bench.report.formatting import number
from ffnbench.bench.store import label
from ffnbench.bench.traffic.scenarios import TEXT_DOMAINS
from ffnbench.quant import FAMILY_OF, mitigations

DRIFT_COLUMNS = ("positive_mean_fraction", "abs_mean_shift_std", "token_mean_energy", "domain_shift_std",
                 "massive_ratio", "rms_spread")


def index(cells: list[dict]) -> dict[str, dict[tuple[str, str], dict]]:
    """model -> (recipe label, scenario) -> its cell."""
    out: dict[str, dict] = {}
    for c in cells:
        out.setdefault(c["model"], {})[label(c), c["scenario"]] = c
    return out


def section(whole: dict[str, dict], threshold: float, run_dir: Path, plot_dir: Path) -> list[str]:
    lines = []
    for model, cells in whole.items():
        scenarios = list(dict.fromkeys(s for _, s in cells))
        recipes = list(dict.fromkeys(r for r, _ in cells))
        fp32 = {s: cells.get(("fp32", s)) for s in scenarios}
        source = next((c["checkpoint"] for c in fp32.values() if c and "family" in c.get("checkpoint", {})), {})
        broken = {s: why for s in scenarios if (why := fp32_broken(fp32.get(s), threshold))}
        windowed = next((c for c in cells.values() if c.get("windows")), next(iter(cells.values())))
        lines += [f"## Whole model `{model}`", "", _source_line(model, source, windowed), "",
                  *_health(fp32, broken, threshold), *_figures(cells, scenarios, recipes, broken),
                  *_drift(fp32, scenarios, model, run_dir, plot_dir)]
    return lines


def _source_line(model: str, source: dict, cell: dict) -> str:
    config = source.get("config") or {}
    types = f", weights stored as {', '.join(source['tensor_types'])}" if source.get("tensor_types") else ""
    return (f"`{model}`: {source.get('file')} (sha256 `{str(source.get('sha256'))[:12]}`…), {source.get('family')} "
            f"family (FFN design {config.get('design')}), {number((source.get('parameters') or 0) / 1e6, 1)}M "
            f"parameters{types}; {config.get('n_layers')} layers, width {config.get('d_model')}, FFN "
            f"{config.get('d_ff')}. Windows of {config.get('context')} tokens, "
            f"{len((cell.get('windows') or {}).get('kl_to_fp32', [])) or 'no finite'} "
            f"a scenario; drift injected at `{cell['inject']}`. Its fp32 reference is the file's weights in fp32 "
            "(a GGUF's dequantized).")


def fp32_broken(cell: dict | None, threshold: float) -> str | None:
    """Why fp32 itself fails under the scenario, or None: worse than the token-frequency model, or
    more than `threshold` bits per byte above its clean text. Any of the scenario's cells will do:
    each records its fp32 reference's figures."""
    if cell is None:
        return "no fp32 cell"
    ref = cell["reference"]
    if ref["order0_bits_per_byte"] is not None and ref["bits_per_byte"] >= ref["order0_bits_per_byte"]:
        return f"fp32 {ref['bits_per_byte']:.2f} bits/byte, no better than token frequencies"
    if ref["delta_bpb"] > threshold:
        return f"fp32 {ref['delta_bpb']:+.2f} bits/byte from the same text undrifted"
    return None


def _health(fp32: dict, broken: dict, threshold: float) -> list[str]:
    lines = [f"fp32 under each scenario (healthy: within {threshold} bit per byte of the same text undrifted, and "
             "better than the text's token frequencies):", "",
             "| scenario | bits/byte | Δ from undrifted | token frequencies | healthy |", "|---|---|---|---|---|"]
    for scenario, cell in fp32.items():
        if cell:
            ref = cell["reference"]
            lines.append(f"| {scenario} | {ref['bits_per_byte']:.3f} | {ref['delta_bpb']:+.3f} | "
                         f"{number(ref['order0_bits_per_byte'], 3)} | "
                         f"{'no: ' + broken[scenario] if scenario in broken else 'yes'} |")
    return [*lines, ""]


def _windowed(cell: dict, metric: str, fp32: dict | None = None) -> str:
    """'mean [low, high]' of a per-window figure (minus fp32's, window by window, where given)."""
    values = np.asarray(cell["windows"][metric], np.float64)
    if fp32 is not None:
        values = values - np.asarray(fp32["windows"][metric], np.float64)
    draws = np.arange(len(values)) % cell["draws"]
    point, low, high = interval(values[None], np.zeros((1, len(values))), "difference", draws)
    spec = ".2e" if metric == "kl_to_fp32" else "+.4f" if fp32 is not None or "delta" in metric else ".4f"
    return f"{point:{spec}} [{low:{spec}}, {high:{spec}}]"


def _figures(cells: dict, scenarios: list[str], recipes: list[str], broken: dict) -> list[str]:
    lines = ["llama.cpp's figures (`llama-perplexity --kl-divergence`) per position against fp32 on the same text "
             "and drift: KL divergence in nats (mean [95 % CI over windows and drift draws], 99th and 99.9th "
             "percentile, maximum), same top-1 (share of positions whose most likely token is fp32's), Δp (the "
             "probability of fp32's most likely token, quantized minus fp32), and bits per byte minus fp32's on the "
             "same windows. Rows under a scenario where fp32 itself is broken describe a model that no longer "
             "works: no recommendation rests on them.", "",
             "| scenario | recipe | family | KLD mean [95 % CI] | p99 | p99.9 | max | same top-1 [95 % CI] | "
             "Δp mean [95 % CI] | Δp RMS | bits/byte − fp32 [95 % CI] |", "|---" * 11 + "|"]
    for scenario in scenarios:
        fp32 = cells.get(("fp32", scenario))
        for recipe in recipes:
            cell = cells.get((recipe, scenario))
            if recipe == "fp32" or not cell or not cell.get("windows"):
                continue
            m = cell["metrics"]
            where = f"{scenario} (fp32 broken)" if scenario in broken else scenario
            bpb = _windowed(cell, "bits_per_byte", fp32) if fp32 and fp32.get("windows") else "–"
            lines.append(f"| {where} | {recipe} | {_family(recipe)} | "
                         f"{_windowed(cell, 'kl_to_fp32')} | {m['kld_p99']:.2e} | {m['kld_p999']:.2e} | "
                         f"{m['kld_max']:.2e} | {_windowed(cell, 'same_top1')} | {_windowed(cell, 'delta_p_mean')} | "
                         f"{m['delta_p_rms']:.4f} | {bpb} |")
    return [*lines, ""]


def _family(label: str) -> str:
    """A recipe's family, a mitigated one's with its mitigations (int8-dynamic+rotate); a [recipe]
    variant's is "variant"."""
    parent, mods = mitigations.parse(label.partition("@")[0])
    return FAMILY_OF.get(parent, "variant") + "".join(f"+{m}" for m in mods)


def _drift(fp32: dict, scenarios: list[str], model: str, run_dir: Path, plot_dir: Path) -> list[str]:
    """The drift statistics at the FFN inputs per scenario (median over layers, and the largest), and
    the massive activations on the model's own text."""
    measured = {s: c for s, c in fp32.items() if c and c.get("drift_stats")}
    if not measured:
        return []
    lines = [f"Drift at the FFN inputs of `{model}` (fp32; docs/design.md's statistics, per layer: the median over its "
             f"{len(next(iter(measured.values()))['drift_stats'])} layers, and in brackets the largest). Text "
             "domains are the model's own drift; synthetic scenarios are what ffnbench injects.", "",
             "| scenario | " + " | ".join(DRIFT_COLUMNS) + " |", "|---" * (len(DRIFT_COLUMNS) + 1) + "|"]
    for scenario, cell in measured.items():
        per_layer = cell["drift_stats"]
        row = []
        for column in DRIFT_COLUMNS:
            values = [layer[column] for layer in per_layer if layer.get(column) is not None]
            row.append(f"{np.median(values):.3g} [{max(values):.3g}]" if values else "–")
        lines.append(f"| {scenario} | " + " | ".join(row) + " |")
    lines.append("")
    texts = [s for s in scenarios
             if s in measured and measured[s].get("massive") and (s == "clean" or s in TEXT_DOMAINS)]
    if texts:
        first = measured[texts[0]]["massive"]
        lines += [f"Massive activations on `{texts[0]}` text, per layer: the channels of largest \\|x\\|, those "
                  "values, the median \\|x\\|, and the share of tokens whose largest \\|x\\| sits in each channel "
                  "(how stable).", "",
                  "| layer | channels | max \\|x\\| | median \\|x\\| | ratio | token share |",
                  "|---|---|---|---|---|---|"]
        for layer, found in enumerate(first):
            ratio = found["max_abs"][0] / found["median_abs"] if found["median_abs"] else None
            lines.append(f"| {layer} | {', '.join(map(str, found['channels']))} | "
                         f"{', '.join(f'{v:.3g}' for v in found['max_abs'])} | {found['median_abs']:.3g} | "
                         f"{number(ratio, 0)} | {', '.join(f'{v:.2f}' for v in found['token_share'])} |")
        lines.append("")
        for scenario in texts[1:]:
            other = measured[scenario]["massive"]
            same = sum(a["channels"][0] == b["channels"][0] for a, b in zip(first, other, strict=True))
            change = max(abs(b["max_abs"][0] / a["max_abs"][0] - 1) for a, b in zip(first, other, strict=True))
            lines.append(f"On `{scenario}` text the top channel is the same in {same} of {len(first)} layers, its "
                         f"largest \\|x\\| within {change:.0%} of `{texts[0]}`'s.")
        lines.append("")
    series = {s: [(i, layer["max_abs"][0] / layer["median_abs"]) for i, layer in enumerate(c["massive"])
                  if layer["median_abs"]] for s, c in measured.items() if c.get("massive")}
    if series:
        panel = "largest |x| / median |x|"
        path = plots.curves({panel: series}, "layer", "ratio (log)", f"Massive activations ({model})",
                            plot_dir / f"massive_{model}.png", log_panels=(panel,))
        lines += [f"![]({path.relative_to(run_dir)})", ""]
    return lines
