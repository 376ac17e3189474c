"""Tiny Hugging Face-format checkpoints (GPT-2, BERT, Llama; causal GPT-2, Llama, Mistral, Qwen2) and
a tiny GGUF, built here by transformers and gguf without a download: seeded random weights, a
word-level (base models) or byte-level BPE (causal ones) tokenizer over a given text. For trying the
"Your own model" commands on a fresh clone, and for the tests.

    python -m ffnbench.bench.traffic.tiny_hf OUT_DIR [--text FILE]
    # OUT_DIR/{gpt2,bert,llama} (base models, for capture), OUT_DIR/causal-{gpt2,llama,mistral,qwen2}
    # and OUT_DIR/tiny-llama.gguf (whole models)
"""

import argparse
import logging
import sys
import sysconfig
from pathlib import Path

import torch

from ffnbench.bench.traffic import hf_capture
from ffnbench.errors import UsageError

WIDTH, LAYERS, POSITIONS = 32, 2, 256


def configs(vocab: int) -> dict:
    import transformers

    return {
        # GPT-2's default special-token ids (50256) lie outside a tiny vocabulary.
        "gpt2": (transformers.GPT2Model, transformers.GPT2Config(n_layer=LAYERS, n_embd=WIDTH, n_head=2,
                                                                 vocab_size=vocab, n_positions=POSITIONS,
                                                                 bos_token_id=0, eos_token_id=0)),
        "bert": (transformers.BertModel, transformers.BertConfig(hidden_size=WIDTH, num_hidden_layers=LAYERS,
                                                                 num_attention_heads=2, intermediate_size=2 * WIDTH,
                                                                 vocab_size=vocab, max_position_embeddings=POSITIONS)),
        "llama": (transformers.LlamaModel, transformers.LlamaConfig(hidden_size=WIDTH, intermediate_size=2 * WIDTH,
                                                                    num_hidden_layers=LAYERS, num_attention_heads=2,
                                                                    num_key_value_heads=2, vocab_size=vocab,
                                                                    max_position_embeddings=POSITIONS)),
    }


def build(family: str, out: Path, text: str, seed: int = 0) -> torch.nn.Module:
    """Save a tiny `family` model and its tokenizer to `out`; returns the model (eval mode)."""
    try:
        import transformers
        from tokenizers import Tokenizer, models, pre_tokenizers
    except ImportError:
        raise UsageError("tiny checkpoints are built by transformers; pip install 'ffnbench[hf]'") from None
    hf_capture.quiet(transformers)
    words = sorted(set(text.split()))
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", *words])}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    model_class, config = configs(len(words) + 1)[family]
    torch.manual_seed(seed)
    model = model_class(config).eval()
    model.save_pretrained(out)
    transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]").save_pretrained(out)
    return model


CAUSAL_FAMILIES = ("gpt2", "llama", "mistral", "qwen2")


def causal_config(family: str, vocab: int):
    """A tiny *ForCausalLM config of the family: 2 layers, width 32 (grouped key/value heads where the
    family has them), untied head except GPT-2's."""
    import transformers

    rotary = dict(hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=LAYERS, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=POSITIONS, rms_norm_eps=1e-5,
                  tie_word_embeddings=False)
    return {"gpt2": transformers.GPT2Config(n_layer=LAYERS, n_embd=WIDTH, n_head=2, vocab_size=vocab,
                                            n_positions=POSITIONS, bos_token_id=0, eos_token_id=0),
            "llama": transformers.LlamaConfig(**rotary),
            "mistral": transformers.MistralConfig(**rotary),
            "qwen2": transformers.Qwen2Config(**rotary)}[family]


def bpe_tokenizer(text: str, vocab: int = 400):
    """A byte-level BPE tokenizer (GPT-2's kind) trained on `text`: any text encodes, with offsets."""
    from tokenizers import ByteLevelBPETokenizer

    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train_from_iterator([text], vocab_size=vocab, min_frequency=2, show_progress=False)
    return tokenizer


