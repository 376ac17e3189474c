"""The downstream verdict: A vs B per recipe family and scenario, from the lm cells' per-window
figures, with 95 % intervals (the analysis step writes them to downstream.json).

The interval comes from the sources of variation there are. A percentile bootstrap resamples
training seeds, then the drift draws, then windows within each drawn draw. Every seed reads the same
windows under the same draws, so one window resample serves all seeds of a replicate, and A and B
are paired at every level: seed s of A and of B saw the same batches in the same order. Three seeds
are too few for a percentile bootstrap at the top (three values make ten distinct resamples, and
their spread understates the seeds'), so the interval is widened where needed to cover the Student-t
interval over the per-seed figures too (two degrees of freedom for three seeds). Evidence counts
by family (quant.recipes.FAMILIES), and only where both designs' fp32 models still work under the
scenario: otherwise the verdict is `broken`.
"""

import statistics
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from ffnbench.bench.traffic.scenarios import TEXT_DOMAINS
from ffnbench.quant import FAMILY_OF, mitigations

RESAMPLES = 2000
VERDICTS = ("A", "B", "none", "broken")


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
    members: dict[str, dict] = field(default_factory=dict)  # each recipe's own kl_ratio and ci95
    left_out: dict[str, str] = field(default_factory=dict)  # family recipes without figures to compare, and why
    pair: str = "trained"  # which committed models: "trained" on clean prose, or "drift"-trained
    seed_ids: list[int] = field(default_factory=list)  # the training seeds compared (downstream.json before: absent)


