"""ONNX Runtime sessions as runnables, without torch: a memory probe of an ONNX artifact, forked
where no request needs torch or started afresh, imports only this."""

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from ffnbench.errors import UsageError

OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def ort_has_cuda() -> bool:
    return "CUDAExecutionProvider" in ort.get_available_providers()


class OrtRunnable:
    """An ONNX Runtime CPU session with its thread count and optimisation level set explicitly."""

    runtime = "ort"

    def __init__(self, path: Path, threads: int = 1, optimization: str = "all", spinning: bool = True,
                 device: str = "cpu", profile_prefix: str | None = None):
        opts = ort.SessionOptions()
        if profile_prefix:  # ONNX Runtime's own profiler: session.end_profiling() writes its JSON
            opts.enable_profiling, opts.profile_file_prefix = True, profile_prefix
        opts.intra_op_num_threads = threads
        # ORT's workers spin after each call to catch the next one quickly. Timed round-robin
        # beside torch, that spin takes the cores from the torch call that follows.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = OPT_LEVELS[optimization]
        self.device = device
        self.provider = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
        self.session = ort.InferenceSession(str(path), opts, providers=[self.provider])
        self.input_name = self.session.get_inputs()[0].name
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.threads, self.optimization, self.path, self.spinning = threads, optimization, Path(path), spinning

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(self.outputs[:1], {self.input_name: np.ascontiguousarray(x, np.float32)})[0]

    def timed_call(self, x: np.ndarray) -> Callable[[], object]:
        x = np.ascontiguousarray(x, np.float32)
        if self.device != "cuda":
            feeds, names = {self.input_name: x}, self.outputs[:1]
            return lambda: self.session.run(names, feeds)
        # I/O binding keeps input and output on the GPU, so the time excludes host copies.
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self.input_name, ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
        binding.bind_output(self.outputs[0], "cuda")
        return lambda: self.session.run_with_iobinding(binding)

    def taps(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return self.run_with_taps(x)[1]

    def run_with_taps(self, x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if len(self.outputs) < 2:
            raise UsageError(f"taps: {self.path} has no tap outputs; export it with --taps")
        y, *got = self.session.run(self.outputs, {self.input_name: np.ascontiguousarray(x, np.float32)})
        return y, dict(zip(self.outputs[1:], got, strict=True))

    def profiling(self, prefix: str) -> "OrtRunnable":
        """A session set up as this one (threads, spinning, optimisation) that writes ONNX Runtime's
        profile under `prefix`."""
        return OrtRunnable(self.path, threads=self.threads, optimization=self.optimization, spinning=self.spinning,
                           profile_prefix=prefix)

    def describe(self) -> dict:
        return {"runtime": "ort", "device": self.device, "provider": self.provider, "threads": self.threads,
                "graph_optimization": self.optimization, "spinning": self.spinning}


def latency_model(path: Path) -> Path:
    """The artifact without its tap outputs: exposed intermediates block ORT's fusions, so they
    would slow the very model being timed."""
    out = path.with_name("model.latency.onnx")
    if not out.exists():
        model = onnx.load(str(path))
        keep = model.graph.output[0]
        del model.graph.output[:]
        model.graph.output.append(keep)
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".model.latency.", suffix=".tmp")
        os.close(fd)
        onnx.save(model, tmp)
        os.replace(tmp, out)  # concurrent writers each rename a whole file; the last one wins
    return out
