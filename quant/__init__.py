"""Quantization recipes for ONNX Runtime and bitsandbytes behind one `quantize()` entry."""

from ffnbench.quant.api import Artifact, Skipped, load_artifact, needs_calibration, quantize
from ffnbench.quant.calibration import Calibration
from ffnbench.quant.recipes import FAMILIES, FAMILY_OF, RECIPES, batch_invariant, recipe_config

__all__ = ["FAMILIES", "FAMILY_OF", "RECIPES", "Artifact", "Calibration", "Skipped", "batch_invariant",
           "load_artifact", "needs_calibration", "quantize", "recipe_config"]
