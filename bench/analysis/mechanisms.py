"""Why the designs differ under the drift, from the runs' records: what centering vs RMS
normalisation leaves of the shifted states (mechanism 1), what GELU and the SwiGLU gate then pass
to the down-projection's per-tensor quantization (mechanism 2), the seed's prediction about small
negative vs small positive normalised values (stated before it is measured), and, for every row
whose winner differs from the recommendation, what the runs show of its cause and its fix."""

import numpy as np
from scipy import stats

from ffnbench.bench.analysis import downstream
from ffnbench.bench.analysis.evidence import PAIR_KIND, Claim, Run
from ffnbench.bench.analysis.verdicts import interval
from ffnbench.bench.traffic.scenarios import SHIFTS, TEXT_DOMAINS
from ffnbench.quant import FAMILY_OF, mitigations

# Written before any run measured it, and never edited to fit one: what the seed's reasoning predicts.
PREDICTION = ("Under a persistent positive mean shift, RMSNorm keeps the offset, so most of B's normalised values "
              "are positive and the few small negative ones sit in a narrow band beside a large constant. An "
              "activation-quantizing int8 recipe (its scale set by that constant) then misreads them: B's "
              "pre-activations flip sign more often than A's, and B's activation-output error on small negative "
              "pre-activations, relative to small positive ones, exceeds A's.")
PREDICTION_RECIPE = "ort-int8-dynamic"
INT8_LEVELS = 127  # a symmetric per-tensor int8 scale: the largest |x| gets 127 levels
STAGES = {"norm_out_rel_err": "norm output", "act_in_rel_err": "pre-activation",
          "down_in_rel_err": "down-projection input"}


def _fp32_cells(run: Run, scenario: str) -> tuple[str, dict[str, list[dict]]] | None:
    """(pair, design -> fp32 lm cells under the scenario, a seed each) of the strongest pair measured."""
    pairs, _ = downstream.index(run.cells)
    for pair in ("drift", "trained"):
        cells = {d: (pairs.get(pair) or {}).get((d, "fp32", scenario), []) for d in "AB"}
        if cells["A"] and cells["B"]:
            return pair, cells
    return None


def _mean_claim(run: Run, cells: list[dict], field: str, text: str, kind: str) -> Claim:
    """A mean over cells (one a seed) with a Student-t interval over them where there are two or more."""
    values = np.array([_value(c, field) for c in cells], dtype=float)
    ci = None
    if len(values) > 1 and np.all(np.isfinite(values)):
        half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
        ci = [float(values.mean() - half), float(values.mean() + half)]
    return Claim(text, float(values.mean()), ci, kind, "mean", field, [run.ref(c) for c in cells])


def _ratio_claim(run: Run, a: list[dict], b: list[dict], field: str, text: str, kind: str) -> Claim:
    """mean(A) / mean(B) over seeds, the interval a Student-t one over the seeds' own log ratios
    (paired by seed: seed s of A and of B read the same windows)."""
    by_b = {c["seed"]: c for c in b}
    pairs = [(x, by_b[x["seed"]]) for x in a if x["seed"] in by_b]
    va = np.array([_value(x, field) for x, _ in pairs], dtype=float)
    vb = np.array([_value(y, field) for _, y in pairs], dtype=float)
    ci = None
    logs = np.log(va / vb) if np.all(va > 0) and np.all(vb > 0) else None
    if logs is not None and len(logs) > 1:
        half = stats.t.ppf(0.975, len(logs) - 1) * logs.std(ddof=1) / np.sqrt(len(logs))
        ci = [float(np.exp(logs.mean() - half)), float(np.exp(logs.mean() + half))]
    return Claim(text, float(va.mean() / vb.mean()), ci, kind, "ratio", field,
                 [run.ref(c) for c in (*(x for x, _ in pairs), *(y for _, y in pairs))], len(pairs))


def _has(cell: dict, field: str) -> bool:
    """Whether the cell records the field (runs of older revisions record fewer statistics)."""
    section, name = field.split(".", 1)
    if section == "drift_stats":
        return bool(cell.get("drift_stats")) and all(layer.get(name) is not None for layer in cell["drift_stats"])
    value = (cell.get(section) or {}).get(name)
    return value is not None and (not isinstance(value, list) or (bool(value) and None not in value))


def _value(cell: dict, field: str) -> float:
    """A cell's figure for `field` (section.name): a list's mean, drift_stats' mean over layers."""
    section, name = field.split(".", 1)
    if section == "drift_stats":
        return float(np.mean([layer[name] for layer in cell["drift_stats"]]))
    value = cell[section][name]
    return float(np.mean(value)) if isinstance(value, list) else float(value)


