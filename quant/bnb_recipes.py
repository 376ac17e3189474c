"""bitsandbytes recipes: swap each nn.Linear of a block for a bitsandbytes layer with its weights."""

import contextlib
import copy
import io
import logging
import warnings
from collections.abc import Callable

import torch
from torch import nn

from ffnbench.models import FFNBlock
from ffnbench.quant.recipes import Bnb4bit, BnbInt8


class BackendMissing(RuntimeError):
    """An optional backend cannot run here, or cannot run this model here; the message is the skip reason."""


def import_bnb():
    """bitsandbytes, imported quietly (it logs about optional kernel packages), or BackendMissing."""
    with contextlib.redirect_stderr(io.StringIO()):
        logging.disable(logging.WARNING)
        try:
            import bitsandbytes
        except ImportError as e:
            raise BackendMissing(f"bitsandbytes does not import here: {e}") from e
        finally:
            logging.disable(logging.NOTSET)
    return bitsandbytes


def swap_linears(block: FFNBlock, make: Callable[[nn.Linear], nn.Module]) -> FFNBlock:
    """A copy of `block` whose every nn.Linear is replaced by make(linear), but those a mitigation
    keeps in fp32 (`keep_fp32`); norms stay fp32."""
    block = copy.deepcopy(block)
    for parent in list(block.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and not getattr(child, "keep_fp32", False):
                setattr(parent, name, make(child))
    return block.eval()


def int8_layer(cfg: BnbInt8, device: str) -> Callable[[nn.Linear], nn.Module]:
    bnb = import_bnb()

    def make(linear: nn.Linear) -> nn.Module:
        layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                    has_fp16_weights=False, threshold=cfg.threshold)
        layer.load_state_dict(linear.state_dict())
        return layer.to(device)  # moving the parameter is what quantizes it

    return make


# bitsandbytes quantizes 4-bit weights in blocks of 64 (Linear4bit's default, not a parameter),
# counted over the flattened weight, so a block may span rows.
BLOCKSIZE = 64
# On a CPU with AVX512-BF16, bitsandbytes' fused 4-bit kernel works on tiles of 32 output rows.
FUSED_TILE_ROWS = 32
# Its AVX-512 dequantization takes 16 weights a step; rows of other lengths take its scalar loop.
AVX512_STEP = 16


def cpu_limit(in_features: int) -> str | None:
    """Why bitsandbytes cannot run a 4-bit layer with this many inputs correctly on this CPU, or None.

    Its AVX-512 dequantization (`dequantizeBlockwise4bitCpu`, bitsandbytes 0.50.2) looks a weight's
    scale up as row × (in_features // 64) + column // 64, which is the flat block index only when a
    row is a whole number of blocks: elsewhere it multiplies weights by other blocks' scales,
    silently. Its scalar loop, on CPUs without AVX-512 or rows it cannot step through, indexes
    the flat blocks and is right.
    """
    if avx512_dequantization() and in_features % AVX512_STEP == 0 and in_features % BLOCKSIZE:
        return (f"bitsandbytes {import_bnb().__version__}'s AVX-512 CPU kernel dequantizes a 4-bit layer with "
                f"other blocks' scales unless in_features is a multiple of its {BLOCKSIZE}-weight block")
    return None


def avx512_dequantization() -> bool:
    """Whether bitsandbytes' native library takes its AVX-512 dequantization branch on this CPU.

    Only its AVX-512 CPU builds export the check; the CUDA builds and aarch64's answer a missing
    symbol with a stub that raises, and have no AVX-512 branch: False, as its own has_avx512bf16 does.
    """
    try:
        return bool(import_bnb().cextension.lib.has_avx512f_cpu())
    except (AttributeError, RuntimeError, OSError):
        return False


def cpu_4bit_kernels() -> dict:
    """What bitsandbytes' 4-bit layers run on this CPU, for `doctor`."""
    fused = bool(import_bnb().functional.has_avx512bf16())
    return {"kernel": "fused bf16 (AVX512-BF16)" if fused else "dequantize + GEMM",
            "whole_blocks_only": avx512_dequantization()}


