"""Why the designs differ under the drift, from the runs' records: what centering vs RMS
normalisation leaves of the shifted states (mechanism 1), what GELU and the SwiGLU gate then pass
to the down-projection's per-tensor quantization (mechanism 2), the seed's prediction about small
negative vs small positive normalised values (fixed text, judged by a fixed rule), and, for every
row whose winner differs from the recommendation, what the runs show of its cause and its fix.
A cell that lacks a figure (an older run, a non-finite output) is left out of the claim that needs it."""

import numpy as np
from scipy import stats

from ffnbench.bench.analysis.evidence import PAIR_KIND, Claim, Run
from ffnbench.bench.analysis.verdicts import health as verdicts_health
from ffnbench.bench.analysis.verdicts import interval
from ffnbench.bench.traffic.scenarios import SHIFTS, TEXT_DOMAINS
from ffnbench.quant import FAMILY_OF, mitigations

# Fixed text, judged by the fixed rule of _held: it does not change with the runs it is judged on.
PREDICTION = ("Under a persistent positive mean shift, RMSNorm keeps the offset, so most of B's normalised values "
              "are positive and the few small negative ones sit in a narrow band beside a large constant. An "
              "activation-quantizing int8 recipe (its scale set by that constant) then misreads them: B's "
              "pre-activations flip sign more often than A's, and B's activation-output error on small negative "
              "pre-activations, relative to small positive ones, exceeds A's.")
PREDICTION_RECIPE = "ort-int8-dynamic"
INT8_LEVELS = 127  # a symmetric per-tensor int8 scale: the largest |x| gets 127 levels
NORM_FIGURES = {"token_mean_energy": "drift_stats.token_mean_energy",
                "abs_mean_shift_std": "drift_stats.abs_mean_shift_std",
                "norm_positive_fraction": "metrics.norm_positive_fraction"}
NORM_TEXT = {"token_mean_energy": "token_mean_energy at the FFN norm input",
             "abs_mean_shift_std": "abs_mean_shift_std at the FFN norm input",
             "norm_positive_fraction": "share of normalised values > 0"}
STAGES = {"norm_out_rel_err": "norm output", "act_in_rel_err": "pre-activation",
          "down_in_rel_err": "down-projection input"}


def _fp32_cells(run: Run, scenario: str) -> tuple[str, dict[str, list[dict]]] | None:
    """(pair, design -> fp32 lm cells under the scenario, a seed each) of the strongest pair measured."""
    pairs, _ = run.indexed
    for pair in ("drift", "trained"):
        cells = {d: (pairs.get(pair) or {}).get((d, "fp32", scenario), []) for d in "AB"}
        if cells["A"] and cells["B"]:
            return pair, cells
    return None


def _with(cells: list[dict], *fields: str) -> list[dict]:
    """The cells that record every field."""
    return [c for c in cells if all(_has(c, f) for f in fields)]


def _mean_claim(run: Run, cells: list[dict], field: str, text: str, kind: str) -> Claim:
    """A mean over cells (one a seed) with a Student-t interval over them where there are two or more."""
    values = np.array([_value(c, field) for c in cells], dtype=float)
    ci = None
    if len(values) > 1 and np.all(np.isfinite(values)):
        half = _t_half(values)
        ci = [float(values.mean() - half), float(values.mean() + half)]
    return Claim(text, float(values.mean()), ci, kind, "mean", field, [run.ref(c) for c in cells])


def _ratio_claim(run: Run, a: list[dict], b: list[dict], field: str, text: str, kind: str) -> Claim | None:
    """The geometric mean over seeds of each seed's own ratio (seed s of A against seed s of B: they
    read the same windows), with a Student-t interval over those log ratios; None without a pair of
    positive figures."""
    by_b = {c["seed"]: c for c in _with(b, field)}
    pairs = [(x, by_b[x["seed"]]) for x in _with(a, field) if x["seed"] in by_b]
    va = np.array([_value(x, field) for x, _ in pairs], dtype=float)
    vb = np.array([_value(y, field) for _, y in pairs], dtype=float)
    if not pairs or not (np.all(va > 0) and np.all(vb > 0)):
        return None
    logs = np.log(va / vb)
    ci = None
    if len(logs) > 1:
        half = _t_half(logs)
        ci = [float(np.exp(logs.mean() - half)), float(np.exp(logs.mean() + half))]
    return Claim(text, float(np.exp(logs.mean())), ci, kind, "geomean_ratio", field,
                 [run.ref(c) for c in (*(x for x, _ in pairs), *(y for _, y in pairs))], len(pairs))


