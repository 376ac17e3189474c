"""Users' whole models (bench/traffic/whole_model.py, models/real_lm.py): tiny checkpoints of each
family and a tiny GGUF written the way llama.cpp's converter writes one, rebuilt and checked against
transformers' own forward; the tokenizer's byte counts; what bad input gets."""

import shutil
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from ffnbench.bench.traffic import tiny_hf, whole_model
from ffnbench.errors import UsageError

pytest.importorskip("transformers", reason="whole Hugging Face models need the [hf] extra")
pytest.importorskip("gguf", reason="GGUF files need the [hf] extra's gguf")

TEXT = (Path(sysconfig.get_paths()["stdlib"]) / "os.py").read_text()


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, tuple[Path, torch.nn.Module]]:
    """family -> (checkpoint directory, the transformers model saved there)."""
    root = tmp_path_factory.mktemp("causal")
    return {family: (root / family, tiny_hf.build_causal(family, root / family, TEXT, seed=i))
            for i, family in enumerate(tiny_hf.CAUSAL_FAMILIES)}


def _logits(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=tokens).logits if hasattr(model, "config") else model(tokens)


@pytest.mark.parametrize("family", tiny_hf.CAUSAL_FAMILIES)
def test_every_family_rebuilds_as_transformers_computes_it(checkpoints, family):
    path, hf = checkpoints[family]
    loaded = whole_model.load(path, f"[model.{family}]", context=32)
    tokens = torch.randint(0, loaded.model.cfg.vocab, (2, 32), generator=torch.Generator().manual_seed(5))
    assert torch.allclose(_logits(loaded.model, tokens), _logits(hf, tokens), atol=1e-5)
    assert loaded.model.cfg.design == ("A" if family == "gpt2" else "B")
    assert loaded.source["family"] == family and len(loaded.source["sha256"]) == 64
    assert whole_model.family_of(path, "x") == family


def test_a_gguf_in_llama_cpp_layout_loads_as_the_model_it_was_written_from(tmp_path, checkpoints):
    """The query and key weights are written permuted (llama.cpp's rotary layout): only undoing it
    gives transformers' logits back; a Q8_0 tensor dequantizes to within its grid."""
    _, hf = checkpoints["llama"]
    tokenizer = tiny_hf.bpe_tokenizer(TEXT)
    tiny_hf.write_gguf(hf, tokenizer, tmp_path / "exact.gguf")
    tokens = torch.randint(0, 400, (1, 32), generator=torch.Generator().manual_seed(6))
    exact = whole_model.load(tmp_path / "exact.gguf", "[model.g]", context=32)
    assert torch.allclose(_logits(exact.model, tokens), _logits(hf, tokens), atol=1e-5)
    assert exact.source["kind"] == "gguf" and exact.source["tensor_types"] == ["F32"]
    assert whole_model.family_of(tmp_path / "exact.gguf", "x") == "llama"
    assert exact.encode("def f(x):\n    return x")[0].tolist() == tokenizer.encode("def f(x):\n    return x").ids

    tiny_hf.write_gguf(hf, tokenizer, tmp_path / "q8.gguf", {"blk.1.ffn_up.weight": "Q8_0"})
    q8 = whole_model.load(tmp_path / "q8.gguf", "[model.g]", context=32)
    assert q8.source["tensor_types"] == ["F32", "Q8_0"]
    up, theirs = q8.model.blocks[1].ffn.mlp.up.weight, hf.model.layers[1].mlp.up_proj.weight
    step = theirs.abs().reshape(-1, 32).max(dim=1).values.repeat_interleave(32).reshape(theirs.shape) / 127
    assert not torch.equal(up, theirs)
    assert torch.all((up - theirs).abs() <= step * 0.56)  # half a step, and the rounding of its fp16 scale


def test_bytes_of_tokens_add_up_to_the_text_they_cover(checkpoints):
    loaded = whole_model.load(checkpoints["gpt2"][0], "[model.g]", context=32)
    text = "naïve café — ünïcödé 日本語 text, then ASCII again.\n" + TEXT[:500]
    ids, nbytes = loaded.encode(text)
    assert len(ids) == len(nbytes) and nbytes.sum() == len(text.encode("utf-8"))
    assert np.all(nbytes >= 0) and len(ids) < len(text.encode("utf-8"))


def test_a_bad_whole_model_is_refused_with_the_fix(tmp_path, checkpoints, monkeypatch):
    bert = tmp_path / "bert"
    tiny_hf.build("bert", bert, TEXT)
    with pytest.raises(UsageError, match="architecture 'bert' is not one ffnbench rebuilds"):
        whole_model.load(bert, "[model.b]", 32)

    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(checkpoints["llama"][0], no_tokenizer)
    for file in no_tokenizer.glob("tokenizer*"):
        file.unlink()
    with pytest.raises(UsageError, match="no usable tokenizer"):
        whole_model.load(no_tokenizer, "[model.n]", 32)

    tiny_hf.write_gguf(checkpoints["llama"][1], tiny_hf.bpe_tokenizer(TEXT), tmp_path / "q81.gguf",
                       {"blk.0.ffn_down.weight": "Q8_1"})
    with pytest.raises(UsageError, match="cannot be dequantized by gguf .*Q8_1"):
        whole_model.load(tmp_path / "q81.gguf", "[model.q]", 32)

    with pytest.raises(UsageError, match="not the 000000000000"):
        whole_model.load(checkpoints["llama"][0], "[model.l]", 32, sha256="0" * 64)

    monkeypatch.setattr(whole_model, "available_bytes", lambda: 1_000_000)  # the tiny model needs 1.4 MB
    with pytest.raises(UsageError, match=r"0.0442M parameters need about .* GB to load and export in fp32"):
        whole_model.load(checkpoints["llama"][0], "[model.l]", 32)
