"""decision.md: the one-page memo, rendered from decision.json alone. Every number it prints is a
claim's figure (with its interval) or a share of the profile's traffic; nothing is recomputed here.
`write` runs the analysis' decision over run directories and writes both files."""

import json
from pathlib import Path

from ffnbench.bench.analysis import decision as analysis
from ffnbench.bench.analysis import evidence
from ffnbench.bench.analysis.deployment import SERVED, Budget, Deployment, deployment_from_table, parse_budget
from ffnbench.bench.analysis.evidence import KINDS

NORM_SHORT = {"token_mean_energy": "token_mean_energy", "abs_mean_shift_std": "abs_mean_shift_std",
              "norm_positive_fraction": "normalised > 0"}
NORM_DIGITS = {"norm_positive_fraction": 3}
STAGE_NAMES = {"norm_out_rel_err": "norm output", "act_in_rel_err": "pre-activation",
               "down_in_rel_err": "down-projection input"}
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
    if not decision["rows"]:
        return []
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
    """'A 0.09 [0.07, 0.13] (drift pair)'; a conflict with every run's figure; the strongest evidence a
    broken reference keeps from counting beside it ('drift pair broken: 3.8e+05 [...]')."""
    if r["winner"] == "conflict":
        text = "conflict (" + "; ".join(f"{e['run']}: {e['verdict']} {_claim(decision, e['claim'])}" for e in r["used"])
        return text + f", {SHORT[r['evidence_kind']]})"
    notes = [SHORT[r["evidence_kind"]]] if r["used"] else []
    notes += [f"{SHORT[e['kind']]} broken: {_claim(decision, e['claim'])}" for e in r["stronger"][:1]]
    head = f"{r['winner']} {_claim(decision, r['used'][0]['claim'])}" if r["used"] else r["winner"]
    return head + (f" ({'; '.join(notes)})" if notes else "")


def _cost(decision: dict) -> list[str]:
    rows = decision["cost_at_budget"]
    if not rows:
        return []
    b = decision["budget"]
    lines = ["## Cost at equal quality", "",
             f"The fastest served recipe meeting {b['metric']}{b['op']}{b['bound']:g} (its mean over seeds and "
             "windows, on the strongest pair whose fp32 models are healthy under the scenario), timed on the "
             "sublayer:", "",
             "| scenario | design | recipe | prefill ms | decode ms | resident MB |", "|---|---|---|---|---|---|"]
    for r in rows:
        c = r["claims"]
        if r["design"] == "A/B":
            lines.append(f"| {r['scenario']} | A/B prefill time | | {_claim(decision, c['prefill_ratio'])} | | |")
        elif r["recipe"] is None:
            lines.append(f"| {r['scenario']} | {r['design']} | none: {r['reason']} | | | |")
        else:
            lines.append(f"| {r['scenario']} | {r['design']} | `{r['recipe']}` | {_claim(decision, c['prefill'], 3)} | "
                         f"{_claim(decision, c.get('decode'), 3)} | {_claim(decision, c.get('resident'), 1)} |")
    return [*lines, ""]


def _normalisation(decision: dict) -> list[str]:
    mech = decision["mechanisms"]
    if not mech["normalisation"] and not mech["dose"]:
        return []
    lines = ["## Mechanism 1: normalisation", "",
             "LayerNorm subtracts each token's mean over its features before scaling; RMSNorm divides by the root "
             "mean square only, so an offset a token's features share survives it (token_mean_energy: the share of a "
             "token's energy in that shared offset; abs_mean_shift_std: |feature mean| in feature std, which counts "
             "offsets on a few channels too). Measured at the FFN inputs, fp32, and the share of normalised values "
             "above 0 each norm passes on (0.5: centred):", ""]
    for item in mech["normalisation"]:
        parts = [f"{d}: " + ", ".join(f"{NORM_SHORT[name]} {_claim(decision, index, NORM_DIGITS.get(name, 2))}"
                                      for name, index in item[d].items()) for d in "AB" if item.get(d)]
        lines.append(f"- `{item['scenario']}` ({item['pair']} pair): " + "; ".join(parts))
    for d in mech["dose"]:
        per = []
        for design in "AB":
            levels = d.get(design) or []
            healthy = [x for x, index in levels if decision["claims"][index]["figure"] <= d["threshold"]]
            per.append(f"{design} healthy at shifts {', '.join(f'{x:g}' for x in healthy) or 'none'} (worst seed's "
                       "cost " + ", ".join(f"{x:g}: {_claim(decision, index)}" for x, index in levels) + ")")
        lines.append(f"- Dose-response, fp32 ({d['pair']} pair at {d['inject']}, healthy within {d['threshold']:g} "
                     "bit): " + "; ".join(per))
    return [*lines, ""]


def _activation(decision: dict) -> list[str]:
    mech = decision["mechanisms"]
    if not mech["activation"]:
        return []
    lines = ["## Mechanism 2: activation", "",
             "GELU acts on a centred input; the swish gate multiplies two projections of an input that may keep an "
             "offset, and the product's largest values can grow against its typical ones. A per-tensor int8 scale is "
             f"set by the largest |x|: a typical value keeps about {mech['int8_levels']} / (spike ratio) levels. Spike "
             "ratio at the down-projection input (largest |x| over the median), fp32:", ""]
    for item in mech["activation"]:
        lines.append(f"- `{item['scenario']}`: A {_claim(decision, item['A'], 1)}, B {_claim(decision, item['B'], 1)}; "
                     f"B / A {_claim(decision, item['ratio'])}")
    return [*lines, ""]


