"""Recipe variants against their base (bench/report/variants.py): a paired KL ratio and top-1
difference with intervals, over the pairs' and users' whole-model cells."""

import numpy as np
import pytest

from ffnbench.bench.report import variants


def _cell(kl, top1, seed=0, draws=2, design="B", drift_cost=0.0):
    return {"seed": seed, "design": design, "draws": draws,
            "windows": {"kl_to_fp32": list(kl), "same_top1": list(top1)},
            "reference": {"bits_per_byte": 1.8, "delta_bpb": drift_cost, "order0_bits_per_byte": 4.7}}


def test_a_variant_at_half_its_bases_kl_on_every_window_is_a_ratio_of_one_half():
    rng = np.random.default_rng(0)
    base_kl = rng.uniform(0.1, 0.3, size=(3, 8))
    base = {s: _cell(base_kl[s], np.full(8, 0.9), s) for s in range(3)}
    variant = {s: _cell(base_kl[s] / 2, np.full(8, 0.95), s) for s in range(3)}
    (ratio, low, high), (diff, dlow, dhigh) = variants.compare(variant, base)
    assert ratio == pytest.approx(0.5) and low == pytest.approx(0.5) and high == pytest.approx(0.5)
    assert diff == pytest.approx(0.05) and dlow == pytest.approx(0.05) and dhigh == pytest.approx(0.05)
    noisy = {s: _cell(base_kl[s] * rng.uniform(0.5, 1.5, 8), np.full(8, 0.9), s) for s in range(3)}
    (_, low, high), _ = variants.compare(noisy, base)
    assert low < 1 < high  # a variant that is the base times noise around 1 is no different
    short = {0: _cell(base_kl[0][:4], np.full(4, 0.9))}
    assert variants.compare(short, base) is None  # other windows: nothing to pair


class _Run:
    def __init__(self, user_recipes, drift_cost=0.0):
        self.manifest = {"config": {"user_recipes": user_recipes}}
        cells = {r: _cell(np.full(4, kl), np.full(4, 0.9), drift_cost=drift_cost)
                 for r, kl in (("ort-int4-rtn", 0.2), ("al0", 0.1))}
        self.lm_pairs = {"drift": {("A", r, "clean"): [c] for r, c in cells.items()}}
        self.whole = {"smollm2": {(r, "clean"): c for r, c in cells.items()}}


def test_the_section_lists_each_variant_beside_its_base_for_pairs_and_whole_model_cells():
    lines = variants.section(_Run({"al0": {"base": "ort-int4-rtn", "accuracy_level": 0}}), 0.1)
    rows = [line for line in lines if "`al0` / `ort-int4-rtn`" in line]
    assert len(rows) == 2 and rows[0].startswith("| drift pair | A | clean |") and "| 0.500 [0.500, 0.500] |" in rows[0]
    assert rows[1].startswith("| smollm2 | B | clean")
    assert variants.section(_Run({}), 0.1) == []


def test_a_scenario_whose_fp32_pair_the_drift_breaks_is_marked():
    lines = variants.section(_Run({"al0": {"base": "ort-int4-rtn", "accuracy_level": 0}}, drift_cost=0.5), 0.1)
    assert any(line.startswith("| drift pair | A | clean (fp32 broken) |") for line in lines)
    assert any(line.startswith("| smollm2 | B | clean (fp32 broken) |") for line in lines)


def test_a_calibrated_variant_pairs_with_its_base_calibrated_on_the_same_scenario():
    run = _Run({"qdq-pct": {"base": "ort-int8-qdq-minmax", "method": "percentile"}})
    labels = {"qdq-pct@clean", "ort-int8-qdq-minmax@clean", "ort-int8-qdq-minmax@production",
              "ort-int8-dynamic+shift@production", "ort-int8-dynamic", "bnb-int8"}
    assert variants.parents(run, labels) == {"qdq-pct@clean": "ort-int8-qdq-minmax@clean",
                                             "ort-int8-dynamic+shift@production": "ort-int8-dynamic"}
