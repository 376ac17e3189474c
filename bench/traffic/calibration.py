"""Calibration data for one sublayer export, from a named scenario: what `ffnbench quantize` gives a
QDQ recipe (its ranges) or a mitigation (its statistics)."""

from pathlib import Path

from ffnbench.bench.traffic.scenarios import scenario
from ffnbench.export import load_onnx
from ffnbench.quant import Calibration


def calibration_for(model: Path, name: str, requests: int, seq_len: int) -> Calibration:
    """`requests` × `seq_len` states of scenario `name` at the export's input width; they are the
    scenario's calibration draw, so they never include the seed-0 states that runs evaluate on."""
    width = load_onnx(model).graph.input[0].type.tensor_type.shape.dim[-1].dim_value
    return Calibration(name, scenario(name).calibration_data(requests, seq_len, width))