def window_resamples(draw_of: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(RESAMPLES, windows) window indices: each slot of draws takes a draw at random, then as many of
    that draw's windows at random as the slot's own draw has (the draws deal windows in turn, so
    their counts differ by one at most)."""
    table = [np.flatnonzero(draw_of == d) for d in np.unique(draw_of)]
    counts = np.array([len(t) for t in table])
    padded = np.zeros((len(table), counts.max()), np.int64)
    for d, members in enumerate(table):
        padded[d, :len(members)] = members
    picked = rng.integers(len(table), size=(RESAMPLES, len(table)))
    columns = []
    for slot, size in enumerate(counts):
        draw = picked[:, slot]
        position = (rng.random((RESAMPLES, size)) * counts[draw][:, None]).astype(np.int64)
        columns.append(padded[draw[:, None], position])
    return np.concatenate(columns, axis=1)


def bootstrap(a: np.ndarray, b: np.ndarray, statistic, draw_of: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """The percentile interval of statistic(A, B) over (seeds, windows) figures, resampling seeds, then
    draws and windows within them: one index set for both designs (paired) and for every seed of a
    replicate (they read the same windows)."""
    rng = np.random.default_rng(seed)
    seeds = rng.integers(len(a), size=(RESAMPLES, len(a), 1))
    windows = window_resamples(draw_of, rng)[:, None, :]
    low, high = np.percentile(statistic(a[seeds, windows], b[seeds, windows]), [2.5, 97.5])
    return float(low), float(high)


def interval(a: np.ndarray, b: np.ndarray, kind: str, draw_of: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """(point, low, high) of A/B (`kind` "ratio") or A − B ("difference") of the mean of (seeds,
    windows) figures: the paired bootstrap over seeds, draws and windows, widened to cover the
    Student-t interval over the seeds' own figures where there are two seeds or more."""
    def statistic(x, y):
        return x.mean(axis=(-2, -1)) / y.mean(axis=(-2, -1)) if kind == "ratio" else \
            x.mean(axis=(-2, -1)) - y.mean(axis=(-2, -1))

    low, high = bootstrap(a, b, statistic, draw_of, seed)
    point = float(statistic(a, b))
    if len(a) > 1:
        per_seed = statistic(a[:, None], b[:, None])
        values = np.log(per_seed) if kind == "ratio" else per_seed
        half = stats.t.ppf(0.975, len(a) - 1) * values.std(ddof=1) / np.sqrt(len(a))
        t_low, t_high = values.mean() - half, values.mean() + half
        if kind == "ratio":
            t_low, t_high = np.exp(t_low), np.exp(t_high)
        low, high = min(low, t_low), max(high, t_high)
    return point, float(low), float(high)


def health(lm: dict, scenario: str, threshold: float) -> str | None:
    """Why the scenario's fp32 models do not work (any seed of either design), or None when they do:
    the fp32 reference's bits per byte (every lm cell records its reference's; a run made before
    they did falls back on its fp32 cells) at or above the order-0 byte model's, or the drift costing
    it more than `threshold` bits per byte against the same text undrifted."""
    references = {}
    for (design, recipe, s), cells in lm.items():
        for cell in cells if s == scenario else ():
            key = (design, cell["seed"])
            if cell.get("reference"):
                references[key] = cell["reference"]
            elif recipe == "fp32":
                references.setdefault(key, {"order0_bits_per_byte": None, **cell["metrics"]})
            else:
                references.setdefault(key, None)
    costly = []
    for (design, seed), ref in sorted(references.items()):
        if ref is None or ref.get("bits_per_byte") is None:
            return f"nothing shows how fp32 {design} (seed {seed}) fares under it (no fp32 reference figures)"
        if ref["order0_bits_per_byte"] is not None and ref["bits_per_byte"] >= ref["order0_bits_per_byte"]:
            return (f"fp32 {design} (seed {seed}) scores {ref['bits_per_byte']:.2f} bits per byte, no better than "
                    f"a byte-frequency model ({ref['order0_bits_per_byte']:.2f})")
        if ref["delta_bpb"] > threshold:
            costly.append((ref["delta_bpb"], design, seed))
    if not costly:
        return None
    cost, design, seed = max(costly)  # the worst model names the scenario's state, the count how general it is
    return (f"the drift alone costs fp32 {design} (seed {seed}) {cost:+.2f} bits per byte, past the {threshold:g}-bit "
            f"health threshold ({len(costly)} of {len(references)} models past it)")


def _windows(lm: dict, design: str, recipe: str, scenario: str) -> dict[int, dict]:
    """seed -> the cell's per-window figures, for cells that have them."""
    return {c["seed"]: c for c in lm.get((design, recipe, scenario), []) if c.get("windows")}


def _shape(cell: dict) -> tuple[int, int]:
    return len(cell["windows"]["kl_to_fp32"]), cell["draws"]


def compare(lm: dict, scenario: str, family: str, recipes: list[str], broken: str | None) -> Comparison | None:
    """A vs B for the family's recipes pooled (each window's figure averaged over them), over the
    seeds they have in both designs; None where no recipe has any. A recipe with fewer seeds, other
    windows, or no per-window figures (skipped, failed, non-finite logits) is left out, and said."""
    per = {(d, r): _windows(lm, d, r, scenario) for d in ("A", "B") for r in recipes}
    seeds_of = {r: sorted(set(per["A", r]) & set(per["B", r])) for r in recipes}
    seeds = max(seeds_of.values(), key=len)
    if not seeds:
        return None
    shape = _shape(per["A", next(r for r in recipes if seeds_of[r] == seeds)][seeds[0]])
    used = [r for r in recipes if set(seeds) <= set(seeds_of[r])
            and all(_shape(per[d, r][s]) == shape for d in ("A", "B") for s in seeds)]
    left_out = {r: _why_left_out(lm, r, scenario, seeds) for r in recipes if r not in used}
    draw_of = np.arange(shape[0]) % shape[1]

    def stack(design: str, metric: str, members) -> np.ndarray:
        return np.mean([[per[design, r][s]["windows"][metric] for s in seeds] for r in members], axis=0)

    diff = interval(stack("A", "delta_bpb", used), stack("B", "delta_bpb", used), "difference", draw_of)
    ratio, members = None, {}
    if family != "fp32" and stack("B", "kl_to_fp32", used).mean() > 0:
        ratio = interval(stack("A", "kl_to_fp32", used), stack("B", "kl_to_fp32", used), "ratio", draw_of)
        for r in used if len(recipes) > 1 else ():
            own = interval(stack("A", "kl_to_fp32", [r]), stack("B", "kl_to_fp32", [r]), "ratio", draw_of)
            members[r] = {"kl_ratio": own[0], "ci95": [own[1], own[2]]}
    if broken:
        verdict = "broken"
    elif family == "fp32":  # fp32 itself: which design the drift costs less
        verdict = "A" if diff[2] < 0 else "B" if diff[1] > 0 else "none"
    elif ratio is None:  # B's output is fp32's exactly: no ratio to take
        verdict = "none"
    else:
        verdict = "A" if ratio[2] < 1 else "B" if ratio[1] > 1 else "none"
    return Comparison(scenario, family, used, ratio and ratio[0], ratio and [ratio[1], ratio[2]],
                      diff[0], [diff[1], diff[2]], verdict, len(seeds), *shape, broken, members, left_out,
                      seed_ids=list(seeds))


def design_mean(lm: dict, design: str, recipes: list[str], scenario: str, metric: str) \
        -> tuple[float, float, float] | None:
    """(mean, low, high) of one design's per-window metric, averaged over `recipes`, over the seeds
    every recipe has: the same bootstrap over seeds, draws and windows as an A-vs-B interval, of one
    design alone. None where a recipe lacks per-window figures."""
    per = [_windows(lm, design, r, scenario) for r in recipes]
    seeds = sorted(set.intersection(*(set(p) for p in per))) if per else []
    if not seeds or len({_shape(p[s]) for p in per for s in seeds}) != 1:
        return None
    values = np.mean([[p[s]["windows"][metric] for s in seeds] for p in per], axis=0)
    windows, draws = _shape(per[0][seeds[0]])
    return interval(values, np.zeros_like(values), "difference", np.arange(windows) % draws)


def _why_left_out(lm: dict, recipe: str, scenario: str, seeds: list[int]) -> str:
    for design in ("A", "B"):
        cells = {c["seed"]: c for c in lm.get((design, recipe, scenario), [])}
        for seed in seeds:
            if seed not in cells:
                return f"no {design} cell of seed {seed}"
            if not cells[seed].get("windows"):
                rate = cells[seed]["metrics"]["nonfinite_rate"]
                return f"{design} seed {seed}: non-finite logits (nonfinite_rate {rate:.2g})"
    return "other windows or drift draws than the family's"


def families(lm: dict, variants: dict | None = None) -> dict[str, list[str]]:
    """family -> the lm cells' recipes in it (a calibrated recipe by its base; fp32 is its own). A
    mitigated recipe (RECIPE+rotate) is no evidence of its own: its parent's family already counts,
    and the report's Mitigations section sets it against that parent. A [recipe] variant (`variants`:
    the run's user_recipes, name -> {base, ...}) counts in its base's family only where that base was
    not measured beside it (then it is the base's variant, set against it in the report)."""
    found = defaultdict(list)
    variants = variants or {}
    # By name (RECIPE+rotate) or by record (a [recipe] variant based on one carries its `mitigation`).
    mitigated = {k[1] for k, cells in lm.items() if any(c.get("mitigation") for c in cells)}
    recipe_of = {k[1]: cells[0]["recipe"] for k, cells in lm.items() if cells}  # label -> the recipe it names
    measured = set(recipe_of.values())
    for name, recipe in recipe_of.items():
        if name in mitigated or mitigations.parse(recipe)[1]:
            continue
        base = mitigations.parse(variants[recipe].get("base", recipe))[0] if recipe in variants else recipe
        if recipe in variants and base in measured:
            continue
        found[FAMILY_OF.get(base, base)].append(name)
    return dict(found)


def seed_mean(cells: list[dict], metric: str) -> float | None:
    """A metric's mean over a recipe's cells (one a seed); None where any lacks it."""
    values = [c["metrics"].get(metric) for c in cells]
    return None if not values or None in values else statistics.fmean(values)


def comparisons(lm: dict, threshold: float, pair: str = "trained", variants: dict | None = None) -> list[Comparison]:
    """Every family under every scenario with both designs' cells; fp32 rows only where a synthetic
    drift has a cost to compare (not `clean`, not a text domain, where delta_bpb is 0 by definition).
    `variants`: the run's [recipe] variants (families)."""
    scenarios = list(dict.fromkeys(k[2] for k in lm))
    out = []
    for scenario in scenarios:
        broken = health(lm, scenario, threshold)
        for family, recipes in families(lm, variants).items():
            if family == "fp32" and (scenario == "clean" or scenario in TEXT_DOMAINS):
                continue
            found = compare(lm, scenario, family, recipes, broken)
            if found:
                found.pair = pair
                out.append(found)
    return out


def per_recipe(lm: dict, threshold: float, found: list[Comparison]) -> dict[tuple[str, str], Comparison]:
    """(recipe, scenario) -> that recipe alone, A vs B: the report's detail tables. A family of one
    recipe (every family in `default`) is that recipe's comparison already."""
    single_families = {family for family, recipes in families(lm).items() if len(recipes) == 1}
    out = {(c.recipes[0], c.scenario): c for c in found if c.family in single_families and c.recipes}
    broken = {scenario: health(lm, scenario, threshold) for scenario in dict.fromkeys(k[2] for k in lm)}
    for recipe, scenario in dict.fromkeys((k[1], k[2]) for k in lm):
        if (recipe, scenario) not in out and (single := compare(lm, scenario, recipe, [recipe], broken[scenario])):
            out[recipe, scenario] = single
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


