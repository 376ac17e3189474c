"""torch -> ONNX export, validation, parity against torch, and the artifact manifest."""

from ffnbench.export.onnx_export import (
    DECOMPOSED_OPSET,
    NATIVE_OPSET,
    PARITY_TOL,
    ExportedModel,
    export_onnx,
    sha256_file,
)
from ffnbench.export.validate import load_onnx, op_histogram

__all__ = ["DECOMPOSED_OPSET", "NATIVE_OPSET", "PARITY_TOL", "ExportedModel", "export_onnx",
           "load_onnx", "op_histogram", "sha256_file"]
