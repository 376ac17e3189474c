"""torch -> ONNX: opset 23 with native norm ops, or opset 18 in primitive ops, checked for parity."""

import contextlib
import copy
import io
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from ffnbench import files
from ffnbench.errors import UsageError
from ffnbench.export.validate import check, op_histogram
from ffnbench.files import sha256_file
from ffnbench.models import FFNBlock, WithTaps
from ffnbench.versions import stack_versions

NATIVE_OPSET = 23  # LayerNormalization (17), Gelu (20), RMSNormalization (23)
DECOMPOSED_OPSET = 18  # for runtimes without opset 23: the norms and GELU in primitive ops
FUSED_OPS = {"LayerNormalization", "RMSNormalization", "Gelu"}
PARITY_TOL = 1e-4  # fp32 max abs error vs torch; kernels differ only in summation order
# Two shapes so the parity check also exercises the dynamic batch and sequence axes.
PARITY_SHAPES = ((2, 16), (1, 3))
INPUT_NAME = "hidden"
OUTPUT_NAME = "output"
ROTATION = "layers.Rotation"  # a mitigation's online rotation, by its class in the module path
LINEAR = "torch.nn.modules.linear.Linear"


@dataclass(frozen=True)
class ExportedModel:
    path: Path
    manifest: dict


