"""The downstream verdict's statistics on records made here: intervals from seeds and windows,
families pooled, `broken` from the fp32 models' own figures, and the scenario's summary."""

import numpy as np
import pytest

from ffnbench.bench.analysis import verdicts as dv
from ffnbench.bench.store import label
from ffnbench.quant import FAMILIES, FAMILY_OF, RECIPES


def cell(design, recipe, scenario, seed, kl, delta, bpb=1.8, reference=None, draws=5):
    """A record as measure_lm writes it; `reference`: what its fp32 reference scores (healthy here)."""
    kl, delta = np.asarray(kl, float), np.asarray(delta, float)
    return {"design": design, "recipe": recipe, "scenario": scenario, "seed": seed, "draws": draws,
            "reference": reference or {"bits_per_byte": 1.8, "delta_bpb": 0.0, "order0_bits_per_byte": 4.7},
            "metrics": {"kl_to_fp32": kl.mean(), "delta_bpb": delta.mean(), "bits_per_byte": bpb},
            "windows": {"kl_to_fp32": list(kl), "delta_bpb": list(delta), "bits_per_byte": list(bpb + delta)}}


def index(cells):
    """As the analysis indexes a pair's cells: by design, recipe label (recipe@calibration), scenario."""
    lm = {}
    for c in cells:
        lm.setdefault((c["design"], label(c), c["scenario"]), []).append(c)
    return lm


def healthy_fp32(scenario="clean", seeds=3, windows=32):
    return [cell(d, "fp32", scenario, s, np.zeros(windows), np.zeros(windows)) for d in "AB" for s in range(seeds)]


def constant_kl(kl: dict[tuple[str, str], float], seeds: int = 3, windows: int = 8) -> list[dict]:
    """Cells on `clean` whose every window has the (design, recipe)'s KL, for every seed."""
    return [cell(design, recipe, "clean", s, np.full(windows, value), np.zeros(windows))
            for s in range(seeds) for (design, recipe), value in kl.items()]


def test_every_recipe_is_in_exactly_one_family():
    members = [r for family in FAMILIES.values() for r in family]
    assert sorted(members) == sorted(set(RECIPES) - {"fp32"})
    assert FAMILY_OF["ort-nf4"] == FAMILY_OF["bnb-nf4"] != FAMILY_OF["bnb-fp4"]


def test_a_ratio_that_holds_in_every_seed_and_window_is_resolved():
    rng = np.random.default_rng(1)
    cells = healthy_fp32()
    for s in range(3):
        b = rng.uniform(1e-3, 2e-3, 32)
        cells += [cell("A", "ort-int8-dynamic", "clean", s, b / 2, np.zeros(32)),
                  cell("B", "ort-int8-dynamic", "clean", s, b, np.zeros(32))]
    (found,) = [c for c in dv.comparisons(index(cells), 0.1) if c.family == "int8-dynamic"]
    assert found.kl_ratio == pytest.approx(0.5) and found.ci95 == pytest.approx([0.5, 0.5])
    assert found.verdict == "A" and (found.seeds, found.windows, found.draws) == (3, 32, 5)


def test_seeds_that_disagree_widen_the_interval_to_no_difference():
    """Each seed's windows say one thing firmly; the seeds say opposite things: only resampling the
    seeds shows that the design is not what decides."""
    cells = healthy_fp32()
    for s, factor in enumerate([0.5, 2.0, 1.0]):
        cells += [cell("A", "bnb-nf4", "clean", s, np.full(32, factor), np.zeros(32)),
                  cell("B", "bnb-nf4", "clean", s, np.ones(32), np.zeros(32))]
    (found,) = dv.comparisons(index(cells), 0.1)
    assert found.ci95[0] < 1 < found.ci95[1] and found.verdict == "none"
    assert dv.summary([found], "clean") == "none"


