"""`resident_mb` and `peak_call_mb` of one runnable, measured in a child process of its own.

    python -m ffnbench.bench.cells.memory [--workers N] [--fresh] REQUEST.json ...   (writes REQUEST.result.json)

The benchmark process holds every recipe of a model at once, so its own RSS says nothing about any
one of them. As optimum-benchmark does, each runnable is loaded by a child that holds nothing else:
`resident_mb` is its RSS after loading minus its RSS before (imports done and the runtime started on
a tiny model, so the runtime's own code, libraries and set-up are not counted), in MB of 10^6 bytes,
like the artifact's size on disk; `peak_call_mb` is, per shape, the kernel's high-water mark during
the first call above that loaded RSS: activations, scratch buffers, a weight dequantized for the
call, and whatever the runtime's arena keeps from it. Shapes run in the order given (decode first),
so a later shape's figure includes what the earlier one left in the arena (at most its own peak).

An ONNX artifact's child starts ONNX Runtime alone; a torch or bitsandbytes module's child rebuilds
the module from its artifact, as `compare --remeasure` workers do. The children are forked from one
process that has imported torch and bitsandbytes where any request needs them (`serve`), so each
does not pay those imports; `--fresh` starts a new interpreter per request instead.
"""

import argparse
import contextlib
import ctypes
import gc
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

STATUS, CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")
CHILD_TIMEOUT_S = 900


def _status_field(field: str) -> str:
    for line in STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return line.split()[1]
    raise OSError(f"{STATUS} has no {field}")


def _status_mb(field: str) -> float:
    """A /proc/self/status figure in MB (10^6 bytes, as the report gives sizes on disk); the kernel's kB are KiB."""
    return int(_status_field(field)) * 1024 / 1e6


