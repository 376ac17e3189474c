"""`ffnbench report RUN_DIR`: report.md and plots/*.png, from a run directory's records alone."""

import json
import statistics
from pathlib import Path

import numpy as np

from ffnbench import files
from ffnbench.bench.analysis import downstream as analysis
from ffnbench.bench.analysis.decision import DECISION_JSON
from ffnbench.bench.cells import latency
from ffnbench.bench.report import decision, plots, sublayer_mitigations, variants, whole_models
from ffnbench.bench.report import downstream as report_downstream
from ffnbench.bench.report import mitigations as report_mitigations
from ffnbench.bench.report import timing as report_latency
from ffnbench.bench.report.formatting import number as _f
from ffnbench.bench.store import label, load_run
from ffnbench.bench.traffic import model_specs
from ffnbench.bench.traffic.scenarios import MAGNITUDES, SHIFTS


class Run:
    """The records of one run directory, indexed for the report."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir)
        self.manifest, cells = load_run(self.dir, "report")
        self.ok = [c for c in cells if c["status"] == "ok"]
        self.not_ok = [c for c in cells if c["status"] != "ok"]
        self.acc = {(c["design"], c["model"], label(c), c["scenario"]): c["metrics"]
                    for c in self.ok if c["kind"] == "accuracy"}
        self.lat = {(c["design"], c["model"], label(c), c["shape"]["name"]): c["metrics"]
                    for c in self.ok if c["kind"] == "latency"}
        # pair ("trained", "drift") -> (design, recipe, scenario) -> its cells, a seed each; the
        # dose-response cells apart, by (pair, inject); and the analysis step's verdicts per pair.
        self.lm_pairs, self.lm_dose = analysis.index(cells)
        self.verdicts = analysis.found(self.dir, self.manifest, cells)
        self.designs = list(dict.fromkeys(c["design"] for c in cells))
        self.models = list(dict.fromkeys(c["model"] for c in cells if c["kind"] not in ("lm", "whole")))
        self.whole = whole_models.index([c for c in self.ok if c["kind"] == "whole"])
        self.recipes = list(dict.fromkeys(label(c) for c in cells))
        self.scenarios = list(dict.fromkeys(c["scenario"] for c in cells if c["kind"] == "accuracy"))

    def headline_scenario(self) -> str | None:
        if "production" in self.scenarios:
            return "production"
        return self.scenarios[-1] if self.scenarios else None


def _paired_ratio(a: dict | None, b: dict | None) -> dict | None:
    if not a or not b or min(len(a.get("samples_ms", [])), len(b.get("samples_ms", []))) < 2:
        return None  # one round (older runs could stop there): no interval to give
    if a.get("timing_group") != b.get("timing_group"):
        return None  # timed in different groups (shards merged, a resume): their rounds do not pair
    return latency.ratio(np.asarray(a["samples_ms"]), np.asarray(b["samples_ms"]))


def headline(run: Run, model: str, scenario: str) -> tuple[list[str], dict]:
    """The A-vs-B table under `scenario`, and the numbers the verdict is drawn from."""
    a, b = "A", "B"
    rows = ["| recipe | centered SQNR A | B | A − B | top-1 A | B | prefill p50 A | B | A/B [95 % CI] "
            "| decode p50 A | B | size A | B |", "|" + "---|" * 13]
    facts = {"delta": {}, "prefill_ratio": {}, "decode_ratio": {}}
    for recipe in run.recipes:
        ma, mb = run.acc.get((a, model, recipe, scenario)), run.acc.get((b, model, recipe, scenario))
        if not ma and not mb or variants.unmitigated(run, recipe):
            continue  # a mitigated recipe is its parent's variant, not a recipe of its own: its own section
        la, lb = (run.lat.get((d, model, recipe, "prefill")) for d in (a, b))
        da, db = (run.lat.get((d, model, recipe, "decode")) for d in (a, b))
        ca, cb = (m and m["centered_sqnr_db"] for m in (ma, mb))
        delta = ca - cb if ca is not None and cb is not None else None
        ratio = _paired_ratio(la, lb)
        if recipe != "fp32" and delta is not None:
            facts["delta"][recipe] = delta
        if ratio:
            facts["prefill_ratio"][recipe] = ratio["ratio"]
        decode_ratio = _paired_ratio(da, db)
        if decode_ratio:
            facts["decode_ratio"][recipe] = decode_ratio["ratio"]
        ratio_text = latency.ratio_text(ratio)
        rows.append(" | ".join([
            f"| {recipe}", _f(ca), _f(cb), _f(delta, 1, " dB"),
            _f(ma and ma["top1_agreement"], 3), _f(mb and mb["top1_agreement"], 3),
            _f(la and la["p50_ms"], 2, " ms"), _f(lb and lb["p50_ms"], 2, " ms"), ratio_text,
            _f(da and da["p50_ms"], 3, " ms"), _f(db and db["p50_ms"], 3, " ms"),
            _f(la and la["model_bytes"] / 1e6, 2, " MB"), _f(lb and lb["model_bytes"] / 1e6, 2, " MB") + " |"]))
    return rows, facts


def verdict(run: Run, model: str, scenario: str, facts: dict) -> list[str]:
    deltas = facts["delta"]
    if not deltas:
        return ["Not enough cells with both designs to compare."]
    a_better = sorted(r for r, d in deltas.items() if d > 0.5)
    b_better = sorted(r for r, d in deltas.items() if d < -0.5)
    median = statistics.median(deltas.values())
    lines = [f"Under `{scenario}`, design **{'A' if median > 0 else 'B'}** keeps more of the token-varying signal: "
             f"A leads in {len(a_better)} of {len(deltas)} quantized recipes, B in {len(b_better)}, "
             f"median A − B = {median:+.1f} dB centered SQNR."]
    if "clean" in run.scenarios and scenario != "clean":
        cost = {d: [run.acc[(d, model, r, "clean")]["centered_sqnr_db"] - run.acc[(d, model, r, scenario)]
                    ["centered_sqnr_db"] for r in deltas
                    if (d, model, r, "clean") in run.acc and (d, model, r, scenario) in run.acc
                    and run.acc[(d, model, r, scenario)]["centered_sqnr_db"] is not None
                    and run.acc[(d, model, r, "clean")]["centered_sqnr_db"] is not None]
                for d in ("A", "B")}
        if cost["A"] and cost["B"]:
            lines.append(f"Going from `clean` to `{scenario}` costs A a median {statistics.median(cost['A']):.1f} dB "
                         f"and B {statistics.median(cost['B']):.1f} dB.")
    worst = min(deltas, key=deltas.get)
    best = max(deltas, key=deltas.get)
    lines.append(f"Largest gap in A's favour: `{best}` ({deltas[best]:+.1f} dB); "
                 f"in B's favour or smallest: `{worst}` ({deltas[worst]:+.1f} dB).")
    if facts["prefill_ratio"]:
        r = statistics.median(facts["prefill_ratio"].values())
        which = "A faster" if r < 0.95 else "B faster" if r > 1.05 else "within 5 %, no material difference"
        lines.append(f"Speed: median A/B prefill time ratio {r:.2f} over {len(facts['prefill_ratio'])} recipes "
                     f"({which}; "
                     "B's SwiGLU has three matrices of 2/3 width, so equal parameters and FLOPs).")
    return lines


def caveats(run: Run) -> list[str]:
    out = []
    machine = run.manifest.get("machine") or {}
    out += [f"Machine: {w}" for w in machine.get("warnings", [])]
    if (machine.get("int8") or {}).get("u8s8_saturates") is False:
        out.append(f"This CPU's U8S8 int8 path is exact ({_u8s8_kernel(machine)}), so `ort-int8-dynamic-fullrange` "
                   "shows no saturation here; on AVX2 without VNNI it would.")
    out += isa_costs(run)
    out += bnb_kernels(run)
    config = run.manifest.get("config", {})
    if not config.get("residual", True):
        out.append("Metrics judge the FFN branch (residual off); with it, the exact input dominates the output.")
    if run.acc:
        out.append("Sublayer weights are seeded and synthetic (1/sqrt(fan_in) scale), not trained; real activations "
                   "have outlier structure these do not. " + ("The Downstream section measures the trained pair."
                                                               if run.lm_pairs else "Add lm cells "
                                                               "(`[downstream] recipes`) to measure the trained pair."))
    if "magnitude-2" in run.scenarios and "clean" in run.scenarios:
        diffs = [abs(m["centered_sqnr_db"] - run.acc[(d, mo, r, "clean")]["centered_sqnr_db"])
                 for (d, mo, r, s), m in run.acc.items() if s == "magnitude-2" and (d, mo, r, "clean") in run.acc
                 and m["centered_sqnr_db"] is not None and run.acc[(d, mo, r, "clean")]["centered_sqnr_db"] is not None]
        if diffs:
            out.append(f"Request magnitude alone (`magnitude-2`) moves centered SQNR by at most {max(diffs):.1f} dB: "
                       "both norms remove scale before anything is quantized (in half precision the norm's squares can "
                       "overflow instead: examples/fp16-stability.toml).")
    wide = [k for k, m in run.lat.items()
            if m["p50_ms"] and (m["p50_ci_high_ms"] - m["p50_ci_low_ms"]) > 0.2 * m["p50_ms"]]
    if wide:
        out.append(f"{len(wide)} latency cells have a p50 interval wider than ±10 %: treat their absolute times "
                   "as noisy; the paired ratios are steadier.")
    for (design, seed), checkpoint in report_downstream.checkpoints(run.lm_pairs.get("trained", {})).items():
        read = checkpoint.get("corpus_read_sha256")
        if read and read != checkpoint["corpus"]["sha256"]:
            out.append(f"The prose this Python ships (sha256 `{read[:12]}`) is not the text trained model {design} "
                       f"(seed {seed}) was trained on (`{checkpoint['corpus']['sha256'][:12]}`): its held-out part "
                       "may overlap training text, so bits per byte there are optimistic.")
    if run.not_ok:
        out.append(f"{len(run.not_ok)} cells were skipped or failed (listed at the end).")
    return out


def isa_costs(run: Run) -> list[str]:
    """Per model and design, what reduce_range and U8S8 saturation cost in this run: centered SQNR of
    ort-int8-dynamic against -fullrange per scenario, with the full-range cell's measured saturation."""
    machine = run.manifest.get("machine") or {}
    saturates = (machine.get("int8") or {}).get("u8s8_saturates")
    reduced = {(c["design"], c["model"]): (c.get("artifact") or {}).get("params", {}).get("reduce_range")
               for c in run.ok if c["kind"] == "accuracy" and c["recipe"] == "ort-int8-dynamic"}
    out = []
    for (design, model), reduce_range in reduced.items():
        parts = []
        for scenario in run.scenarios:
            dyn, full = (run.acc.get((design, model, r, scenario)) for r in ("ort-int8-dynamic",
                                                                               "ort-int8-dynamic-fullrange"))
            if dyn and full and dyn["centered_sqnr_db"] is not None and full["centered_sqnr_db"] is not None:
                rate = full.get("u8s8_saturation_rate")
                parts.append(f"`{scenario}` {dyn['centered_sqnr_db']:.1f} vs {full['centered_sqnr_db']:.1f} dB"
                             + (f" ({rate:.3%} of pair sums out of int16)" if rate is not None else ""))
        if parts:
            effect = {True: "saturation costs accuracy here",
                      False: f"this CPU accumulates in int32 ({_u8s8_kernel(machine)}), so the saturation costs "
                             "nothing here",
                      None: "whether this CPU saturates was not recorded"}[saturates]
            out.append(f"ISA, model `{model}`, design {design}: centered SQNR of `ort-int8-dynamic` (reduce_range "
                       f"{reduce_range}) vs `-fullrange`, with the full-range cell's U8S8 saturation rate: "
                       + "; ".join(parts) + f". Machine class `{machine.get('machine_class')}`: {effect}.")
    return out


