"""Sublayer cells: one (design, model size)'s FFN block as a subject, and the accuracy cell it measures."""

from pathlib import Path

import numpy as np
import torch

from ffnbench import files
from ffnbench.bench.cells import latency_cells, metrics
from ffnbench.bench.cells.cell_record import artifact_summary, finite, recording
from ffnbench.bench.cells.runnables import Runnable, TorchRunnable, ort_has_cuda, runnable_for
from ffnbench.bench.cells.subject import BaseSubject
from ffnbench.bench.machine import u8s8
from ffnbench.errors import UsageError
from ffnbench.export import NATIVE_OPSET, export_onnx
from ffnbench.models import FFNBlock
from ffnbench.quant import Calibration, Skipped, mitigations
from ffnbench.versions import stack_versions


class Subject(BaseSubject):
    """One (design, model size): its fp32 block and export, inputs, references and artifacts."""

    def __init__(self, config, design: str, model: str, artifacts: Path):
        block = config.build_block(model, design).to(config.device)
        super().__init__(config, block.cfg.design, block, artifacts)
        self.head = metrics.readout_head(block.cfg.d_model, seed=config.seed)
        self.reference_runnable = TorchRunnable(block, threads=config.threads, device=config.device)
        self._inputs: dict[str, np.ndarray] = {}
        self._references: dict[str, tuple] = {}

    @property
    def block(self) -> FFNBlock:
        return self.model

    def export_identity(self, block: FFNBlock):
        """`block` (the subject's, or a mitigated copy: its source names the transform) in ONNX, with taps."""
        cfg = block.cfg
        identity = {"config": cfg.to_dict(), "source": block.source, "opset": NATIVE_OPSET, "taps": True,
                    "ffnbench": stack_versions()["ffnbench"]}
        return f"export-{cfg.design}-{files.digest(identity)}", lambda out: export_onnx(block, out, taps=True)

    def needs_export(self, runtime: str) -> bool:
        """Every artifact is named by the export's hash, a module recipe's too (as it always was)."""
        return True

    def source_identity(self, block: FFNBlock, export) -> dict:
        return {"export": export.manifest["sha256"]}

    def check_runtime(self, runtime: str) -> None:
        if self.config.device == "cuda" and runtime == "ort" and not ort_has_cuda():
            raise Skipped("ONNX Runtime here has no CUDAExecutionProvider (install onnxruntime-gpu)")

    def mitigate(self, mods: tuple, settings, calibration: str) -> FFNBlock:
        cal = self.calibration(calibration)
        data = torch.from_numpy(cal.data).to(self.config.device)
        return mitigations.mitigate(self.block, mods, settings, data, mitigations.block_forward, cal.describe())

    def runnable_for(self, artifact) -> Runnable:
        prefer = "torch" if self.config.device == "cuda" and not ort_has_cuda() else "ort"
        return runnable_for(artifact, prefer=prefer, threads=self.config.threads, device=self.config.device)

    def inputs(self, name: str) -> np.ndarray:
        if name not in self._inputs:
            cfg = self.config
            self._inputs[name] = cfg.scenario(name).generate(cfg.n_requests, cfg.seq_len, self.block.cfg.d_model,
                                                             seed=cfg.seed)
        return self._inputs[name]

    def batches(self, name: str) -> list[np.ndarray]:
        """Mixed-batch scenarios run as one batch (one dynamic range); others one request a call."""
        x = self.inputs(name)
        return [x] if self.config.scenario(name).mixed_batch else [x[i:i + 1] for i in range(len(x))]

    def reference(self, name: str) -> tuple[np.ndarray, dict]:
        if name not in self._references:
            self._references[name] = evaluate(self.reference_runnable, self.batches(name))
        return self._references[name]

    def drift_db(self, name: str) -> float | None:
        base = self.config.scenario(name).unshifted()
        if base is None:
            return None
        x_base = base.generate(self.config.n_requests, self.config.seq_len, self.block.cfg.d_model,
                               seed=self.config.seed)
        shifted, _ = self.reference(name)
        base_out = self.reference_runnable.run(x_base)
        if self.block.cfg.residual:  # the sublayer's own contribution, without the input it adds back
            shifted, base_out = shifted - self.inputs(name), base_out - x_base
        return metrics.fp32_drift_db(base_out, shifted)

    def calibration(self, name: str) -> Calibration:
        cfg = self.config
        data = cfg.scenario(name).calibration_data(cfg.calibration_requests, cfg.seq_len, self.block.cfg.d_model,
                                                   seed=cfg.seed)
        return Calibration(name, data)

    def timed(self, recipe: str, calibration: str | None) -> tuple[Runnable, dict]:
        """What latency times (an ONNX artifact without its tap outputs), made once for every shape.
        The accuracy session it replaces is dropped (a run's accuracy cells come first): with both
        kept, examples/latency-7b.toml peaked at 16.8 GB of RSS; with one, 11.4 GB."""
        key = ("timed", recipe, calibration)
        if key not in self._runnables:
            runnable, manifest = self.runnable(recipe, calibration)
            timed = latency_cells.timing_runnable(runnable, self.config.threads, self.config.latency.ort_spinning)
            self._runnables[key] = (timed, manifest)
            if timed is not runnable:
                del self._runnables[(recipe, calibration)]
        return self._runnables[key]