def _release() -> None:
    """Return freed memory to the system before reading RSS: objects collected, and glibc's free
    heap trimmed (tensors under its 32 MB mmap threshold are otherwise kept when freed)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: RSS may then include freed heap
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _load(request: dict):
    if request["kind"] == "onnx":
        from ffnbench.bench.cells.ort_runnable import OrtRunnable

        return OrtRunnable(Path(request["path"]), threads=request["threads"], spinning=request["spinning"])
    from ffnbench.bench.cells.runnables import runnable_for
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
    from ffnbench.bench.cells.runnables import runnable_for
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


def measure(requests: dict[str, dict], inputs: dict[str, dict[str, np.ndarray]], workers: int = 3,
            fresh: bool = False) -> dict[str, dict]:
    """key -> {resident_mb, peak_call_mb: {shape: MB}} or {error}, one child process per request.
    `inputs`: per input set (a request's "inputs"), shape name -> the array its runnables are called
    on. Children run `workers` at a time: each measures only its own process, so running side by
    side changes their time, not their RSS (three, not two, on two cores: a bitsandbytes child spends
    most of its time quantizing on one thread). fresh=True: a new interpreter per request instead of
    a fork (`serve`), what the forked children were checked against."""
    if not CLEAR_REFS.exists():
        return {key: {"error": f"{CLEAR_REFS} is missing (not Linux): no per-call peak"} for key in requests}
    with tempfile.TemporaryDirectory(prefix="ffnbench-memory-") as tmp:
        paths = {}
        for i, (group, arrays) in enumerate(inputs.items()):
            paths[group] = {shape: str(Path(tmp) / f"{i}-{shape}.npy") for shape in arrays}
            for shape, x in arrays.items():
                np.save(paths[group][shape], x)
        files = {}
        for i, (key, request) in enumerate(requests.items()):
            files[key] = Path(tmp) / f"request-{i}.json"
            files[key].write_text(json.dumps({**request, "inputs": paths[request["inputs"]]}))
        return _run_server(files, workers, fresh)


def _run_server(files: dict[str, Path], workers: int, fresh: bool) -> dict[str, dict]:
    """`serve` in a process (and process group) of its own, killed with its children past its budget."""
    # CUDA hidden: memory is measured in CPU runs only, and a CUDA driver started by bitsandbytes'
    # import (it asks torch whether CUDA is available) would start threads in the server.
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    budget = CHILD_TIMEOUT_S * -(-len(files) // workers) + 120
    command = [sys.executable, "-m", "ffnbench.bench.cells.memory", "--workers", str(workers),
               *(["--fresh"] if fresh else []), *map(str, files.values())]
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                          start_new_session=True) as server:
        try:
            _, err = server.communicate(timeout=budget)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            _, err = server.communicate()
            err += f"\nthe memory probes took over {budget} s"
    said = f"its server exited {server.returncode}: {_last_line(err)}"
    out = {}
    for key, path in files.items():
        try:
            out[key] = json.loads(_result_path(path).read_text())
        except (OSError, ValueError):
            out[key] = {"error": f"the memory probe left no result ({said})"}
    return out


def _result_path(request_path: Path) -> Path:
    return request_path.with_suffix(".result.json")


def _last_line(text: str) -> str:
    return (text.strip().splitlines() or ["no output"])[-1]


def serve(paths: list[Path], workers: int, timeout_s: float = CHILD_TIMEOUT_S, fresh: bool = False) -> None:
    """Measure each request in a child process of its own, `workers` at a time, each writing its
    result beside its request (a child over `timeout_s` is killed).

    Starting a fresh interpreter per runnable cost 13 s for a bitsandbytes one (torch's and
    bitsandbytes' imports, which wrap ops in torch.compile), 1 s for an ONNX one. So the children are
    forked from this process, which imports those once and starts no runtime (not ONNX Runtime,
    which each child imports; no torch thread pool): a child holds the imports as a fresh process
    would and still starts its own runtime before its baseline. Fork needs this process to have one
    thread (OPENBLAS_NUM_THREADS=1 keeps numpy from starting BLAS threads); with more, or with
    fresh=True, each child is a new interpreter instead."""
    requests = {path: json.loads(path.read_text()) for path in paths}
    fork = not fresh
    if fork:
        preload(requests.values())
        fork = threads() == 1
        if not fork:
            print(f"memory: {threads()} threads after the imports, so no fork: a new interpreter per probe",
                  file=sys.stderr)
    if fork:
        gc.collect()
        gc.freeze()  # the children's collections skip what is inherited (1.4 s a child otherwise)
    pending, running = list(paths), {}
    try:
        while pending or running:
            while pending and len(running) < workers:
                path = pending.pop(0)
                running[_start(path, requests[path], fork)] = (path, time.monotonic())
            _reap(running, timeout_s)
    finally:
        for pid in running:  # this process is failing: its children go with it
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def preload(requests) -> None:
    """Import what the module children need (torch; bitsandbytes, quietly) and nothing that starts a
    thread: not ONNX Runtime, whose import starts one, and so none of ffnbench's modules that import it."""
    if any(r["kind"] == "module" for r in requests):
        import torch  # noqa: F401

        # Any failure is left to the children that need bitsandbytes: each records why.
        with contextlib.redirect_stderr(io.StringIO()), contextlib.suppress(Exception):
            import bitsandbytes  # noqa: F401


def threads() -> int:
    """This process's threads, the kernel's count (numpy's BLAS and native libraries' included)."""
    return int(_status_field("Threads"))


def _start(path: Path, request: dict, fork: bool) -> int:
    """A child measuring `request`, its stderr in a file beside it; returns its pid."""
    stderr = path.with_suffix(".stderr")
    if not fork:
        return os.posix_spawn(sys.executable, [sys.executable, "-m", "ffnbench.bench.cells.memory", "--one", str(path)],
                              os.environ, file_actions=[(os.POSIX_SPAWN_OPEN, 2, str(stderr),
                                                         os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)])
    pid = os.fork()
    if pid == 0:
        code = 1
        try:  # nothing, not even KeyboardInterrupt, may return into the server's code in a child
            os.dup2(os.open(stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 2)
            code = _measure_into(path, request, forked=True)
        finally:
            os._exit(code)
    return pid


def _measure_into(path: Path, request: dict, forked: bool = False) -> int:
    """Probe and write the result, or why it failed, beside the request (whole or not at all)."""
    try:
        result, code = probe(request) | {"probe": "forked" if forked else "fresh"}, 0
    except Exception as e:  # any failure is this runnable's reason, not the run's
        result, code = {"error": f"the memory probe failed: {type(e).__name__}: {e}"}, 1
    _write(_result_path(path), result)
    return code


def _write(path: Path, result: dict) -> None:
    staged = path.with_suffix(".tmp")
    staged.write_text(json.dumps(result))
    os.replace(staged, path)


def _reap(running: dict[int, tuple[Path, float]], timeout_s: float) -> None:
    """Wait until one child has finished or been killed for taking over `timeout_s`. A child that
    ended without a result gets one saying how, with the last line of its stderr."""
    while True:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid:
            path, _ = running.pop(pid)
            how = (f"exited {os.waitstatus_to_exitcode(status)}" if os.WIFEXITED(status)
                   else f"was killed by signal {os.WTERMSIG(status)}")
            break
        late = [p for p, (_, started) in running.items() if time.monotonic() - started > timeout_s]
        if late:
            os.kill(late[0], signal.SIGKILL)
            os.waitpid(late[0], 0)
            path, _ = running.pop(late[0])
            how = f"took over {timeout_s:.0f} s"
            break
        time.sleep(0.02)
    if not _result_path(path).exists():
        with contextlib.suppress(OSError):
            how += ": " + _last_line(path.with_suffix(".stderr").read_text())
        _write(_result_path(path), {"error": f"the memory probe {how}"})


def main() -> int:
    parser = argparse.ArgumentParser(description="resident_mb and peak_call_mb of runnables, one child process each")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=CHILD_TIMEOUT_S, help="seconds a child may take")
    parser.add_argument("--fresh", action="store_true", help="a new interpreter per request instead of a fork")
    parser.add_argument("--one", action="store_true", help="measure the one request in this process")
    parser.add_argument("requests", nargs="+", type=Path, help="request JSON files; each REQ.result.json is written")
    args = parser.parse_args()
    if args.one:
        return _measure_into(args.requests[0], json.loads(args.requests[0].read_text()))
    serve(args.requests, max(1, args.workers), args.timeout, args.fresh)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
