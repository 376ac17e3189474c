"""Cost at equal quality: per design and scenario, the fastest served recipe whose downstream
quality meets the budget (the way accuracy-driven tuning picks a recipe), its prefill and decode
time and resident memory on the runs' machine, and the A/B cost ratio with its interval.

Quality comes from the strongest pair whose fp32 models are healthy under the scenario (a budget
met against a broken reference means nothing); time and memory from the sublayer latency cells of
the same recipe, at the largest model timed in both designs, A and B timed in one interleaved
group so their rounds pair."""

import numpy as np

from ffnbench.bench.analysis.deployment import Budget, Deployment
from ffnbench.bench.analysis.evidence import PAIR_KIND, Claim, Run
from ffnbench.bench.analysis.verdicts import health
from ffnbench.bench.cells import latency
from ffnbench.bench.store import label
from ffnbench.quant import FAMILY_OF, mitigations


def _served(recipe: str, profile: Deployment) -> bool:
    return FAMILY_OF.get(mitigations.parse(recipe)[0]) in profile.families


def _quality(run: Run, scenario: str) -> tuple[str, dict] | None:
    """(pair, its lm cells) of the strongest healthy pair under the scenario."""
    pairs, _ = run.indexed
    for pair in ("drift", "trained"):
        lm = pairs.get(pair)
        if lm and any(k[2] == scenario for k in lm) and health(lm, scenario, run.threshold) is None:
            return pair, lm
    return None


def _timing(runs: list[Run]) -> tuple[Run, str, dict] | None:
    """(run, model, (design, label, shape) -> latency cell) of the largest model timed in both designs."""
    best = None
    for run in runs:
        cells = [c for c in run.cells if c["kind"] == "latency"]
        for model in {c["model"] for c in cells}:
            mine = [c for c in cells if c["model"] == model]
            if {c["design"] for c in mine} >= {"A", "B"}:
                size = max(c["metrics"].get("model_bytes") or 0 for c in mine)
                if best is None or size > best[0]:
                    best = (size, run, model, {(c["design"], label(c), c["shape"]["name"]): c for c in mine})
    return best and best[1:]


ROW = {"pair": None, "recipe": None, "model": None, "budget_value": None, "prefill_ms": None, "decode_ms": None,
       "resident_mb": None, "reason": None, "claims": {}}  # every cost_at_budget row has these keys


def at_budget(runs: list[Run], scenarios: list[str], budget: Budget, profile: Deployment, cite) -> list[dict]:
    """cost_at_budget rows (per scenario: A, B, and A/B where both have a recipe), their figures cited
    (`cite(claim) -> index`, the row's `claims` naming which)."""
    timing = _timing(runs)
    rows = []
    for scenario in scenarios:
        found = next(((run, *q) for run in runs if (q := _quality(run, scenario))), None)
        chosen = {}
        for design in "AB":
            row = {**ROW, "design": design, "scenario": scenario}
            if found is None:
                rows.append({**row, "reason": "no pair whose fp32 models are healthy under it"})
                continue
            run, pair, lm = found
            best = _fastest(run, pair, lm, design, scenario, budget, profile, timing)
            rows.append({**row, **best["row"], "claims": {k: cite(c) for k, c in best["claims"].items()}})
            chosen[design] = best.get("latency")
        if chosen.get("A") and chosen.get("B"):
            rows.append({**ROW, "design": "A/B", "scenario": scenario,
                         "claims": {"prefill_ratio": cite(_ratio_claim(timing[0], chosen["A"], chosen["B"],
                                                                       scenario))}})
    return rows


def _fastest(run: Run, pair: str, lm: dict, design: str, scenario: str, budget: Budget, profile: Deployment,
             timing) -> dict:
    met = []
    for (d, name, s), cells in lm.items():
        if d != design or s != scenario or not _served(cells[0]["recipe"], profile):
            continue
        values = [np.mean(c["windows"][budget.window_metric]) for c in cells if c.get("windows")]
        if len(values) == len(cells) and budget.met(float(np.mean(values))):
            met.append((name, cells, float(np.mean(values))))
    row = {"pair": pair}
    if not met:
        return {"row": {**row, "reason": f"no served recipe meets {budget.text()}"}, "claims": {}}
    if timing is None:
        return {"row": {**row, "reason": "no latency cells of both designs to cost it by"}, "claims": {}}
    timed_run, model, by = timing
    timed = [(by[design, name, "prefill"]["metrics"]["p50_ms"], name, cells, value) for name, cells, value in met
             if (design, name, "prefill") in by]
    if not timed:
        return {"row": {**row, "reason": f"the recipes meeting {budget.text()} were not timed"}, "claims": {}}
    _, name, cells, value = min(timed, key=lambda t: t[0])
    prefill, decode = by[design, name, "prefill"], by.get((design, name, "decode"))
    claims = {"budget": Claim(f"{design} {name} under {scenario}: {budget.metric} ({PAIR_KIND[pair]})", value, None,
                              PAIR_KIND[pair], "mean", f"windows.{budget.window_metric}", [run.ref(c) for c in cells]),
              "prefill": _timing_claim(timed_run, prefill, design, name, model, "prefill")}
    if decode:
        claims["decode"] = _timing_claim(timed_run, decode, design, name, model, "decode")
    if prefill["metrics"].get("resident_mb") is not None:
        claims["resident"] = Claim(f"{design} {name}: resident MB of the loaded sublayer `{model}`",
                                   prefill["metrics"]["resident_mb"], None, "sublayers", "mean", "metrics.resident_mb",
                                   [timed_run.ref(prefill)])
    return {"row": {**row, "recipe": name, "model": model, "budget_value": value,
                    "prefill_ms": prefill["metrics"]["p50_ms"], "decode_ms": decode and decode["metrics"]["p50_ms"],
                    "resident_mb": prefill["metrics"].get("resident_mb"), "candidates": len(met)},
            "claims": claims, "latency": prefill}


def _timing_claim(run: Run, cell: dict, design: str, name: str, model: str, shape: str) -> Claim:
    m = cell["metrics"]
    ci = [m["p50_ci_low_ms"], m["p50_ci_high_ms"]] if m.get("p50_ci_low_ms") is not None else None
    return Claim(f"{design} {name}: {shape} p50 ms (sublayer `{model}`)", m["p50_ms"], ci, "sublayers", "mean",
                 "metrics.p50_ms", [run.ref(cell)])


def _ratio_claim(run: Run, a: dict, b: dict, scenario: str) -> Claim:
    """A's chosen recipe's prefill time over B's, paired by round where one group timed both."""
    same_group = a["metrics"].get("timing_group") == b["metrics"].get("timing_group")
    found = latency.ratio(np.asarray(a["metrics"]["samples_ms"]), np.asarray(b["metrics"]["samples_ms"])) \
        if same_group else None
    ci = [found["ci_low"], found["ci_high"]] if found and found["ci_low"] is not None else None
    figure = found["ratio"] if found else a["metrics"]["p50_ms"] / b["metrics"]["p50_ms"]
    return Claim(f"cost at equal quality under {scenario}: prefill time A ({label(a)}) / B ({label(b)})"
                 + ("" if same_group else " (timed in different groups: no interval)"), figure, ci, "sublayers",
                 "median_ratio" if same_group else "ratio", "metrics.samples_ms" if same_group else "metrics.p50_ms",
                 [run.ref(a), run.ref(b)], 1)
