"""The FFN sublayers, read bottom-up: norms -> MLPs -> FFNBlock, with seeded initialisation and taps."""

import zlib

import torch
import torch.nn.functional as F
from torch import nn

from ffnbench.models.config import FFNConfig

# Names of the intermediate tensors a block can return beside its output. For SwiGLU the
# activation is swish(gate); `up` is the linear branch it multiplies.
TAPS_GELU = ("norm_out", "act_in", "act_out")
TAPS_SWIGLU = ("norm_out", "act_in", "act_out", "up")


class LayerNorm(nn.Module):
    """γ·(h−μ)/sqrt(σ²+ε)+β over the last axis: removes the shared offset of every token."""

    def __init__(self, d: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d))
        self.eps = eps
        self.primitive = False  # True: spell the op out so the export has no LayerNormalization
        self.upcast = False  # True: compute in fp32 whatever the input's dtype, then cast back

    def forward(self, h):
        if self.upcast and h.dtype != torch.float32:
            return _upcast(self, h)
        if not self.primitive:
            return F.layer_norm(h, h.shape[-1:], self.weight, self.bias, self.eps)
        mu = h.mean(-1, keepdim=True)
        var = (h - mu).pow(2).mean(-1, keepdim=True)  # in fp16, squares above 65504 overflow
        return (h - mu) / torch.sqrt(var + self.eps) * self.weight + self.bias


