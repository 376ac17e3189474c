"""The report's "Downstream" section: the trained pair's lm cells, read from the run directory alone.

What a user of the model would notice (bits per byte, KL to fp32, next-byte agreement) per recipe
under synthetic drift and the real second domain, what the drift alone costs in fp32, the measured
drift statistics at each FFN input, and a verdict set beside the sublayer one.
"""

import functools
import statistics
from pathlib import Path

from ffnbench.bench.report import plots
from ffnbench.bench.report.formatting import number
from ffnbench.bench.traffic.scenarios import TEXT_DOMAINS

HEADLINE_SCENARIOS = ("production", *TEXT_DOMAINS)


_f = functools.partial(number, digits=3)  # bits per byte and KL need the third digit


def _e(value) -> str:
    return "–" if value is None else f"{value:.2e}"


def checkpoints(run) -> dict[str, dict]:
    """design -> the checkpoint summary its fp32 lm cells record (identity, held-out bpb, loss curve)."""
    found = {}
    for (design, recipe, _), cell in run.lm.items():
        if recipe == "fp32" and "loss_curve" in (cell.get("checkpoint") or {}):
            found.setdefault(design, cell["checkpoint"])
    return found


def section(run, plot_dir: Path, sublayer: tuple[str, str, float] | None) -> list[str]:
    """Markdown lines for the lm cells of `run` (a report.Run); [] when it has none. `sublayer`:
    (model, scenario, median A − B centered SQNR) of the sublayer verdict, to set beside this one."""
    if not run.lm:
        return []
    designs = [d for d in ("A", "B") if any(k[0] == d for k in run.lm)]
    scenarios = list(dict.fromkeys(k[2] for k in run.lm))
    recipes = list(dict.fromkeys(k[1] for k in run.lm))
    lines = ["## Downstream: the trained pair", "",
             "A byte-level language model per design, trained here on the same text with the same everything but "
             "the FFN sublayers; each recipe quantizes the FFN sublayers of every block (attention and head stay "
             f"fp32), and each scenario drifts the states entering every FFN norm (`inject = "
             f"{run.manifest.get('config', {}).get('lm_inject', 'ffn-input')}`) or, for `domain-code`, feeds text "
             "of a domain the models never saw. Against fp32 of the same design on the same text and drift: "
             "`kl_to_fp32` (nats a byte) and `top1` isolate the quantization; `delta_bpb` is the change in bits "
             "per byte from fp32 on the same text without synthetic drift, so it includes the drift's own cost.", ""]
    lines += _training(run, plot_dir)
    for scenario in (s for s in HEADLINE_SCENARIOS if s in scenarios):
        lines += _ab_table(run, scenario, recipes)
    lines += _drift_damage(run, scenarios)
    lines += _drift_statistics(run, scenarios, designs)
    lines += _spikes(run, scenarios, designs)
    lines += ["### Downstream verdict", "", *verdict(run, recipes, scenarios, sublayer), ""]
    return lines


def _training(run, plot_dir: Path) -> list[str]:
    found = checkpoints(run)
    if not found:
        return []
    lines = ["| design | parameters | steps | held-out bits per byte | checkpoint sha256 |", "|---|---|---|---|---|"]
    lines += [f"| {d} | {c['parameters']:,} | {c['steps']} | {c['held_out_bits_per_byte']:.3f} | "
              f"`{c['sha256'][:12]}` |" for d, c in sorted(found.items())]
    curves = {d: c["loss_curve"] for d, c in sorted(found.items())}
    path = plots.training_curves(curves, plot_dir / "training_curves.png")
    corpus = next(iter(found.values()))["corpus"]
    return [*lines, "", f"Trained on `{corpus['source']}` ({corpus['bytes']:,} bytes, sha256 "
            f"`{corpus['sha256'][:12]}`), the last {corpus['held_out']:.0%} held out.", "",
            f"![training curves]({path.relative_to(run.dir)})", ""]