def gather(runs: list[Run], scenarios: list[str], cite) -> dict:
    """{normalisation, dose, activation, prediction, int8_levels}: figures as claim indices
    (`cite(claim) -> index`)."""
    drifts = [s for s in scenarios if s != "clean" and s not in TEXT_DOMAINS]
    norm, act = [], []
    for scenario in drifts:
        found = next(((run, *f) for run in runs if (f := _fp32_cells(run, scenario))), None)
        if found is None:
            continue
        run, pair, cells = found
        kind = PAIR_KIND[pair]
        for design in "AB":
            with_stats = [c for c in cells[design] if _has(c, "drift_stats.token_mean_energy")
                          and _has(c, "drift_stats.abs_mean_shift_std")]
            if with_stats:
                norm.append({"scenario": scenario, "design": design, "figure": "drift at the FFN input",
                             "token_mean_energy": cite(_mean_claim(run, with_stats, "drift_stats.token_mean_energy",
                                                                   f"{design} under {scenario}: token_mean_energy at "
                                                                   "the FFN norm input (mean over layers)", kind)),
                             "abs_mean_shift_std": cite(_mean_claim(run, with_stats, "drift_stats.abs_mean_shift_std",
                                                                    f"{design} under {scenario}: abs_mean_shift_std "
                                                                    "(mean over layers)", kind))})
            norm.append({"scenario": scenario, "design": design, "figure": "norm_positive_fraction",
                         "claim": cite(_mean_claim(run, cells[design], "metrics.norm_positive_fraction",
                                                   f"{design} under {scenario}: share of normalised values > 0 "
                                                   "(fp32)", kind))})
        if not all(_has(c, "metrics.spike_ratio") for d in "AB" for c in cells[d]):
            continue
        spikes = _ratio_claim(run, cells["B"], cells["A"], "metrics.spike_ratio",
                              f"under {scenario}: spike ratio at the down-projection input, B (SwiGLU product) / "
                              "A (GELU output), fp32", kind)
        act.append({"scenario": scenario, "ratio": cite(spikes),
                    **{design: cite(_mean_claim(run, cells[design], "metrics.spike_ratio",
                                                f"{design} under {scenario}: spike ratio (largest |x| over the "
                                                "median) at the down-projection input, fp32", kind))
                       for design in "AB"}})
    dose = _dose(runs, cite)
    prediction = _prediction(runs, drifts, cite)
    return {"normalisation": norm, "dose": dose, "activation": act, "prediction": prediction,
            "int8_levels": INT8_LEVELS}


def _dose(runs: list[Run], cite) -> list[dict]:
    """Per design, the mean-shift levels at which every seed's fp32 stays within the health threshold
    of its clean figure (the dose-response cells injected at the FFN input)."""
    out = []
    for run in runs:
        _, doses = downstream.index(run.cells)
        for (pair, inject), lm in doses.items():
            levels = sorted((x, s) for s, x in SHIFTS.items() if ("A", "fp32", s) in lm)
            for design in "AB":
                measured = [(x, s, lm.get((design, "fp32", s), [])) for x, s in levels]
                measured = [(x, s, cells) for x, s, cells in measured if cells]
                if len(measured) < 3:
                    continue
                worst = [(x, cite(Claim(f"{design} fp32 ({PAIR_KIND[pair]}, injected at {inject}) at shift {x:g}: "
                                        "the worst seed's drift cost, bits per byte", max(
                                            c["reference"]["delta_bpb"] for c in cells), None, PAIR_KIND[pair], "max",
                                        "reference.delta_bpb", [run.ref(c) for c in cells])))
                         for x, s, cells in measured]
                out.append({"design": design, "pair": pair, "inject": inject, "threshold": run.threshold,
                            "levels": worst})
    return out


