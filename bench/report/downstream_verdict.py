"""The downstream verdict: A vs B per recipe family and scenario, from the lm cells' per-window
figures, with 95 % intervals; written to downstream.json beside report.md.

The interval is a two-level percentile bootstrap: it resamples training seeds, then windows within
each drawn seed. A and B are paired at both levels: seed s of A and of B saw the same batches in the
same order, and window w is the same text under the same drift draw for both. Evidence counts by
family (quant.recipes.FAMILIES), and only where both designs' fp32 models still work under the
scenario: otherwise the verdict is `broken`.
"""

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ffnbench import files
from ffnbench.bench.traffic.scenarios import TEXT_DOMAINS
from ffnbench.quant import FAMILY_OF

RESAMPLES = 2000
VERDICTS = ("A", "B", "none", "broken")
DOWNSTREAM_JSON = "downstream.json"


@dataclass
class Comparison:
    """One family (or recipe) under one scenario. kl_ratio is A/B of kl_to_fp32 (below 1: A loses
    less to quantization); delta_bpb_diff is A − B of delta_bpb (below 0: A loses less in all)."""

    scenario: str
    family: str
    recipes: list[str]
    kl_ratio: float | None
    ci95: list[float] | None
    delta_bpb_diff: float
    delta_bpb_ci95: list[float]
    verdict: str
    seeds: int
    windows: int
    draws: int
    reason: str | None = None  # why a verdict is `broken`
    members: dict[str, float] = field(default_factory=dict)  # each recipe's own kl_ratio


def two_level_bootstrap(a: np.ndarray, b: np.ndarray, statistic, seed: int = 0) -> tuple[float, float, float]:
    """(point, low, high) of statistic(A, B) where A, B are (resamples, seeds, windows): seeds drawn
    with replacement, then windows within each; the same draws for both designs (paired)."""
    n_seeds, n_windows = a.shape
    rng = np.random.default_rng(seed)
    seeds = rng.integers(n_seeds, size=(RESAMPLES, n_seeds, 1))
    windows = rng.integers(n_windows, size=(RESAMPLES, n_seeds, n_windows))
    values = statistic(a[seeds, windows], b[seeds, windows])
    low, high = np.percentile(values, [2.5, 97.5])
    return float(statistic(a[None], b[None])[0]), float(low), float(high)


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a.mean(axis=(1, 2)) / b.mean(axis=(1, 2))


def _difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a.mean(axis=(1, 2)) - b.mean(axis=(1, 2))


def health(lm: dict, scenario: str, threshold: float) -> str | None:
    """Why the scenario's fp32 models do not work (any seed of either design), or None when they do:
    the fp32 reference's bits per byte (every lm cell records its reference's) at or above the
    order-0 byte model's, or the drift costing it more than `threshold` bits per byte against the
    same text undrifted. A scenario with no cell of a design has nothing to check and no verdict."""
    references = {}
    for (design, _, s), cells in lm.items():
        for cell in cells if s == scenario else ():
            references.setdefault((design, cell.get("seed", 0)), cell.get("reference"))
    for (design, seed), ref in sorted(references.items()):
        if ref is None:
            return f"the {design} cells (seed {seed}) record no fp32 reference figures (a run before they did)"
        if ref["bits_per_byte"] >= ref["order0_bits_per_byte"]:
            return (f"fp32 {design} (seed {seed}) scores {ref['bits_per_byte']:.2f} bits per byte, no better than "
                    f"a byte-frequency model ({ref['order0_bits_per_byte']:.2f})")
        if ref["delta_bpb"] > threshold:
            return (f"the drift alone costs fp32 {design} (seed {seed}) {ref['delta_bpb']:+.2f} bits per byte, past "
                    f"the {threshold:g}-bit health threshold")
    return None


def _windows(lm: dict, design: str, recipe: str, scenario: str) -> dict[int, dict]:
    """seed -> the cell's per-window figures, for cells that have them."""
    return {c.get("seed", 0): c for c in lm.get((design, recipe, scenario), []) if c.get("windows")}