def _u8s8_kernel(machine: dict) -> str:
    """The U8S8 GEMM kernel `doctor` named for the run's machine (runs before it recorded none)."""
    kernel = ((machine.get("int8") or {}).get("mlas_kernels") or {}).get("u8s8_gemm")
    return f"MLAS's {kernel} kernel" if kernel else "VNNI or AMX"


def bnb_kernels(run: Run) -> list[str]:
    """Which CPU kernel bitsandbytes' 4-bit cells ran, as their artifacts recorded it: the fused
    AVX512-BF16 kernel computes in bfloat16, so those cells' accuracy is this class's, not every CPU's."""
    machine = run.manifest.get("machine") or {}
    seen = {}
    for c in run.ok:
        params = (c.get("artifact") or {}).get("params") or {}
        if c["recipe"].startswith("bnb-") and params.get("cpu_kernel"):
            seen.setdefault((params["cpu_kernel"], params.get("activation_dtype")), set()).add(c["recipe"])
    return [f"bitsandbytes 4-bit on machine class `{machine.get('machine_class')}` ({', '.join(sorted(recipes))}): "
            f"{kernel}, activations in {dtype}" + (". On a CPU without AVX512-BF16 the same recipes dequantize the "
                                                   "weight and compute in float32, so their accuracy differs there"
                                                   if dtype == "bfloat16" else "") + "."
            for (kernel, dtype), recipes in sorted(seen.items())]