def _prediction(decision: dict) -> list[str]:
    p = decision["mechanisms"]["prediction"]
    if p["scenario"] is None:
        return []
    lines = ["## The seed's prediction", "",
             f"Fixed text in the code, judged by a fixed rule whatever the runs say: {p['statement']}", ""]
    if not p["parts"]:
        return [*lines, f"Not measured: no pair has `{p['recipe']}` cells of both designs under `{p['scenario']}`.",
                ""]
    held = {True: "**held**", False: "**did not hold**", None: "**not resolved** (interval across, or one seed)"}
    first, second = p["parts"]
    health = "healthy there" if p["fp32_healthy"] else "not healthy there (a mechanism, measured against the same " \
                                                       "model's fp32; no verdict rests on it)"
    lines += [f"Measured on the {p['pair']} pair, `{p['recipe']}` under `{p['scenario']}`, intervals over seeds; its "
              f"fp32 models are {health}:",
              f"- {first['what']}: B / A {_claim(decision, first['claim'])}: {held[first['held']]}.",
              f"- {second['what']}: A {_claim(decision, second['A'])}, B {_claim(decision, second['B'])}: "
              f"{held[second['held']]}" + _below_one(decision, second) + "."]
    return [*lines, ""]


def _below_one(decision: dict, part: dict) -> str:
    """Where both designs' ratios are below 1, neither errs more on small negatives in absolute terms."""
    if all(decision["claims"][part[d]]["figure"] < 1 for d in "AB"):
        return " (both below 1: neither design errs more on small negative than on small positive values; B only " \
               "relatively more than A)"
    return ""


def _flips(decision: dict) -> list[str]:
    if not decision["flips"]:
        return []
    lines = ["## Where it flips", "", "Each format × scenario the other design wins, or would win on evidence a "
             "broken fp32 reference keeps from counting; what the records show of why, and of a fix.", ""]
    for f in decision["flips"]:
        m = f["mechanism"]
        text = f"- {f['family']} under `{f['scenario']}`: {f['winner']} " + (
            f"wins ({SHORT[f['evidence_kind']]})" if f["counted"] else
            f"ahead on the {SHORT[f['evidence_kind']]}, not counted: {f['reason']}")
        if m["kl"]:
            text += (f". KL to fp32 A {_claim(decision, m['kl']['A'])}, B {_claim(decision, m['kl']['B'])} "
                     f"({m['runs']['kl']})")
        if m["stages"]:
            errors = ", ".join(f"{d} " + " / ".join(_claim(decision, m["stages"][d][stage]) for stage in STAGE_NAMES)
                               for d in "AB")
            text += (". Relative error at the norm output / pre-activation / down-projection input (mean over layers "
                     f"and seeds): {errors} ({m['runs']['stages']}): {_separates(decision, f)}")
        if m["overflow"]:
            text += (". Share of tokens whose fp32 states overflow an fp16 norm's squares: "
                     + ", ".join(f"{d} {_claim(decision, m['overflow'][d], 3)}" for d in "AB")
                     + f" ({m['runs']['overflow']})")
        fix = f["fix"]
        if fix:
            said = {"ahead": f"ahead of {f['winner']}", "no difference": f"no difference from {f['winner']} left",
                    "behind": f"still behind {f['winner']}"}[fix["against"]]
            text += (f". {fix['design']} with `{fix['recipe']}` / {f['winner']}: {_claim(decision, fix['claim'])}, "
                     f"{said} ({fix['run']})")
            text += (f", at {_claim(decision, fix['timed'])}× its plain recipe's prefill time"
                     if fix["timed"] is not None else "; its cost was not timed in these runs")
        else:
            text += ". No variant of the family (a mitigation, the norm in fp32) was measured against it"
        lines.append(text + ".")
    return [*lines, ""]


def _separates(decision: dict, flip: dict) -> str:
    """The first stage at which the loser's error interval lies above the winner's, or that none does."""
    loser = "A" if flip["winner"] == "B" else "B"
    stages = flip["mechanism"]["stages"]
    for stage in STAGE_NAMES:  # in the order the FFN computes them (decision.json sorts its keys)
        mine, theirs = decision["claims"][stages[loser][stage]], decision["claims"][stages[flip["winner"]][stage]]
        low = mine["ci95"][0] if mine["ci95"] else mine["figure"]
        high = theirs["ci95"][1] if theirs["ci95"] else theirs["figure"]
        if low > high:
            return f"{loser}'s error is already larger at the {STAGE_NAMES[stage]}"
    return f"no stage separates them ({flip['winner']}'s errors are as large): the loss is not located by them"


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


def write_for_run(run_dir: Path) -> tuple[Path, Path] | None:
    """The memo of one run, beside its records, for the profile its config's [deployment] names (or
    the default); None for a shard, a slice of a matrix whose memo is the merged run's."""
    manifest = json.loads((Path(run_dir) / "manifest.json").read_text())
    if (manifest.get("config") or {}).get("shard"):
        return None
    table = (manifest.get("config") or {}).get("deployment") or {}
    profile, budget = deployment_from_table(table, f"{run_dir} [deployment]") if table else (None, None)
    return write([run_dir], run_dir, profile, budget)
