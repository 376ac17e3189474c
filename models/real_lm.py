"""RealLM: a user's pretrained causal language model (GPT-2, Llama, Mistral, Qwen2 families) rebuilt
from the same parts as the trained pair, so that every whole-model tool reads it the same way.

Its FFN sublayers are FFNBlocks (GPT-2's are design A with the tanh GELU; the Llama family's design
B without biases), each under `blocks[i].ffn`, so the recipes, the drift, the taps and the export's
FFN MatMuls (by module path) are the pair's. Attention is the family's own: GPT-2's learned
positions, or rotary embeddings with grouped key/value heads. `from_hf` copies the weights of a
transformers model (loaded from a checkpoint directory or a GGUF file by bench/traffic/whole_model.py);
this module imports no transformers.
"""

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ffnbench.errors import UsageError
from ffnbench.models.config import FFNConfig
from ffnbench.models.layers import FFNBlock, LayerNorm, RMSNorm
from ffnbench.models.lm import INJECT, Block, Drift

# model_type -> the FFN design its sublayers are. Each family's attention is below.
FAMILIES = {"gpt2": "A", "llama": "B", "mistral": "B", "qwen2": "B"}
TAPPED = ("ffn_in",)  # what a whole model's taps keep: the drift statistics read the FFN inputs only


