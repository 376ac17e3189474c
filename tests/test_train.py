"""Training: deterministic for a seed, bits per byte in bits, checkpoints written whole; the
committed pair matches its manifests and beats an order-0 byte model on held-out prose."""

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from ffnbench.bench.cells.lm_metrics import order0_bits_per_byte
from ffnbench.errors import UsageError
from ffnbench.files import sha256_file
from ffnbench.models import corpus
from ffnbench.models.lm import CausalLM, LMConfig
from ffnbench.models.pair import load_lm
from ffnbench.models.train import TrainConfig, batches, bits_per_byte, gpt2_init_, parameter_groups, train

SMALL = LMConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, context=16)
TRAINED = Path(__file__).resolve().parents[1] / "models" / "trained"


def test_the_same_seed_gives_the_same_losses_and_another_seed_other_data(tmp_path):
    cfg = TrainConfig(steps=4, batch=2, warmup=1, eval_batch=256)
    first, again = train(SMALL, cfg, tmp_path / "a", progress=False), train(SMALL, cfg, progress=False)
    assert first["losses"] == again["losses"]
    data = corpus.prose().split()[0]
    same = [torch.equal(a, b) for a, b in zip(batches(data, 16, cfg), batches(data, 16, cfg), strict=True)]
    other = [torch.equal(a, b) for a, b in zip(batches(data, 16, cfg), batches(data, 16, replace(cfg, seed=1)),
                                               strict=True)]
    assert all(same) and not any(other)
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["sha256"] == sha256_file(tmp_path / "a" / "model.safetensors")
    assert manifest["corpus"]["sha256"] == corpus.prose().sha256 and len(manifest["losses"]) == 4


def test_an_untrained_model_scores_about_eight_bits_per_byte():
    """Small initial logits predict every byte about equally: log2(256) = 8 bits."""
    _, held_out = corpus.prose().split()
    assert bits_per_byte(CausalLM(SMALL), held_out[:4000], batch=64) == pytest.approx(8.0, abs=0.1)


def test_text_shorter_than_a_context_is_refused():
    with pytest.raises(UsageError, match="shorter than one context of 17 bytes"):
        bits_per_byte(CausalLM(SMALL), np.zeros(10, np.uint8), batch=4)


def test_an_existing_output_is_refused_before_training(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(UsageError, match="already exists"):
        train(SMALL, TrainConfig(steps=1, batch=1), tmp_path / "out", progress=False)


@pytest.mark.parametrize("design", ["A", "B"])
def test_the_committed_models_match_their_manifests_and_beat_order_0(design):
    """Seed 0 of each design re-measured on the whole held-out tenth (the others' hashes are checked
    below): it reproduces its manifest's figure and beats a byte-frequency model by over a bit."""
    folder = TRAINED / "seeds" / design / "0"
    manifest = json.loads((folder / "manifest.json").read_text())
    text = corpus.prose()
    model = CausalLM(LMConfig(**manifest["config"]))
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    train_bytes, held_out = text.split()
    measured = bits_per_byte(model, held_out, batch=64)
    if manifest["corpus"]["sha256"] == text.sha256:  # another Python ships other documentation text
        assert measured == pytest.approx(manifest["held_out_bits_per_byte"], abs=1e-3)
    assert measured < order0_bits_per_byte(train_bytes, held_out) - 1.0
    assert math.isfinite(manifest["losses"][-1]) and (folder / "model.safetensors").stat().st_size < 10e6


@pytest.mark.parametrize("design", ["A", "B"])
def test_gpt2_init_is_the_same_rule_for_every_part_of_both_designs(design):
    """Every matrix N(0, 0.02), the residual branches' output projections 0.02 / sqrt(2 n_layers),
    biases 0, gains 1: at step 0 an FFN adds about what the stream holds (the synthetic
    sublayer initialisation added std 0.6-0.7 to a stream of std 0.03)."""
    cfg = LMConfig(design=design)
    model = CausalLM(cfg)
    gpt2_init_(model, seed=0)
    out_std = 0.02 / (2 * cfg.n_layers) ** 0.5
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            last = name.endswith((".attn.proj", ".mlp.fc2", ".mlp.down"))
            assert module.weight.std().item() == pytest.approx(out_std if last else 0.02, rel=0.1), name
        if isinstance(getattr(module, "bias", None), nn.Parameter):
            assert torch.count_nonzero(module.bias) == 0, name
    assert all(torch.all(b.ffn.norm.weight == 1) for b in model.blocks)
    h = model.embed(torch.arange(128)[None]) + model.pos(torch.arange(128))
    with torch.no_grad():
        ffn_out = model.blocks[0].ffn.branch(h)
        synthetic = CausalLM(cfg).blocks[0].ffn.branch(h)
    assert ffn_out.std() < 2 * h.std() and 10 * h.std() < synthetic.std(), (h.std(), ffn_out.std(), synthetic.std())


def test_gains_and_biases_take_no_weight_decay_unless_asked():
    model = CausalLM(SMALL)
    groups = parameter_groups(model, TrainConfig())
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert all(p.ndim >= 2 for p in groups[0]["params"]) and all(p.ndim == 1 for p in groups[1]["params"])
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in model.parameters())
    assert [g["weight_decay"] for g in parameter_groups(model, TrainConfig(decay_vectors=True))] == [0.1, 0.1]