def seed_tables(run: Run, model: str, scenario: str) -> list[str]:
    rows = ["| recipe | design | act_err_small_neg | act_err_small_pos | neg/pos | sign flips | norm > 0 |",
            "|---|---|---|---|---|---|---|"]
    for recipe in run.recipes:
        for design in run.designs:
            m = run.acc.get((design, model, recipe, scenario))
            if not m or recipe == "fp32" or m["act_err_small_neg"] is None:
                continue
            ratio = m["act_err_small_neg"] / m["act_err_small_pos"] if m["act_err_small_pos"] else None
            rows.append(f"| {recipe} | {design} | {m['act_err_small_neg']:.4f} | {_f(m['act_err_small_pos'], 4)} | "
                        f"{_f(ratio, 2)} | {m['preact_sign_flip_rate']:.4f} | {m['norm_positive_fraction']:.3f} |")
    return rows


def write(run_dir: Path) -> Path:
    """Write run_dir/report.md and run_dir/plots/*.png; returns the report's path."""
    run = Run(run_dir)
    plot_dir = run.dir / "plots"
    plot_dir.mkdir(exist_ok=True)
    m = run.manifest
    lines = [f"# ffnbench report: {run.dir.name}", "",
             f"Preset `{m.get('config', {}).get('preset')}`, models {', '.join(run.models)}, designs "
             f"{', '.join(run.designs)}, {len(run.ok)} cells measured. Started {m.get('started')}, "
             f"ffnbench revision `{m.get('git_revision')}`.", "", *_memo_headline(run.dir)]
    user_models = (m.get("config") or {}).get("user_models") or {}
    lines += [f"- Model {model_specs.source_line(name, d)}" for name, d in user_models.items()]
    lines += [""] if user_models else []
    threshold = ((m.get("config") or {}).get("downstream") or {}).get("healthy_delta_bpb", 0.1)
    sublayer = None  # (model, scenario, median A − B) of the first sublayer verdict, for the downstream one
    for model in run.models:
        scenario = run.headline_scenario()
        if scenario and {"A", "B"} <= set(run.designs):
            rows, facts = headline(run, model, scenario)
            if sublayer is None and facts["delta"]:
                sublayer = (model, scenario, statistics.median(facts["delta"].values()))
            lines += [f"## Sublayers (seeded weights): A vs B under `{scenario}` (model `{model}`)", "",
                      *verdict(run, model, scenario, facts), "", *rows, ""]
        designs = [d for d in run.designs if any(k[0] == d and k[1] == model for k in run.acc)]
        if len(designs) == 1:  # a real layer comes in its own design only: its table, without A vs B
            lines += _one_design(run, model, designs[0])
        lines += _robustness(run, model, plot_dir)
        if scenario:
            lines += [f"## The seed's prediction under `{scenario}` (model `{model}`)", "",
                      "RMS activation-output error where the fp32 pre-activation lies just below zero vs just above "
                      f"(δ = {m.get('config', {}).get('delta')}), the share of pre-activations whose sign flips, "
                      "and the share of positive norm outputs.", "", *seed_tables(run, model, scenario), ""]
        lines += report_latency.section(run, model, plot_dir)
    if run.lm_pairs or run.lm_dose:
        found = run.verdicts | {kind: [] for kind, _ in run.lm_dose if kind not in run.verdicts}
        # The drift-trained pair first where there is one: a model that works under the drift is the answer.
        for kind in sorted(found, key=lambda k: k != "drift"):
            lines += report_downstream.section(run, plot_dir, sublayer, found[kind], kind)
    if run.whole:
        lines += whole_models.section(run.whole, threshold, run.dir, plot_dir)
    mitigated = [*sublayer_mitigations.section(run, run.ok),
                 *report_mitigations.section(run, threshold)]
    if mitigated:
        lines += ["## Mitigations", "",
                  "Deployment-time transforms of the fp32 model before its recipe quantizes it (RECIPE+shift, "
                  "+smooth, +rotate, +keep; docs/recipes.md), each set on the calibration scenario after @ and "
                  "served on every scenario.", "", *mitigated]
    lines += variants.section(run, threshold)
    lines += ["## Caveats", "", *[f"- {c}" for c in caveats(run)], ""]
    lines += _machine(m)
    if run.not_ok:
        lines += ["## Skipped and failed cells", "", "| cell | status | why |", "|---|---|---|"]
        lines += [f"| {c['key']} | {c['status']} | {c.get('reason') or c.get('error')} |" for c in run.not_ok]
    path = run.dir / "report.md"
    files.write_text(path, "\n".join(lines) + "\n")
    return path


