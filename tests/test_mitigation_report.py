"""The report's "does B with a mitigation reach A?" table (bench/report/mitigations.py): A plain and A
mitigated over B mitigated, paired over seeds and windows, broken scenarios marked."""

import numpy as np
import pytest

from ffnbench.bench.report import mitigations


def _cell(kl: float, seed: int, bpb_delta: float = 0.0) -> dict:
    return {"seed": seed, "draws": 1, "windows": {"kl_to_fp32": list(np.full(6, kl))},
            "reference": {"bits_per_byte": 1.8, "delta_bpb": bpb_delta, "order0_bits_per_byte": 4.7}}


class _Run:
    def __init__(self, drift_cost: float = 0.0):
        self.manifest = {"config": {"user_recipes": {}}}
        kl = {("A", "ort-int8-dynamic"): 0.1, ("B", "ort-int8-dynamic"): 1.0,
              ("A", "ort-int8-dynamic+rotate@clean"): 0.15, ("B", "ort-int8-dynamic+rotate@clean"): 0.2}
        self.lm_pairs = {"drift": {(d, r, "massive"): [_cell(v, s, drift_cost) for s in range(3)]
                                   for (d, r), v in kl.items()}}
        self.whole = {}


def test_a_over_rotated_b_and_both_rotated_are_paired_ratios():
    lines = mitigations.section(_Run(), threshold=0.1)
    row = next(line for line in lines if line.startswith("| drift |"))
    assert row == "| drift | massive | `ort-int8-dynamic+rotate@clean` | 0.50 [0.50, 0.50] | 0.75 [0.75, 0.75] |"
    assert "- drift pair, massive, `ort-int8-dynamic`: B's best mitigation of it is `ort-int8-dynamic+rotate@clean`; " \
           "A plain / B with it 0.50 [0.50, 0.50], A ahead." in lines


def test_bs_best_mitigation_is_its_lowest_kl_and_a_broken_scenario_has_none():
    run = _Run()
    for design, kl in (("A", 0.3), ("B", 0.1)):  # B's KL 0.1 < rotated 0.2: its best; A plain / it = 1
        run.lm_pairs["drift"][(design, "ort-int8-dynamic+shift@clean", "massive")] = [_cell(kl, s) for s in range(3)]
    assert "- drift pair, massive, `ort-int8-dynamic`: B's best mitigation of it is `ort-int8-dynamic+shift@clean`; " \
           "A plain / B with it 1.00 [1.00, 1.00], no difference." in mitigations.section(run, 0.1)
    assert not any(line.startswith("- ") for line in mitigations.section(_Run(drift_cost=0.5), threshold=0.1))


def test_a_scenario_whose_fp32_models_the_drift_breaks_is_marked():
    row = next(line for line in mitigations.section(_Run(drift_cost=0.5), threshold=0.1) if "rotate" in line)
    assert row.startswith("| drift | massive (fp32 broken) |")
    assert mitigations.section(type("Empty", (), {"lm_pairs": {}, "manifest": {}})(), 0.1) == []


@pytest.mark.parametrize("missing", ["A", "B"])
def test_no_row_without_both_designs_mitigated(missing):
    run = _Run()
    del run.lm_pairs["drift"][(missing, "ort-int8-dynamic+rotate@clean", "massive")]
    assert mitigations.section(run, 0.1) == []


def test_a_recipe_variant_is_not_taken_for_a_mitigation():
    run = _Run()
    run.manifest = {"config": {"user_recipes": {"int8-pc": {"base": "ort-int8-dynamic", "per_channel": False}}}}
    for design, kl in (("A", 0.1), ("B", 0.2)):
        run.lm_pairs["drift"][(design, "int8-pc", "massive")] = [_cell(kl, s) for s in range(3)]
    rows = [line for line in mitigations.section(run, 0.1) if line.startswith("| drift")]
    assert len(rows) == 1 and "`ort-int8-dynamic+rotate@clean`" in rows[0]


def test_a_variant_of_a_mitigated_recipe_is_set_against_plain_a():
    run = _Run()
    run.manifest = {"config": {"user_recipes": {"rot7": {"base": "ort-int8-dynamic+rotate", "seed": 7}}}}
    for design, kl in (("A", 0.1), ("B", 0.4)):
        run.lm_pairs["drift"][(design, "rot7@clean", "massive")] = [_cell(kl, s) for s in range(3)]
    assert "| drift | massive | `rot7@clean` | 0.25 [0.25, 0.25] | 0.25 [0.25, 0.25] |" in \
        mitigations.section(run, 0.1)
