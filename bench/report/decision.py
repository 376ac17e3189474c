"""decision.md: the one-page memo, rendered from decision.json alone. Every number it prints is a
claim's figure (with its interval) or a share of the profile's traffic; nothing is recomputed here.
`write` runs the analysis' decision over run directories and writes both files."""

import json
from pathlib import Path

from ffnbench.bench.analysis import decision as analysis
from ffnbench.bench.analysis import evidence
from ffnbench.bench.analysis.deployment import SERVED, Budget, Deployment, deployment_from_table, parse_budget
from ffnbench.bench.analysis.evidence import KINDS
from ffnbench.bench.report.formatting import number

SHORT = {"drift-trained pair": "drift pair", "trained pair": "trained pair", "whole models": "whole models",
         "sublayers": "sublayers"}


def _claim(decision: dict, index: int | None, digits: int = 2) -> str:
    """'0.33 [0.22, 0.49]' of a claim, '–' where there is none."""
    if index is None:
        return "–"
    claim = decision["claims"][index]
    return _figure(claim["figure"], claim["ci95"], digits)


def _figure(value, ci, digits: int = 2) -> str:
    if value is None:
        return "–"
    fmt = (lambda v: f"{v:.{digits}g}") if abs(value) < 0.01 or abs(value) >= 1e4 else \
        (lambda v: f"{v:.{digits}f}")
    return fmt(value) + (f" [{fmt(ci[0])}, {fmt(ci[1])}]" if ci and None not in ci else "")


def headline(decision: dict) -> list[str]:
    """The memo's first lines: what README and report.md open with too."""
    conf, pick = decision["confidence"], decision["recommendation"]
    said = {"A": "**Design A** (LayerNorm → GELU)", "B": "**Design B** (RMSNorm → SwiGLU)",
            "none": "**No design**: the evidence does not decide"}[pick]
    profile = decision["profile"]
    served = ", ".join(f"{f} {profile['families'][f]:.0%}" for f in SERVED if f in profile["families"])
    budget = decision["budget"]
    whose = "stated" if profile["stated"] else "default: every family, equal shares"
    lines = [f"Recommendation: {said} for this profile ({whose}: {served}; budget "
             f"{budget['metric']}{budget['op']}{budget['bound']:g}{'' if budget['stated'] else ' (default)'}).",
             f"Confidence: the evidence decides {conf['decided_share']:.0%} of the served traffic (A wins "
             f"{conf['A_share']:.0%}, B {conf['B_share']:.0%}; decided by "
             + (", ".join(f"the {kind} {conf['decided_by'][kind]:.0%}" for kind in KINDS if kind in conf["decided_by"])
                or "nothing")
             + f"); {conf['none_share']:.0%} resolves no difference, "
             f"{conf['broken_share']:.0%} is broken (an fp32 reference the drift breaks), "
             f"{conf['unmeasured_share']:.0%} unmeasured."]
    if decision["change_if"]:
        lines.append("What would change it: " + "; or ".join(decision["change_if"]) + ".")
    return lines


def markdown(decision: dict) -> str:
    runs = ", ".join(f"`{r['name']}` ({r['preset'] or 'config'}, {r['machine_class'] or 'class unknown'})"
                     for r in decision["runs"])
    lines = ["# Decision: Design A or Design B", "", *headline(decision), "",
             f"From the runs {runs}; every figure below is a claim in decision.json with the cells it is computed "
             "from. Ratios are A / B unless said: below 1 favours A.", ""]
    lines += _rows(decision) + _cost(decision) + _normalisation(decision) + _activation(decision)
    lines += _prediction(decision) + _flips(decision) + _unknowns(decision) + _traffic(decision)
    return "\n".join(lines) + "\n"


