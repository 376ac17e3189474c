"""Whole-model cells of a user's causal LM ([model.NAME] with `checkpoint` or `gguf`): the lm recipes
on its FFN sublayers, under the lm scenarios, in token windows of its own tokenizer.

The pair's machinery throughout (lm_cells.LMSubject: drift per layer in units of each feature's clean
std, draws, references, artifacts, ONNX export by module path), with what a tokenizer changes: the
windows are tokens, bits per byte divide a window's bits by the UTF-8 bytes its targets cover, the
trivial reference is the token frequencies of the training split. The figures are the prediction
ones (llama.cpp's among them) and, on fp32 cells, the drift statistics and massive activations at
every FFN input; no per-layer FFN taps (thirty layers of them over a batch are gigabytes).
"""

import functools
from pathlib import Path

import numpy as np

from ffnbench.bench.cells.cell_record import artifact_summary, finite, recording
from ffnbench.bench.cells.lm_cells import TAP_WINDOWS, LMSubject, mitigation_record, predictions, windows
from ffnbench.bench.cells.lm_metrics import order0_bits_per_byte, window_bits
from ffnbench.bench.traffic import whole_model
from ffnbench.bench.traffic.drift_stats import drift_stats, massive_activations
from ffnbench.bench.traffic.model_specs import WholeSpec
from ffnbench.bench.traffic.scenarios import TEXT_DOMAINS
from ffnbench.errors import UsageError
from ffnbench.models import corpus

# A user's model reads 4 windows a call (its logits are 25 MB a window at a 49,152-token vocabulary),
# and measures its feature stds on 16 windows (the pair's 64 would be 1.6 GB of logits).
MAX_BATCH = 4
STD_WINDOWS = 16


@functools.cache
def load(spec: WholeSpec) -> whole_model.WholeModel:
    """The spec's model, loaded once a process (the run's check loads it first, its cells reuse it)."""
    return whole_model.load(spec.path, spec.where, spec.context, spec.sha256)


@functools.cache
def _domain_text(domain: str, text_path: Path | None) -> tuple[str, str]:
    """(training split, held-out split) of a domain as text: the user's file for prose where given."""
    data = (np.frombuffer(text_path.read_bytes(), np.uint8) if text_path and domain == "prose"
            else corpus.load(domain).data)
    cut = int(len(data) * (1 - corpus.HELD_OUT))
    return tuple(part.tobytes().decode("utf-8", errors="ignore") for part in (data[:cut], data[cut:]))


class WholeSubject(LMSubject):
    """A user's whole model: its RealLM, tokenizer, texts in token windows, references, artifacts."""

    max_batch = MAX_BATCH
    std_windows = STD_WINDOWS
    hold_one_runnable = True
    candidate_taps = TAP_WINDOWS

    def __init__(self, config, name: str, artifacts: Path | None = None):
        self.spec = config.whole_spec(name)
        self.whole = load(self.spec)
        model = self.whole.model
        if self.spec.design and self.spec.design != model.cfg.design:
            raise UsageError(f"{self.spec.where}: design {self.spec.design}, but a {model.cfg.family} model's FFNs "
                             f"are design {model.cfg.design}; drop `design` or correct it")
        self._setup(config, model.cfg.design, model, artifacts, None, config.whole.windows)
        self.name, self.seed, self.kind = name, 0, "whole"
        self.checkpoint = {"name": name, **model.source, "config": model.cfg.to_dict()}
        self._tokens: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}

    def encoded(self, domain: str, part: str) -> tuple[np.ndarray, np.ndarray]:
        if (domain, part) not in self._tokens:
            train, held_out = _domain_text(domain, self.spec.text_path)
            self._tokens[domain, part] = self.whole.encode(held_out if part == "held_out" else train)
        return self._tokens[domain, part]

    def _windows(self, scenario: str, part: str, n: int | None) -> tuple[np.ndarray, np.ndarray]:
        domain = TEXT_DOMAINS.get(scenario, "prose")
        ids, nbytes = self.encoded(domain, part)
        n = n or self.n_windows
        label = f"{domain} ({'held out' if part == 'held_out' else 'calibration'}) in {self.name}'s tokens"
        tokens = windows(ids, n, self.cfg.context, label, unit="tokens")
        covered = windows(nbytes, n, self.cfg.context, label, unit="tokens")[:, 1:].sum(axis=1)
        return tokens, covered

    def text(self, scenario: str, part: str = "held_out", n: int | None = None) -> np.ndarray:
        return self._windows(scenario, part, n)[0]

    def bits(self, logits: np.ndarray, scenario: str) -> np.ndarray:
        tokens, covered = self._windows(scenario, "held_out", None)
        return window_bits(logits, tokens[:, 1:], covered)

    def order0_bits(self, scenario: str) -> float:
        train, _ = self.encoded(TEXT_DOMAINS.get(scenario, "prose"), "train")
        tokens, covered = self._windows(scenario, "held_out", None)
        return order0_bits_per_byte(train, tokens[:, 1:], self.cfg.vocab, covered)


def check(config) -> None:
    """Each whole model loads (file, hash, architecture, memory, tokenizer) and each text it reads holds
    a window, before a run writes anything."""
    for name in (s for s in config.downstream.scenarios if TEXT_DOMAINS.get(s) == "prose" and config.whole.models):
        raise UsageError(f"[downstream] scenarios: '{name}' is the prose a whole model reads as clean text, not a "
                         "drift; drop it")
    for name in config.whole.models:
        subject = WholeSubject(config, name)
        for scenario in {"clean", *(s for s in config.downstream.scenarios if s in TEXT_DOMAINS)}:
            for part in ("held_out", "train"):
                subject.text(scenario, part, n=1)  # a window's worth of tokens, or a UsageError
                if subject.encoded(TEXT_DOMAINS.get(scenario, "prose"), part)[0].max(initial=0) >= subject.cfg.vocab:
                    raise UsageError(f"{subject.spec.where}: its tokenizer gives ids beyond the model's vocabulary of "
                                     f"{subject.cfg.vocab}; give the tokenizer saved with the model")


def measure_whole(subject: WholeSubject, cell) -> dict:
    record = {"key": cell.key, "kind": "whole", "design": cell.design, "model": cell.model, "recipe": cell.recipe,
              "scenario": cell.scenario, "calibration": cell.calibration, "inject": subject.inject}
    with recording(record):
        got = predictions(subject, cell)
        record |= {"status": "ok", "metrics": finite(got.values), "draws": subject.draws(cell.scenario),
                   "reference": subject.reference_health(cell.scenario), "windows": got.windows(),
                   "checkpoint": subject.checkpoint if cell.recipe == "fp32" else
                   {k: subject.checkpoint[k] for k in ("name", "sha256")},
                   "runtime": got.runtime, "artifact": artifact_summary(got.manifest)}
        if cell.recipe == "fp32":  # what each FFN norm sees under this scenario, and its massive channels
            states = [got.ref_taps[f"ffn_in.{i}"][:TAP_WINDOWS] for i in range(subject.cfg.n_layers)]
            record["drift_stats"] = [finite(drift_stats(h, subject.clean_moments[i])) for i, h in enumerate(states)]
            record["massive"] = [massive_activations(h) for h in states]
        record |= mitigation_record(subject, cell)
    return record
