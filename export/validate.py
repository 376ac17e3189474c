"""Check an ONNX file: load it with a clear error, run the checker and shape inference, count ops."""

import collections
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from ffnbench.errors import UsageError


def load_onnx(path: Path) -> onnx.ModelProto:
    """Load and check a model file; a missing, foreign or truncated file is a UsageError."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"model: no file at {path}; give the model.onnx that `ffnbench export` wrote")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
    except (DecodeError, onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"model: {path} is not a valid ONNX model (truncated or another format: "
                         f"{first_line}); re-export it with `ffnbench export`") from e
    if not model.graph.node:
        raise UsageError(f"model: {path} holds an empty graph; re-export it with `ffnbench export`")
    return model


def check(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnx.checker plus strict shape inference; returns the model with inferred shapes."""
    onnx.checker.check_model(model, full_check=True)
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    """{op_type (domain-qualified when not the default domain): count}, sorted by name."""
    counts = collections.Counter(
        f"{n.domain}.{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
        for n in model.graph.node
    )
    return dict(sorted(counts.items()))
