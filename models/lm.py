"""CausalLM: a small byte-level decoder whose FFN sublayers are one design, everything else shared.

A matched pair differs only in the FFN sublayers (the existing FFNBlocks, norm included): the
embeddings, positions, attention, the attention's norm, the final norm, the head and their
initialisation are the same code and the same seeded draws for every design.
"""

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ffnbench.errors import UsageError
from ffnbench.models.config import DESIGNS, FFNConfig
from ffnbench.models.layers import FFNBlock, build_model

VOCAB = 256  # bytes: no tokenizer to ship or download
INJECT = ("ffn-input", "residual")  # where a scenario's drift enters a whole model


@dataclass(frozen=True)
class LMConfig:
    design: str = "A"
    d_model: int = 192  # small enough to train on 2 cores in minutes
    n_layers: int = 4
    n_heads: int = 4  # head width 48
    d_ff: int = 768  # GELU width 4 × d_model; SwiGLU gets the parameter-matched width
    context: int = 128  # bytes a sequence
    seed: int = 0  # initialisation; the same seed gives the same shared weights for every design

    def __post_init__(self) -> None:
        if self.design not in DESIGNS:
            raise UsageError(f"design: unknown '{self.design}'; choose one of {', '.join(DESIGNS)}")
        for name in ("d_model", "n_layers", "n_heads", "d_ff", "context"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise UsageError(f"{name}: must be a positive integer, got {getattr(self, name)!r}")
        if self.d_model % self.n_heads:
            raise UsageError(f"n_heads: {self.n_heads} does not divide d_model {self.d_model}; pick a divisor")

    @property
    def vocab(self) -> int:
        return VOCAB

    def ffn(self, layer: int) -> FFNConfig:
        return FFNConfig(design=self.design, d_model=self.d_model, d_ff=self.d_ff, residual=True,
                         seed=self.seed * 1000 + layer)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class Attention(nn.Module):
    """Pre-norm causal self-attention: h + proj(attend(LayerNorm(h)))."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.norm = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, t, c = h.shape
        q, k, v = self.qkv(self.norm(h)).split(c, dim=-1)
        q, k, v = (x.view(b, t, self.n_heads, c // self.n_heads).transpose(1, 2) for x in (q, k, v))  # (B, H, T, c/H)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return h + self.proj(y.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    """Attention, then the design's FFN sublayer (its own norm) added to the residual stream."""

    def __init__(self, layer: int, attn: nn.Module, ffn: FFNBlock, tapped: tuple[str, ...] | None = None):
        super().__init__()
        self.layer = layer
        self.attn = attn
        self.ffn = ffn
        # The taps kept ("resid", "ffn_in", the FFN's own); None: all. A large model keeps only what
        # its figures read: every FFN tensor of 30 layers over a batch of windows is gigabytes.
        self.tapped = tapped

    def forward(self, h: torch.Tensor, drift: "Drift | None" = None, inject: str = "ffn-input",
                taps: dict | None = None) -> torch.Tensor:
        h = self.attn(h)
        x = h if drift is None else drift.apply(self.layer, h)
        if inject == "residual":  # the stream itself drifts; otherwise only what the FFN norm sees
            h = x
        ffn_taps = {} if taps is not None else None
        # A half-precision recipe casts the FFN sublayers only; the stream stays fp32.
        y = self.ffn.branch(x.to(self.ffn.norm.weight.dtype), ffn_taps).to(h.dtype)
        if taps is not None:
            taps |= {f"{name}.{self.layer}": t for name, t in (("resid", h), ("ffn_in", x), *ffn_taps.items())
                     if self.tapped is None or name in self.tapped}
        return h + y


@dataclass(frozen=True)
class Drift:
    """A per-request affine change of the hidden states entering every FFN: (h·gain + offset)·scale,
    gain and offset (n_layers, d_model) per layer, or (n_layers, batch, 1, d_model) where each request
    has its own (drift training), scale (batch,) per request. The identity (gain 1, offset 0,
    scale 1) leaves a forward bit for bit as without it."""

    gain: torch.Tensor
    offset: torch.Tensor
    scale: torch.Tensor

    @classmethod
    def identity(cls, n_layers: int, d_model: int, batch: int) -> "Drift":
        return cls(torch.ones(n_layers, d_model), torch.zeros(n_layers, d_model), torch.ones(batch))

    def apply(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        return (h * self.gain[layer] + self.offset[layer]) * self.scale[:, None, None]


class CausalLM(nn.Module):
    export_taps = True  # its export returns each layer's FFN tensors beside the logits

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg
        generator = torch.Generator().manual_seed(cfg.seed)
        self.embed = nn.Embedding(VOCAB, cfg.d_model)
        self.pos = nn.Embedding(cfg.context, cfg.d_model)
        self.blocks = nn.ModuleList(Block(i, Attention(cfg), build_model(cfg.ffn(i))) for i in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, VOCAB, bias=False)
        # Shared parts drawn from one generator in a fixed order, so both designs get the same ones;
        # the FFN blocks keep the initialisation build_model gave them.
        shared = [self.embed.weight, self.pos.weight, self.head.weight]
        shared += [p for b in self.blocks for p in (b.attn.qkv.weight, b.attn.proj.weight)]
        with torch.no_grad():
            for weight in shared:
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.02)
            for b in self.blocks:
                b.attn.qkv.bias.zero_()
                b.attn.proj.bias.zero_()

    def forward(self, tokens: torch.Tensor, drift: Drift | None = None, inject: str = "ffn-input",
                taps: dict | None = None) -> torch.Tensor:
        """Next-byte logits (B, T, 256) for byte ids (B, T), T <= context. With `drift`, every FFN sees
        drifted states (`inject` "ffn-input"), or the residual stream carries them ("residual");
        `taps` collects each layer's tensors as "NAME.LAYER" (resid, ffn_in, norm_out, act_in, ...)."""
        if inject not in INJECT:
            raise UsageError(f"inject: unknown '{inject}'; choose one of {', '.join(INJECT)}")
        t = tokens.shape[1]
        h = self.embed(tokens) + self.pos(torch.arange(t, device=tokens.device))  # (B, T, C)
        for block in self.blocks:
            h = block(h, drift, inject, taps)
        return self.head(self.norm(h))

    def loss(self, tokens: torch.Tensor, drift: Drift | None = None, inject: str = "ffn-input") -> torch.Tensor:
        """Mean next-byte cross-entropy (nats) over a batch of sequences (B, T+1), under `drift`."""
        logits = self(tokens[:, :-1], drift, inject)
        return F.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
