"""Every recipe by name: a plain dataclass per scheme whose fields are its recorded parameters."""

import dataclasses
import typing
from dataclasses import dataclass
from typing import ClassVar

from ffnbench.errors import UsageError


@dataclass(frozen=True)
class Fp32:
    """The reference: the exported model (ORT) or the torch module, unchanged."""

    runtime: ClassVar[str] = "fp32"
    bits: ClassVar[int] = 32  # weight bits, for comparing kernels of one width


@dataclass(frozen=True)
class OrtDynamicInt8:
    """quantize_dynamic: int8 per-channel weights, uint8 activations quantized per call."""

    runtime: ClassVar[str] = "ort"
    bits: ClassVar[int] = 8
    # One activation range per call: requests batched together share it (see batch_invariant).
    per_call_range: ClassVar[bool] = True
    per_channel: bool = True
    # None: decided by the measured U8S8 probe (7-bit weights where the int16 pair sum saturates).
    reduce_range: bool | None = None


@dataclass(frozen=True)
class OrtStaticQdq:
    """quantize_static in QDQ format, activation ranges calibrated on a named scenario."""

    runtime: ClassVar[str] = "ort"
    bits: ClassVar[int] = 8
    method: str = "minmax"  # minmax | percentile | entropy
    percentile: float = 99.999  # ORT's default; used by `percentile` only
    per_channel: bool = True
    reduce_range: bool | None = None  # as for dynamic: the fused int8 kernels share the U8S8 path
    # MatMul only, so both designs quantize the same thing. ORT's default list also quantizes
    # LayerNormalization's input but has no RMSNormalization, which would put design A's raw,
    # drifting hidden states through uint8 and leave B's in fp32. "MatMul,LayerNormalization,Mul"
    # and so on reproduce it.
    op_types: str = "MatMul"
    # The activation ranges come from quantize(..., calibration=), a named scenario's hidden states.
    needs_calibration: ClassVar[bool] = True


@dataclass(frozen=True)
class OrtInt4:
    """MatMulNBits: 4-bit weight-only blocks; activations stay fp32 unless accuracy_level says so."""

    runtime: ClassVar[str] = "ort"
    bits: ClassVar[int] = 4
    algorithm: str = "rtn"  # rtn (round to nearest) | hqq (half-quadratic, calibration-free)
    block_size: int = 32
    symmetric: bool = True  # rtn only; hqq always fits a zero point
    # 0: compute in the input's precision. 4: quantize activations to int8 per block, the fast
    # path on CPU, which under a large mean shift spends its levels on the offset.
    accuracy_level: int = 4
    # hqq only. ORT's HQQ writes float zero points, which its CPU kernel cannot prepack: every call
    # dequantizes the whole weight and runs an fp32 GEMM. "uint8" rounds them to 0..15 and
    # requantizes the weights with HQQ's scales, the layout the fast kernel takes.
    zero_points: str = "float"

    def __post_init__(self) -> None:
        if self.zero_points != "float" and self.algorithm != "hqq":
            raise UsageError(f"recipe: zero_points = '{self.zero_points}' applies to HQQ only; {self.algorithm} "
                             "writes uint8 zero points (symmetric = false) or none")


@dataclass(frozen=True)
class OrtBnb4:
    """MatMulBnb4: bitsandbytes' NF4/FP4 formats executed by ONNX Runtime."""

    runtime: ClassVar[str] = "ort"
    bits: ClassVar[int] = 4
    quant_type: str = "nf4"
    block_size: int = 64  # bitsandbytes' default, so the two runtimes can share weights


@dataclass(frozen=True)
class BnbInt8:
    """Linear8bitLt (LLM.int8): int8 weights and activations; features above threshold stay fp16."""

    runtime: ClassVar[str] = "bnb"
    bits: ClassVar[int] = 8
    threshold: float = 0.0

    @property
    def per_call_range(self) -> bool:
        """With a threshold the fp16 outlier columns are those any token of the call crosses it in."""
        return self.threshold > 0


@dataclass(frozen=True)
class Bnb4bit:
    """Linear4bit: NF4/FP4 weights in blocks of 64, dequantized to compute_dtype for the matmul."""

    runtime: ClassVar[str] = "bnb"
    bits: ClassVar[int] = 4
    quant_type: str = "nf4"
    double_quant: bool = False  # quantize the absmax scales too (saves ~0.4 bit per weight)
    compute_dtype: str = "float32"


@dataclass(frozen=True)
class TorchHalf:
    """The torch module cast to half precision: weights and compute in `dtype`.

    The norm is spelled out in `dtype` (pow, mean, sqrt), as a naive or decomposed graph computes
    it, so a sum of squares past fp16's 65504 shows as non-finite output; norm_fp32 computes the
    norm in fp32 instead, as Llama-style implementations do.
    """

    runtime: ClassVar[str] = "torch"
    bits: ClassVar[int] = 16
    dtype: str = "float16"
    norm_fp32: bool = False