def test_a_family_pools_its_recipes_and_keeps_each_members_ratio():
    cells = healthy_fp32() + constant_kl({("A", "bnb-nf4"): 1.0, ("B", "bnb-nf4"): 2.0, ("A", "ort-nf4"): 3.0,
                                          ("B", "ort-nf4"): 2.0})
    (found,) = dv.comparisons(index(cells), 0.1)
    assert found.family == "nf4" and found.recipes == ["bnb-nf4", "ort-nf4"]
    assert found.kl_ratio == pytest.approx(1.0)
    assert {r: m["kl_ratio"] for r, m in found.members.items()} == pytest.approx({"bnb-nf4": 0.5, "ort-nf4": 1.5})
    assert found.members["bnb-nf4"]["ci95"] == pytest.approx([0.5, 0.5]) and not found.left_out


def test_a_mitigated_recipe_is_not_a_family_of_its_own():
    rotated = [{**c, "calibration": "clean"} for c in constant_kl({("A", "ort-int8-dynamic+rotate"): 3.0,
                                                                   ("B", "ort-int8-dynamic+rotate"): 1.0})]
    cells = healthy_fp32() + constant_kl({("A", "ort-int8-dynamic"): 1.0, ("B", "ort-int8-dynamic"): 2.0}) + rotated
    found = dv.comparisons(index(cells), 0.1)
    assert [(c.family, c.recipes) for c in found] == [("int8-dynamic", ["ort-int8-dynamic"])]
    assert dv.per_recipe(index(cells), 0.1, found)["ort-int8-dynamic+rotate@clean", "clean"].kl_ratio == \
        pytest.approx(3.0)  # its own A-vs-B detail row stays
    variant = [{**c, "recipe": "smooth90", "mitigation": {"mitigations": ["smooth"]}}
               for c in rotated]  # a [recipe] variant based on RECIPE+smooth
    assert [c.family for c in dv.comparisons(index(cells + variant), 0.1)] == ["int8-dynamic"]


def test_a_recipe_variant_beside_its_base_is_not_a_family_and_alone_counts_in_its_bases():
    """torch-fp16-norm32 (the norm in fp32) beside torch-fp16 is the base's variant, no second piece
    of fp16 evidence; measured without its base, it is the run's fp16 evidence."""
    variants = {"torch-fp16-norm32": {"base": "torch-fp16", "norm_fp32": True}}
    norm32 = constant_kl({("A", "torch-fp16-norm32"): 1.0, ("B", "torch-fp16-norm32"): 1.0})
    plain = constant_kl({("A", "torch-fp16"): 3.0, ("B", "torch-fp16"): 1.0})
    beside = dv.comparisons(index(healthy_fp32() + plain + norm32), 0.1, variants=variants)
    assert [(c.family, c.recipes) for c in beside] == [("fp16", ["torch-fp16"])]
    alone = dv.comparisons(index(healthy_fp32() + norm32), 0.1, variants=variants)
    assert [(c.family, c.recipes) for c in alone] == [("fp16", ["torch-fp16-norm32"])]
    assert {c.family for c in dv.comparisons(index(healthy_fp32() + plain + norm32), 0.1)} == \
        {"fp16", "torch-fp16-norm32"}  # without the run's variants a name is all there is


def test_a_member_without_figures_is_left_out_and_said_so():
    cells = healthy_fp32() + constant_kl({("A", "bnb-nf4"): 1.0, ("B", "bnb-nf4"): 2.0, ("A", "ort-nf4"): 3.0,
                                          ("B", "ort-nf4"): 2.0})
    cells[-1] = {**cells[-1], "windows": None, "metrics": {**cells[-1]["metrics"], "nonfinite_rate": 0.25}}
    (found,) = [c for c in dv.comparisons(index(cells), 0.1) if c.family == "nf4"]
    assert found.recipes == ["bnb-nf4"] and found.kl_ratio == pytest.approx(0.5)
    assert found.left_out == {"ort-nf4": "B seed 2: non-finite logits (nonfinite_rate 0.25)"}


def width(ci):
    return np.log(ci[1] / ci[0])