def _ab_table(run, scenario: str, recipes: list[str]) -> list[str]:
    lines = [f"### A vs B under `{scenario}`", "",
             "| recipe | delta_bpb A | B | kl_to_fp32 A | B | top1 A | B | bits per byte A | B |",
             "|---|---|---|---|---|---|---|---|---|"]
    for recipe in recipes:
        cells = [run.lm.get((d, recipe, scenario)) for d in ("A", "B")]
        if not any(cells):
            continue
        m = [c["metrics"] if c else {} for c in cells]
        lines.append(f"| {recipe} | {_f(m[0].get('delta_bpb'))} | {_f(m[1].get('delta_bpb'))} | "
                     f"{_e(m[0].get('kl_to_fp32'))} | {_e(m[1].get('kl_to_fp32'))} | "
                     f"{_f(m[0].get('top1_agreement'))} | {_f(m[1].get('top1_agreement'))} | "
                     f"{_f(m[0].get('bits_per_byte'))} | {_f(m[1].get('bits_per_byte'))} |")
    return [*lines, ""]


def _drift_damage(run, scenarios: list[str]) -> list[str]:
    rows = [(s, [run.lm.get((d, "fp32", s)) for d in ("A", "B")]) for s in scenarios]
    rows = [(s, cells) for s, cells in rows if any(cells)]
    if not rows:
        return []
    lines = ["### What the drift alone costs (fp32)", "",
             "Bits per byte of the fp32 model under each scenario, and the change from the same text undrifted. "
             "A text domain's own row is its level (nothing synthetic added).", "",
             "| scenario | bits per byte A | B | delta_bpb A | B |", "|---|---|---|---|---|"]
    for scenario, cells in rows:
        m = [c["metrics"] if c else {} for c in cells]
        lines.append(f"| {scenario} | {_f(m[0].get('bits_per_byte'))} | {_f(m[1].get('bits_per_byte'))} | "
                     f"{_f(m[0].get('delta_bpb'))} | {_f(m[1].get('delta_bpb'))} |")
    return [*lines, ""]


