"""`resident_mb` and `peak_call_mb` of one runnable, measured in a fresh child process.

    python -m ffnbench.bench.memory REQUEST.json        (prints one JSON object)

The benchmark process holds every recipe of a model at once, so its own RSS says nothing about any
one of them. As optimum-benchmark does, each runnable is loaded by a child that holds nothing else:
`resident_mb` is its RSS after loading minus its RSS before (imports done and the runtime started on
a tiny model, so the runtime's own code, libraries and set-up are not counted), in MB of 10^6 bytes,
like the artifact's size on disk; `peak_call_mb` is, per shape, the kernel's high-water mark during
the first call above that loaded RSS: activations, scratch buffers, a weight dequantized for the
call, and whatever the runtime's arena keeps from it. Shapes run in the order given (decode first),
so a later shape's figure includes what the earlier one left in the arena (at most its own peak).

An ONNX artifact's child imports ONNX Runtime alone; a torch or bitsandbytes module's child rebuilds
the module from its artifact, as `compare --remeasure` workers do.
"""

import concurrent.futures
import contextlib
import ctypes
import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

STATUS, CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")
CHILD_TIMEOUT_S = 900


def _status_mb(field: str) -> float:
    """A /proc/self/status figure in MB (10^6 bytes, as the report gives sizes on disk); the kernel's kB are KiB."""
    for line in STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / 1e6
    raise OSError(f"{STATUS} has no {field}")


def _release() -> None:
    """Return freed memory to the system before reading RSS: objects collected, and glibc's free
    heap trimmed (tensors under its 32 MB mmap threshold are otherwise kept when freed)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: RSS may then include freed heap
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _load(request: dict):
    if request["kind"] == "onnx":
        from ffnbench.bench.ort_runnable import OrtRunnable

        return OrtRunnable(Path(request["path"]), threads=request["threads"], spinning=request["spinning"])
    from ffnbench.bench.runnables import runnable_for
    from ffnbench.quant import load_artifact

    artifact = load_artifact(Path(request["artifact_dir"]), files_dir=request.get("files_dir"))
    return runnable_for(artifact, prefer="torch", threads=request["threads"])


def _prime(request: dict) -> None:
    """Start the runtime before the baseline, so its fixed cost is not counted as the artifact's: a
    first ONNX Runtime session (thread pool, kernel registry, arena: 37 MiB), or the module's recipe
    applied to a `tiny` block and called (bitsandbytes' set-up: 90 MiB; both measured at `small`)."""
    if request["kind"] == "onnx":
        import onnxruntime as ort
        from onnx import TensorProto, helper

        graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "prime",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                                  [helper.make_tensor("w", TensorProto.FLOAT, [4, 4], [0.0] * 16)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        session.run(None, {"x": np.zeros((1, 4), np.float32)})
        return
    from ffnbench.bench.runnables import runnable_for
    from ffnbench.models import FFNConfig, build_model, preset
    from ffnbench.quant import load_artifact

    config = FFNConfig.from_dict(json.loads((Path(request["artifact_dir"]) / "manifest.json").read_text())["config"])
    tiny = build_model(preset("tiny", config.design, residual=config.residual))
    runnable = runnable_for(load_artifact(Path(request["artifact_dir"]), block=tiny), prefer="torch", threads=1)
    runnable.run(np.zeros((1, 1, tiny.cfg.d_model), np.float32))


def probe(request: dict) -> dict:
    """In the child: load the runnable, then call it once per shape. Inputs are .npy files."""
    inputs = {shape: np.load(path) for shape, path in request["inputs"].items()}
    _prime(request)
    _release()
    base = _status_mb("VmRSS")
    runnable = _load(request)
    _release()
    loaded = _status_mb("VmRSS")
    peaks = {}
    for shape, x in inputs.items():
        call = runnable.timed_call(x)
        _release()
        CLEAR_REFS.write_text("5")  # the high-water mark restarts from the current RSS
        call()
        peaks[shape] = round(max(0.0, _status_mb("VmHWM") - loaded), 2)
    return {"resident_mb": round(loaded - base, 2), "peak_call_mb": peaks}


def measure(requests: dict[str, dict], inputs: dict[str, dict[str, np.ndarray]], workers: int = 3) -> dict[str, dict]:
    """key -> {resident_mb, peak_call_mb: {shape: MB}} or {error}, one fresh child per request.
    `inputs`: per input set (a request's "inputs"), shape name -> the array its runnables are called
    on. Children run `workers` at a time: each measures only its own process, so running side by
    side changes their time, not their RSS (three, not two, on two cores: a bitsandbytes child spends
    most of its 25 s at llama-7b importing and quantizing on one thread)."""
    if not CLEAR_REFS.exists():
        return {key: {"error": f"{CLEAR_REFS} is missing (not Linux): no per-call peak"} for key in requests}
    with tempfile.TemporaryDirectory(prefix="ffnbench-memory-") as tmp:
        paths = {}
        for i, (group, arrays) in enumerate(inputs.items()):
            paths[group] = {shape: str(Path(tmp) / f"{i}-{shape}.npy") for shape in arrays}
            for shape, x in arrays.items():
                np.save(paths[group][shape], x)

        def child(item: tuple[int, tuple[str, dict]]) -> tuple[str, dict]:
            i, (key, request) = item
            path = Path(tmp) / f"request-{i}.json"
            path.write_text(json.dumps({**request, "inputs": paths[request["inputs"]]}))
            return key, _run_child(path)

        with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
            return dict(pool.map(child, enumerate(requests.items())))


def _run_child(request_path: Path) -> dict:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    try:
        done = subprocess.run([sys.executable, "-m", "ffnbench.bench.memory", str(request_path)], capture_output=True,
                              text=True, timeout=CHILD_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"the memory probe took over {CHILD_TIMEOUT_S} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"the memory probe exited {done.returncode}: {tail}"}
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError:
        return {"error": f"the memory probe's last line is not its result: {lines[-1][:200]}"}


def main() -> int:
    request = json.loads(Path(sys.argv[1]).read_text())
    try:
        result = probe(request)
    except OSError as e:  # no /proc, or a kernel that refuses the high-water reset
        result = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