def test_seeds_that_read_the_same_windows_add_no_window_evidence():
    """Every seed reads the same windows: three identical seeds are one seed's evidence, not three
    independent samples of windows (which would narrow the interval by about the square root of 3)."""
    rng = np.random.default_rng(3)
    a, b = rng.lognormal(0, 0.5, 64), rng.lognormal(0, 0.5, 64)
    draw_of = np.arange(64)
    one = dv.interval(a[None], b[None], "ratio", draw_of)
    three = dv.interval(np.tile(a, (3, 1)), np.tile(b, (3, 1)), "ratio", draw_of)
    assert three[0] == pytest.approx(one[0]) and width(three[1:]) > 0.85 * width(one[1:])


def test_drift_draws_are_resampled_as_groups():
    """Windows of one draw move together: the interval must show the draws' spread, which treating
    the 64 windows as independent hides."""
    rng = np.random.default_rng(4)
    draw_of = np.arange(64) % 5
    effect = np.exp(rng.normal(0, 0.4, 5))[draw_of]  # each draw scales A's KL its own way
    a, b = (effect * rng.lognormal(0, 0.05, 64))[None], rng.lognormal(0, 0.05, 64)[None]
    grouped = dv.interval(a, b, "ratio", draw_of)
    independent = dv.interval(a, b, "ratio", np.arange(64))
    assert width(grouped[1:]) > 1.5 * width(independent[1:])


def ratio_of_means(x, y):
    return x.mean(axis=(-2, -1)) / y.mean(axis=(-2, -1))


def test_the_bootstrap_resamples_training_seeds():
    """Seeds at A/B 0.5, 1 and 2 with windows that agree within each: only a resample of the seeds
    spreads the ratio (a bootstrap over windows alone gives [1.17, 1.17], which the Student-t widening
    would hide). Of 27 equally likely resamples of 3 seeds, all-0.5 and all-2 are one each (3.7 %, past
    the 2.5 % tails), so the percentile interval is exactly [0.5, 2]."""
    per_seed = np.array([0.5, 1.0, 2.0])
    b = np.ones((3, 16))
    low, high = dv.bootstrap(per_seed[:, None] * b, b, ratio_of_means, np.arange(16) % 4)
    assert (low, high) == (0.5, 2.0)


def test_the_bootstrap_resamples_windows_within_draws_the_same_way_for_both_designs():
    """One seed: windows carry the spread. A is B times 0.5 in every window, so the paired ratio has no
    spread; unpaired (A's windows drawn apart from B's) it would."""
    rng = np.random.default_rng(5)
    b = rng.lognormal(0, 1.0, (1, 40))
    low, high = dv.bootstrap(0.5 * b, b, ratio_of_means, np.arange(40) % 5)
    assert low == pytest.approx(0.5) and high == pytest.approx(0.5)
    low, high = dv.bootstrap(b * np.linspace(0.1, 2, 40), b, ratio_of_means, np.arange(40) % 5)
    assert high / low > 1.2  # the windows differ in A/B: resampling them spreads it


def test_three_seeds_widen_the_interval_to_the_student_t_one():
    """Per-seed ratios 0.94, 0.85 and 0.89 with windows that agree: the percentile bootstrap over
    three seeds alone would claim A; the t interval over the seeds (2 degrees of freedom) holds 1."""
    per_seed = np.array([0.94, 0.85, 0.89])
    b = np.ones((3, 32))
    found = dv.interval(per_seed[:, None] * b, b, "ratio", np.arange(32) % 5)
    logs = np.log(per_seed)
    half = 4.3026527 * logs.std(ddof=1) / np.sqrt(3)  # t(0.975, 2) = 4.3026527
    assert found[1:] == pytest.approx([np.exp(logs.mean() - half), np.exp(logs.mean() + half)], rel=1e-6)
    assert found[1] < 1 < found[2]