def test_validation_bytes_are_cut_from_training_and_never_touch_the_held_out_tenth(tmp_path):
    text = corpus.prose()
    train_bytes, validation, held_out = text.split_validation()
    assert np.array_equal(np.concatenate([train_bytes, validation]), text.split()[0])
    assert np.array_equal(held_out, text.split()[1])
    assert len(validation) == int(len(text.data) * corpus.VALIDATION)
    cfg = TrainConfig(steps=2, batch=2, warmup=1, eval_batch=512)
    scored = train(SMALL, cfg, progress=False)
    assert 4 < scored["validation_bits_per_byte"] < 9 and scored["train"]["init"] == "gpt2"
    assert train(SMALL, replace(cfg, validation=False), progress=False)["validation_bits_per_byte"] is None


def test_a_model_trains_on_the_library_and_is_scored_on_its_held_out_documents(tmp_path):
    """--corpus library: batches from its training documents, validation and held-out figures on its
    own parts (not the prose tenth), and the manifest names the corpus it learned."""
    text = corpus.load("library")
    m = train(SMALL, TrainConfig(steps=2, batch=2, warmup=1, eval_batch=4096, corpus="library", validation=False),
              tmp_path / "m", progress=False)
    assert m["corpus"]["name"] == "library" and m["corpus"]["sha256"] == text.sha256
    assert m["train"]["corpus"] == "library" and m["corpus"]["split"] == "by document"
    model, _ = load_lm(tmp_path / "m")
    _, validation, held_out = text.split_validation()
    assert m["held_out_bits_per_byte"] == pytest.approx(bits_per_byte(model, held_out, 4096), abs=1e-6)
    assert len(validation) == m["corpus"]["parts"]["validation"] > 0
    with pytest.raises(UsageError, match="corpus: unknown 'wiki'; choose one of prose, library"):
        TrainConfig(corpus="wiki")


def test_an_unknown_init_is_refused():
    with pytest.raises(UsageError, match="init: unknown 'xavier'; choose one of gpt2, ffn-synthetic"):
        TrainConfig(init="xavier")


@pytest.mark.parametrize("d_ff", [200, 768, 1000])
def test_gpt2_init_gives_both_designs_the_same_shared_weights(d_ff):
    """Whatever the FFN widths (B's parameter-matched width need not match A's count exactly), the
    parts outside the FFN sublayers are drawn alike: the pair differs only in its FFNs."""
    models = {}
    for design in ("A", "B"):
        models[design] = CausalLM(LMConfig(design=design, d_model=64, d_ff=d_ff, n_layers=2, n_heads=2))
        gpt2_init_(models[design], seed=3)
    shared = {k: v for k, v in models["A"].state_dict().items() if ".ffn." not in k}
    other = {k: v for k, v in models["B"].state_dict().items() if ".ffn." not in k}
    assert shared.keys() == other.keys() and all(torch.equal(shared[k], other[k]) for k in shared)


SEEDS = TRAINED / "seeds"


