"""The FFN sublayers under study (A, B and two ablations), their config and presets, and weight loading."""

from ffnbench.models.config import DESIGNS, PRESETS, FFNConfig, matched_swiglu_width, preset
from ffnbench.models.layers import FFNBlock, WithTaps, build_model
from ffnbench.models.weights import load_safetensors, rebuild

__all__ = [
    "DESIGNS", "PRESETS", "FFNBlock", "FFNConfig", "WithTaps", "build_model",
    "load_safetensors", "matched_swiglu_width", "preset", "rebuild",
]
