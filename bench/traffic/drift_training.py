"""Drift during training: a share of each step's requests carries a drawn drift, as the customer
domains that drift in production would, so that a model learns to live with it (`ffnbench train
--drift production,massive`).

Each drifted request draws its own scenario (among those named), shift, gain and magnitude, exactly
as a whole-model cell draws them (`Scenario.affine`, offsets in units of each feature's clean std at
that layer, massive channels from their layer on); the clean stds are re-measured on a fixed batch
of training text every `REFRESH` steps, since the model they describe is changing.
"""

import numpy as np
import torch

from ffnbench.bench.traffic.drift_stats import ffn_input_std
from ffnbench.bench.traffic.scenarios import Scenario, scenario
from ffnbench.errors import UsageError
from ffnbench.models import corpus
from ffnbench.models.lm import INJECT, CausalLM, Drift

REFRESH = 50  # steps between measurements of the clean feature stds
PROBE = 16  # training windows the stds are measured on


class DriftSampler:
    def __init__(self, scenarios: dict[str, Scenario], share: float, inject: str, probe: torch.Tensor, seed: int):
        if not scenarios:
            raise UsageError("--drift: name at least one scenario, e.g. --drift production")
        if not 0 < share <= 1:
            raise UsageError(f"--drift-share: must lie in (0, 1], got {share}")
        if inject not in INJECT:
            raise UsageError(f"--inject: unknown '{inject}'; choose one of {', '.join(INJECT)}")
        self.scenarios, self.share, self.inject, self.probe = scenarios, share, inject, probe[:PROBE, :-1]
        self.rng = np.random.default_rng([seed, 24])
        self.feature_std: np.ndarray | None = None

    def __call__(self, step: int, model: CausalLM, batch: int) -> tuple[Drift, str]:
        cfg = model.cfg
        if step % REFRESH == 0:
            self.feature_std = clean_feature_std(model, self.probe)
        gain, offset, scale = np.ones((cfg.n_layers, batch, 1, cfg.d_model)), np.zeros(
            (cfg.n_layers, batch, 1, cfg.d_model)), np.ones(batch)
        names = list(self.scenarios)
        for r in np.flatnonzero(self.rng.random(batch) < self.share):
            spec = self.scenarios[names[self.rng.integers(len(names))]]
            g, o, s = spec.affine(1, cfg.d_model, int(self.rng.integers(2**31)))
            layers = np.arange(cfg.n_layers)[:, None]
            shift = o[None] + spec.massive_offset(cfg.d_model)[None] * (layers >= spec.massive_from_layer)
            gain[:, r, 0], offset[:, r, 0], scale[r] = g[None], shift * self.feature_std, s[0]
        return Drift(_tensor(gain), _tensor(offset), _tensor(scale)), self.inject

    def describe(self) -> dict:
        return {"scenarios": {name: spec.describe() for name, spec in self.scenarios.items()}, "share": self.share,
                "inject": self.inject, "refresh_steps": REFRESH, "probe_windows": PROBE}


def _tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x.astype(np.float32))


def probe_windows(data: np.ndarray, context: int) -> torch.Tensor:
    """PROBE windows of context + 1 bytes evenly spread over `data` (training text)."""
    starts = np.linspace(0, len(data) - context - 1, PROBE).astype(np.int64)
    return torch.from_numpy(np.stack([data[s:s + context + 1] for s in starts]).astype(np.int64))


@torch.no_grad()
def clean_feature_std(model: CausalLM, tokens: torch.Tensor) -> np.ndarray:
    """(n_layers, d_model): each feature's std at each FFN input on clean `tokens`."""
    was_training = model.training
    model.eval()
    taps: dict = {}
    model(tokens, taps=taps)
    model.train(was_training)
    return ffn_input_std(taps, model.cfg.n_layers)


def training_sampler(names: list[str], share: float, inject: str, context: int, seed: int,
                     text: str = "prose") -> DriftSampler:
    """The sampler `ffnbench train --drift` trains under: the named scenarios on `share` of the
    requests, their offsets in units of the clean feature std probed on the training text of corpus
    `text`."""
    scenarios = {name: scenario(name) for name in names if name}
    return DriftSampler(scenarios, share, inject, probe_windows(corpus.load(text).split_validation()[0], context), seed)