def _prediction(runs: list[Run], drifts: list[str], cite) -> dict:
    scenario = "production" if "production" in drifts else (drifts[0] if drifts else None)
    out = {"statement": PREDICTION, "scenario": scenario, "recipe": PREDICTION_RECIPE, "parts": []}
    for run in runs if scenario else ():
        pairs, _ = downstream.index(run.cells)
        for pair in ("drift", "trained"):
            lm = pairs.get(pair) or {}
            a, b = lm.get(("A", PREDICTION_RECIPE, scenario)), lm.get(("B", PREDICTION_RECIPE, scenario))
            if not a or not b:
                continue
            kind = PAIR_KIND[pair]
            flips = _ratio_claim(run, b, a, "metrics.preact_sign_flip_rate",
                                 f"{PREDICTION_RECIPE} under {scenario}: pre-activation sign flips, B / A", kind)
            bands = {d: _band_ratio(run, cells, d, scenario, kind) for d, cells in (("A", a), ("B", b))}
            out["parts"] = [
                {"what": "B's pre-activations flip sign more often than A's", "claim": cite(flips),
                 "held": _held(flips)},
                {"what": "B's small-negative / small-positive activation error exceeds A's",
                 "A": cite(bands["A"]), "B": cite(bands["B"]),
                 "held": None if None in (bands["A"].ci95, bands["B"].ci95) else
                 True if bands["B"].ci95[0] > bands["A"].ci95[1] else False if bands["B"].ci95[1] < bands["A"].ci95[0]
                 else None}]
            out["pair"] = pair
            return out
    return out


def _band_ratio(run: Run, cells: list[dict], design: str, scenario: str, kind: str) -> Claim:
    """act_err_small_neg / act_err_small_pos of one design, each seed's own ratio averaged."""
    values = np.array([c["metrics"]["act_err_small_neg"] / c["metrics"]["act_err_small_pos"] for c in cells])
    ci = None
    if len(values) > 1:
        half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
        ci = [float(values.mean() - half), float(values.mean() + half)]
    return Claim(f"{design}, {PREDICTION_RECIPE} under {scenario}: act_err_small_neg / act_err_small_pos (mean of "
                 "the seeds' ratios)", float(values.mean()), ci, kind, "mean_of_ratios",
                 "metrics.act_err_small_neg/metrics.act_err_small_pos", [run.ref(c) for c in cells])


def _held(claim: Claim) -> bool | None:
    """True where the interval lies above 1 (as predicted), False below, None across it or without
    one (a single seed)."""
    if claim.ci95 is None:
        return None
    return True if claim.ci95[0] > 1 else False if claim.ci95[1] < 1 else None


def _family_cells(run: Run, pair: str, family: str, scenario: str) -> dict[str, list[dict]]:
    """design -> the pair's cells of the family's plain recipes under the scenario, and its fp32 cells."""
    lm = downstream.index(run.cells)[0].get(pair) or {}
    recipes = [name for (d, name, s), cells in lm.items() if d == "A" and s == scenario
               and FAMILY_OF.get(cells[0]["recipe"]) == family]
    out = {d: [c for name in recipes for c in lm.get((d, name, scenario), [])] for d in "AB"}
    return out | {f"fp32 {d}": lm.get((d, "fp32", scenario), []) for d in "AB"}


def flips(runs: list[Run], rows: list, pick: str, cite) -> list[dict]:
    """Every row the other design wins: each design's KL there, where each design's error enters (the
    first run of the row's evidence that records it), whether its fp32 states overflow an fp16 norm,
    and the variant of the same family (a mitigation, or a [recipe] variant such as the norm in fp32)
    that brings the loser closest."""
    out = []
    other = {"A": "B", "B": "A"}.get(pick)
    for r in rows:
        if other is None:
            break
        # The row's winner, or the strongest evidence the drift broke where it points the other way
        # (shown, not counted; weaker broken evidence, a reference worse still, is not even shown).
        strongest = [e for e in r.stronger if e.kind == r.stronger[0].kind] if r.stronger else []
        evidence = r.used if r.winner == other else \
            strongest if strongest and all(_favours(e, other) for e in strongest) else []
        if not evidence:
            continue
        kind = evidence[0].kind
        found = {"family": r.family, "scenario": r.scenario, "winner": other, "evidence_kind": kind,
                 "counted": r.winner == other, "reason": evidence[0].reason,
                 "mechanism_claims": [], "stages": {}, "overflow": {}, "fix": None}
        if kind in PAIR_KIND.values():
            pair = next(p for p, k in PAIR_KIND.items() if k == kind)
            by_run = [(run, _family_cells(run, pair, r.family, r.scenario)) for e in evidence
                      for run in runs if run.name == e.run]
            run, cells = by_run[0]
            for design in "AB":
                found["mechanism_claims"].append(cite(_mean_claim(
                    run, cells[design], "windows.kl_to_fp32", f"{design}, {r.family} under {r.scenario}: KL to fp32, "
                    "nats a byte", kind)))
            recorded = [(x, c) for x, c in by_run if all(_has(cell, f"layers.{stage}") for d in "AB"
                                                         for cell in c[d] for stage in STAGES)]
            for x, c in recorded[:1]:
                found["stages"] = {d: {stage: cite(_mean_claim(
                    x, c[d], f"layers.{stage}", f"{d}, {r.family} under {r.scenario}: relative error at the "
                    f"{STAGES[stage]} (mean over layers and seeds)", kind)) for stage in STAGES} for d in "AB"}
            overflow = [(x, c) for x, c in by_run if all(_has(cell, "layers.half_norm_overflow") for d in "AB"
                                                         for cell in c[f"fp32 {d}"]) and c["fp32 A"]]
            for x, c in overflow[:1] if r.family == "fp16" else ():
                found["overflow"] = {d: cite(_mean_claim(
                    x, c[f"fp32 {d}"], "layers.half_norm_overflow", f"{d} under {r.scenario}: share of tokens whose "
                    "norm squares overflow fp16 (fp32 states, mean over layers and seeds)", kind)) for d in "AB"}
            found["fix"] = _fix(runs, pair, r.family, r.scenario, other, kind, cite)
        out.append(found)
    return out