def fused_kernel_limit(in_features: int, out_features: int) -> str | None:
    """Why bitsandbytes' fused AVX512-BF16 CPU kernel cannot take a layer of this shape, or None.

    On such a CPU, Linear4bit repacks its weights on the first forward without autograd
    (`_convert_weight_packed_for_cpu`, bitsandbytes 0.50.2): codes into tiles of 32 output rows,
    scales reshaped to (out_features, in_features // 64). It checks neither divisibility, so other
    shapes end in a torch reshape error or an assertion instead of its dequantizing path.
    """
    if in_features % BLOCKSIZE:
        return f"in_features {in_features} is not a multiple of its {BLOCKSIZE}-weight block"
    if out_features % FUSED_TILE_ROWS:
        return f"out_features {out_features} is not a multiple of its {FUSED_TILE_ROWS}-row tile"
    return None


def four_bit_layer(cfg: Bnb4bit, device: str) -> Callable[[nn.Linear], nn.Module]:
    bnb = import_bnb()

    def make(linear: nn.Linear) -> nn.Module:
        layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                  compute_dtype=getattr(torch, cfg.compute_dtype),
                                  compress_statistics=cfg.double_quant, quant_type=cfg.quant_type)
        layer.load_state_dict(linear.state_dict())
        # A shape the fused kernel cannot take runs bitsandbytes' dequantize-then-GEMM path, the
        # one every CPU without AVX512-BF16 runs for every layer.
        if fused_kernel_limit(linear.in_features, linear.out_features):
            layer.support_avx512bf16_for_cpu = False
        return layer.to(device)

    return make


def check_runs_here(block: FFNBlock, device: str) -> None:
    """Raise BackendMissing naming the first layer that bitsandbytes' 4-bit CPU kernels get wrong here."""
    if device != "cpu":
        return
    for name, linear in block.named_modules():
        if isinstance(linear, nn.Linear) and (limit := cpu_limit(linear.in_features)):
            raise BackendMissing(f"{limit}; {name} has {linear.in_features}")


def quantize_block(block: FFNBlock, cfg: BnbInt8 | Bnb4bit, device: str = "cpu") -> FFNBlock:
    if isinstance(cfg, Bnb4bit):
        check_runs_here(block, device)
    make = int8_layer(cfg, device) if isinstance(cfg, BnbInt8) else four_bit_layer(cfg, device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return swap_linears(copy.deepcopy(block).to(device), make)


def recorded_params(cfg: BnbInt8 | Bnb4bit, module: nn.Module, device: str) -> dict:
    """What bitsandbytes does beyond the recipe's fields, as measured from its code path."""
    if isinstance(cfg, BnbInt8):
        # MatMul8bitLt casts fp32 activations to fp16 before int8 row-wise quantization.
        return {"activation_dtype": "float16", "weight_dtype": "int8"}
    params = {"blocksize": BLOCKSIZE, "weight_dtype": cfg.quant_type, "activation_dtype": cfg.compute_dtype}
    if device != "cpu":
        return params
    return params | cpu_kernels(module)


def cpu_kernels(module: nn.Module) -> dict:
    """Which CPU kernel the 4-bit layers of `module` run at inference, and why.

    The fused kernel casts activations to bfloat16 (its only input type), so `activation_dtype`
    says bfloat16 where it runs; `cpu_fallbacks` names each layer it cannot take, and why.
    """
    bnb = import_bnb()
    if not bnb.functional.has_avx512bf16():
        return {"cpu_kernel": "dequantize + GEMM"}
    layers = {name: m for name, m in module.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    fallbacks = {name: fused_kernel_limit(m.in_features, m.out_features)
                 for name, m in layers.items() if not m.support_avx512bf16_for_cpu}
    if len(fallbacks) == len(layers):
        return {"cpu_kernel": "dequantize + GEMM", "cpu_fallbacks": fallbacks}
    return {"cpu_kernel": "fused bf16 (AVX512-BF16)", "activation_dtype": "bfloat16"} | (
        {"cpu_fallbacks": fallbacks} if fallbacks else {})