def _t_half(values: np.ndarray) -> float:
    """Half-width of the 95 % Student-t interval of the mean of two or more values (one a seed)."""
    return float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))


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
    (`cite(claim) -> index`), one entry a scenario with both designs' figures."""
    drifts = [s for s in scenarios if s != "clean" and s not in TEXT_DOMAINS]
    norm, act = [], []
    for scenario in drifts:
        found = next(((run, *f) for run in runs if (f := _fp32_cells(run, scenario))), None)
        if found is None:
            continue
        run, pair, cells = found
        kind = PAIR_KIND[pair]
        entry = {"scenario": scenario, "pair": pair}
        for design in "AB":
            figures = {name: _with(cells[design], field) for name, field in NORM_FIGURES.items()}
            entry[design] = {name: cite(_mean_claim(run, mine, NORM_FIGURES[name], f"{design} under {scenario}: "
                                                    f"{NORM_TEXT[name]} (fp32, mean over layers and seeds)", kind))
                             for name, mine in figures.items() if mine}
        norm.append(entry)
        spikes = _ratio_claim(run, cells["B"], cells["A"], "metrics.spike_ratio",
                              f"under {scenario}: spike ratio at the down-projection input, B (SwiGLU product) / "
                              "A (GELU output), fp32, geometric mean over seeds", kind)
        if spikes is not None:
            act.append({"scenario": scenario, "ratio": cite(spikes),
                        **{design: cite(_mean_claim(run, _with(cells[design], "metrics.spike_ratio"),
                                                    "metrics.spike_ratio", f"{design} under {scenario}: spike ratio "
                                                    "(largest |x| over the median) at the down-projection input, "
                                                    "fp32", kind)) for design in "AB"}})
    return {"normalisation": norm, "dose": _dose(runs, cite), "activation": act,
            "prediction": _prediction(runs, drifts, cite), "int8_levels": INT8_LEVELS}


def _dose(runs: list[Run], cite) -> list[dict]:
    """Per pair and injection point, each design's worst seed's fp32 drift cost at each mean-shift
    level (the dose-response cells): healthy where within the run's threshold."""
    out = []
    for run in runs:
        _, doses = run.indexed
        for (pair, inject), lm in doses.items():
            entry = {"pair": pair, "inject": inject, "threshold": run.threshold, "run": run.name}
            for design in "AB":
                levels = sorted((x, _with(lm.get((design, "fp32", s), []), "reference.delta_bpb"))
                                for s, x in SHIFTS.items())
                levels = [(x, cells) for x, cells in levels if cells]
                if len(levels) >= 3:
                    entry[design] = [(x, cite(Claim(
                        f"{design} fp32 ({PAIR_KIND[pair]}, injected at {inject}) at shift {x:g}: the worst seed's "
                        "drift cost, bits per byte", max(c["reference"]["delta_bpb"] for c in cells), None,
                        PAIR_KIND[pair], "max", "reference.delta_bpb", [run.ref(c) for c in cells])))
                        for x, cells in levels]
            if "A" in entry or "B" in entry:
                out.append(entry)
    return out


def _prediction(runs: list[Run], drifts: list[str], cite) -> dict:
    """The prediction judged on the strongest pair with both designs' cells of PREDICTION_RECIPE
    under `production` (else the first drift): the pair, and whether its fp32 is healthy there."""
    scenario = "production" if "production" in drifts else (drifts[0] if drifts else None)
    out = {"statement": PREDICTION, "scenario": scenario, "recipe": PREDICTION_RECIPE, "parts": []}
    bands_fields = ("metrics.act_err_small_neg", "metrics.act_err_small_pos")
    for run in runs if scenario else ():
        pairs, _ = run.indexed
        for pair in ("drift", "trained"):
            lm = pairs.get(pair) or {}
            a, b = (lm.get((d, PREDICTION_RECIPE, scenario), []) for d in "AB")
            kind = PAIR_KIND[pair]
            flips = _ratio_claim(run, b, a, "metrics.preact_sign_flip_rate",
                                 f"{PREDICTION_RECIPE} under {scenario}: pre-activation sign flips, B / A "
                                 "(geometric mean over seeds)", kind)
            bands = {d: _band_ratio(run, _with(cells, *bands_fields), d, scenario, kind) for d, cells in
                     (("A", a), ("B", b))}
            if flips is None or None in bands.values():
                continue
            band_held = None if None in (bands["A"].ci95, bands["B"].ci95) else \
                True if bands["B"].ci95[0] > bands["A"].ci95[1] else \
                False if bands["B"].ci95[1] < bands["A"].ci95[0] else None
            out["parts"] = [
                {"what": "B's pre-activations flip sign more often than A's", "claim": cite(flips),
                 "held": _held(flips)},
                {"what": "B's small-negative / small-positive activation error ratio exceeds A's",
                 "A": cite(bands["A"]), "B": cite(bands["B"]), "held": band_held}]
            out["pair"] = pair
            out["fp32_healthy"] = verdicts_health(lm, scenario, run.threshold) is None
            return out
    return out


def _band_ratio(run: Run, cells: list[dict], design: str, scenario: str, kind: str) -> Claim | None:
    """act_err_small_neg / act_err_small_pos of one design, each seed's own ratio averaged."""
    cells = [c for c in cells if c["metrics"]["act_err_small_pos"] > 0]
    if not cells:
        return None
    values = np.array([c["metrics"]["act_err_small_neg"] / c["metrics"]["act_err_small_pos"] for c in cells])
    ci = None
    if len(values) > 1:
        half = _t_half(values)
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
    """design -> the pair's cells of the family's plain recipes under the scenario that have per-window
    figures, and "fp32 A", "fp32 B" -> its fp32 cells."""
    lm = run.indexed[0].get(pair) or {}
    recipes = [name for (d, name, s), cells in lm.items() if d == "A" and s == scenario
               and FAMILY_OF.get(cells[0]["recipe"]) == family]
    out = {d: [c for name in recipes for c in lm.get((d, name, scenario), []) if c.get("windows")] for d in "AB"}
    return out | {f"fp32 {d}": lm.get((d, "fp32", scenario), []) for d in "AB"}


