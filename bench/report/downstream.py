"""The report's "Downstream" section: the trained pair's lm cells, read from the run directory alone.

The verdict first: A vs B per recipe family and scenario, each with its 95 % interval over training
seeds and windows (analysis/verdicts.py), `broken` where an fp32 model does not work under the
drift. Then what a user of the model would notice per recipe (bits per byte, KL to fp32, next-byte
agreement), what the drift alone costs in fp32, and the measured drift statistics and spikes.
"""

import functools
from pathlib import Path

from ffnbench.bench.analysis.verdicts import Comparison, per_recipe, seed_mean, summary
from ffnbench.bench.report import dose_response, llama_cpp_figures, plots
from ffnbench.bench.report.formatting import number

SUBLAYER_RESOLVED_DB = 0.5  # the sublayer verdict's own "leads" threshold (report.verdict)
STAT_COLUMNS = (("positive_mean_fraction", 2), ("abs_mean_shift_std", 2), ("token_mean_energy", 2),
                ("domain_shift_std", 2), ("massive_ratio", 0), ("massive_channels_stable", 2), ("rms_spread", 2))


_f = functools.partial(number, digits=3)  # bits per byte and KL need the third digit


def _e(value) -> str:
    return "–" if value is None else f"{value:.2e}"


def _ci(point, ci, fmt: str = ".2f") -> str:
    return "–" if point is None else f"{point:{fmt}} [{ci[0]:{fmt}}, {ci[1]:{fmt}}]"



def checkpoints(lm: dict) -> dict[tuple[str, int], dict]:
    """(design, seed) -> the checkpoint summary its fp32 lm cells record (identity, held-out bpb, curve)."""
    found = {}
    for (design, recipe, _), cells in lm.items():
        for cell in cells if recipe == "fp32" else ():
            if "loss_curve" in (cell.get("checkpoint") or {}):
                found.setdefault((design, cell["seed"]), cell["checkpoint"])
    return dict(sorted(found.items()))


TITLES = {"trained": "the trained pair", "drift": "the drift-trained pair"}


def section(run, plot_dir: Path, sublayer: tuple[str, str, float] | None, found: list[Comparison],
            kind: str = "trained") -> list[str]:
    """Markdown lines for the lm cells of `run` (a report.Run) on one kind of committed model; []
    when it has none. `sublayer`: (model, scenario, median A − B centered SQNR) of the sublayer
    verdict, to set beside this one; `found`: those cells' comparisons (analysis.verdicts)."""
    lm = run.lm_pairs.get(kind, {})
    study = (run.manifest.get("config") or {}).get("downstream") or {}
    threshold = study.get("healthy_delta_bpb", 0.1)
    doses = {inject: cells for (k, inject), cells in run.lm_dose.items() if k == kind}
    # Where no dose cells were made at the matrix's own injection point, its cells are the curve (full).
    matrix_inject = study.get("inject", "ffn-input")
    curves = doses if matrix_inject in doses else {matrix_inject: lm, **doses}
    dose_lines = [line for inject, cells in curves.items()
                  for line in dose_response.section(cells, run.dir, plot_dir, f"{_suffix(kind)}_{inject}", threshold,
                                                    inject)]
    if not lm:
        return [f"## Downstream: {TITLES.get(kind, kind)}, dose-response only", "", *dose_lines] if dose_lines else []
    designs = [d for d in ("A", "B") if any(k[0] == d for k in lm)]
    scenarios = list(dict.fromkeys(k[2] for k in lm))
    recipes = list(dict.fromkeys(k[1] for k in lm))
    detail = per_recipe(lm, threshold, found)
    lines = [f"## Downstream: {TITLES.get(kind, kind)}", "",
             "Byte-level language models per design, trained here on the same text with the same everything but "
             "the FFN sublayers, several training seeds each; each recipe quantizes the FFN sublayers of every block "
             "(attention and head stay fp32), and each scenario drifts the states entering every FFN norm (`inject = "
             f"{matrix_inject}`) or, for `domain-code`, feeds text of a domain the models "
             "never saw. Against fp32 of the same model on the same text and drift: `kl_to_fp32` (nats a byte) and "
             "`top1` isolate the quantization; `delta_bpb` is the change in bits per byte from fp32 on the same text "
             "without synthetic drift, so it includes the drift's own cost. Every A-vs-B figure is a mean over seeds "
             "with a 95 % interval that resamples training seeds and, within them, windows (paired: the same "
             "windows and drift draws for A and B).", ""]
    lines += _training(lm, run.dir, plot_dir, kind)
    lines += ["### Downstream verdict", "", *verdict(found, scenarios, sublayer), ""]
    lines += _verdict_table(found, run.dir, plot_dir, kind)
    lines += dose_lines
    for scenario in scenarios:
        lines += _ab_table(lm, scenario, recipes, detail)
    lines += llama_cpp_figures.section(lm, scenarios, recipes)
    lines += _drift_damage(lm, scenarios, found, threshold)
    lines += _drift_statistics(lm, scenarios, designs)
    for inject, cells in doses.items():
        lines += _drift_statistics(cells, list(dict.fromkeys(k[2] for k in cells)), designs,
                                   f": the dose-response levels, injected at `{inject}`")
    lines += _spikes(lm, scenarios, designs)
    return lines