RECIPES = {
    "fp32": Fp32(),
    "ort-int8-dynamic": OrtDynamicInt8(),
    "ort-int8-dynamic-fullrange": OrtDynamicInt8(reduce_range=False),
    "ort-int8-qdq-minmax": OrtStaticQdq(method="minmax"),
    "ort-int8-qdq-percentile": OrtStaticQdq(method="percentile"),
    "ort-int8-qdq-entropy": OrtStaticQdq(method="entropy"),
    "ort-int4-rtn": OrtInt4(algorithm="rtn"),
    "ort-int4-hqq": OrtInt4(algorithm="hqq"),
    "ort-nf4": OrtBnb4(quant_type="nf4"),
    "ort-fp4": OrtBnb4(quant_type="fp4"),
    "bnb-int8": BnbInt8(threshold=0.0),
    "bnb-int8-outlier": BnbInt8(threshold=6.0),
    "bnb-nf4": Bnb4bit(quant_type="nf4"),
    "bnb-fp4": Bnb4bit(quant_type="fp4"),
    "bnb-nf4-dq": Bnb4bit(quant_type="nf4", double_quant=True),
    "torch-fp16": TorchHalf(dtype="float16"),
    "torch-bf16": TorchHalf(dtype="bfloat16"),
}

# Recipes that compute the same thing: one kernel behind several names (the int8 pairs differ in a
# range or threshold, the QDQ trio in calibration, the int4 pair in how the codes are fitted) or one
# number format in two runtimes (NF4 and FP4 blocks of 64 in bitsandbytes and ONNX Runtime, which
# agree within a few percent on the trained pair). Evidence is counted by family, not by name. The
# first of each is the one the `default` preset runs.
FAMILIES = {
    "int8-dynamic": ("ort-int8-dynamic", "ort-int8-dynamic-fullrange"),
    "int8-static": ("ort-int8-qdq-minmax", "ort-int8-qdq-percentile", "ort-int8-qdq-entropy"),
    "int8-llm": ("bnb-int8", "bnb-int8-outlier"),
    "int4": ("ort-int4-rtn", "ort-int4-hqq"),
    "nf4": ("bnb-nf4", "ort-nf4", "bnb-nf4-dq"),
    "fp4": ("ort-fp4", "bnb-fp4"),
    "fp16": ("torch-fp16",),
    "bf16": ("torch-bf16",),
}
FAMILY_OF = {recipe: family for family, members in FAMILIES.items() for recipe in members} | {"fp32": "fp32"}

# Values a field may take, where not any value of its type will do.
CHOICES = {
    "method": ("minmax", "percentile", "entropy"),
    "algorithm": ("rtn", "hqq"),
    "zero_points": ("float", "uint8"),
    "accuracy_level": (0, 1, 2, 3, 4),
    "quant_type": ("nf4", "fp4"),
    "compute_dtype": ("float32", "float16", "bfloat16"),
    "dtype": ("float16", "bfloat16"),
}


def batch_invariant(recipe) -> bool:
    """Whether a request's output is the same alone or batched with others: false where an
    activation range or outlier set is taken over the whole call (dynamic int8 per tensor,
    LLM.int8 with a threshold); weight-only, static and per-token schemes are invariant."""
    return not getattr(recipe, "per_call_range", False)


def recipe_config(name: str, **params):
    """The named recipe's config with `params` applied; strings (from a CLI or TOML) are converted."""
    if name not in RECIPES:
        raise UsageError(f"recipe: unknown '{name}'; choose one of {', '.join(RECIPES)}")
    base = RECIPES[name]
    fields = {f.name: f for f in dataclasses.fields(base)}
    changes = {}
    for key, value in params.items():
        if key not in fields:
            known = ", ".join(fields) or "none"
            raise UsageError(f"recipe {name}: unknown parameter '{key}'; it takes: {known}")
        changes[key] = _convert(name, key, value, typing.get_type_hints(type(base))[key])
        if key in CHOICES and changes[key] not in CHOICES[key]:
            raise UsageError(f"recipe {name}: {key} must be one of {CHOICES[key]}, got {value!r}")
    return dataclasses.replace(base, **changes)


def _convert(name: str, key: str, value, hint):
    if not isinstance(value, str):
        return value
    kinds = typing.get_args(hint) or (hint,)
    for kind in kinds:
        if kind is bool and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        if kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                continue
        if kind is str:
            return value
        if kind is type(None) and value.lower() in ("none", "auto"):
            return None
    raise UsageError(f"recipe {name}: {key}={value!r} is not a {hint}; e.g. {key}="
                     f"{getattr(RECIPES[name], key)!r}")