def flips(runs: list[Run], rows: list, pick: str, cite) -> list[dict]:
    """Every row the other design wins, or would win on the strongest evidence a broken reference
    keeps from counting: each design's KL there, where each design's error enters and whether the
    stages separate them, whether their fp32 states overflow an fp16 norm, and the loser's best
    variant of the family (a mitigation, or a [recipe] variant such as the norm in fp32). Each figure
    names its run: evidence of one row may come from several."""
    out = []
    other = {"A": "B", "B": "A"}.get(pick)
    for r in rows if other else ():
        # Weaker broken evidence, a reference worse still, is not even shown.
        strongest = [e for e in r.stronger if e.kind == r.stronger[0].kind] if r.stronger else []
        evidence = r.used if r.winner == other else \
            strongest if strongest and all(_favours(e, other) for e in strongest) else []
        if not evidence:
            continue
        kind = evidence[0].kind
        found = {"family": r.family, "scenario": r.scenario, "winner": other, "evidence_kind": kind,
                 "counted": r.winner == other, "reason": evidence[0].reason,
                 "mechanism": {"kl": {}, "stages": {}, "overflow": {}, "runs": {}}, "fix": None}
        if kind in PAIR_KIND.values():
            pair = next(p for p, k in PAIR_KIND.items() if k == kind)
            by_run = [(run, _family_cells(run, pair, r.family, r.scenario)) for e in evidence
                      for run in runs if run.name == e.run]
            _mechanism(found["mechanism"], by_run, r, kind, cite)
            found["fix"] = _fix(runs, pair, r.family, r.scenario, other, kind, cite)
        out.append(found)
    return out


def _mechanism(into: dict, by_run: list, r, kind: str, cite) -> None:
    """KL per design, stage errors and fp16 norm overflow, each from the first run that records it."""
    with_kl = [(x, c) for x, c in by_run if c["A"] and c["B"]]
    for x, c in with_kl[:1]:
        into["runs"]["kl"] = x.name
        into["kl"] = {d: cite(_mean_claim(x, c[d], "windows.kl_to_fp32", f"{d}, {r.family} under {r.scenario}: KL "
                                          "to fp32, nats a byte", kind)) for d in "AB"}
    recorded = [(x, c) for x, c in by_run if c["A"] and c["B"] and all(
        _has(cell, f"layers.{stage}") for d in "AB" for cell in c[d] for stage in STAGES)]
    for x, c in recorded[:1]:
        into["runs"]["stages"] = x.name
        into["stages"] = {d: {stage: cite(_mean_claim(
            x, c[d], f"layers.{stage}", f"{d}, {r.family} under {r.scenario}: relative error at the "
            f"{STAGES[stage]} (mean over layers and seeds)", kind)) for stage in STAGES} for d in "AB"}
    overflow = [(x, c) for x, c in by_run if c["fp32 A"] and c["fp32 B"] and all(
        _has(cell, "layers.half_norm_overflow") for d in "AB" for cell in c[f"fp32 {d}"])]
    for x, c in overflow[:1] if r.family == "fp16" else ():
        into["runs"]["overflow"] = x.name
        into["overflow"] = {d: cite(_mean_claim(
            x, c[f"fp32 {d}"], "layers.half_norm_overflow", f"{d} under {r.scenario}: share of tokens whose norm "
            "squares overflow fp16 (fp32 states, mean over layers and seeds)", kind)) for d in "AB"}


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
        lm = run.indexed[0].get(pair) or {}
        variants = (run.manifest.get("config") or {}).get("user_recipes") or {}
        plain = [name for (d, name, s), cells in lm.items() if d == winner and s == scenario
                 and FAMILY_OF.get(cells[0]["recipe"]) == family and not cells[0].get("mitigation")]
        for (d, name, s), cells in lm.items() if plain else ():
            cells = [c for c in cells if c.get("windows")]
            if not cells:
                continue
            recipe = cells[0]["recipe"]
            base = mitigations.parse((variants.get(recipe) or {}).get("base", recipe))[0]
            is_variant = recipe in variants or mitigations.parse(recipe)[1]
            if d != loser or s != scenario or not is_variant or FAMILY_OF.get(base) != family:
                continue
            winner_cells = [c for c in lm[winner, plain[0], s] if c.get("windows")]
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
    # below 1 wholly: the loser with it is ahead; across 1: no difference left; above: still behind
    against = "ahead" if high < 1 else "behind" if low > 1 else "no difference"
    return {"recipe": name, "claim": index, "against": against, "design": loser, "run": run.name,
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
