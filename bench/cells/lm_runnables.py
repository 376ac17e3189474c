"""Runnables of a whole language model: run(feeds) -> (logits, taps), in torch (fp32, half-precision
FFNs, bitsandbytes FFNs) or ONNX Runtime (the exported model, its FFN MatMuls quantized or not).

Feeds are the exported graph's inputs (`export.lm_export.feeds`): byte ids and a drift.
"""

import logging
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from ffnbench.export.lm_export import LOGITS
from ffnbench.models.lm import CausalLM, Drift
from ffnbench.quant import Artifact


class LMTorch:
    def __init__(self, model: CausalLM, inject: str, runtime: str = "torch", threads: int = 2, device: str = "cpu"):
        self.model, self.inject, self.runtime = model.eval(), inject, runtime
        self.threads, self.device = threads, device
        logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)  # see runnables.py

    def run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)

        def tensor(name: str) -> torch.Tensor:
            return torch.from_numpy(feeds[name]).to(self.device)

        drift = Drift(tensor("drift_gain"), tensor("drift_offset"), tensor("drift_scale"))
        taps: dict = {}
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logits = self.model(tensor("tokens"), drift, self.inject, taps)
        return logits.float().cpu().numpy(), {k: v.float().cpu().numpy() for k, v in taps.items()}

    def describe(self) -> dict:
        return {"runtime": self.runtime, "device": self.device, "threads": self.threads, "inject": self.inject}


class LMOrt:
    def __init__(self, path: Path, threads: int = 2):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        # A batched call returns taps of many windows (~3.5 MB each); the arena would keep that peak
        # for the session's life, and a subject holds a session per recipe.
        opts.enable_cpu_mem_arena = False
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.threads = threads

    def run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        got = dict(zip(self.outputs, self.session.run(self.outputs, feeds), strict=True))
        return got.pop(LOGITS), got

    def describe(self) -> dict:
        return {"runtime": "ort", "device": "cpu", "provider": "CPUExecutionProvider", "threads": self.threads}


def lm_runnable_for(artifact: Artifact, inject: str, threads: int, device: str = "cpu") -> LMTorch | LMOrt:
    """The fp32 and ORT artifacts run their ONNX file; the others their module."""
    if artifact.runtime == "ort":
        return LMOrt(artifact.path, threads)
    return LMTorch(artifact.module, inject, artifact.runtime, threads, device)


def evaluate(runnable: LMTorch | LMOrt, batches: list[dict]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Logits and taps over all batches, concatenated along requests."""
    results = [runnable.run(feeds) for feeds in batches]
    if len(results) == 1:  # one call: nothing to join (the taps are hundreds of MB to copy)
        return results[0]
    logits = np.concatenate([r[0] for r in results])
    return logits, {name: np.concatenate([r[1][name] for r in results]) for name in results[0][1]}