@pytest.mark.parametrize("path", sorted(SEEDS.glob("*/*/manifest.json")), ids=lambda p: "/".join(p.parts[-3:-1]))
def test_every_committed_seed_is_what_its_manifest_says(path):
    """models/trained/seeds/DESIGN/SEED: weights matching their hash, trained with the fair-training
    defaults at the seed its folder names, and loadable as the config it records."""
    manifest = json.loads(path.read_text())
    design, seed = path.parts[-3], int(path.parts[-2])
    assert manifest["sha256"] == sha256_file(path.parent / "model.safetensors")
    assert (manifest["config"]["design"], manifest["config"]["seed"], manifest["train"]["seed"]) == (design, seed, seed)
    assert manifest["train"]["init"] == "gpt2" and manifest["train"]["decay_vectors"] is False
    assert manifest["validation_bits_per_byte"] is not None
    CausalLM(LMConfig(**manifest["config"])).load_state_dict(load_file(str(path.parent / "model.safetensors")))


def test_the_seeds_of_a_design_share_one_learning_rate():
    rates = {}
    for path in SEEDS.glob("*/*/manifest.json"):
        rates.setdefault(path.parts[-3], set()).add(json.loads(path.read_text())["train"]["lr"])
    assert rates and all(len(r) == 1 for r in rates.values()), rates


def test_fine_tuning_starts_from_the_checkpoint_and_records_it(tmp_path):
    start = train(SMALL, TrainConfig(steps=2, batch=2, eval_batch=4), tmp_path / "start", progress=False)
    again = train(SMALL, TrainConfig(steps=1, batch=2, eval_batch=4, lr=1e-12, init_from=str(tmp_path / "start")),
                  tmp_path / "tuned", progress=False)
    assert again["init_from"] == {"path": str(tmp_path / "start"), "sha256": start["sha256"]}
    # A step of lr 1e-12 leaves the weights where the checkpoint had them: the held-out figure too.
    assert again["held_out_bits_per_byte"] == pytest.approx(start["held_out_bits_per_byte"], abs=1e-4)
    with pytest.raises(UsageError, match="holds design A, not B"):
        train(replace(SMALL, design="B"), TrainConfig(steps=1, init_from=str(tmp_path / "start")), progress=False)


def test_a_float16_checkpoint_is_what_its_manifest_measured(tmp_path):
    """Stored in fp16, loaded as the upcast weights: the manifest's held-out figure is theirs."""
    from safetensors.numpy import load_file as load_numpy

    m = train(SMALL, TrainConfig(steps=2, batch=2, eval_batch=4, store_dtype="float16"), tmp_path / "half",
              progress=False)
    stored = load_numpy(str(tmp_path / "half" / "model.safetensors"))
    assert {v.dtype for v in stored.values()} == {np.dtype("float16")} and m["train"]["store_dtype"] == "float16"
    model, _ = load_lm(tmp_path / "half")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert np.array_equal(model.head.weight.detach().numpy(), stored["head.weight"].astype(np.float32))
    _, held_out = corpus.prose().split()
    assert bits_per_byte(model, held_out, 64) == pytest.approx(m["held_out_bits_per_byte"], abs=1e-6)
    with pytest.raises(UsageError, match="store_dtype: unknown 'int8'"):
        TrainConfig(store_dtype="int8")


def test_zero_steps_store_a_checkpoint_again_in_float16(tmp_path):
    """--steps 0 --init-from: the same model rounded to fp16, its training record kept, its figures
    re-measured on the rounded weights, and the fp32 file it came from hashed."""
    from safetensors.numpy import load_file as load_numpy

    start = train(SMALL, TrainConfig(steps=2, batch=2, eval_batch=4), tmp_path / "fp32", progress=False)
    half = train(SMALL, TrainConfig(steps=0, eval_batch=4, init_from=str(tmp_path / "fp32"), store_dtype="float16"),
                 tmp_path / "fp16", progress=False)
    assert half["stored_from"] == {"path": str(tmp_path / "fp32"), "sha256": start["sha256"]}
    assert half["losses"] == start["losses"] and half["train"]["steps"] == 2 and half["sha256"] != start["sha256"]
    original = load_numpy(str(tmp_path / "fp32" / "model.safetensors"))
    stored = load_numpy(str(tmp_path / "fp16" / "model.safetensors"))
    assert all(np.array_equal(stored[k], v.astype(np.float16)) for k, v in original.items())
    model, _ = load_lm(tmp_path / "fp16")
    _, held_out = corpus.prose().split()
    assert bits_per_byte(model, held_out, 64) == pytest.approx(half["held_out_bits_per_byte"], abs=1e-6)
    assert half["held_out_bits_per_byte"] == pytest.approx(start["held_out_bits_per_byte"], abs=0.01)
    with pytest.raises(UsageError, match="0 steps only with --init-from"):
        TrainConfig(steps=0)
