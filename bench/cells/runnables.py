"""Runnables: one protocol, run(x) -> y and taps(x) -> dict, over torch, ORT and bitsandbytes."""

import logging
import warnings
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from ffnbench.bench.cells.ort_runnable import OrtRunnable, ort_has_cuda
from ffnbench.models import FFNBlock
from ffnbench.quant import Artifact


class Runnable(Protocol):
    runtime: str
    device: str

    def run(self, x: np.ndarray) -> np.ndarray:
        """Block output for hidden states x (batch, seq, d_model), float32 in and out."""

    def timed_call(self, x: np.ndarray) -> Callable[[], object]:
        """A call on x with its input already where the compute is: what latency times. On a GPU
        it neither copies from nor waits for the host, so the timer must synchronise."""

    def taps(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Intermediate tensors (norm_out, act_in, act_out[, up]) for x."""

    def run_with_taps(self, x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """run(x) and taps(x) from one forward pass: what an accuracy cell needs, at half the cost."""

    def describe(self) -> dict:
        """Settings that affect results or speed, for the cell's record."""


class TorchRunnable:
    """A torch module: the fp32 reference, a half-precision copy, or one with bitsandbytes layers."""

    def __init__(self, module: FFNBlock, runtime: str = "torch", device: str = "cpu", threads: int | None = None):
        self.module, self.runtime, self.device = module.eval(), runtime, device
        # bitsandbytes logs on every int8 call that it casts fp32 activations to fp16; the
        # artifact's manifest records that once, and the log line would cost time in the timed call.
        logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
        self.dtype = next(module.parameters()).dtype if runtime == "torch" else torch.float32
        if threads is not None:
            torch.set_num_threads(threads)
        self.threads = torch.get_num_threads()

    def _input(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(self.device, self.dtype)

    def _forward(self, h: torch.Tensor, taps: dict | None = None) -> torch.Tensor:
        if torch.get_num_threads() != self.threads:  # the pool is global; runnables may differ
            torch.set_num_threads(self.threads)
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self.module.forward_with_taps(h, taps)

    def run(self, x: np.ndarray) -> np.ndarray:
        return self._forward(self._input(x)).float().cpu().numpy()

    def timed_call(self, x: np.ndarray) -> Callable[[], object]:
        h = self._input(x)
        return lambda: self._forward(h)

    def taps(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return self.run_with_taps(x)[1]

    def run_with_taps(self, x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        taps: dict = {}
        y = self._forward(self._input(x), taps)
        return y.float().cpu().numpy(), {k: v.float().cpu().numpy() for k, v in taps.items()}

    def describe(self) -> dict:
        return {"runtime": self.runtime, "device": self.device, "dtype": str(self.dtype).removeprefix("torch."),
                "threads": self.threads}


def runnable_for(artifact: Artifact, prefer: str = "ort", threads: int = 1, device: str = "cpu") -> Runnable:
    """The runnable an artifact runs in: its ONNX file in ORT, or its module in torch/bitsandbytes.

    The fp32 artifact has both; `prefer` picks ("ort" or "torch").
    """
    if artifact.runtime == "ort" and not (prefer == "torch" and artifact.module is not None):
        return OrtRunnable(artifact.path, threads=threads, device=device if ort_has_cuda() else "cpu")
    return TorchRunnable(artifact.module, runtime=artifact.runtime if artifact.runtime != "ort" else "torch",
                         threads=threads, device=device)
