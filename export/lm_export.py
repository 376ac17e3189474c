"""A whole CausalLM -> ONNX (opset 23, the standard Attention op), its drift as graph inputs.

One exported model serves every scenario: each FFN norm's input is (h·gain + offset)·scale, with
gain and offset per layer and feature and scale per request fed at run time, so a scenario is data,
not a new graph. Where the drift enters (the FFN input only, or the residual stream) is part of the
graph and recorded. The FFN MatMuls are found by the module path the exporter keeps on every node
(metadata_props["namespace"]): it folds the weight transposes, so initializer names lose it.
"""

import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from ffnbench import files
from ffnbench.export.onnx_export import NATIVE_OPSET, PARITY_TOL, ExportedModel, quantizable_matmuls, torch_to_onnx
from ffnbench.export.validate import check, op_histogram
from ffnbench.models.lm import CausalLM, Drift
from ffnbench.models.real_lm import RealLM
from ffnbench.versions import stack_versions

INPUTS = ("tokens", "drift_gain", "drift_offset", "drift_scale")
LOGITS = "logits"
FFN_NAMESPACE = ".ffn.mlp."  # the FFN sublayers' Linear layers, in the exporter's module path
PARITY_SHAPES = ((2, 16), (1, 128))  # the second one the full context


def tap_outputs(model: CausalLM | RealLM) -> list[str]:
    """The per-layer FFN tensors a whole-model export returns beside the logits, "NAME.LAYER" (none
    for a user's model: its figures read the logits)."""
    if not model.export_taps:
        return []
    names = ("norm_out", "act_in", "act_out") + (("up",) if model.cfg.ffn(0).activation == "swiglu" else ())
    return [f"{name}.{layer}" for layer in range(model.cfg.n_layers) for name in names]


class _Exportable(nn.Module):
    def __init__(self, model: CausalLM | RealLM, inject: str):
        super().__init__()
        self.model, self.inject, self.taps = model, inject, tap_outputs(model)

    def forward(self, tokens, gain, offset, scale):
        taps: dict = {}
        logits = self.model(tokens, Drift(gain, offset, scale), self.inject, taps)
        return (logits, *(taps[name] for name in self.taps))


def feeds(tokens: np.ndarray, gain: np.ndarray, offset: np.ndarray, scale: np.ndarray) -> dict[str, np.ndarray]:
    """The graph inputs for byte ids (B, T) and a drift (gain, offset (L, C); scale (B,))."""
    return {"tokens": np.ascontiguousarray(tokens, np.int64), "drift_gain": np.ascontiguousarray(gain, np.float32),
            "drift_offset": np.ascontiguousarray(offset, np.float32),
            "drift_scale": np.ascontiguousarray(scale, np.float32)}


def export_lm(model: CausalLM | RealLM, out_dir: Path, inject: str = "ffn-input",
              source: dict | None = None) -> ExportedModel:
    """Export `model` to out_dir/model.onnx with manifest.json, or raise and write nothing."""
    cfg = model.cfg
    started = time.perf_counter()
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=cfg.context)
    identity = Drift.identity(cfg.n_layers, cfg.d_model, 2)
    example = (torch.zeros(2, 8, dtype=torch.long), identity.gain, identity.offset, identity.scale)
    wrapper = _Exportable(model.eval(), inject)
    with files.staged_dir(Path(out_dir)) as stage:
        proto = check(torch_to_onnx(wrapper, example, NATIVE_OPSET, list(INPUTS), [LOGITS, *wrapper.taps],
                                    ({0: batch, 1: seq}, None, None, {0: batch})))
        # A mitigation (quant/mitigations.py) may keep down-projections in fp32: not for quantizing.
        kept = [f"model.{name}" for name, m in model.named_modules() if getattr(m, "keep_fp32", False)]
        ffn = quantizable_matmuls(proto, FFN_NAMESPACE, kept)
        expected = (3 if cfg.ffn(0).activation == "swiglu" else 2) * cfg.n_layers - len(kept)
        if len(ffn) != expected:
            raise RuntimeError(f"export: found {len(ffn)} FFN MatMuls by module path, expected {expected}; "
                               f"the exporter no longer records '{FFN_NAMESPACE}'")
        onnx.save(proto, str(stage / "model.onnx"))
        parity = parity_vs_torch(stage / "model.onnx", wrapper)
        if parity["max_abs_err"] > parity["tolerance"]:
            raise RuntimeError(f"export parity: ORT differs from torch by {parity['max_abs_err']:.3g} "
                               f"(> {parity['tolerance']:.3g}); the exporter or runtime mistranslated the model")
        manifest = {
            "kind": "ffnbench.lm-export", "file": "model.onnx", "sha256": files.sha256_file(stage / "model.onnx"),
            "bytes": (stage / "model.onnx").stat().st_size, "config": cfg.to_dict(), "source": source,
            "opset": NATIVE_OPSET, "inject": inject, "inputs": list(INPUTS), "outputs": [LOGITS, *wrapper.taps],
            "ffn_matmuls": ffn, "parity": parity, "ops": op_histogram(proto), "versions": stack_versions(),
            "export_seconds": round(time.perf_counter() - started, 3),
        }
        files.write_json(stage / "manifest.json", manifest)
    return ExportedModel(Path(out_dir) / "model.onnx", manifest)


def parity_vs_torch(path: Path, wrapper: _Exportable, seed: int = 1234) -> dict:
    """Max abs error of ORT (CPU, all optimisations) against torch over every output, under a drift."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(seed)
    cfg = wrapper.model.cfg
    worst, scale_seen = 0.0, 0.0
    shapes = [[batch, min(seq, cfg.context)] for batch, seq in PARITY_SHAPES]
    for batch, seq in shapes:
        tokens = torch.randint(0, cfg.vocab, (batch, seq), generator=gen)
        gain = 1 + 0.1 * torch.randn(cfg.n_layers, cfg.d_model, generator=gen)
        offset = torch.randn(cfg.n_layers, cfg.d_model, generator=gen)
        scale = torch.exp(torch.randn(batch, generator=gen))
        with torch.no_grad():
            expected = wrapper(tokens, gain, offset, scale)
        got = session.run(None, feeds(tokens.numpy(), gain.numpy(), offset.numpy(), scale.numpy()))
        for e, g in zip(expected, got, strict=True):
            worst = max(worst, float(np.max(np.abs(e.numpy() - g))))
            scale_seen = max(scale_seen, float(np.max(np.abs(e.numpy()))))
    # A user's model is 30 layers deep where the pair is 4, with states in the thousands (massive
    # activations): summation order alone moves its logits by ~4e-5 of their largest (SmolLM2: 1.3e-3
    # at 32), so its bound is relative.
    tolerance = PARITY_TOL * scale_seen if isinstance(wrapper.model, RealLM) else PARITY_TOL
    return {"max_abs_err": worst, "max_abs_output": scale_seen, "tolerance": tolerance,
            "relative": isinstance(wrapper.model, RealLM), "shapes": shapes, "seed": seed}
