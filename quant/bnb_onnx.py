"""Ship a bitsandbytes 4-bit block as ONNX: its packed NF4/FP4 weights become MatMulBnb4 inputs."""

import json
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from ffnbench.errors import UsageError
from ffnbench.models import FFNBlock
from ffnbench.quant.ort_recipes import BNB4_TYPES


def bnb4_to_onnx(fp32_onnx: Path, fp32_block: FFNBlock, bnb_state: Path | dict, dst: Path) -> None:
    """Replace each MatMul of the fp32 export by MatMulBnb4 fed with bitsandbytes' own packed weights.

    `bnb_state` is a bnb-nf4/bnb-fp4 artifact's model.pt (or its state dict), saved right after
    quantization. Each MatMul is matched to its Linear by value: the export stores W.T of that
    Linear exactly. bitsandbytes packs W (out, in) row-major, two codes a byte, one fp32 absmax per
    block; MatMulBnb4 takes the same layout with K = in, N = out, so the bytes are used as they are.
    """
    state = bnb_state if isinstance(bnb_state, dict) else torch.load(bnb_state, weights_only=True)
    model = onnx.load(str(fp32_onnx))
    inits = {t.name: t for t in model.graph.initializer}
    linears = {name: m for name, m in fp32_block.named_modules() if isinstance(m, nn.Linear)}
    new_nodes, replaced = [], 0
    for node in model.graph.node:
        weight = inits.get(node.input[1]) if node.op_type == "MatMul" else None
        name = _match(numpy_helper.to_array(weight), linears) if weight is not None else None
        if name is None:
            new_nodes.append(node)
            continue
        packed, absmax, quant_type, block = _bnb4_state(state, name)
        k, n = numpy_helper.to_array(weight).shape
        model.graph.initializer.remove(weight)
        model.graph.initializer.extend([numpy_helper.from_array(packed, f"{name}.bnb4"),
                                        numpy_helper.from_array(absmax, f"{name}.absmax")])
        new_nodes.append(helper.make_node(
            "MatMulBnb4", [node.input[0], f"{name}.bnb4", f"{name}.absmax"], list(node.output),
            name=f"{name}.MatMulBnb4", domain="com.microsoft", K=k, N=n, block_size=block,
            quant_type=BNB4_TYPES[quant_type]))
        replaced += 1
    if replaced != len(linears):
        raise RuntimeError(f"matched {replaced} of {len(linears)} Linear layers to MatMuls in {fp32_onnx}")
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(dst))


def _match(weight_t: np.ndarray, linears: dict[str, nn.Linear]) -> str | None:
    for name, linear in linears.items():
        w = linear.weight.detach().cpu().numpy()
        if w.T.shape == weight_t.shape and np.array_equal(w.T, weight_t):
            return name
    return None


def _bnb4_state(state: dict, name: str) -> tuple[np.ndarray, np.ndarray, str, int]:
    quant_keys = [k for k in state if k.startswith(f"{name}.weight.quant_state.bitsandbytes__")]
    if not quant_keys:
        raise UsageError(f"{name}: not a bitsandbytes 4-bit layer; quantize with bnb-nf4 or bnb-fp4 first")
    if f"{name}.weight.nested_absmax" in state:
        raise UsageError(f"{name}: double-quantized scales (bnb-nf4-dq) have no MatMulBnb4 form; use bnb-nf4")
    quant_type = quant_keys[0].rsplit("__", 1)[1]
    layout = json.loads(bytes(state[quant_keys[0]].cpu().numpy()))  # bitsandbytes' packed QuantState
    (n, k), block = layout["shape"], layout["blocksize"]
    absmax, packed = state[f"{name}.weight.absmax"], state[f"{name}.weight"]
    if cpu_repacked(absmax, packed, n * k, block):
        # bitsandbytes' CPU kernel repacks a layer on its first forward where the CPU has AVX512-BF16
        # (elsewhere it never does): bf16 scales, transposed to (k/block, n), no longer MatMulBnb4's.
        raise UsageError(f"{name}: scales were repacked by a forward pass ({absmax.dtype}, {tuple(absmax.shape)});"
                         " convert the artifact's model.pt, saved before any forward")
    return packed.cpu().numpy().reshape(-1), absmax.cpu().numpy(), quant_type, block


def cpu_repacked(absmax: torch.Tensor, packed: torch.Tensor, weights: int, block: int) -> bool:
    """Whether a 4-bit layer's state is in bitsandbytes' CPU-repacked form, judged by what it holds
    (MatMulBnb4's layout: one fp32 scale per block, flat; two codes a byte), whatever this CPU does."""
    flat_fp32_scales = absmax.dtype == torch.float32 and absmax.ndim == 1 and absmax.numel() == -(-weights // block)
    return not (flat_fp32_scales and packed.dtype == torch.uint8 and packed.numel() == -(-weights // 2))
