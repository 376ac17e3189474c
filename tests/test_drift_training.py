"""Drift during training: the drawn drifts are a scenario's own, on the share asked, at the layers asked."""

import numpy as np
import pytest
import torch

from ffnbench.bench.traffic.drift_training import DriftSampler, clean_feature_std, probe_windows
from ffnbench.bench.traffic.scenarios import NAMED, Scenario
from ffnbench.errors import UsageError
from ffnbench.models import corpus
from ffnbench.models.lm import CausalLM, LMConfig
from ffnbench.models.train import TrainConfig, train

SMALL = LMConfig(design="B", d_model=32, n_layers=2, n_heads=2, d_ff=64, context=16)


def sampler(scenarios, share=0.5, seed=0):
    probe = probe_windows(corpus.prose().split_validation()[0], SMALL.context)
    return DriftSampler(scenarios, share, "ffn-input", probe, seed)


def test_a_share_of_requests_carries_a_drawn_drift_and_the_rest_none():
    model = CausalLM(SMALL)
    draw = sampler({"production": NAMED["production"]}, share=0.5)
    drifts = [draw(step, model, 64)[0] for step in range(4)]
    drifted = np.concatenate([(d.offset.abs().sum(dim=(0, 2, 3)) > 0).numpy() for d in drifts])
    assert 0.35 < drifted.mean() < 0.65  # about half of 256 requests
    d = drifts[0]
    clean = ~(d.offset.abs().sum(dim=(0, 2, 3)) > 0)
    assert torch.all(d.scale[clean] == 1) and torch.all(d.gain[:, clean] == 1)
    # A drifted request's offset is the scenario's shift in units of each feature's clean std.
    r = int(np.flatnonzero(~clean.numpy())[0])
    std = clean_feature_std(model, draw.probe)
    units = d.offset[:, r, 0].numpy() / std
    assert np.mean(units[0] > 0) == pytest.approx(0.9, abs=0.15) and 2.0 < units[0][units[0] > 0].mean() < 6.0


def test_massive_channels_start_at_their_layer():
    model = CausalLM(SMALL)
    drift, _ = sampler({"m": Scenario("m", massive_channels=2, massive_from_layer=1)}, share=1.0)(0, model, 4)
    assert torch.all(drift.offset[0] == 0) and torch.count_nonzero(drift.offset[1, 0, 0]) == 2


def test_bad_drift_settings_are_refused():
    with pytest.raises(UsageError, match="--drift-share: must lie in"):
        sampler({"production": NAMED["production"]}, share=0.0)
    with pytest.raises(UsageError, match="--drift: name at least one scenario"):
        sampler({})


def test_a_drift_trained_model_records_its_drift_and_trains_under_it(tmp_path):
    cfg = TrainConfig(steps=3, batch=4, eval_batch=512)  # few scoring calls over the held-out text
    m = train(SMALL, cfg, tmp_path / "m", progress=False, drift=sampler({"production": NAMED["production"]}, share=1.0))
    plain = train(SMALL, cfg, tmp_path / "plain", progress=False)
    assert m["drift"]["share"] == 1.0 and m["drift"]["scenarios"]["production"]["mean_shift"] == 4.0
    # The same seed, data and steps: the drifted steps' losses are those of other inputs.
    assert m["losses"][0] != plain["losses"][0] and all(np.isfinite(m["losses"]))
