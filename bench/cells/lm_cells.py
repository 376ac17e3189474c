"""Whole-model (lm) cells: one training seed of the committed trained pair under a recipe and a
scenario, on held-out text.

A recipe applies to the FFN sublayers of every block (attention and the head stay fp32). A
synthetic scenario drifts the states entering every FFN norm (`[downstream] inject = "ffn-input"`) or
the residual stream (`"residual"`), its mean shift in units of each feature's std at that layer
(measured on clean text), in `[downstream] draws` independent draws dealt to the windows in turn; a text domain
(`domain-code`) is real drift: other text through the model unchanged. Every metric compares with
fp32 torch of the same model on the same text and drift, and is kept per window too, so that the
report's intervals can resample seeds and windows (analysis/verdicts.py).
"""

import functools
import hashlib
import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ffnbench import files
from ffnbench.bench.cells import lm_metrics, metrics
from ffnbench.bench.cells.cell_record import artifact_summary, finite, recording
from ffnbench.bench.cells.lm_runnables import LMTorch, evaluate, lm_runnable_for
from ffnbench.bench.cells.subject import BaseSubject
from ffnbench.bench.traffic.drift_stats import drift_stats, ffn_input_std, moments
from ffnbench.bench.traffic.scenarios import TEXT_DOMAINS
from ffnbench.errors import UsageError
from ffnbench.export import NATIVE_OPSET, ExportedModel
from ffnbench.export.lm_export import export_lm, feeds
from ffnbench.models import corpus
from ffnbench.models.pair import load_lm, trained_dir
from ffnbench.quant import Skipped, batch_invariant, mitigations, recipe_config
from ffnbench.quant.calibration import LMCalibration
from ffnbench.versions import stack_versions

LM_DESIGNS = ("A", "B")  # the designs the pair was trained in
# Tap metrics and drift statistics read the first windows only: a reference keeps their taps for
# every recipe, and 16 windows (2,048 tokens) a scenario is what they always read.
TAP_WINDOWS = 16
CENTRED = ("A", "ln-swiglu")  # designs whose norm subtracts the mean (LayerNorm)
DRAW_STRIDE = 1000  # draw d of a synthetic drift uses seed + 1000·d (calibration uses seed + 1)
# Clean held-out windows the feature stds (the unit of every offset) are measured on: a fixed count,
# so that a shift is the same drift whatever number of windows a cell reads (matrix or dose cell).
STD_WINDOWS = 64


def windows(data: np.ndarray, n: int, context: int, name: str, unit: str = "bytes") -> np.ndarray:
    """n windows of context + 1 tokens (inputs and next-token targets), evenly spread over `data`."""
    if len(data) < context + 1:
        raise UsageError(f"text {name}: {len(data)} {unit} is shorter than one context of {context + 1} {unit}; "
                         "give more text")
    starts = np.linspace(0, len(data) - context - 1, n).astype(np.int64)
    return np.stack([data[s:s + context + 1] for s in starts]).astype(np.int64)


@functools.cache
def _corpus(name: str) -> corpus.Corpus:
    return corpus.load(name)


def home_corpus(checkpoint: dict) -> str:
    """The corpus a committed model learned (its manifest says): its clean text and held-out windows."""
    return checkpoint["corpus"]["name"]


def check(config) -> None:
    """Everything lm cells read, before a run writes anything: checkpoints by hash, texts by length."""
    models = set(itertools.product(config.downstream.pairs, config.downstream.seeds))
    if config.dose.scenarios:
        models |= set(itertools.product(config.dose.pairs, config.dose.seeds))
    for (kind, seed), design in itertools.product(sorted(models), (d for d in config.designs if d in LM_DESIGNS)):
        model, checkpoint = load_lm(trained_dir(design, seed, kind), design)
        home = home_corpus(checkpoint)
        for name in (s for s in config.downstream.scenarios if TEXT_DOMAINS.get(s) == home):
            raise UsageError(f"[downstream] scenarios: '{name}' is the text the {kind} models learned ({home}), "
                             "their clean text, not a drift; drop it")
        for domain in {home, *(TEXT_DOMAINS[s] for s in config.downstream.scenarios if s in TEXT_DOMAINS)}:
            train, held_out = _corpus(domain).split()
            windows(held_out, 1, model.cfg.context, f"{domain} (held out)")
            windows(train, 1, model.cfg.context, f"{domain} (calibration)")