def _favours(evidence, design: str) -> bool:
    """Whether a comparison's interval (A / B) lies wholly on the design's side of 1."""
    ci = evidence.claim.ci95
    return bool(ci) and evidence.claim.statistic == "ratio" and (ci[0] > 1 if design == "B" else ci[1] < 1)


def _fix(runs: list[Run], pair: str, family: str, scenario: str, winner: str, kind: str, cite) -> dict | None:
    """The loser's best variant of the family in any run (a mitigation, or a [recipe] variant such as
    the norm in fp32) against the winner's plain recipe of the same run: KL loser-with-it / winner,
    paired over seeds, draws and windows."""
    loser = "A" if winner == "B" else "B"
    best = None
    for run in runs:
        lm = downstream.index(run.cells)[0].get(pair) or {}
        variants = (run.manifest.get("config") or {}).get("user_recipes") or {}
        plain = [name for (d, name, s), cells in lm.items() if d == winner and s == scenario
                 and FAMILY_OF.get(cells[0]["recipe"]) == family and not cells[0].get("mitigation")]
        for (d, name, s), cells in lm.items() if plain else ():
            recipe = cells[0]["recipe"]
            base = mitigations.parse((variants.get(recipe) or {}).get("base", recipe))[0]
            is_variant = recipe in variants or mitigations.parse(recipe)[1]
            if d != loser or s != scenario or not is_variant or FAMILY_OF.get(base) != family:
                continue
            winner_cells = lm[winner, plain[0], s]
            seeds = sorted({c["seed"] for c in cells} & {c["seed"] for c in winner_cells})
            a = np.array([next(c for c in cells if c["seed"] == x)["windows"]["kl_to_fp32"] for x in seeds])
            b = np.array([next(c for c in winner_cells if c["seed"] == x)["windows"]["kl_to_fp32"] for x in seeds])
            if not seeds or a.shape != b.shape or not np.all(b.mean(axis=1) > 0):
                continue
            point, low, high = interval(a, b, "ratio", np.arange(a.shape[1]) % cells[0]["draws"])
            if best is None or point < best[0]:
                used = [c for c in (*cells, *winner_cells) if c["seed"] in seeds]
                best = (point, low, high, name, plain[0], run, used, recipe, base)
    if best is None:
        return None
    point, low, high, name, plain, run, cells, recipe, base = best
    index = cite(Claim(f"{loser} with {name} / {winner} with {plain} under {scenario}: KL to fp32",
                       point, [low, high], kind, "ratio", "windows.kl_to_fp32",
                       [run.ref(c) for c in cells], len(cells) // 2))
    return {"recipe": name, "claim": index, "closes_gap": bool(low <= 1), "design": loser, "run": run.name,
            "timed": _fix_cost(run, loser, recipe, base, cite)}


def _fix_cost(run: Run, design: str, recipe: str, base: str, cite) -> int | None:
    """The fix's prefill time over its plain recipe's on the largest sublayer timed with both."""
    lat = {(c["recipe"], c["model"]): c for c in run.cells if c["kind"] == "latency" and c["design"] == design
           and c["shape"]["name"] == "prefill"}
    timed = [(model, cell, lat[base, model]) for (name, model), cell in lat.items()
             if name == recipe and (base, model) in lat]
    if not timed:
        return None
    model, cell, plain = max(timed, key=lambda t: t[1]["metrics"].get("model_bytes") or 0)
    return cite(Claim(f"{design} {recipe} / {base}: prefill p50 (sublayer `{model}`)",
                      cell["metrics"]["p50_ms"] / plain["metrics"]["p50_ms"], None, "sublayers", "ratio",
                      "metrics.p50_ms", [run.ref(cell), run.ref(plain)], 1))
