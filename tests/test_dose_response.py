"""Dose-response: where each design's fp32 stops being healthy and where a family's KL doubles,
read from lm records made here; the figure is drawn."""

import numpy as np
import pytest
from test_verdicts import cell, index

from ffnbench.bench.analysis import downstream
from ffnbench.bench.report import dose_response
from ffnbench.bench.traffic.scenarios import SHIFTS


def records():
    """A's fp32 drift cost 0.05 per unit of shift, B's 0.3; int8 KL grows with shift, B's twice as fast."""
    cells = []
    for scenario, shift in SHIFTS.items():
        for design, cost, growth in (("A", 0.05, 0.5), ("B", 0.3, 1.0)):
            for seed in range(2):
                reference = {"bits_per_byte": 1.8 + cost * shift, "delta_bpb": cost * shift + 0.01 * seed,
                             "order0_bits_per_byte": 4.7}
                cells += [cell(design, "fp32", scenario, seed, np.zeros(4), np.full(4, cost * shift),
                               reference=reference),
                          cell(design, "ort-int8-dynamic", scenario, seed, np.full(4, 1e-3 * (1 + growth * shift)),
                               np.zeros(4), reference=reference)]
    return index(cells)


def test_healthy_range_and_doubling_are_read_along_the_axis():
    lm, levels = records(), sorted((x, s) for s, x in SHIFTS.items())
    # The worst seed decides: seed 1 costs 0.01 bit more.
    assert dose_response.healthy_up_to(lm, "A", levels, 0.1) == "healthy up to 1, not at 2 (+0.11 bit)"
    assert dose_response.healthy_up_to(lm, "B", levels, 0.1) == "healthy at 0 (clean) only, not at 0.5 (+0.16 bit)"
    assert dose_response.healthy_up_to(lm, "B", levels[1:], 0.1) == "not healthy at 0.5 already (+0.16 bit)"
    assert dose_response.healthy_up_to(lm, "A", levels[:3], 0.1) == "healthy at every level measured (up to 1)"
    assert dose_response.kl_doubles(lm, "A", ["ort-int8-dynamic"], levels) == 2  # 1 + 0.5·2 = 2× clean
    assert dose_response.kl_doubles(lm, "B", ["ort-int8-dynamic"], levels) == 1


def test_one_design_or_a_run_without_fp32_figures_is_said_not_crashed(tmp_path):
    lm = {k: v for k, v in records().items() if k[0] == "A"}
    lines = dose_response.section(lm, tmp_path, tmp_path, "", 0.1, "residual")
    assert "- A: healthy up to 1, not at 2 (+0.11 bit)." in lines and not any(line.startswith("- B") for line in lines)
    old = {k: [{**c, "reference": None} for c in cells] for k, cells in records().items() if k[1] != "fp32"}
    levels = sorted((x, s) for s, x in SHIFTS.items())
    # A quantized cell's own delta_bpb holds the quantization too: it never stands in for fp32's.
    assert dose_response.healthy_up_to(old, "A", levels, 0.1) == "no fp32 figures"


def test_the_section_draws_one_figure_an_axis_it_covers(tmp_path):
    lines = dose_response.section(records(), tmp_path, tmp_path, "", 0.1, "ffn-input")
    assert "### Dose-response: shift (injected at `ffn-input`)" in lines
    assert not any("magnitude" in line for line in lines)  # only clean of that axis: no curve to draw
    assert (tmp_path / "dose_response_shift.png").stat().st_size > 10_000
    assert any("int8-dynamic A at 2, B at 1" in line for line in lines)
    # Each level's fp32 drift cost with its interval: every window and seed costs the same here.
    assert "| 2 | +0.10 [+0.10, +0.10] | +0.60 [+0.60, +0.60] |" in lines


def test_a_run_measures_the_dose_at_both_injection_points_apart_from_the_matrix(tmp_path, seed_exports):
    """[dose] scenarios: cells of their own per injection point (never in a verdict), one figure an
    injection point; the same drift costs differently where it enters."""

    from ffnbench.bench import RunConfig, run
    from ffnbench.bench.cells.latency import LatencyConfig
    from ffnbench.bench.report import report
    from ffnbench.bench.studies import DoseConfig, DownstreamConfig

    config = RunConfig(designs=["B"], models=["tiny"], recipes=["fp32"], scenarios=["clean"], n_requests=1,
                       seq_len=4, latency=LatencyConfig(enabled=False),
                       downstream=DownstreamConfig(recipes=["fp32"], scenarios=["clean"], windows=4, draws=2,
                                                   seeds=[0]),
                       dose=DoseConfig(scenarios=["clean", "shift-1", "shift-4"], windows=4))
    out = seed_exports(tmp_path / "run")
    cells = {(c["design"], c["model"], c["scenario"]): c for c in run(config, out, progress=False)
             if c["kind"] == "lm"}
    assert {m for _, m, _ in cells} == {"trained-s0", "trained-s0@ffn-input", "trained-s0@residual"}
    at = {inject: cells["B", f"trained-s0@{inject}", "shift-1"] for inject in ("ffn-input", "residual")}
    assert {c["inject"] for c in at.values()} == {"ffn-input", "residual"}
    assert at["ffn-input"]["metrics"]["bits_per_byte"] != at["residual"]["metrics"]["bits_per_byte"]
    # The ffn-input dose cell under clean is the matrix's own cell measured again: the same figure.
    assert cells["B", "trained-s0@ffn-input", "clean"]["metrics"]["bits_per_byte"] == \
        pytest.approx(cells["B", "trained-s0", "clean"]["metrics"]["bits_per_byte"], abs=1e-9)
    text = report.write(out).read_text()
    for inject in ("ffn-input", "residual"):
        assert f"### Dose-response: shift (injected at `{inject}`)" in text
        assert (out / "plots" / f"dose_response_shift_{inject}.png").stat().st_size > 10_000
        assert f"### Drift at the FFN inputs, measured: the dose-response levels, injected at `{inject}`" in text
    assert {v["scenario"] for v in downstream.load(out)} <= {"clean"}
