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

from ffnbench.errors import UsageError
from ffnbench.files import sha256_file
from ffnbench.models import corpus
from ffnbench.models.lm import CausalLM, LMConfig
from ffnbench.models.train import TrainConfig, batches, bits_per_byte, train

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


def order0_bits_per_byte(train_bytes: np.ndarray, held_out: np.ndarray) -> float:
    """Cross-entropy of held-out bytes under the training bytes' frequencies (add-one smoothed)."""
    counts = np.bincount(train_bytes, minlength=256) + 1.0
    return float(-np.mean(np.log2(counts[held_out] / counts.sum())))


@pytest.mark.parametrize("design", ["A", "B"])
def test_the_committed_pair_matches_its_manifest_and_beats_order_0(design):
    manifest = json.loads((TRAINED / design / "manifest.json").read_text())
    assert manifest["sha256"] == sha256_file(TRAINED / design / "model.safetensors")
    text = corpus.prose()
    model = CausalLM(LMConfig(**manifest["config"]))
    model.load_state_dict(load_file(str(TRAINED / design / "model.safetensors")))
    train_bytes, held_out = text.split()
    measured = bits_per_byte(model, held_out, batch=64)
    if manifest["corpus"]["sha256"] == text.sha256:  # another Python ships other documentation text
        assert measured == pytest.approx(manifest["held_out_bits_per_byte"], abs=1e-3)
    assert measured < order0_bits_per_byte(train_bytes, held_out) - 1.0
    assert math.isfinite(manifest["losses"][-1]) and (TRAINED / design / "model.safetensors").stat().st_size < 10e6