def _training(lm: dict, run_dir: Path, plot_dir: Path, kind: str) -> list[str]:
    found = checkpoints(lm)
    if not found:
        return []
    lines = ["| design | seed | parameters | steps | held-out bits per byte | checkpoint sha256 |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {d} | {s} | {c['parameters']:,} | {c['steps']} | {c['held_out_bits_per_byte']:.3f} | "
              f"`{c['sha256'][:12]}` |" for (d, s), c in found.items()]
    path = plots.training_curves({k: c["loss_curve"] for k, c in found.items()},
                                 plot_dir / f"training_curves{_suffix(kind)}.png")
    corpus = next(iter(found.values()))["corpus"]
    held_out = f"{corpus['parts']['held_out']:,} bytes of documents never trained on held out" \
        if corpus.get("split") == "by document" else f"the last {corpus['held_out']:.0%} held out"
    return [*lines, "", f"Trained on `{corpus['source']}` ({corpus['bytes']:,} bytes, sha256 "
            f"`{corpus['sha256'][:12]}`), {held_out}.", "",
            f"![training curves]({path.relative_to(run_dir)})", ""]


def _suffix(kind: str) -> str:
    return "" if kind == "trained" else f"_{kind}"


def _verdict_table(found: list[Comparison], run_dir: Path, plot_dir: Path, kind: str) -> list[str]:
    rows = [c for c in found if c.family != "fp32"]
    if not rows:
        return []
    seeds, windows = max(c.seeds for c in rows), max(c.windows for c in rows)
    lines = [f"Per family and scenario ({seeds} seed{'s' * (seeds != 1)} a design, {windows} windows, synthetic "
             "drifts in up to "
             f"{max(c.draws for c in rows)} draws; the run's analysis writes them to `downstream.json`). "
             "KL ratio A/B below 1: quantizing "
             "A's FFNs costs less; `none`: the interval holds 1." + (
                 " **One training seed a design**: these intervals cover windows and drift draws only, not how "
                 "another seed would train; run `default` (three seeds) before acting on them."
                 if seeds == 1 else ""), "",
             "| scenario | family | recipes | kl_to_fp32 ratio A/B [95 % CI] | delta_bpb A − B [95 % CI] | verdict |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {c.scenario} | {c.family} | {', '.join(c.recipes)} | {_ci(c.kl_ratio, c.ci95)} | "
              f"{_ci(c.delta_bpb_diff, c.delta_bpb_ci95, '+.3f')} | **{c.verdict}** |" for c in rows]
    left_out = [f"`{r}` under `{c.scenario}` ({why})" for c in rows for r, why in c.left_out.items()]
    lines += ["", "Left out of their family: " + "; ".join(left_out) + "."] if left_out else []
    plotted = [(f"{c.scenario} · {c.family}", c.kl_ratio, *c.ci95, c.verdict) for c in rows if c.kl_ratio]
    if plotted:
        path = plots.intervals(plotted, "kl_to_fp32 ratio A/B (95 % CI; left of 1: A loses less)",
                               "Downstream: A vs B per family", plot_dir / f"downstream_intervals{_suffix(kind)}.png")
        lines += ["", f"![downstream intervals]({path.relative_to(run_dir)})"]
    return [*lines, ""]