class LMSubject(BaseSubject):
    """One design and training seed of the trained pair: its checkpoint and export, texts, drifts,
    references, artifacts."""

    user_cache = True  # an export takes 6-8 s on 2 cores, a minute for SmolLM2; its identity names its code
    artifact_prefix = "lm-"
    # Windows a torch or ONNX Runtime call takes at once (None: all): a user's model sets it, whose
    # logits of one window are 25 MB.
    max_batch: int | None = None
    std_windows = STD_WINDOWS
    # A user's model keeps the taps of the first TAP_WINDOWS windows of a candidate only: their taps
    # over every window would not fit beside the references.
    candidate_taps: int | None = None

    def __init__(self, config, design: str, seed: int, artifacts: Path, kind: str = "trained",
                 inject: str | None = None, windows: int | None = None):
        """`inject`: a dose-response cell's injection point (None: the downstream study's); `windows`:
        held-out windows a scenario reads (None: the downstream study's; a dose-response cell reads
        the dose study's)."""
        model, checkpoint = load_lm(trained_dir(design, seed, kind), design)
        name = f"{kind}/{design}/{seed}"
        model.source = {"kind": "checkpoint", "name": name, "sha256": checkpoint["sha256"]}
        self._setup(config, design, model, artifacts, inject, windows or config.downstream.windows)
        self.seed, self.kind = seed, kind
        self.home = home_corpus(checkpoint)
        self.checkpoint = summary(checkpoint, name) | {"corpus_read_sha256": _corpus(self.home).sha256}

    def _setup(self, config, design: str, model, artifacts: Path, inject: str | None, windows: int) -> None:
        super().__init__(config, design, model, artifacts)
        self.inject = inject or config.downstream.inject
        self.n_windows = windows  # held-out windows a scenario reads
        self.cfg = model.cfg
        self.reference_runnable = LMTorch(model, self.inject, threads=config.threads)
        self._references: dict[str, tuple] = {}
        self._health: dict[str, dict] = {}
        self._undrifted: dict[str, np.ndarray] = {}

    def export_identity(self, model):
        """`model` (the subject's, or a mitigated copy) in ONNX, named by the model's identity, its
        injection, the stack and the code that exports it (a change to that code must not reuse an
        older cached export)."""
        identity = {"checkpoint": identity_of(model), "inject": self.inject,
                    "opset": NATIVE_OPSET, "versions": stack_versions(), "code": _export_code_digest()}
        return (f"lm-export-{self.design}-{files.digest(identity)}",
                lambda out: export_lm(model, out, self.inject, model.source))

    def source_identity(self, model, export: ExportedModel | None) -> dict:
        return {"source": export.manifest["sha256"] if export is not None else identity_of(model)}

    def check_runtime(self, runtime: str) -> None:
        if self.config.device == "cuda" and runtime in ("ort", "fp32"):
            raise Skipped("lm cells run ONNX Runtime on the CPU only")

    def runnable_for(self, artifact):
        return lm_runnable_for(artifact, self.inject, self.config.threads, self.config.device)

    home = "prose"  # the corpus the model learned: a synthetic drift is applied over its held-out text

    def text(self, scenario: str, part: str = "held_out", n: int | None = None) -> np.ndarray:
        domain = TEXT_DOMAINS.get(scenario, self.home)
        train, held_out = _corpus(domain).split()
        data = held_out if part == "held_out" else train
        return windows(data, n or self.n_windows, self.cfg.context, domain)

    def bits(self, logits: np.ndarray, scenario: str) -> np.ndarray:
        """Each held-out window's bits per byte under `logits` (a token is a byte)."""
        return lm_metrics.window_bits(logits, self.text(scenario)[:, 1:])

    def order0_bits(self, scenario: str) -> float:
        """Bits per byte of the domain's byte frequencies (its training split) on the held-out windows."""
        train, _ = _corpus(TEXT_DOMAINS.get(scenario, self.home)).split()
        return lm_metrics.order0_bits_per_byte(train, self.text(scenario)[:, 1:])

    @functools.cached_property
    def feature_std(self) -> np.ndarray:
        """(n_layers, d_model): each feature's std at each FFN input on clean held-out prose."""
        tokens = self.text("clean", n=self.std_windows)[:, :-1]
        _, taps = evaluate(self.reference_runnable, self._feeds(None, tokens, self.config.seed, batched=True)[0])
        return ffn_input_std(taps, self.cfg.n_layers)

    @functools.cached_property
    def clean_moments(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each layer's scale-free feature moments at the FFN input on clean prose of the training
        split, TAP_WINDOWS windows: the reference of domain_shift_std, disjoint from the windows any
        cell reads, so that `clean` itself shows the noise floor."""
        tokens = self.text("clean", part="train", n=TAP_WINDOWS)[:, :-1]
        _, taps = evaluate(self.reference_runnable, self._feeds(None, tokens, self.config.seed, batched=True)[0])
        return [moments(taps[f"ffn_in.{i}"]) for i in range(self.cfg.n_layers)]

    def _feeds(self, scenario: str | None, tokens: np.ndarray, seed: int, draws: int = 1,
               batched: bool = False) -> tuple[list[dict], np.ndarray]:
        """The graph inputs for `tokens` under the scenario (None or a text domain: no synthetic drift),
        and the window each of their requests holds. Window i gets draw i % draws of the drift (draw d
        from seed + DRAW_STRIDE·d); a draw's windows go in one call for a mixed batch, else one each.
        `batched`: the runnable's output per request does not depend on its batch (batch_invariant),
        so requests share calls whatever the scenario, for speed alone, at most `max_batch` a call."""
        layers, width, n = self.cfg.n_layers, self.cfg.d_model, len(tokens)
        size = self.max_batch or n
        if scenario is None or scenario in TEXT_DOMAINS:
            no_drift = np.ones((layers, width)), np.zeros((layers, width))
            if batched:
                return [feeds(tokens[i:i + size], *no_drift, np.ones(len(tokens[i:i + size])))
                        for i in range(0, n, size)], np.arange(n)
            return [feeds(tokens[i:i + 1], *no_drift, np.ones(1)) for i in range(n)], np.arange(n)
        spec = self.config.scenario(scenario)
        batches, order = [], []
        for draw in range(min(draws, n)):
            windows_of_draw = np.arange(draw, n, draws)
            g, o, scale = spec.affine(len(windows_of_draw), width, seed + DRAW_STRIDE * draw)
            # The offset is in units of each feature's clean std, measured only where there is one;
            # massive channels carry theirs from massive_from_layer on.
            massive = spec.massive_offset(width)[None] * (np.arange(layers) >= spec.massive_from_layer)[:, None]
            o = o[None] + massive
            gain, offset = np.tile(g, (layers, 1)), o * self.feature_std if o.any() else np.zeros((layers, width))
            if spec.mixed_batch:  # the draw's requests share one call: one dynamic range, as served
                batches.append(feeds(tokens[windows_of_draw], gain, offset, scale))
            elif batched:
                batches += [feeds(tokens[windows_of_draw[i:i + size]], gain, offset, scale[i:i + size])
                            for i in range(0, len(windows_of_draw), size)]
            else:
                batches += [feeds(tokens[w:w + 1], gain, offset, scale[j:j + 1]) for j, w in enumerate(windows_of_draw)]
            order.append(windows_of_draw)
        return batches, np.concatenate(order)

    def draws(self, scenario: str) -> int:
        return 1 if scenario in TEXT_DOMAINS else min(self.config.downstream.draws, self.n_windows)

    def evaluate(self, runnable, scenario: str, taps_kept: int | None = None,
                 batched: bool = False) -> tuple[np.ndarray, dict]:
        """(logits, taps) over the scenario's windows in window order, taps of the first `taps_kept`
        windows only where given; `batched` as for _feeds."""
        batches, order = self._feeds(scenario, self.text(scenario)[:, :-1], self.config.seed, self.draws(scenario),
                                     batched)
        logits, taps = evaluate(runnable, batches)
        back = np.argsort(order)
        kept = back if taps_kept is None else back[:taps_kept]
        return logits[back], {name: value[kept] for name, value in taps.items()}

    def reference(self, scenario: str) -> tuple[np.ndarray, dict]:
        """fp32 torch under the scenario: logits of every window, taps of the first TAP_WINDOWS."""
        if scenario not in self._references:
            self._references[scenario] = self.evaluate(self.reference_runnable, scenario, TAP_WINDOWS, batched=True)
        return self._references[scenario]

    def undrifted_bits(self, scenario: str) -> np.ndarray:
        """fp32 bits per byte of each window of the same text without synthetic drift: what delta_bpb
        is measured from."""
        base = scenario if scenario in TEXT_DOMAINS else "clean"
        if base not in self._undrifted:  # every cell of the text reads it: one log-softmax a text
            self._undrifted[base] = self.bits(self.reference(base)[0], base)
        return self._undrifted[base]

    def reference_health(self, scenario: str) -> dict:
        """What the fp32 reference itself scores under the scenario, recorded in every cell so that a
        verdict can refuse a broken reference whichever recipes ran: its bits per byte, their change
        from the same text undrifted, and a byte-frequency model of the domain's training split on
        the same windows (the trivial model a working language model must beat)."""
        if scenario not in self._health:
            bits = self.bits(self.reference(scenario)[0], scenario)
            self._health[scenario] = {"bits_per_byte": float(bits.mean()),
                                      "delta_bpb": float(np.mean(bits - self.undrifted_bits(scenario))),
                                      "order0_bits_per_byte": self.order0_bits(scenario)}
        return self._health[scenario]

    def release(self) -> None:
        """Drop references and runnables once the subject's cells are done (a reference holds ~70 MB)."""
        super().release()
        for cache in (self._references, self._health, self._undrifted):
            cache.clear()

    def calibration(self, name: str) -> LMCalibration:
        """Training-split text (never the evaluated held-out part) under the scenario's drift, seed + 1."""
        tokens = self.text(name, part="train", n=self.config.calibration_requests)[:, :-1]
        batches, _ = self._feeds(name, tokens, self.config.seed + 1)
        return LMCalibration(name, tuple(f for batch in batches for f in _split(batch)))

    def mitigate(self, mods: tuple, settings, calibration: str) -> torch.nn.Module:
        def forward(model):
            runner = LMTorch(model, self.inject, threads=self.config.threads)
            return lambda request: runner.run(request)[0]

        model = mitigations.mitigate(self.model, mods, settings, self.calibration(calibration).requests, forward,
                                     calibration)
        # The weights' hash stays the checkpoint's; what it is made from names the transform too.
        model.source["identity"] = files.digest({"model": identity_of(self.model),
                                                 "mitigation": model.source["mitigation"]})
        return model


def summary(checkpoint: dict, name: str) -> dict:
    """What a run records of a checkpoint: identity, size, held-out bits per byte, corpus, and its
    training curve in bits per byte averaged over 10-step bins (enough to draw, small to store)."""
    losses = np.asarray(checkpoint["losses"]) / math.log(2)
    bins = [round(float(losses[i:i + 10].mean()), 4) for i in range(0, len(losses), 10)]
    keep = ("sha256", "parameters", "steps", "held_out_bits_per_byte", "corpus", "config")
    return {"name": name, **{k: checkpoint.get(k) for k in keep}, "loss_curve": {"every": 10, "bits": bins}}


def identity_of(model) -> str:
    """What a model is made from: its checkpoint's hash, or the identity a user's model or a
    mitigated copy carries beyond it (config, context, loaders; the transform)."""
    return model.source.get("identity", model.source["sha256"])


def _export_code_digest() -> str:
    """The code an export is made by: a change to it must not reuse an older cached export."""
    from ffnbench.export import lm_export, onnx_export
    from ffnbench.models import layers, lm, real_lm

    digest = hashlib.sha256()
    for module in (lm, real_lm, layers, lm_export, onnx_export):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:16]


