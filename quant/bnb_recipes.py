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
    """An optional backend cannot run here; the message is the skip reason."""


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
    """A copy of `block` whose every nn.Linear is replaced by make(linear); norms stay fp32."""
    block = copy.deepcopy(block)
    for parent in list(block.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
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


def four_bit_layer(cfg: Bnb4bit, device: str) -> Callable[[nn.Linear], nn.Module]:
    bnb = import_bnb()

    def make(linear: nn.Linear) -> nn.Module:
        layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                  compute_dtype=getattr(torch, cfg.compute_dtype),
                                  compress_statistics=cfg.double_quant, quant_type=cfg.quant_type)
        layer.load_state_dict(linear.state_dict())
        return layer.to(device)

    return make


def quantize_block(block: FFNBlock, cfg: BnbInt8 | Bnb4bit, device: str = "cpu") -> FFNBlock:
    make = int8_layer(cfg, device) if isinstance(cfg, BnbInt8) else four_bit_layer(cfg, device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return swap_linears(copy.deepcopy(block).to(device), make)


def recorded_params(cfg: BnbInt8 | Bnb4bit) -> dict:
    """What bitsandbytes does beyond the recipe's fields, as measured from its code path."""
    if isinstance(cfg, BnbInt8):
        # MatMul8bitLt casts fp32 activations to fp16 before int8 row-wise quantization.
        return {"activation_dtype": "float16", "weight_dtype": "int8"}
    return {"blocksize": 64, "weight_dtype": cfg.quant_type, "activation_dtype": cfg.compute_dtype}