def _rows(decision: dict) -> list[str]:
    scenarios = list(dict.fromkeys(r["scenario"] for r in decision["rows"]))
    families = list(dict.fromkeys(r["family"] for r in decision["rows"]))
    by = {(r["family"], r["scenario"]): r for r in decision["rows"]}
    lines = ["## Per served format × scenario", "",
             "Winner, its figure (KL to fp32 A / B downstream; centered error energy A / B on sublayers; fp32: drift "
             "cost A − B in bits per byte) with its 95 % interval, and the evidence it rests on. `broken`: the "
             "strongest evidence's fp32 models lose more than the health threshold to the drift.", "",
             "| family | " + " | ".join(scenarios) + " |", "|---|" + "---|" * len(scenarios)]
    for family in families:
        cells = []
        for scenario in scenarios:
            cells.append(_row_text(decision, by[family, scenario]))
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _row_text(decision: dict, r: dict) -> str:
    """'A 0.09 [0.07, 0.13] (drift pair)', with the stronger evidence a broken reference keeps from
    counting beside it ('; drift pair broken: 3.1e+05 [...]')."""
    parts = [f"{r['winner']} {_claim(decision, r['used'][0]['claim'])}" if r["used"] else r["winner"]]
    notes = [SHORT[r["evidence_kind"]]] if r["used"] else []
    notes += [f"{SHORT[e['kind']]} broken: {_claim(decision, e['claim'])}" for e in r["stronger"][:1]]
    return parts[0] + (f" ({'; '.join(notes)})" if notes else "")