def test_delta_bpb_difference_resamples_the_same_windows_for_both_designs():
    """B's delta is A's plus 0.1 in every window: paired, the difference has no spread at all."""
    rng = np.random.default_rng(2)
    cells = healthy_fp32("shift-1")
    for s in range(3):
        delta = rng.normal(0.0, 0.02, 16)
        cells += [cell("A", "ort-int4-rtn", "shift-1", s, np.ones(16), delta),
                  cell("B", "ort-int4-rtn", "shift-1", s, np.ones(16), delta + 0.1)]
    found = {c.family: c for c in dv.comparisons(index(cells), 0.1)}
    assert found["int4"].delta_bpb_diff == pytest.approx(-0.1)
    assert found["int4"].delta_bpb_ci95 == pytest.approx([-0.1, -0.1])
    assert found["fp32"].verdict == "none"  # both fp32 models cost nothing here


@pytest.mark.parametrize("bpb, delta, reason", [(4.9, 0.0, "no better than a byte-frequency model (4.70)"),
                                                (2.0, 0.25, "+0.25 bits per byte, past the 0.1-bit")])
def test_a_scenario_whose_fp32_model_does_not_work_is_broken_not_decided(bpb, delta, reason):
    """Seed 1 of B does not work under the drift: every family's verdict is `broken`, from the
    reference figures the quantized cells carry (no fp32 cell ran)."""
    sick = {"bits_per_byte": bpb, "delta_bpb": delta, "order0_bits_per_byte": 4.7}
    cells = []
    for s in range(3):
        cells += [cell("A", "ort-int8-dynamic", "production", s, np.full(8, 1.0), np.zeros(8)),
                  cell("B", "ort-int8-dynamic", "production", s, np.full(8, 9.0), np.zeros(8),
                       reference=sick if s == 1 else None)]
    found = dv.comparisons(index(cells), 0.1)
    assert [c.verdict for c in found] == ["broken"] and reason in found[0].reason and "B (seed 1)" in found[0].reason
    assert dv.summary(found, "production") == "broken"
    assert dv.health(index(cells), "production", threshold=0.3 if delta else 0.1) == (
        None if delta else found[0].reason)
    if delta:  # the worst of the models past the threshold is named, with how many are
        worse = {**sick, "delta_bpb": 0.4}
        cells[0]["reference"] = worse
        assert dv.health(index(cells), "production", 0.1).endswith(
            "costs fp32 A (seed 0) +0.40 bits per byte, past the 0.1-bit health threshold (2 of 6 models past it)")


def test_cells_without_reference_figures_give_no_verdict():
    cells = [cell(d, "bnb-nf4", "clean", 0, np.ones(4), np.zeros(4)) for d in "AB"]
    del cells[1]["reference"]
    assert "no fp32 reference figures" in dv.health(index(cells), "clean", 0.1)


def test_families_that_split_make_a_mixed_scenario():
    cells = healthy_fp32() + constant_kl({("A", "ort-int8-dynamic"): 1.0, ("B", "ort-int8-dynamic"): 2.0,
                                          ("A", "bnb-int8"): 2.0, ("B", "bnb-int8"): 1.0})
    found = dv.comparisons(index(cells), 0.1)
    assert {c.family: c.verdict for c in found} == {"int8-dynamic": "A", "int8-llm": "B"}
    assert dv.summary(found, "clean") == "mixed"


def test_one_designs_mean_has_the_interval_of_a_mean_over_windows():
    """design_mean: one seed, one draw, windows independent: the bootstrap's 95 % interval of the
    mean is close to mean ± 1.96 standard errors."""
    rng = np.random.default_rng(3)
    kl = rng.exponential(1e-3, 400)
    lm = index([cell("A", "bnb-nf4", "clean", 0, kl, np.zeros(400), draws=1)])
    point, low, high = dv.design_mean(lm, "A", ["bnb-nf4"], "clean", "kl_to_fp32")
    half = 1.96 * kl.std(ddof=1) / np.sqrt(len(kl))
    assert point == pytest.approx(kl.mean()) and low < point < high
    assert (high - low) / 2 == pytest.approx(half, rel=0.15)
    assert dv.design_mean(lm, "B", ["bnb-nf4"], "clean", "kl_to_fp32") is None