def compare(lm: dict, scenario: str, family: str, recipes: list[str], broken: str | None) -> Comparison | None:
    """A vs B for `recipes` pooled (each window's figure averaged over the recipes), over the seeds
    every recipe has in both designs; None where there are none."""
    per = {(d, r): _windows(lm, d, r, scenario) for d in ("A", "B") for r in recipes}
    seeds = sorted(set.intersection(*(set(v) for v in per.values()))) if per else []
    if not seeds:
        return None

    def stack(design: str, metric: str, members=recipes) -> np.ndarray:
        return np.mean([[per[design, r][s]["windows"][metric] for s in seeds] for r in members], axis=0)

    diff = two_level_bootstrap(stack("A", "delta_bpb"), stack("B", "delta_bpb"), _difference)
    kl_a, kl_b = stack("A", "kl_to_fp32"), stack("B", "kl_to_fp32")
    ratio = two_level_bootstrap(kl_a, kl_b, _ratio) if family != "fp32" and kl_b.mean() > 0 else None
    if broken:
        verdict = "broken"
    elif family == "fp32":  # fp32 itself: which design the drift costs less
        verdict = "A" if diff[2] < 0 else "B" if diff[1] > 0 else "none"
    elif ratio is None:  # B's output is fp32's exactly: no ratio to take
        verdict = "none"
    else:
        verdict = "A" if ratio[2] < 1 else "B" if ratio[1] > 1 else "none"
    members = {r: float(stack("A", "kl_to_fp32", [r]).mean() / stack("B", "kl_to_fp32", [r]).mean())
               for r in recipes if ratio is not None and len(recipes) > 1}
    cell = per["A", recipes[0]][seeds[0]]
    return Comparison(scenario, family, list(recipes), ratio and ratio[0], ratio and [ratio[1], ratio[2]],
                      diff[0], [diff[1], diff[2]], verdict, len(seeds), len(cell["windows"]["kl_to_fp32"]),
                      cell.get("draws", 1), broken, members)


def comparisons(lm: dict, threshold: float) -> list[Comparison]:
    """Every family under every scenario with both designs' cells; fp32 rows only where a synthetic
    drift has a cost to compare (not `clean`, not a text domain, where delta_bpb is 0 by definition)."""
    scenarios = list(dict.fromkeys(k[2] for k in lm))
    families = defaultdict(list)
    for recipe in dict.fromkeys(k[1] for k in lm):
        families[FAMILY_OF.get(recipe.split("@")[0], recipe)].append(recipe)
    out = []
    for scenario in scenarios:
        broken = health(lm, scenario, threshold)
        for family, recipes in families.items():
            if family == "fp32" and (scenario == "clean" or scenario in TEXT_DOMAINS):
                continue
            found = compare(lm, scenario, family, recipes, broken)
            if found:
                out.append(found)
    return out


def per_recipe(lm: dict, threshold: float) -> dict[tuple[str, str], Comparison]:
    """(recipe, scenario) -> that recipe alone, A vs B: the report's detail tables."""
    out = {}
    for recipe, scenario in dict.fromkeys((k[1], k[2]) for k in lm):
        found = compare(lm, scenario, recipe, [recipe], health(lm, scenario, threshold))
        if found:
            out[recipe, scenario] = found
    return out


def summary(found: list[Comparison], scenario: str) -> str | None:
    """The scenario's answer over its quantized families: `broken`, `A` or `B` where every family
    that resolves says so, `mixed` where they split, `none` where none resolves; None without any."""
    rows = [c for c in found if c.scenario == scenario and c.family != "fp32"]
    if not rows:
        return None
    if any(c.verdict == "broken" for c in rows):
        return "broken"
    resolved = {c.verdict for c in rows} - {"none"}
    return resolved.pop() if len(resolved) == 1 else "mixed" if resolved else "none"


def write(run_dir: Path, found: list[Comparison]) -> Path:
    path = run_dir / DOWNSTREAM_JSON
    files.write_json(path, [asdict(c) for c in found])
    return path
