"""FFNConfig: the one description of an FFN sublayer, its presets, and its parameter counts."""

import dataclasses
from dataclasses import dataclass

from ffnbench.errors import UsageError

# design -> (norm, activation). The ablations change exactly one of the two, so an effect can be
# attributed to the normalisation or to the activation.
DESIGNS = {
    "A": ("layernorm", "gelu"),
    "B": ("rmsnorm", "swiglu"),
    "ln-swiglu": ("layernorm", "swiglu"),
    "rms-gelu": ("rmsnorm", "gelu"),
}
GELU_APPROXIMATIONS = ("erf", "tanh")


def matched_swiglu_width(d_ff: int) -> int:
    """Hidden width that gives SwiGLU (3 matrices) the parameters of a 2-matrix MLP of width d_ff."""
    # 2·d·d_ff = 3·d·h  =>  h = 2/3·d_ff; a multiple of 64 keeps GEMM tiles and 4-bit blocks whole.
    return max(64, 64 * round(2 * d_ff / 3 / 64))


@dataclass(frozen=True)
class FFNConfig:
    design: str = "A"  # A | B | ln-swiglu | rms-gelu
    d_model: int = 1024  # width of the residual stream
    d_ff: int = 4096  # GELU hidden width: 4 × d_model, as in GPT-2 and BERT
    swiglu_hidden: int | None = None  # None: parameter-matched to d_ff (2/3, multiple of 64)
    bias: bool = True  # the designs under study carry biases (hW1+b1); Llama-style weights have none
    eps: float = 1e-5  # the norm's epsilon, the torch and ONNX default
    residual: bool = True  # return h + FFN(Norm(h)), as one sublayer of a pre-norm block
    gelu: str = "erf"  # exact erf GELU; "tanh" for the GPT-2 approximation
    seed: int = 0  # weights are a pure function of the seed

    def __post_init__(self) -> None:
        if self.design not in DESIGNS:
            raise UsageError(f"design: unknown '{self.design}'; choose one of {', '.join(DESIGNS)}")
        for name in ("d_model", "d_ff"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise UsageError(f"{name}: must be a positive integer, got {value!r}")
        if self.swiglu_hidden is not None and (
            not isinstance(self.swiglu_hidden, int) or self.swiglu_hidden <= 0
        ):
            raise UsageError(f"swiglu_hidden: must be a positive integer, got {self.swiglu_hidden!r}")
        if not self.eps > 0:
            raise UsageError(f"eps: must be positive, got {self.eps!r}")
        if self.gelu not in GELU_APPROXIMATIONS:
            raise UsageError(f"gelu: unknown '{self.gelu}'; choose one of {', '.join(GELU_APPROXIMATIONS)}")

    @property
    def norm(self) -> str:
        return DESIGNS[self.design][0]

    @property
    def activation(self) -> str:
        return DESIGNS[self.design][1]

    @property
    def hidden(self) -> int:
        """Width of the activation: d_ff for GELU designs, the SwiGLU width otherwise."""
        if self.activation == "gelu":
            return self.d_ff
        return self.swiglu_hidden or matched_swiglu_width(self.d_ff)

    def param_counts(self) -> dict[str, int]:
        """Parameters of the GELU MLP and of the SwiGLU MLP at this size (norms excluded)."""
        d, f = self.d_model, self.d_ff
        h = self.swiglu_hidden or matched_swiglu_width(f)
        b = int(self.bias)
        return {
            "gelu_mlp": 2 * d * f + b * (f + d),
            "swiglu_mlp": 3 * d * h + b * (2 * h + d),
        }

    @property
    def mlp_params(self) -> int:
        """Parameters of this design's own MLP (norms excluded)."""
        return self.param_counts()["gelu_mlp" if self.activation == "gelu" else "swiglu_mlp"]

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out.update(norm=self.norm, activation=self.activation, hidden=self.hidden,
                   param_counts=self.param_counts())
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "FFNConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})


# Sizes only; the design is chosen separately so every preset serves every design.
PRESETS = {
    "tiny": dict(d_model=64, d_ff=256),  # tests: a few milliseconds per forward
    "small": dict(d_model=256, d_ff=1024),
    "default": dict(d_model=1024, d_ff=4096),
    # Llama-2-7B's MLP: SwiGLU width 11008; GELU width 4 × 4096, within 1 % of its parameters.
    "llama-7b": dict(d_model=4096, d_ff=16384, swiglu_hidden=11008),
}


def preset(name: str, design: str = "A", **overrides) -> FFNConfig:
    if name not in PRESETS:
        raise UsageError(f"preset: unknown '{name}'; choose one of {', '.join(PRESETS)}")
    return FFNConfig(design=design, **{**PRESETS[name], **overrides})
