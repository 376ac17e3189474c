"""Hugging Face-format checkpoints for `ffnbench capture`: through `transformers` (the `[hf]` extra),
from local files only, the states entering each chosen layer's FFN norm taken by a forward pre-hook.
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ffnbench.errors import UsageError
from ffnbench.files import sha256_file

# model_type -> (the base model's list of layers, the norm in front of a layer's FFN). BERT is
# post-norm: the norm "in front of" its FFN is the attention output's, whose input is the
# attention's residual sum (as models/weights.py maps design A onto BERT).
FAMILIES = {
    "gpt2": ("h", "ln_2"),
    "bert": ("encoder.layer", "attention.output.LayerNorm"),
    "llama": ("layers", "post_attention_layernorm"),
    "mistral": ("layers", "post_attention_layernorm"),
    "qwen2": ("layers", "post_attention_layernorm"),
}
CONTEXT = 128  # tokens a window, or the model's maximum if smaller


@dataclass
class HFModel:
    model: torch.nn.Module
    tokenizer: object
    layers: list  # the base model's blocks
    norm_path: str
    context: int
    source: dict

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def run(self, text: bytes, layers: list[int], max_windows: int) -> dict[int, np.ndarray]:
        ids = self.tokenizer(text.decode("utf-8", errors="replace"), add_special_tokens=False)["input_ids"]
        n = min(max_windows, len(ids) // self.context)
        if n == 0:
            raise UsageError(f"--text: {len(ids)} tokens is shorter than one window of {self.context}; give more text")
        tokens = torch.tensor(ids[:n * self.context]).reshape(n, self.context)
        seen: dict[int, torch.Tensor] = {}
        hooks = [_module(self.layers[layer], self.norm_path).register_forward_pre_hook(
            lambda _module, args, layer=layer: seen.__setitem__(layer, args[0].detach().float()))
            for layer in layers]
        try:
            with torch.no_grad():
                self.model(input_ids=tokens)
        finally:
            for hook in hooks:
                hook.remove()
        return {layer: seen[layer].numpy() for layer in layers}


def open_checkpoint(path: Path) -> HFModel:
    """A local Hugging Face checkpoint directory (config.json, weights, tokenizer files), or a UsageError."""
    path = Path(path)
    try:
        import transformers
    except ImportError:
        raise UsageError(f"--checkpoint: {path} is a Hugging Face checkpoint, which needs transformers; "
                         "pip install 'ffnbench[hf]'") from None
    quiet(transformers)
    weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
    if not weights:
        raise UsageError(f"--checkpoint: {path} has config.json but no weights (model.safetensors); "
                         "save the model with save_pretrained into it")
    try:
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise UsageError(f"--checkpoint: {path}/config.json does not load ({_first_line(e)}); save the model with "
                         "save_pretrained") from None
    if config.model_type not in FAMILIES:
        raise UsageError(f"--checkpoint: model type '{config.model_type}' is not one ffnbench knows the FFN norm of; "
                         f"known: {', '.join(FAMILIES)}")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        raise UsageError(f"--checkpoint: no usable tokenizer in {path} ({_first_line(e)}); save the model's "
                         "tokenizer with save_pretrained beside it") from None
    try:
        model = transformers.AutoModel.from_pretrained(path, local_files_only=True).eval()
    except (OSError, ValueError, RuntimeError) as e:
        raise UsageError(f"--checkpoint: the weights in {path} do not load ({_first_line(e)}); re-save them with "
                         "save_pretrained") from None
    layer_path, norm_path = FAMILIES[config.model_type]
    # One hash over the shards' own hashes: each file is read in chunks, never whole.
    digest = hashlib.sha256("".join(sha256_file(file) for file in weights).encode()).hexdigest()
    source = {"kind": "hf", "name": path.name, "model_type": config.model_type,
              "weights": [file.name for file in weights], "sha256": digest}
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", CONTEXT)
    return HFModel(model, tokenizer, list(_module(model, layer_path)), norm_path, min(CONTEXT, positions), source)


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:160]


def quiet(transformers) -> None:
    """transformers draws progress bars while loading and saving and warns about config details; the
    capture's own lines say what happened. Errors still show."""
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _module(root: torch.nn.Module, dotted: str) -> torch.nn.Module:
    for part in dotted.split("."):
        root = getattr(root, part)
    return root