def _ab_table(lm: dict, scenario: str, recipes: list[str], detail: dict) -> list[str]:
    lines = [f"### A vs B under `{scenario}`, per recipe", "",
             "Means over seeds; the ratio's interval as in the verdict table.", "",
             "| recipe | kl_to_fp32 A | B | ratio A/B [95 % CI] | delta_bpb A | B | top1 A | B |",
             "|---|---|---|---|---|---|---|---|"]
    for recipe in recipes:
        cells = [lm.get((d, recipe, scenario), []) for d in ("A", "B")]
        if not any(cells) or recipe == "fp32":
            continue
        c = detail.get((recipe, scenario))
        kl, delta, top1 = ([seed_mean(design, metric) for design in cells]
                           for metric in ("kl_to_fp32", "delta_bpb", "top1_agreement"))
        lines.append(f"| {recipe} | {_e(kl[0])} | {_e(kl[1])} | {_ci(c.kl_ratio, c.ci95) if c else '–'} | "
                     f"{_f(delta[0])} | {_f(delta[1])} | {_f(top1[0])} | {_f(top1[1])} |")
    return [*lines, ""]


def _drift_damage(lm: dict, scenarios: list[str], found: list[Comparison], threshold: float) -> list[str]:
    rows = [(s, [lm.get((d, "fp32", s), []) for d in ("A", "B")]) for s in scenarios]
    rows = [(s, cells) for s, cells in rows if all(cells)]
    if not rows:
        return []
    fp32 = {c.scenario: c for c in found if c.family == "fp32"}
    lines = ["### What the drift alone costs (fp32)", "",
             "Bits per byte of the fp32 models under each scenario (mean over seeds), the change from the same text "
             "undrifted, and a byte-frequency (order-0) model on the same windows. A model is healthy while the "
             f"drift costs it at most {threshold:g} bit a byte and it beats order-0; a scenario where either "
             "design is not gets `broken`, never a verdict.", "",
             "| scenario | bits per byte A | B | order-0 | delta_bpb A | B | A − B [95 % CI] | healthy |",
             "|---|---|---|---|---|---|---|---|"]
    for scenario, (a, b) in rows:
        order0 = (a[0].get("reference") or {}).get("order0_bits_per_byte")
        diff = fp32.get(scenario)
        broken = any(c.scenario == scenario and c.verdict == "broken" for c in found)
        lines.append(f"| {scenario} | {_f(seed_mean(a, 'bits_per_byte'))} | {_f(seed_mean(b, 'bits_per_byte'))} | "
                     f"{_f(order0)} | {_f(seed_mean(a, 'delta_bpb'))} | {_f(seed_mean(b, 'delta_bpb'))} | "
                     f"{_ci(diff.delta_bpb_diff, diff.delta_bpb_ci95, '+.3f') if diff else '–'} | "
                     f"{'no' if broken else 'yes'} |")
    return [*lines, ""]


def _first_seed(lm: dict, design: str, scenario: str) -> dict | None:
    cells = lm.get((design, "fp32", scenario))
    return cells[0] if cells else None