def build_causal(family: str, out: Path, text: str, seed: int = 0) -> torch.nn.Module:
    """Save a tiny causal LM of `family` with a byte-level BPE tokenizer trained on `text` to `out`
    (a checkpoint directory); returns the model (eval mode)."""
    try:
        import transformers
    except ImportError:
        raise UsageError("tiny checkpoints are built by transformers; pip install 'ffnbench[hf]'") from None
    hf_capture.quiet(transformers)
    tokenizer = bpe_tokenizer(text)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(causal_config(family, tokenizer.get_vocab_size())).eval()
    with torch.no_grad():  # biases and norm gains as trained ones are, not zeros and ones: a mapping that
        for name, param in model.named_parameters():  # drops or misplaces one then shows
            if param.dim() == 1:
                param.copy_((1.0 if "weight" in name else 0.0) + 0.2 * torch.randn_like(param))
    model.save_pretrained(out)
    transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer._tokenizer).save_pretrained(out)
    return model


def write_gguf(model: torch.nn.Module, tokenizer, path: Path, stored_as: dict[str, str] | None = None) -> None:
    """A Llama-family model as a GGUF file the way llama.cpp's converter writes it: its tensor names,
    the query and key weights permuted for its rotary layout, a GPT-2 BPE tokenizer in the metadata.
    `stored_as`: tensor name -> GGML type to store it in (F32 otherwise), e.g. {"blk.0.ffn_up.weight": "Q8_0"}."""
    import json

    import gguf
    import numpy as np

    logging.getLogger("gguf").setLevel(logging.WARNING)  # it logs every file it writes
    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("ffnbench tiny llama")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(float(getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_tokenizer_model("gpt2")
    vocab = tokenizer.get_vocab()
    writer.add_token_list([t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])])
    writer.add_token_types([gguf.TokenType.NORMAL] * len(vocab))
    merges = json.loads(tokenizer._tokenizer.to_str())["model"]["merges"]
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)

    def permute(w: np.ndarray, heads: int) -> np.ndarray:  # convert_hf_to_gguf.py's LlamaModel.permute
        return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    parts = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for name, tensor in model.state_dict().items():
        data = tensor.detach().float().numpy()
        if name.startswith("model.layers."):
            layer, rest = name[len("model.layers."):].split(".", 1)
            part, kind = rest.rsplit(".", 1)
            if part == "self_attn.q_proj":
                data = permute(data, cfg.num_attention_heads)
            elif part == "self_attn.k_proj":
                data = permute(data, cfg.num_key_value_heads)
            target = f"blk.{layer}.{parts[part]}.{kind}"
        else:
            target = names[name]
        qtype = gguf.GGMLQuantizationType[(stored_as or {}).get(target, "F32")]
        if qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(target, np.ascontiguousarray(data))
        elif qtype in gguf.quants._type_traits:
            writer.add_tensor(target, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:  # a type gguf cannot (de)quantize: its bytes only, zeros of the right size
            block, size = gguf.GGML_QUANT_SIZES[qtype]
            writer.add_tensor(target, np.zeros((*data.shape[:-1], data.shape[-1] // block * size), np.uint8),
                              raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ffnbench.bench.traffic.tiny_hf",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("out", help="a new directory for the checkpoints")
    parser.add_argument("--text", help="text for the tokenizer's vocabulary (default: the standard library's os.py)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        if out.exists():
            raise UsageError(f"{out} already exists; choose a new directory")
        text = Path(args.text).read_text() if args.text else \
            (Path(sysconfig.get_paths()["stdlib"]) / "os.py").read_text()
        for family in ("gpt2", "bert", "llama"):
            build(family, out / family, text)
            print(f"wrote {out / family} (tiny {family}: {LAYERS} layers, width {WIDTH})")
        for family in CAUSAL_FAMILIES:
            model = build_causal(family, out / f"causal-{family}", text)
            print(f"wrote {out / f'causal-{family}'} (tiny causal {family}: {LAYERS} layers, width {WIDTH})")
            if family == "llama":
                write_gguf(model, bpe_tokenizer(text), out / "tiny-llama.gguf")
                print(f"wrote {out / 'tiny-llama.gguf'} (the causal llama in llama.cpp's GGUF layout)")
    except UsageError as e:
        print(f"tiny_hf: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