def evaluate(runnable: Runnable, batches: list[np.ndarray]) -> tuple[np.ndarray, dict | str]:
    """Output and taps over all batches, concatenated along requests; taps are a reason if unavailable."""
    try:
        per_batch = [runnable.run_with_taps(b) for b in batches]
    except UsageError as e:  # an artifact without tap outputs says so before it runs anything
        return np.concatenate([runnable.run(b) for b in batches]), str(e)
    taps = [t for _, t in per_batch]
    return np.concatenate([y for y, _ in per_batch]), {k: np.concatenate([t[k] for t in taps]) for k in taps[0]}


def measure(subject: Subject, cell) -> dict:
    """An accuracy cell: the recipe's output and taps against fp32 torch's on the scenario's requests."""
    record = {"key": cell.key, "kind": "accuracy", "design": cell.design, "model": cell.model, "recipe": cell.recipe,
              "scenario": cell.scenario, "calibration": cell.calibration}
    with recording(record):
        runnable, manifest = subject.runnable(cell.recipe, cell.calibration)
        ref, ref_taps = subject.reference(cell.scenario)
        batches = subject.batches(cell.scenario)
        y, taps = evaluate(runnable, batches)
        values = metrics.output_metrics(ref, y, subject.head)
        record["requests"] = metrics.per_request(ref, y)
        values["fp32_drift_db"] = subject.drift_db(cell.scenario) if cell.recipe == "fp32" else None
        values["u8s8_saturation_rate"] = None
        int8 = {"MatMulInteger", "DequantizeLinear"} & set(manifest.get("ops", {}))
        if not isinstance(taps, str) and int8 and hasattr(runnable, "path"):
            sizes = np.cumsum([len(b) for b in batches])[:-1]
            calls = [dict(zip(taps, parts, strict=True))
                     for parts in zip(*(np.split(t, sizes) for t in taps.values()), strict=True)]
            values["u8s8_saturation_rate"] = u8s8.saturation_rate(runnable.path, calls)
        if isinstance(taps, str):
            values |= dict.fromkeys(metrics.TAP_METRICS)
            record["taps_unavailable"] = taps
        else:
            values |= metrics.tap_metrics(ref_taps, taps, subject.config.delta)
        record |= {"status": "ok", "metrics": finite(values), "runtime": runnable.describe(),
                   "artifact": artifact_summary(manifest)}
        if subject.config.mitigations_of(cell.recipe):
            record["mitigation"] = subject.mitigation(cell.recipe, cell.calibration)
    return record
