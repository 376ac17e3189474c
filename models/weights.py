"""Load one real FFN sublayer from a local .safetensors file, by the names its model family uses."""

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ffnbench.errors import UsageError
from ffnbench.files import locate, sha256_file
from ffnbench.models.config import FFNConfig
from ffnbench.models.layers import FFNBlock, build_model

# Our parameter name -> the checkpoint's name, per naming style. A "transpose" flag marks GPT-2's
# Conv1D, which stores Linear weights as (in, out).
NAMING = {
    "llama": {  # design B
        "norm.weight": ("post_attention_layernorm.weight", False),
        "mlp.gate.weight": ("mlp.gate_proj.weight", False),
        "mlp.up.weight": ("mlp.up_proj.weight", False),
        "mlp.down.weight": ("mlp.down_proj.weight", False),
        "mlp.gate.bias": ("mlp.gate_proj.bias", False),
        "mlp.up.bias": ("mlp.up_proj.bias", False),
        "mlp.down.bias": ("mlp.down_proj.bias", False),
    },
    "gpt2": {  # design A
        "norm.weight": ("ln_2.weight", False),
        "norm.bias": ("ln_2.bias", False),
        "mlp.fc1.weight": ("mlp.c_fc.weight", True),
        "mlp.fc1.bias": ("mlp.c_fc.bias", False),
        "mlp.fc2.weight": ("mlp.c_proj.weight", True),
        "mlp.fc2.bias": ("mlp.c_proj.bias", False),
    },
    "bert": {  # design A; BERT is post-norm, so the norm feeding the FFN is the attention output's
        "norm.weight": ("attention.output.LayerNorm.weight", False),
        "norm.bias": ("attention.output.LayerNorm.bias", False),
        "mlp.fc1.weight": ("intermediate.dense.weight", False),
        "mlp.fc1.bias": ("intermediate.dense.bias", False),
        "mlp.fc2.weight": ("output.dense.weight", False),
        "mlp.fc2.bias": ("output.dense.bias", False),
    },
}
STYLES_FOR_DESIGN = {"A": ("gpt2", "bert"), "B": ("llama",)}


def load_safetensors(path: Path, design: str, prefix: str = "", **cfg_overrides) -> FFNBlock:
    """Build design A or B from one layer of a checkpoint; sizes and biases come from the tensors.

    `prefix` selects the layer, e.g. "model.layers.0." (Llama) or "h.0." (GPT-2).
    """
    path = Path(path)
    if design not in STYLES_FOR_DESIGN:
        raise UsageError(f"design: weights load for A or B only, got '{design}'")
    if not path.is_file():
        raise UsageError(f"weights: no file at {path}; give a local .safetensors file")
    try:
        with safe_open(str(path), framework="pt") as f:
            names = f.keys()  # safe_open is not a dict: it has keys() but no iteration
            tensors = {k: f.get_tensor(k) for k in names if k.startswith(prefix)}
    except (SafetensorError, OSError) as e:
        raise UsageError(f"weights: {path} is not a readable .safetensors file ({e})") from e
    style = _detect_style(tensors, design, prefix)
    named = {ours: _take(tensors, prefix + theirs, transpose)
             for ours, (theirs, transpose) in NAMING[style].items()
             if prefix + theirs in tensors}
    cfg = _config_from_shapes(named, design, prefix, style, **cfg_overrides)
    block = FFNBlock(cfg)
    expected = dict(block.named_parameters())
    for name, p in expected.items():
        theirs = prefix + NAMING[style][name][0]
        if name not in named:
            raise UsageError(f"weights: tensor '{theirs}' is missing from {path}")
        if tuple(named[name].shape) != tuple(p.shape):
            raise UsageError(f"weights: tensor '{theirs}' has shape {tuple(named[name].shape)}, "
                             f"expected {tuple(p.shape)} for d_model={cfg.d_model}, hidden={cfg.hidden}")
        with torch.no_grad():
            p.copy_(named[name].float())
    block.source = {"kind": "safetensors", "path": str(path.resolve()), "sha256": sha256_file(path),
                    "prefix": prefix}
    return block.eval()


def rebuild(cfg: FFNConfig, source: dict, files_dir: str | Path | None = None) -> FFNBlock:
    """The block an export manifest describes: from its seed, or from its (unchanged) checkpoint, a
    relative path resolved from `files_dir` (default: here), or found there by name."""
    if source["kind"] == "seed":
        return build_model(cfg)
    if source["kind"] == "trained":
        from ffnbench.models.pair import trained_ffn  # the pair loads CausalLM, which builds on this module

        design, _, seed = source["name"].removeprefix("trained/").partition("/")
        block = trained_ffn(design, source["layer"], residual=cfg.residual, seed=int(seed or 0))
        if block.source["sha256"] != source["sha256"]:
            raise UsageError(f"weights: the trained pair's {source['name']} is not the one exported (sha256 "
                             f"{source['sha256']}); restore it (git checkout) or re-export")
        return block
    path = locate(source["path"], files_dir or ".", source["sha256"])
    if not path.is_file() or sha256_file(path) != source["sha256"]:
        raise UsageError(f"weights: no file with sha256 {source['sha256']} at {path}; give the checkpoint the "
                         "export was made from (its folder with --weights-dir), or re-export")
    keep = ("eps", "residual", "gelu", "seed")
    return load_safetensors(path, cfg.design, source["prefix"], **{k: getattr(cfg, k) for k in keep})


def _detect_style(tensors: dict, design: str, prefix: str) -> str:
    for style in STYLES_FOR_DESIGN[design]:
        first_weight = prefix + next(v[0] for k, v in NAMING[style].items() if k.startswith("mlp."))
        if first_weight in tensors:
            return style
    for other, styles in STYLES_FOR_DESIGN.items():
        for style in styles if other != design else ():
            if prefix + next(v[0] for k, v in NAMING[style].items() if k.startswith("mlp.")) in tensors:
                raise UsageError(f"weights: the layer under '{prefix}' has {style}-style tensors, a design-{other} "
                                 f"layer, not design {design}; set design = \"{other}\"")
    wanted = " or ".join(f"'{prefix}{next(v[0] for k, v in NAMING[s].items() if k.startswith('mlp.'))}'"
                         for s in STYLES_FOR_DESIGN[design])
    raise UsageError(f"weights: tensor {wanted} is missing; check --prefix (found {len(tensors)} "
                     f"tensors under '{prefix}')")


def _take(tensors: dict, key: str, transpose: bool) -> torch.Tensor:
    t = tensors[key]
    return t.T.contiguous() if transpose and t.ndim == 2 else t


def _config_from_shapes(named: dict, design: str, prefix: str, style: str, **overrides) -> FFNConfig:
    first = "mlp.gate.weight" if design == "B" else "mlp.fc1.weight"
    w = named[first]
    if w.ndim != 2:
        raise UsageError(f"weights: tensor '{prefix}{NAMING[style][first][0]}' has shape "
                         f"{tuple(w.shape)}, expected a matrix")
    hidden, d_model = w.shape
    sizes = dict(d_model=d_model, d_ff=hidden) if design == "A" else \
        dict(d_model=d_model, d_ff=hidden * 3 // 2, swiglu_hidden=hidden)
    bias = any(k.endswith(".bias") and k.startswith("mlp.") for k in named)
    return FFNConfig(design=design, bias=bias, **{**sizes, **overrides})
