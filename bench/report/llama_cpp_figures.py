"""The report's table of the figures llama.cpp's perplexity tool reports for a quantization, per
recipe, design and scenario of the lm cells: KL divergence per position against fp32 (mean, 99th and
99.9th percentile, maximum), the share of positions whose most likely next token is fp32's ("same
top p"), and delta_p as docs/design.md defines it: the probability of fp32's most likely token, quantized
minus fp32 (llama.cpp's own Δp may be taken on the text's next token instead; the two differ where
fp32's top guess is wrong). Means carry the downstream interval (training seeds and, within them,
windows and drift draws)."""

from ffnbench.bench.analysis.verdicts import design_mean, seed_mean
from ffnbench.bench.report.formatting import number

# Per-window figures behind the intervals (lm_metrics.window_metrics), by the cell metric they average to.
WINDOWED = {"kld_mean": "kl_to_fp32", "same_top1": "same_top1", "delta_p_mean": "delta_p_mean"}


def section(lm: dict, scenarios: list[str], recipes: list[str]) -> list[str]:
    """Markdown lines; [] where no cell has the figures (a run from before they were recorded)."""
    rows = [(s, r, d) for s in scenarios for r in recipes if r != "fp32" for d in ("A", "B")
            if any("kld_p99" in c["metrics"] for c in lm.get((d, r, s), []))]
    if not rows:
        return []
    lines = ["### llama.cpp's figures", "",
             "Per position, against fp32 of the same model on the same text and drift, as `llama-perplexity "
             "--kl-divergence` reports a quantization: KL divergence in nats (mean with its 95 % interval; the "
             "99th and 99.9th percentile and the maximum over a cell's positions, averaged over seeds), the share "
             "of positions whose most likely next byte is fp32's (same top-1), and Δp, the probability of fp32's "
             "most likely byte, quantized minus fp32 (mean with interval, and RMS; llama.cpp's own Δp may follow "
             "the text's next byte instead, so compare it with care).", "",
             "| scenario | recipe | design | KLD mean [95 % CI] | p99 | p99.9 | max | same top-1 [95 % CI] | "
             "Δp mean [95 % CI] | Δp RMS |", "|---" * 10 + "|"]
    for scenario, recipe, design in rows:
        cells = lm[(design, recipe, scenario)]
        means = {m: _interval(lm, design, recipe, scenario, m) for m in WINDOWED}
        lines.append(f"| {scenario} | {recipe} | {design} | {means['kld_mean']} | "
                     + " | ".join(_e(seed_mean(cells, m)) for m in ("kld_p99", "kld_p999", "kld_max"))
                     + f" | {means['same_top1']} | {means['delta_p_mean']} | "
                     f"{_p(seed_mean(cells, 'delta_p_rms'))} |")
    return [*lines, ""]


def _interval(lm: dict, design: str, recipe: str, scenario: str, metric: str) -> str:
    """'mean [low, high]' over seeds and windows, or the seeds' mean alone where a cell lacks the
    per-window figure."""
    cells, fmt = lm.get((design, recipe, scenario), []), FORMATS[metric]
    if cells and all(WINDOWED[metric] in (c.get("windows") or {}) for c in cells):
        found = design_mean(lm, design, [recipe], scenario, WINDOWED[metric])
        if found:
            return f"{fmt(found[0])} [{fmt(found[1])}, {fmt(found[2])}]"
    return fmt(seed_mean(cells, metric))


def _e(value) -> str:
    return "–" if value is None else f"{value:.2e}"


def _p(value) -> str:
    return number(value, digits=4)


FORMATS = {"kld_mean": _e, "same_top1": _p, "delta_p_mean": _p}