def _drift_statistics(lm: dict, scenarios: list[str], designs: list[str], where: str = "") -> list[str]:
    stats = {(d, s): (_first_seed(lm, d, s) or {}).get("drift_stats") for d in designs for s in scenarios}
    stats = {k: v for k, v in stats.items() if v}
    if not stats:
        return []
    layers = len(next(iter(stats.values())))
    lines = [f"### Drift at the FFN inputs, measured{where}", "",
             "Per layer, of the states entering each FFN norm (fp32, first seed, first 16 windows; each request "
             "divided by its RMS first): share of features with a positive mean / mean |feature mean| in feature "
             "std / share of a token's energy in its cross-feature mean / mean |feature mean − clean prose's| in "
             "clean std (clean prose of the training split) / largest |x| over the median / share of tokens whose "
             "top channel is the most common one / spread (std) of log per-request RMS. `clean` and the text domains "
             "are real states; the synthetic scenarios show what they inject.", "",
             "| design | scenario | " + " | ".join(f"layer {i}" for i in range(layers)) + " |",
             "|---|---|" + "---|" * layers]
    for (design, scenario), per_layer in stats.items():
        # .get: runs before these statistics (issue 24) record fewer; theirs show as dashes
        cells = [" / ".join(number(s.get(k), digits) for k, digits in STAT_COLUMNS) for s in per_layer]
        lines.append(f"| {design} | {scenario} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _spikes(lm: dict, scenarios: list[str], designs: list[str]) -> list[str]:
    rows = [(d, s, _first_seed(lm, d, s)) for d in designs for s in scenarios if _first_seed(lm, d, s)]
    if not rows:
        return []
    layers = len(rows[0][2]["layers"]["spike_ratio"])
    lines = ["### Activation spikes at the down-projection input (fp32)", "",
             "Per layer, first seed: the worst token's largest |x| over a typical token's (median), and the share of "
             "tokens above 4× typical. A is GELU's output, B the SwiGLU product.", "",
             "| design | scenario | " + " | ".join(f"layer {i}" for i in range(layers)) + " |",
             "|---|---|" + "---|" * layers]
    for design, scenario, cell in rows:
        pairs = zip(cell["layers"]["spike_ratio"], cell["layers"]["spike_token_share"], strict=True)
        lines.append(f"| {design} | {scenario} | " + " | ".join(f"{r:.1f} ({s:.1%})" for r, s in pairs) + " |")
    return [*lines, ""]


def verdict(found: list[Comparison], scenarios: list[str], sublayer: tuple[str, str, float] | None) -> list[str]:
    """Per scenario: which design loses less to quantizing its FFNs, counted by family, or why not."""
    if not any(c.family != "fp32" for c in found):
        return ["No A-vs-B comparison: the run has no quantized lm cells with per-window figures for both designs "
                "(add recipes besides fp32 to `[downstream] recipes`; runs before per-window records cannot be "
                "compared)."]
    lines = []
    for scenario in scenarios:
        rows = [c for c in found if c.scenario == scenario and c.family != "fp32"]
        answer = summary(found, scenario)
        if answer is None:
            continue
        if answer == "broken":
            lines.append(f"- `{scenario}`: **broken**, no verdict: {rows[0].reason}.")
            continue
        by = {v: [c.family for c in rows if c.verdict == v] for v in ("A", "B", "none")}
        counts = "; ".join(f"{v if v != 'none' else 'no difference'}: {', '.join(f) or '–'}" for v, f in by.items())
        said = {"A": "quantizing the FFNs costs **A** less", "B": "quantizing the FFNs costs **B** less",
                "mixed": "families **split**", "none": "**no difference** resolved"}[answer]
        lines.append(f"- `{scenario}`: {said} ({len(rows)} families; {counts}).")
    if sublayer is not None:
        lines.append(_against_sublayer(found, sublayer))
    return lines


def _against_sublayer(found: list[Comparison], sublayer: tuple[str, str, float]) -> str:
    model, scenario, delta = sublayer
    sublayer_pick = ("A" if delta > 0 else "B") if abs(delta) >= SUBLAYER_RESOLVED_DB else None
    downstream = summary(found, scenario)
    said = (f"The sublayer verdict under `{scenario}` (model `{model}`, median A − B {delta:+.1f} dB centered SQNR) "
            f"{'favours ' + sublayer_pick if sublayer_pick else 'resolves no difference'}; downstream under "
            f"`{scenario}` is {downstream or 'not measured'}")
    if sublayer_pick and downstream in ("A", "B"):
        return f"{said}: they **{'agree' if sublayer_pick == downstream else 'disagree'}**."
    return f"{said}: nothing to compare until both resolve."