class RMSNorm(nn.Module):
    """γ·h/sqrt(mean(h²)+ε): keeps the offset, so a positive mean shift survives normalisation."""

    def __init__(self, d: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps
        self.primitive = False
        self.upcast = False

    def forward(self, h):
        if self.upcast and h.dtype != torch.float32:
            return _upcast(self, h)
        if not self.primitive:
            return F.rms_norm(h, h.shape[-1:], self.weight, self.eps)
        # In fp16 the squares overflow once |h| > 256: inf, then a zero or NaN output.
        return h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def _upcast(norm: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """The norm computed in fp32 on an fp32 copy of its parameters, the result cast back to h's dtype."""
    weight = norm.weight.float()
    if isinstance(norm, LayerNorm):
        out = F.layer_norm(h.float(), h.shape[-1:], weight, norm.bias.float(), norm.eps)
    else:
        out = F.rms_norm(h.float(), h.shape[-1:], weight, norm.eps)
    return out.to(h.dtype)


class Rotation(nn.Module):
    """x @ R for an orthogonal R, online (a deployment-time mitigation, quant/mitigations.py): kept in
    fp32 by every recipe, its weights' rotation folded into the next Linear."""

    def __init__(self, matrix: torch.Tensor):
        super().__init__()
        self.register_buffer("matrix", matrix)

    def forward(self, x):
        return x @ self.matrix.to(x.dtype)


def _rotated(x, rotation: Rotation | None, taps: dict | None):
    """x at the down-projection's input, rotated where a mitigation put a rotation there; then it is
    tapped too (`down_in`): what the quantized MatMul reads is no longer a tap's product."""
    if rotation is None:
        return x
    x = rotation(x)
    if taps is not None:
        taps["down_in"] = x
    return x


class GeluMLP(nn.Module):
    """Linear -> GELU -> Linear."""

    def __init__(self, d: int, hidden: int, bias: bool, approximate: str):
        super().__init__()
        self.fc1 = nn.Linear(d, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, d, bias=bias)
        self.approximate = "tanh" if approximate == "tanh" else "none"
        self.down_rotation: Rotation | None = None

    @property
    def down(self) -> nn.Linear:
        return self.fc2

    def forward(self, x, taps: dict | None = None):
        a = self.fc1(x)  # (B, T, hidden)
        g = F.gelu(a, approximate=self.approximate)
        if taps is not None:
            taps.update(act_in=a, act_out=g)
        return self.fc2(_rotated(g, self.down_rotation, taps))


class SwiGLUMLP(nn.Module):
    """swish(xW1+b1) ⊙ (xW2+b2) -> Linear: the gate multiplies two quantized projections."""

    def __init__(self, d: int, hidden: int, bias: bool):
        super().__init__()
        self.gate = nn.Linear(d, hidden, bias=bias)
        self.up = nn.Linear(d, hidden, bias=bias)
        self.down = nn.Linear(hidden, d, bias=bias)
        self.down_rotation: Rotation | None = None

    def forward(self, x, taps: dict | None = None):
        a = self.gate(x)  # (B, T, hidden)
        s = F.silu(a)
        u = self.up(x)
        if taps is not None:
            taps.update(act_in=a, act_out=s, up=u)
        return self.down(_rotated(s * u, self.down_rotation, taps))


class FFNBlock(nn.Module):
    """One pre-norm FFN sublayer: h + MLP(Norm(h)), or MLP(Norm(h)) without the residual."""

    def __init__(self, cfg: FFNConfig):
        super().__init__()
        self.cfg = cfg
        norm = LayerNorm if cfg.norm == "layernorm" else RMSNorm
        self.norm = norm(cfg.d_model, cfg.eps)
        if cfg.activation == "gelu":
            self.mlp = GeluMLP(cfg.d_model, cfg.hidden, cfg.bias, cfg.gelu)
        else:
            self.mlp = SwiGLUMLP(cfg.d_model, cfg.hidden, cfg.bias)
        self.tap_names = TAPS_GELU if cfg.activation == "gelu" else TAPS_SWIGLU
        # Where the weights came from, so an artifact can be rebuilt: the seed or a checkpoint.
        self.source: dict = {"kind": "seed", "seed": cfg.seed}
        # Deployment-time mitigations (quant/mitigations.py), exact in fp32: a channel offset taken
        # from the norm's output (RMSNorm has no bias to fold it into) and an online rotation of it.
        self.register_buffer("in_shift", None)
        self.in_rotation: Rotation | None = None

    def forward(self, h):
        return self.forward_with_taps(h, taps=None)

    def forward_with_taps(self, h, taps: dict | None = None):
        """Return the block output; when `taps` is a dict, fill it with the intermediate tensors."""
        y = self.branch(h, taps)
        return h + y if self.cfg.residual else y

    def branch(self, h, taps: dict | None = None):
        """MLP(Norm(h)), without the residual: what a whole model adds to its residual stream."""
        x = self.norm(h)  # (B, T, d_model)
        if self.in_shift is not None:
            x = x - self.in_shift.to(x.dtype)
        if self.in_rotation is not None:
            x = self.in_rotation(x)
        if taps is not None:
            taps["norm_out"] = x
        return self.mlp(x, taps)

    def set_primitive_norm(self, primitive: bool) -> "FFNBlock":
        """Spell the norm out in primitive ops, for exports to runtimes without the fused op."""
        self.norm.primitive = primitive
        return self


class WithTaps(nn.Module):
    """Adapter whose forward returns (output, *taps), so an exporter can make the taps graph outputs."""

    def __init__(self, block: FFNBlock):
        super().__init__()
        self.block = block

    def forward(self, h):
        taps: dict = {}
        y = self.block.forward_with_taps(h, taps)
        return (y, *(taps[name] for name in self.block.tap_names))


def _init_(block: FFNBlock, seed: int) -> None:
    """Seeded init at a realistic scale; each tensor's stream depends only on (seed, its name).

    So designs that share a part (B and ln-swiglu share the SwiGLU, A and rms-gelu the GELU MLP,
    all four the norm gain) get the same weights for it, and an ablation changes one thing only.
    """
    for name, p in block.named_parameters():
        gen = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{name}".encode()))
        if name.startswith("norm.weight"):
            # Gains around 1 with a spread, as in trained models; not all ones.
            value = 1.0 + 0.2 * torch.randn(p.shape, generator=gen)
        elif name.startswith("norm.bias"):
            value = 0.1 * torch.randn(p.shape, generator=gen)
        elif name.endswith(".weight"):
            value = torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5  # unit-variance outputs
        else:
            # Non-zero biases shift the pre-activations, as trained biases do.
            value = 0.1 * torch.randn(p.shape, generator=gen)
        with torch.no_grad():
            p.copy_(value)


def build_model(cfg: FFNConfig) -> FFNBlock:
    """The FFN sublayer `cfg` describes, initialised from `cfg.seed`, in eval mode."""
    block = FFNBlock(cfg)
    _init_(block, cfg.seed)
    return block.eval()
