"""Tiny Hugging Face-format checkpoints (GPT-2, BERT, Llama), built here by transformers without a
download: seeded random weights, a word-level tokenizer over a given text. For trying the
"Your own model" commands on a fresh clone, and for the tests.

    python -m ffnbench.bench.traffic.tiny_hf OUT_DIR [--text FILE]    # OUT_DIR/gpt2, OUT_DIR/bert, OUT_DIR/llama
"""

import argparse
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ffnbench.bench.traffic.tiny_hf",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("out", help="a new directory for gpt2/, bert/ and llama/")
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
    except UsageError as e:
        print(f"tiny_hf: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