def _drift_statistics(run, scenarios: list[str], designs: list[str]) -> list[str]:
    stats = {(d, s): run.lm[(d, "fp32", s)].get("drift_stats") for d in designs for s in scenarios
             if (d, "fp32", s) in run.lm}
    stats = {k: v for k, v in stats.items() if v}
    if not stats:
        return []
    layers = len(next(iter(stats.values())))
    lines = ["### Drift at the FFN inputs, measured", "",
             "Per layer: share of features with a positive mean / mean shift in units of feature std / spread "
             "(std) of log per-request RMS, of the states entering each FFN norm, fp32. `clean` and the text "
             "domains are real states; the synthetic scenarios show what they inject.", "",
             "| design | scenario | " + " | ".join(f"layer {i}" for i in range(layers)) + " |",
             "|---|---|" + "---|" * layers]
    for (design, scenario), per_layer in stats.items():
        cells = [f"{s['positive_mean_fraction']:.2f} / {s['mean_shift_std']:+.2f} / {number(s['rms_spread'], 2)}"
                 for s in per_layer]
        lines.append(f"| {design} | {scenario} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _spikes(run, scenarios: list[str], designs: list[str]) -> list[str]:
    rows = [(d, s, run.lm[(d, "fp32", s)]) for d in designs for s in scenarios if (d, "fp32", s) in run.lm]
    if not rows:
        return []
    layers = len(rows[0][2]["layers"]["spike_ratio"])
    lines = ["### Activation spikes at the down-projection input (fp32)", "",
             "Per layer: the worst token's largest |x| over a typical token's (median), and the share of tokens "
             "above 4× typical. A is GELU's output, B the SwiGLU product.", "",
             "| design | scenario | " + " | ".join(f"layer {i}" for i in range(layers)) + " |",
             "|---|---|" + "---|" * layers]
    for design, scenario, cell in rows:
        pairs = zip(cell["layers"]["spike_ratio"], cell["layers"]["spike_token_share"], strict=True)
        lines.append(f"| {design} | {scenario} | " + " | ".join(f"{r:.1f} ({s:.1%})" for r, s in pairs) + " |")
    return [*lines, ""]


def verdict(run, recipes: list[str], scenarios: list[str], sublayer: tuple[str, str, float] | None) -> list[str]:
    """Which design loses less to quantization, and to the drift itself, from the lm cells' numbers."""
    lines = []
    quantized = [r for r in recipes if r != "fp32"]
    for scenario in (s for s in ("clean", *HEADLINE_SCENARIOS) if s in scenarios):
        ratios = _kl_ratios(run, quantized, scenario)
        if ratios:
            median = statistics.median(ratios)
            lines.append(f"Under `{scenario}`, quantizing the FFNs costs design **{'A' if median < 1 else 'B'}** "
                         f"less: median KL ratio A/B {median:.2f} over {len(ratios)} recipes "
                         f"(A lower in {sum(r < 1 for r in ratios)}).")
    drift = [(s, *(run.lm[(d, "fp32", s)]["metrics"]["delta_bpb"] for d in ("A", "B")))
             for s in scenarios if s not in TEXT_DOMAINS and s != "clean" and _both(run, "fp32", s, "delta_bpb")]
    if drift:
        worst = max(drift, key=lambda t: max(t[1], t[2]))
        lines.append(f"The drift alone costs fp32 A {statistics.median(d[1] for d in drift):+.3f} and B "
                     f"{statistics.median(d[2] for d in drift):+.3f} bits per byte (median over {len(drift)} synthetic "
                     f"scenarios; worst `{worst[0]}`: A {worst[1]:+.3f}, B {worst[2]:+.3f}).")
    for s in (s for s in TEXT_DOMAINS if s in scenarios and _both(run, "fp32", s, "bits_per_byte")):
        a, b = (run.lm[(d, "fp32", s)]["metrics"]["bits_per_byte"] for d in ("A", "B"))
        lines.append(f"Real drift (`{s}`): fp32 A {a:.3f} vs B {b:.3f} bits per byte on text neither model saw.")
    lines += _real_vs_simulated(run, scenarios)
    if sublayer is not None and _kl_ratios(run, quantized, sublayer[1]):
        model, scenario, delta = sublayer
        sublayer_pick = "A" if delta > 0 else "B"
        downstream = "A" if statistics.median(_kl_ratios(run, quantized, scenario)) < 1 else "B"
        lines.append(f"The sublayer verdict under `{scenario}` (model `{model}`, median A − B {delta:+.1f} dB centered "
                     f"SQNR) favours {sublayer_pick}; downstream under `{scenario}` favours {downstream}: they "
                     f"**{'agree' if sublayer_pick == downstream else 'disagree'}**.")
    return lines or ["Not enough lm cells with both designs to compare."]


def _real_vs_simulated(run, scenarios: list[str]) -> list[str]:
    """Does a real domain change look like the drift the scenarios simulate? From the measured stats."""
    def extremes(scenario: str) -> tuple[float, float] | None:
        layers = [layer for d in ("A", "B") for layer in (run.lm.get((d, "fp32", scenario)) or {}).get("drift_stats")
                  or []]
        if not layers:
            return None
        return (max(abs(s["mean_shift_std"]) for s in layers), max(s["positive_mean_fraction"] for s in layers))

    lines = []
    for domain in (s for s in TEXT_DOMAINS if s in scenarios):
        real, clean = extremes(domain), extremes("clean")
        simulated = extremes("production") if "production" in scenarios else None
        if real is None:
            continue
        text = (f"Measured at the FFN inputs, `{domain}` has an average feature mean of at most {real[0]:.2f} "
                f"feature std (|mean_shift_std|, any layer, either design), and at most {real[1]:.0%} of features "
                "with a positive mean")
        if clean:
            text += f" (clean prose: {clean[0]:.2f} std, {clean[1]:.0%})"
        if simulated:
            text += f"; under `production` the same figures are {simulated[0]:.2f} std and {simulated[1]:.0%}"
        lines.append(text + ".")
    return lines


def _kl_ratios(run, recipes: list[str], scenario: str) -> list[float]:
    return [run.lm[("A", r, scenario)]["metrics"]["kl_to_fp32"] / run.lm[("B", r, scenario)]["metrics"]["kl_to_fp32"]
            for r in recipes if _both(run, r, scenario, "kl_to_fp32")]


def _both(run, recipe: str, scenario: str, metric: str) -> bool:
    cells = [run.lm.get((d, recipe, scenario)) for d in ("A", "B")]
    return all(c and c["metrics"].get(metric) is not None for c in cells) and (
        metric != "kl_to_fp32" or cells[1]["metrics"][metric] > 0)
