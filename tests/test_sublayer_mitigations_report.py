"""The report's mitigations on sublayers (bench/report/sublayer_mitigations.py): the share of the
parent's loss recovered and A − B, paired over requests, and B's best mitigation set against A."""

import pytest

from ffnbench.bench.report import sublayer_mitigations


def _cell(design: str, recipe: str, noise: list[float], calibration: str | None = None) -> dict:
    return {"kind": "accuracy", "model": "tiny", "design": design, "recipe": recipe, "scenario": "massive",
            "calibration": calibration, "requests": {"centered_signal": [100.0] * len(noise),
                                                     "centered_noise": noise}}


class _Run:
    def __init__(self, cells: list[dict], user_recipes: dict | None = None):
        self.manifest = {"config": {"user_recipes": user_recipes or {}}}
        self.models, self.scenarios, self.lat = ["tiny"], ["massive"], {}
        self.ok = cells


def test_a_mitigation_at_a_quarter_of_its_parents_error_on_every_request_recovers_three_quarters():
    parent = {"centered_noise": [4.0, 8.0, 2.0], "centered_signal": [1.0] * 3}
    mitigated = {"centered_noise": [1.0, 2.0, 0.5], "centered_signal": [1.0] * 3}
    assert sublayer_mitigations.recovered(mitigated, parent) == pytest.approx((0.75, 0.75, 0.75))
    point, low, high = sublayer_mitigations.recovered(parent, mitigated)  # the other way: error ×4
    assert point == pytest.approx(-3.0) and sublayer_mitigations._share((point, low, high)) == \
        "error ×4.0 [4.0, 4.0]"


def test_the_gap_is_a_difference_of_centered_sqnr_over_the_same_requests():
    a = {"centered_signal": [10.0, 10.0], "centered_noise": [0.1, 0.1]}  # 20 dB
    b = {"centered_signal": [10.0, 10.0], "centered_noise": [1.0, 1.0]}  # 10 dB
    assert sublayer_mitigations.gap_db(a, b) == pytest.approx((10.0, 10.0, 10.0))


def test_b_with_its_best_mitigation_is_set_against_a_plain_and_a_mitigated():
    alternating = [1.0, 2.0] * 3
    cells = [_cell("A", "ort-int8-dynamic", alternating), _cell("B", "ort-int8-dynamic", [10.0] * 6),
             _cell("A", "ort-int8-dynamic+rotate", [4.0] * 6, "clean"),
             _cell("B", "ort-int8-dynamic+rotate", alternating[::-1], "clean"),  # A plain's error, other requests
             _cell("A", "ort-int8-dynamic+shift", [1.0] * 6, "clean"),
             _cell("B", "ort-int8-dynamic+shift", [8.0] * 6, "clean")]
    text = "\n".join(sublayer_mitigations.section(_Run(cells), cells))
    row = next(line for line in text.splitlines() if line.startswith("| massive |"))
    assert "`ort-int8-dynamic+rotate@clean` (+85%" in row  # B's best: 85 % recovered, against shift's 20 %
    assert row.count("A ahead") == 0 and row.count("no difference") == 1 and row.count("B ahead") == 1
    assert "B reaches A (no difference, or B ahead) in 1 of 1 scenarios × parent recipes" in text


def test_no_section_without_a_mitigated_recipe_beside_its_parent():
    cells = [_cell("A", "ort-int8-dynamic+rotate", [2.0], "clean"), _cell("B", "ort-int8-dynamic", [10.0])]
    assert sublayer_mitigations.section(_Run(cells[:1]), cells[:1]) == []


def test_a_variant_of_a_mitigated_recipe_is_set_against_the_unmitigated_recipe():
    cells = [_cell("B", "ort-int8-dynamic", [4.0] * 3), _cell("B", "smooth90", [1.0] * 3, "clean")]
    run = _Run(cells, {"smooth90": {"base": "ort-int8-dynamic+smooth", "alpha": 0.9}})
    assert any(line.startswith("| `smooth90@clean` | massive | – | +75% [+75%, +75%] |")
               for line in sublayer_mitigations.section(run, cells))


def test_bs_best_mitigation_is_taken_per_parent_recipe():
    cells = [_cell("A", "ort-int8-dynamic", [1.0] * 3), _cell("B", "ort-int8-dynamic", [100.0] * 3),
             _cell("B", "ort-int8-dynamic+rotate", [50.0] * 3, "clean"),
             _cell("B", "ort-int8-dynamic+shift", [80.0] * 3, "clean"),
             _cell("A", "bnb-int8", [1.0] * 3), _cell("B", "bnb-int8", [4.0] * 3),
             _cell("B", "bnb-int8+keep", [1.0] * 3, "clean")]
    rows = [line for line in sublayer_mitigations.section(_Run(cells), cells) if line.startswith("| massive |")]
    assert [row.split(" | ")[1:3] for row in rows] == [["`bnb-int8`", "`bnb-int8+keep@clean` (+75% [+75%, +75%])"],
                                                       ["`ort-int8-dynamic`", "`ort-int8-dynamic+rotate@clean` (+50% "
                                                        "[+50%, +50%])"]]
    assert "no difference" in rows[0] and "A ahead" in rows[1]