def _split(batch: dict) -> list[dict]:
    """A mixed batch's feeds, one request each (the calibrator reads requests one at a time)."""
    n = len(batch["tokens"])
    return [{**batch, "tokens": batch["tokens"][i:i + 1], "drift_scale": batch["drift_scale"][i:i + 1]}
            for i in range(n)]


def _max(values) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return max(finite) if finite else None


@dataclass
class Predictions:
    """What a cell's candidate predicted on the scenario's windows, set against fp32."""

    values: dict  # lm_metrics.prediction_metrics
    per_window: dict | None  # lm_metrics.window_metrics
    taps: dict
    ref_taps: dict
    runtime: dict
    manifest: dict

    def windows(self) -> dict | None:
        """The per-window figures as a record keeps them (7 significant digits)."""
        return self.per_window and {k: [float(f"{x:.7g}") for x in v] for k, v in self.per_window.items()}


def predictions(subject: LMSubject, cell) -> Predictions:
    """The cell's candidate (recipe, calibration) over the scenario's windows, against fp32 torch."""
    runnable, manifest = subject.runnable(cell.recipe, cell.calibration)
    ref_logits, ref_taps = subject.reference(cell.scenario)
    base, params = subject.config.recipe_spec(cell.recipe)
    logits, taps = subject.evaluate(runnable, cell.scenario, subject.candidate_taps,
                                    batched=batch_invariant(recipe_config(base, **params)))
    per_position = lm_metrics.position_figures(ref_logits, logits)
    per_window = lm_metrics.window_metrics(per_position, logits, subject.bits(logits, cell.scenario),
                                           subject.undrifted_bits(cell.scenario))
    return Predictions(lm_metrics.prediction_metrics(per_position, logits, per_window), per_window, taps, ref_taps,
                       runnable.describe(), manifest)