def _cost(decision: dict) -> list[str]:
    rows = decision["cost_at_budget"]
    if not rows:
        return []
    b = decision["budget"]
    lines = ["## Cost at equal quality", "",
             f"The fastest served recipe meeting {b['metric']}{b['op']}{b['bound']:g} (mean over seeds and windows of "
             "the healthiest pair), timed on the sublayer:", "",
             "| scenario | design | recipe | prefill ms | decode ms | resident MB |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r["design"] == "A/B":
            lines.append(f"| {r['scenario']} | A/B prefill | | {_claim(decision, r['claim'])} | | |")
        elif r["recipe"] is None:
            lines.append(f"| {r['scenario']} | {r['design']} | none: {r['reason']} | | | |")
        else:
            lines.append(f"| {r['scenario']} | {r['design']} | `{r['recipe']}` | {number(r['prefill_ms'], 3)} | "
                         f"{number(r['decode_ms'], 3)} | {number(r['resident_mb'], 1)} |")
    return [*lines, ""]


def _normalisation(decision: dict) -> list[str]:
    mech = decision["mechanisms"]
    if not mech["normalisation"] and not mech["dose"]:
        return []
    lines = ["## Mechanism 1: normalisation", "",
             "LayerNorm subtracts each token's mean before scaling; RMSNorm only divides by the root mean square, so "
             "a shared positive offset survives it. The drift at the FFN input (token_mean_energy: share of a token's "
             "energy in its offset; abs_mean_shift_std: |feature mean| in feature std) and what each norm passes on "
             "(share of normalised values > 0; 0.5 is centred):", ""]
    by: dict = {}
    for item in mech["normalisation"]:
        by.setdefault((item["scenario"], item["design"]), {}).update(item)
    for (scenario, design), item in by.items():
        drift = (f"token_mean_energy {_claim(decision, item['token_mean_energy'])}, abs_mean_shift_std "
                 f"{_claim(decision, item['abs_mean_shift_std'])}; ") if "token_mean_energy" in item else ""
        lines.append(f"- `{scenario}`, {design}: {drift}normalised values > 0: {_claim(decision, item['claim'], 3)}")
    for d in mech["dose"]:
        healthy = [level for level, index in d["levels"] if decision["claims"][index]["figure"] <= d["threshold"]]
        worst = ", ".join(f"{level:g}: {_claim(decision, index)}" for level, index in d["levels"])
        lines.append(f"- Dose-response, {d['design']} fp32 ({d['pair']} pair at {d['inject']}): healthy (worst seed "
                     f"within {d['threshold']:g} bit) at shifts {', '.join(f'{x:g}' for x in healthy) or 'none'} "
                     f"(worst seed's cost by shift: {worst})")
    return [*lines, ""]


def _activation(decision: dict) -> list[str]:
    mech = decision["mechanisms"]
    if not mech["activation"]:
        return []
    levels = mech["int8_levels"]
    lines = ["## Mechanism 2: activation", "",
             "GELU passes a centred input through a smooth near-linear region; the swish gate multiplies two "
             "projections of an offset input, and the product's largest values grow against its typical ones. A "
             "per-tensor int8 scale is set by the largest |x|: a typical value keeps about "
             f"{levels} / spike ratio levels.", ""]
    for item in mech["activation"]:
        a, b = (decision["claims"][item[d]]["figure"] for d in "AB")
        lines.append(f"- `{item['scenario']}`: spike ratio A {_claim(decision, item['A'], 1)}, B "
                     f"{_claim(decision, item['B'], 1)} (B / A {_claim(decision, item['ratio'])}); a typical value "
                     f"keeps ≈ {levels / a:.1f} int8 levels in A, {levels / b:.1f} in B")
    return [*lines, ""]


def _prediction(decision: dict) -> list[str]:
    p = decision["mechanisms"]["prediction"]
    lines = ["## The seed's prediction", "", f"Stated before it was measured: {p['statement']}", ""]
    if not p["parts"]:
        return [*lines, f"Not measured: no pair has `{p['recipe']}` cells of both designs under "
                        f"`{p['scenario']}`.", ""]
    held = {True: "**held**", False: "**did not hold**", None: "**not resolved** (interval across)"}
    first, second = p["parts"]
    lines += [f"Measured on the {p['pair']} pair, `{p['recipe']}` under `{p['scenario']}`, intervals over seeds:",
              f"- {first['what']}: B / A {_claim(decision, first['claim'])}: {held[first['held']]}.",
              f"- {second['what']}: A {_claim(decision, second['A'])}, B {_claim(decision, second['B'])}: "
              f"{held[second['held']]}."]
    return [*lines, ""]


def _flips(decision: dict) -> list[str]:
    if not decision["flips"]:
        return []
    lines = ["## Where it flips", "", "Each format × scenario the other design wins, or would win on evidence a "
             "broken fp32 reference keeps from counting; what the records show of why, and of a fix.", ""]
    for f in decision["flips"]:
        kl = ", ".join(f"{'AB'[i]} {_claim(decision, index)}" for i, index in enumerate(f["mechanism_claims"]))
        text = f"- {f['family']} under `{f['scenario']}`: {f['winner']} wins ({SHORT[f['evidence_kind']]})" \
            if f["counted"] else (f"- {f['family']} under `{f['scenario']}`: {f['winner']} ahead on the "
                                  f"{SHORT[f['evidence_kind']]}, not counted: {f['reason']}")
        text += f"; KL to fp32 {kl}" if kl else ""
        if f["stages"]:
            text += ("; relative error at the norm output / pre-activation / down-projection input (mean over layers "
                     "and seeds) " + ", ".join(f"{d} " + " / ".join(_claim(decision, i) for i in stages.values())
                                               for d, stages in sorted(f["stages"].items())))
        if f["overflow"]:
            text += ("; share of tokens whose fp32 states overflow an fp16 norm's squares "
                     + ", ".join(f"{d} {_claim(decision, i, 3)}" for d, i in sorted(f["overflow"].items())))
        fix = f["fix"]
        if fix:
            text += (f". {fix['design']}'s best variant of it, `{fix['recipe']}`, against {f['winner']}: "
                     f"{_claim(decision, fix['claim'])} — {'closes the gap' if fix['closes_gap'] else 'still behind'}")
            if fix.get("timed") is not None:
                text += f", at {_claim(decision, fix['timed'])}× its plain recipe's prefill time"
        else:
            text += ". No variant of the family (a mitigation, the norm in fp32) was measured to fix it"
        lines.append(text + ".")
    return [*lines, ""]


def _unknowns(decision: dict) -> list[str]:
    if not decision["unknowns"]:
        return []
    return ["## What is not known", "", *(f"- {u}" for u in decision["unknowns"]), ""]


def _traffic(decision: dict) -> list[str]:
    t = decision.get("traffic")
    if not t:
        return []
    lines = ["## Your traffic on the map", "", f"Capture `{t['capture']}`:"]
    lines += [f"- {axis['reading']}." for axis in t["axes"]] or ["- the runs have no dose-response to place it on."]
    return [*lines, ""]


def write(run_dirs: list[Path], out: Path, profile: Deployment | None = None, budget: Budget | None = None,
          capture: Path | None = None) -> tuple[Path, Path]:
    """decision.json and decision.md for the runs, in `out`; nothing is written if any input is bad."""
    runs = evidence.load_runs([Path(d) for d in run_dirs])
    found = analysis.decide(runs, profile or Deployment(), budget or parse_budget(None), capture)
    found = json.loads(json.dumps(found, sort_keys=True))  # rendered from what decision.json holds
    return analysis.write(found, markdown(found), out)


def write_for_run(run_dir: Path) -> tuple[Path, Path]:
    """The memo of one run, beside its records, for the profile its config's [deployment] names (or the default)."""
    manifest = json.loads((Path(run_dir) / "manifest.json").read_text())
    table = (manifest.get("config") or {}).get("deployment") or {}
    profile, budget = deployment_from_table(table, f"{run_dir} [deployment]") if table else (None, None)
    return write([run_dir], run_dir, profile, budget)
