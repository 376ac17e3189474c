"""A timing worker: one side of a re-measurement, run by that side's own environment and code.

    python -m ffnbench.bench.gate.worker        (JSON lines: requests on stdin, replies on stdout)

`compare --remeasure --old-python PATH` starts one worker with the old revision's interpreter and
one with the new one's, and asks them for calls in a shared random order: each loads its run's
artifacts with its own ffnbench (a bitsandbytes module rebuilt by the old code, say), times each
call itself and reports the time, so both sides meet the same machine noise round by round. asv
likewise runs each revision in its own environment.

Requests: {"op": "load", "key", "artifact_dir", "inputs" (.npy), "threads", "spinning", "device"},
{"op": "call", "key"}, {"op": "unload", "key"} (protocol 2: several workers a side each hold one
cell at a time), {"op": "exit"}. Replies: the greeting {"protocol", "versions"}, then one object per
request, {"error": "..."} where it failed.
"""

import gc
import json
import os
import sys
from pathlib import Path

PROTOCOL = 2
COMPATIBLE = (1, 2)  # protocol 1 (before "unload") still times; its workers keep what they loaded


def _load(request: dict):
    import numpy as np

    from ffnbench.bench.cells import latency_cells
    from ffnbench.bench.cells.latency import CpuTimer, CudaTimer
    from ffnbench.bench.cells.runnables import ort_has_cuda, runnable_for
    from ffnbench.quant import load_artifact

    device = request["device"]
    artifact = load_artifact(Path(request["artifact_dir"]), device=device, files_dir=request.get("files_dir"))
    # As runs choose: ONNX Runtime unless the device is a GPU its build cannot use.
    prefer = "torch" if device == "cuda" and not ort_has_cuda() else "ort"
    runnable = runnable_for(artifact, prefer=prefer, threads=request["threads"], device=device)
    timed = latency_cells.timing_runnable(runnable, request["threads"], request["spinning"])
    timer = CudaTimer() if getattr(timed, "device", "cpu") == "cuda" else CpuTimer()
    return timed.timed_call(np.load(request["inputs"])), timer, timed.describe()


def main() -> int:
    # As the CLI does, before torch loads: spinning OpenMP threads would take the cores from the
    # other worker's call.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Replies go to a private copy of fd 1; fd 1 itself (what C code and print() write to) is sent
    # to stderr, so nothing a library prints can corrupt the protocol.
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    # Imported before the greeting, which the coordinator awaits only once both workers are started,
    # so the two sides' seconds of imports overlap.
    from ffnbench.bench.cells import latency_cells, runnables  # noqa: F401
    from ffnbench.quant import load_artifact  # noqa: F401
    from ffnbench.versions import stack_versions

    def reply(obj: dict) -> None:
        replies.write(json.dumps(obj) + "\n")
        replies.flush()

    reply({"protocol": PROTOCOL, "versions": stack_versions()})
    calls = {}
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if request["op"] == "load":
                fn, timer, runtime = _load(request)
                calls[request["key"]] = fn, timer
                reply({"runtime": runtime})
            elif request["op"] == "call":
                fn, timer = calls[request["key"]]
                reply({"ms": timer.time_ms(fn)})
            elif request["op"] == "unload":
                calls.pop(request["key"], None)
                gc.collect()
                reply({"unloaded": request["key"]})
            elif request["op"] == "exit":
                return 0
            else:
                reply({"error": f"unknown op {request['op']!r} (protocol {PROTOCOL})"})
        except Exception as e:  # reported to the coordinator, which names the side and the cell
            reply({"error": f"{type(e).__name__}: {e}"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