def measure_lm(subject: LMSubject, cell) -> dict:
    record = {"key": cell.key, "kind": "lm", "design": cell.design, "model": cell.model, "pair": subject.kind,
              "seed": subject.seed, "study": "dose" if cell.dose_inject else "downstream",
              "recipe": cell.recipe, "scenario": cell.scenario, "calibration": cell.calibration,
              "inject": subject.inject}
    layers = subject.cfg.n_layers
    with recording(record):
        got = predictions(subject, cell)
        values, taps, ref_taps = got.values, got.taps, got.ref_taps
        spikes = [lm_metrics.spikes(x) for x in lm_metrics.down_inputs(taps, layers)]
        values["spike_ratio"] = _max(s[0] for s in spikes)
        values["spike_token_share"] = _max(s[1] for s in spikes)
        first = {name: value[:TAP_WINDOWS] for name, value in taps.items()}
        pooled = [lm_metrics.pooled_taps(t, layers) for t in (ref_taps, first)]
        values |= metrics.tap_metrics(*pooled, subject.config.delta)
        record |= {"status": "ok", "metrics": finite(values), "draws": subject.draws(cell.scenario),
                   "reference": subject.reference_health(cell.scenario),
                   "windows": got.windows(),
                   "checkpoint": subject.checkpoint if cell.recipe == "fp32" else
                   {k: subject.checkpoint[k] for k in ("name", "sha256")},
                   "layers": {"spike_ratio": finite([s[0] for s in spikes]),
                              "spike_token_share": finite([s[1] for s in spikes]),
                              "norm_positive_fraction": finite([metrics.norm_positive_fraction(taps[f"norm_out.{i}"])
                                                                for i in range(layers)]),
                              **lm_metrics.stage_errors(ref_taps, first, layers)},
                   "runtime": got.runtime, "artifact": artifact_summary(got.manifest)}
        if cell.recipe == "fp32":  # what each FFN norm sees under this scenario, per layer
            record["drift_stats"] = [finite(drift_stats(ref_taps[f"ffn_in.{i}"], subject.clean_moments[i]))
                                     for i in range(layers)]
            centred = subject.design in CENTRED
            record["layers"]["half_norm_overflow"] = [lm_metrics.half_norm_overflow(ref_taps[f"ffn_in.{i}"], centred)
                                                      for i in range(layers)]
        record |= mitigation_record(subject, cell)
    return record


def mitigation_record(subject: LMSubject, cell) -> dict:
    """A mitigated cell's transform as it was set (per layer) and its measured fp32 equivalence."""
    mitigated = subject.config.mitigations_of(cell.recipe)
    return {"mitigation": subject.mitigation(cell.recipe, cell.calibration)} if mitigated else {}