def export_onnx(block: FFNBlock, out_dir: Path, *, decomposed: bool = False,
                taps: bool = False) -> ExportedModel:
    """Export `block` to out_dir/model.onnx with manifest.json beside it, or raise and write nothing.

    The model takes `hidden` (batch, seq, d_model) and returns `output`, plus one graph output per
    tap (norm_out, act_in, act_out[, up]) when `taps` is set.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out: {out_dir} is an existing file; give a directory path")
    cfg = block.cfg
    opset = DECOMPOSED_OPSET if decomposed else NATIVE_OPSET
    module = copy.deepcopy(block).cpu().set_primitive_norm(decomposed).eval()  # export and parity run on CPU
    reference = copy.deepcopy(block).cpu().eval()
    output_names = [OUTPUT_NAME, *(block.tap_names if taps else ())]
    started = time.perf_counter()
    with files.staged_dir(out_dir) as stage:
        model = _torch_export(WithTaps(module) if taps else module, cfg.d_model, opset, output_names)
        model = check(model)
        ops = op_histogram(model)
        if decomposed and FUSED_OPS & ops.keys():
            raise RuntimeError(f"decomposed export still holds fused ops {sorted(FUSED_OPS & ops.keys())}")
        onnx.save(model, str(stage / "model.onnx"))
        parity = parity_vs_torch(stage / "model.onnx", reference, output_names)
        if parity["max_abs_err"] > parity["tolerance"]:
            raise RuntimeError(f"export parity: ORT differs from torch by {parity['max_abs_err']:.3g} "
                               f"(> {parity['tolerance']:.3g}); the exporter or runtime mistranslated the graph")
        manifest = {
            "kind": "ffnbench.export",
            "file": "model.onnx",
            "sha256": sha256_file(stage / "model.onnx"),
            "bytes": (stage / "model.onnx").stat().st_size,
            "config": cfg.to_dict(),
            "source": block.source,
            "opset": opset,
            "decomposed": decomposed,
            "inputs": [INPUT_NAME],
            "outputs": output_names,
            "parity": parity,
            "ops": ops,
            "versions": stack_versions(),
            "export_seconds": round(time.perf_counter() - started, 3),
        }
        kept = [name for name, m in block.named_modules() if getattr(m, "keep_fp32", False)]
        if kept or any(ROTATION in namespace(n) for n in model.graph.node):
            manifest["ffn_matmuls"] = quantizable_matmuls(model, LINEAR, kept)
        files.write_json(stage / "manifest.json", manifest)
    return ExportedModel(out_dir / "model.onnx", manifest)


def namespace(node: onnx.NodeProto) -> str:
    """The module path the exporter records on a node (it folds weight transposes, so initializer
    names lose it)."""
    return next((p.value for p in node.metadata_props if p.key == "namespace"), "")


def quantizable_matmuls(model: onnx.ModelProto, within: str, kept: list[str] = ()) -> list[str]:
    """The MatMuls a recipe may quantize (`ffn_matmuls` in an export's manifest): those whose module
    path holds `within`, not a mitigation's online rotation (fp32 by design) nor the Linear layer at a
    module path in `kept` (a mitigation keeps it fp32; the exporter records a path as "PATH: class")."""
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and within in (ns := namespace(n))
            and ROTATION not in ns and not any(f"{path}:" in ns for path in kept)]


def _torch_export(module: torch.nn.Module, d_model: int, opset: int, output_names: list[str]):
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    return torch_to_onnx(module, (torch.zeros(2, 4, d_model),), opset, [INPUT_NAME], output_names,
                         ({0: batch, 1: seq},))


def torch_to_onnx(module: torch.nn.Module, example: tuple, opset: int, input_names: list[str],
                  output_names: list[str], dynamic_shapes: tuple) -> onnx.ModelProto:
    """torch.onnx's dynamo exporter, quietly, the weights inside the file."""
    # The dynamo exporter narrates each step on stdout and warns about optional torchvision ops;
    # neither helps a user of this tool, and real failures still raise.
    with warnings.catch_warnings(), _quiet_logging(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, example, dynamo=True, opset_version=opset, verbose=False,
            input_names=input_names, output_names=output_names,
            dynamic_shapes=dynamic_shapes, external_data=False,
        )
    return _without_source_paths(program.model_proto)


# Node metadata the exporter writes that names files on this machine (the Python stack that built
# each node): with it, the same model exported from two checkouts gave two artifact hashes.
SOURCE_PATH_KEYS = ("pkg.torch.onnx.stack_trace",)


def _without_source_paths(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model without metadata that records where its code lives; `namespace` (the module path
    inside the model, how FFN MatMuls are found) and the rest stay."""
    graphs = [model.graph, *(f for f in model.functions)]
    for graph in graphs:
        for node in graph.node:
            kept = [p for p in node.metadata_props if p.key not in SOURCE_PATH_KEYS]
            del node.metadata_props[:]
            node.metadata_props.extend(kept)
    return model


@contextlib.contextmanager
def _quiet_logging():
    """The exporter and its optimiser log every pass at INFO, and warn that optional torchvision ops
    are absent; other warnings and errors still show."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)
        registration.setLevel(level)


def parity_vs_torch(path: Path, block: FFNBlock, output_names: list[str], seed: int = 1234) -> dict:
    """Max abs error of ORT (CPU, all graph optimisations) against torch over every output."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(seed)
    worst, scale = 0.0, 0.0
    for batch, seq in PARITY_SHAPES:
        h = torch.randn(batch, seq, block.cfg.d_model, generator=gen)
        taps: dict = {}
        with torch.no_grad():
            expected = [block.forward_with_taps(h, taps)]
        expected += [taps[name] for name in output_names[1:]]
        got = session.run(output_names, {INPUT_NAME: h.numpy()})
        for e, g in zip(expected, got, strict=True):
            worst = max(worst, float(np.max(np.abs(e.numpy() - g))))
            scale = max(scale, float(np.max(np.abs(e.numpy()))))
    # The bound is absolute, as fp32 kernels on O(1) activations allow; the output scale beside it
    # tells a user with large real activations whether a failure is only relative rounding. A
    # mitigated block's intermediates are rescaled on purpose (smoothing divides a channel by s_j),
    # and its rounding with them: its bound is relative to the largest output.
    mitigated = bool(getattr(block, "source", {}).get("mitigation"))
    tolerance = PARITY_TOL * max(1.0, scale) if mitigated else PARITY_TOL
    return {"max_abs_err": worst, "max_abs_output": scale, "tolerance": tolerance,
            "shapes": [list(s) for s in PARITY_SHAPES], "seed": seed}