def _memo_headline(run_dir: Path) -> list[str]:
    """The decision memo's first lines, where the run has one (every run writes it before its report)."""
    path = run_dir / DECISION_JSON
    if not path.exists():
        return []
    return ["## The decision ([decision.md](decision.md))", "", *decision.headline(json.loads(path.read_text())), ""]


def _one_design(run: Run, model: str, design: str) -> list[str]:
    lines = [f"## Accuracy of model `{model}` (design {design})", "",
             "Centered SQNR (dB) / top-1 agreement against fp32, per scenario.", "",
             "| recipe | " + " | ".join(run.scenarios) + " |", "|---|" + "---|" * len(run.scenarios)]
    for recipe in run.recipes:
        cells = [run.acc.get((design, model, recipe, s)) for s in run.scenarios]
        if any(cells) and recipe != "fp32":
            lines.append(f"| {recipe} | " + " | ".join(
                f"{_f(m['centered_sqnr_db'])} / {_f(m['top1_agreement'], 3)}" if m else "–" for m in cells) + " |")
    return [*lines, ""]


def _robustness(run: Run, model: str, plot_dir: Path) -> list[str]:
    lines = []
    for name, axis, xlabel in (("shift", SHIFTS, "mean_shift (feature std)"),
                               ("magnitude", MAGNITUDES, "magnitude_sigma")):
        present = [s for s in axis if s in run.scenarios]
        if len(present) < 2:
            continue
        series = {}
        for recipe in run.recipes:
            if recipe == "fp32":
                continue
            by_design = {d: [(axis[s], run.acc[(d, model, recipe, s)]["centered_sqnr_db"]) for s in present
                             if (d, model, recipe, s) in run.acc and run.acc[(d, model, recipe, s)]["centered_sqnr_db"]
                             is not None] for d in run.designs}
            by_design = {d: p for d, p in by_design.items() if p}
            if by_design:
                series[recipe] = by_design
        if series:
            path = plots.curves(series, xlabel, "centered SQNR (dB)", f"Robustness to {name} ({model})",
                                plot_dir / f"robustness_{name}_{model}.png")
            lines += [f"## Robustness to {name} (model `{model}`)", "", f"![]({path.relative_to(run.dir)})", ""]
    shifts = [s for s in SHIFTS if s in run.scenarios]
    if len(shifts) >= 2:
        lines += ["### norm_positive_fraction by shift (fp32)", "", "| design | " + " | ".join(shifts) + " |",
                  "|---|" + "---|" * len(shifts)]
        for design in run.designs:
            values = [run.acc.get((design, model, "fp32", s), {}).get("norm_positive_fraction") for s in shifts]
            lines.append(f"| {design} | " + " | ".join(_f(v, 3) for v in values) + " |")
        lines.append("")
    return lines


def _machine(manifest: dict) -> list[str]:
    machine = manifest.get("machine") or {}
    cpu = machine.get("cpu", {})
    isa = cpu.get("isa", {})
    peaks = machine.get("peaks") or {}
    versions = manifest.get("versions", {})
    return ["## Machine", "",
            f"- CPU: {cpu.get('model')} ({cpu.get('cores')} cores), class `{machine.get('machine_class')}`; "
            f"has {', '.join(k for k, v in isa.items() if v) or 'no listed ISA flags'}.",
            f"- int8: U8S8 saturates: {(machine.get('int8') or {}).get('u8s8_saturates')} (measured).",
            f"- Peaks: {peaks.get('memory_gbps')} GB/s memory, {peaks.get('fp32_gemm_gflops')} GFLOP/s fp32 GEMM "
            f"({peaks.get('threads')} threads). Roofline fractions use the fp32 peak, so int8 cells can exceed 1.",
            "- Stack: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v),
            f"- Timing environment: {manifest.get('environment')}", ""]