@dataclass(frozen=True)
class RealConfig:
    family: str
    vocab: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int  # the MLP's hidden width, as the checkpoint has it
    context: int  # tokens a window: at most the model's positions
    eps: float
    attn_bias: bool  # on q, k and v
    out_bias: bool  # on the attention's output projection
    mlp_bias: bool
    positions: int  # GPT-2's learned positions; the rotary families' trained context
    gelu: str = "tanh"  # GPT-2's GELU: "tanh" (gelu_new) or "erf" (an exact "gelu")

    def __post_init__(self) -> None:
        if self.n_heads % self.n_kv_heads:
            raise UsageError(f"{self.family}: {self.n_kv_heads} key/value heads do not divide {self.n_heads} heads")

    @property
    def design(self) -> str:
        return FAMILIES[self.family]

    def ffn(self, layer: int) -> FFNConfig:
        if self.design == "A":
            return FFNConfig(design="A", d_model=self.d_model, d_ff=self.d_ff, bias=self.mlp_bias, eps=self.eps,
                             gelu=self.gelu, residual=True)
        return FFNConfig(design="B", d_model=self.d_model, d_ff=self.d_ff, swiglu_hidden=self.d_ff,
                         bias=self.mlp_bias, eps=self.eps, residual=True)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"design": self.design}


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class RealAttention(nn.Module):
    """Pre-norm causal self-attention of the family: h + o(attend(q, k, v of Norm(h)))."""

    def __init__(self, cfg: RealConfig):
        super().__init__()
        self.cfg = cfg
        self.norm = LayerNorm(cfg.d_model, cfg.eps) if cfg.design == "A" else RMSNorm(cfg.d_model, cfg.eps)
        self.q = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=cfg.attn_bias)
        self.k = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=cfg.attn_bias)
        self.v = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=cfg.attn_bias)
        self.o = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=cfg.out_bias)
        # Rotary frequencies as the checkpoint's own rotary module computed them (its rope scaling
        # included), and the scale its cos and sin carry; unused by GPT-2.
        self.register_buffer("inv_freq", torch.zeros(cfg.head_dim // 2), persistent=True)
        self.rope_scale = 1.0

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, t, _ = h.shape
        cfg = self.cfg
        x = self.norm(h)
        q = self.q(x).view(b, t, cfg.n_heads, cfg.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.k(x).view(b, t, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)
        v = self.v(x).view(b, t, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)
        if cfg.family != "gpt2":
            freqs = torch.arange(t, device=h.device, dtype=torch.float32)[:, None] * self.inv_freq[None]
            angles = torch.cat((freqs, freqs), dim=-1)
            cos, sin = angles.cos() * self.rope_scale, angles.sin() * self.rope_scale
            q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        if cfg.n_kv_heads != cfg.n_heads:  # grouped heads: each key/value head serves a group of queries
            k = k.repeat_interleave(cfg.n_heads // cfg.n_kv_heads, dim=1)
            v = v.repeat_interleave(cfg.n_heads // cfg.n_kv_heads, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return h + self.o(y.transpose(1, 2).reshape(b, t, cfg.n_heads * cfg.head_dim))


class RealLM(nn.Module):
    """A pretrained causal LM with the pair's forward: (tokens, drift, inject, taps) -> logits."""

    export_taps = False  # its export returns logits only (taps of 30 layers would swamp a run)

    def __init__(self, cfg: RealConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab, cfg.d_model)
        self.pos = nn.Embedding(cfg.positions, cfg.d_model) if cfg.family == "gpt2" else None
        self.blocks = nn.ModuleList(Block(i, RealAttention(cfg), FFNBlock(cfg.ffn(i)), TAPPED)
                                    for i in range(cfg.n_layers))
        self.norm = LayerNorm(cfg.d_model, cfg.eps) if cfg.design == "A" else RMSNorm(cfg.d_model, cfg.eps)
        self.head = nn.Linear(cfg.d_model, cfg.vocab, bias=False)
        self.source: dict = {}

    def forward(self, tokens: torch.Tensor, drift: Drift | None = None, inject: str = "ffn-input",
                taps: dict | None = None) -> torch.Tensor:
        """Next-token logits (B, T, vocab) for token ids (B, T), T <= context; drift and taps as in CausalLM."""
        if inject not in INJECT:
            raise UsageError(f"inject: unknown '{inject}'; choose one of {', '.join(INJECT)}")
        h = self.embed(tokens)
        if self.pos is not None:
            h = h + self.pos(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.blocks:
            h = block(h, drift, inject, taps)
        return self.head(self.norm(h))


def config_from_hf(config, context: int) -> RealConfig:
    """The RealConfig of a transformers config, or a UsageError naming what does not fit."""
    family = config.model_type
    if family not in FAMILIES:
        raise UsageError(f"model type '{family}' is not a family ffnbench rebuilds; known: {', '.join(FAMILIES)}")
    if family == "gpt2":
        if config.activation_function not in ("gelu_new", "gelu_pytorch_tanh", "gelu"):
            raise UsageError(f"gpt2: activation '{config.activation_function}' is not a GELU; design A needs one")
        if config.scale_attn_by_inverse_layer_idx or config.reorder_and_upcast_attn:
            raise UsageError("gpt2: scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not rebuilt; "
                             "give a checkpoint with the default attention")
        d = config.n_embd
        return RealConfig("gpt2", config.vocab_size, d, config.n_layer, config.n_head, config.n_head,
                          d // config.n_head, config.n_inner or 4 * d, min(context, config.n_positions),
                          config.layer_norm_epsilon, True, True, True, config.n_positions,
                          "erf" if config.activation_function == "gelu" else "tanh")
    if config.hidden_act != "silu":
        raise UsageError(f"{family}: activation '{config.hidden_act}' is not SiLU; design B's SwiGLU needs it")
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    positions = config.max_position_embeddings
    attention_bias = bool(getattr(config, "attention_bias", False))  # Llama's, on all four projections
    return RealConfig(family, config.vocab_size, config.hidden_size, config.num_hidden_layers, heads,
                      config.num_key_value_heads or heads, head_dim, config.intermediate_size, min(context, positions),
                      config.rms_norm_eps, family == "qwen2" or attention_bias, attention_bias,
                      bool(getattr(config, "mlp_bias", False)), positions)


def from_hf(hf_model: nn.Module, context: int, source: dict) -> RealLM:
    """A RealLM holding the weights of a transformers *ForCausalLM model (fp32, eval mode)."""
    cfg = config_from_hf(hf_model.config, context)
    model = RealLM(cfg)
    base = hf_model.transformer if cfg.family == "gpt2" else hf_model.model
    with torch.no_grad():
        if cfg.family == "gpt2":
            model.embed.weight.copy_(base.wte.weight)
            model.pos.weight.copy_(base.wpe.weight)
            model.norm.load_state_dict(base.ln_f.state_dict())
            for block, layer in zip(model.blocks, base.h, strict=True):
                _gpt2_layer(block, layer, cfg.d_model)
        else:
            model.embed.weight.copy_(base.embed_tokens.weight)
            model.norm.load_state_dict(base.norm.state_dict())
            rotary = base.rotary_emb
            for block, layer in zip(model.blocks, base.layers, strict=True):
                _llama_layer(block, layer, rotary)
        model.head.weight.copy_(hf_model.lm_head.weight)
    model.source = source
    return model.eval()


def _gpt2_layer(block: Block, layer: nn.Module, d: int) -> None:
    """GPT-2's Conv1D weights are (in, out): transposed into Linear's (out, in)."""
    attn = block.attn
    attn.norm.load_state_dict(layer.ln_1.state_dict())
    qkv_w, qkv_b = layer.attn.c_attn.weight.T, layer.attn.c_attn.bias
    for i, linear in enumerate((attn.q, attn.k, attn.v)):
        linear.weight.copy_(qkv_w[i * d:(i + 1) * d])
        linear.bias.copy_(qkv_b[i * d:(i + 1) * d])
    attn.o.weight.copy_(layer.attn.c_proj.weight.T)
    attn.o.bias.copy_(layer.attn.c_proj.bias)
    ffn = block.ffn
    ffn.norm.load_state_dict(layer.ln_2.state_dict())
    ffn.mlp.fc1.weight.copy_(layer.mlp.c_fc.weight.T)
    ffn.mlp.fc1.bias.copy_(layer.mlp.c_fc.bias)
    ffn.mlp.fc2.weight.copy_(layer.mlp.c_proj.weight.T)
    ffn.mlp.fc2.bias.copy_(layer.mlp.c_proj.bias)


def _llama_layer(block: Block, layer: nn.Module, rotary: nn.Module) -> None:
    attn, src = block.attn, layer.self_attn
    attn.norm.load_state_dict(layer.input_layernorm.state_dict())
    for mine, theirs in ((attn.q, src.q_proj), (attn.k, src.k_proj), (attn.v, src.v_proj), (attn.o, src.o_proj)):
        mine.load_state_dict(theirs.state_dict())
    attn.inv_freq.copy_(rotary.inv_freq)
    attn.rope_scale = float(getattr(rotary, "attention_scaling", 1.0))
    ffn, mlp = block.ffn, layer.mlp
    ffn.norm.load_state_dict(layer.post_attention_layernorm.state_dict())
    for mine, theirs in ((ffn.mlp.gate, mlp.gate_proj), (ffn.mlp.up, mlp.up_proj), (ffn.mlp.down, mlp.down_proj)):
        mine.load_state_dict(theirs.state_dict())
