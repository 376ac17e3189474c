"""The report's comparison of each mitigated recipe (RECIPE+shift, ...) and each recipe variant
([recipe.NAME] with `base = ...`) with its base recipe on whole-model cells (the trained pairs' and
users' models): the KL ratio variant / base with a 95 % interval paired over the windows both read
(and the training seeds and drift draws), and the difference in same top-1. How a run answers "does
accuracy_level 0 beat 4?" or "how much of int8's loss does a rotation recover?" with an interval
rather than two overlapping means."""

import numpy as np

from ffnbench.bench.analysis.verdicts import health, interval
from ffnbench.bench.report.whole_models import fp32_broken
from ffnbench.quant import mitigations


def groups(run) -> dict[tuple[str, str, str], dict[str, dict[int, dict]]]:
    """(model, design, scenario) -> recipe label -> seed -> cell, over the pairs' matrix cells and whole models."""
    out: dict = {}
    for kind, lm in run.lm_pairs.items():
        for (design, recipe, scenario), cells in lm.items():
            out.setdefault((f"{kind} pair", design, scenario), {})[recipe] = {c["seed"]: c for c in cells}
    for model, cells in run.whole.items():
        for (recipe, scenario), cell in cells.items():
            out.setdefault((model, cell["design"], scenario), {})[recipe] = {0: cell}
    return out


def parents(run, labels: set[str]) -> dict[str, str]:
    """variant label -> its base's label, for a [recipe.X] variant (its `base`) and a mitigated recipe
    (RECIPE+shift -> RECIPE); a calibrated label (NAME@scenario) pairs with its base calibrated on
    the same scenario where there is one, else with the uncalibrated base."""
    variants = {name: spec.get("base") for name, spec in
                ((run.manifest.get("config") or {}).get("user_recipes") or {}).items()}
    found = {}
    for label in labels:
        recipe, _, calibration = label.partition("@")
        parent, mods = mitigations.parse(recipe)
        base = parent if mods else variants.get(recipe)
        if base is None:
            continue
        calibrated = f"{base}@{calibration}"
        found[label] = calibrated if calibration and calibrated in labels else base
    return found


def unmitigated(run, label: str) -> str | None:
    """The recipe a mitigated label applies its mitigations to (RECIPE+shift@clean -> RECIPE), or None."""
    variants = (run.manifest.get("config") or {}).get("user_recipes") or {}
    return mitigations.unmitigated(label.partition("@")[0], variants)


def unmitigated_parent(run, label: str, labels: set[str]) -> str | None:
    """A mitigated label's recipe without its mitigations, calibrated on the same scenario where it
    is calibrated at all (QDQ): what the mitigation is to improve on. None for an unmitigated label."""
    plain = unmitigated(run, label)
    if plain is None:
        return None
    calibrated = f"{plain}@{label.partition('@')[2]}"
    return calibrated if calibrated in labels else plain


def section(run, threshold: float) -> list[str]:
    """Markdown lines; [] where the run has no variant or mitigation measured beside its base. A
    scenario whose fp32 models the drift breaks is marked (the pairs' `health`, a whole model's
    `fp32_broken`)."""
    rows = []
    for (model, design, scenario), by_recipe in groups(run).items():
        if model.endswith(" pair"):
            broken = health(run.lm_pairs[model.removesuffix(" pair")], scenario, threshold)
        else:  # a whole model: any of its cells under the scenario records its fp32 reference
            broken = fp32_broken(next(iter(next(iter(by_recipe.values())).values())), threshold)
        where = f"{scenario} (fp32 broken)" if broken else scenario
        for variant, base in parents(run, set(by_recipe)).items():
            if variant in by_recipe and base in by_recipe:
                found = compare(by_recipe[variant], by_recipe[base])
                if found:
                    kl, top1 = found
                    rows.append(f"| {model} | {design} | {where} | `{variant}` / `{base}` | {kl[0]:.3f} "
                                f"[{kl[1]:.3f}, {kl[2]:.3f}] | {1 - kl[0]:+.0%} | {100 * top1[0]:+.1f} pp "
                                f"[{100 * top1[1]:+.1f}, {100 * top1[2]:+.1f}] |")
    if not rows:
        return []
    return ["## Mitigations and recipe variants against their base", "",
            "Each mitigated recipe (RECIPE+shift, +smooth, +rotate, +keep, calibrated on the scenario after @) and "
            "each [recipe] variant against its base on the same windows: KL to fp32 as a ratio (< 1: closer to "
            "fp32), the share of the base's KL it removes (1 − ratio), and the change in same top-1, with 95 % "
            "intervals paired over windows, drift draws and training seeds.", "",
            "| model | design | scenario | variant / base | KL ratio [95 % CI] | KL removed | same top-1, variant − "
            "base |", "|---|---|---|---|---|---|---|", *sorted(rows), ""]


def compare(variant: dict[int, dict], base: dict[int, dict]) -> tuple[tuple, tuple] | None:
    """((ratio, low, high) of KL, (difference, low, high) of same top-1) over the seeds both have,
    or None where a cell lacks per-window figures or the two read different windows."""
    seeds = sorted(set(variant) & set(base))
    cells = [c for s in seeds for c in (variant[s], base[s])]
    if not seeds or not all(c.get("windows") for c in cells):
        return None
    if len({(len(c["windows"]["kl_to_fp32"]), c["draws"]) for c in cells}) != 1:
        return None
    draws = np.arange(len(cells[0]["windows"]["kl_to_fp32"])) % cells[0]["draws"]

    def stack(side: dict, metric: str) -> np.ndarray:
        return np.array([side[s]["windows"][metric] for s in seeds], np.float64)

    return (interval(stack(variant, "kl_to_fp32"), stack(base, "kl_to_fp32"), "ratio", draws),
            interval(stack(variant, "same_top1"), stack(base, "same_top1"), "difference", draws))
