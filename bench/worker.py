"""A timing worker: one side of a re-measurement, run by that side's own environment and code.

    python -m ffnbench.bench.worker        (JSON lines: requests on stdin, replies on stdout)

`compare --remeasure --old-python PATH` starts one worker with the old revision's interpreter and
one with the new one's, and asks them for calls in a shared random order: each loads its run's
artifacts with its own ffnbench (a bitsandbytes module rebuilt by the old code, say), times each
call itself and reports the time, so both sides meet the same machine noise round by round. asv
likewise runs each revision in its own environment.

Requests: {"op": "load", "key", "artifact_dir", "inputs" (.npy), "threads", "spinning", "device"},
{"op": "call", "key"}, {"op": "exit"}. Replies: the greeting {"protocol", "versions"}, then one
object per request, {"error": "..."} where it failed.
"""

import json
import os
import sys
from pathlib import Path

PROTOCOL = 1


def _load(request: dict):
    import numpy as np

    from ffnbench.bench import latency_cells
    from ffnbench.bench.runnables import runnable_for
    from ffnbench.quant import load_artifact

    artifact = load_artifact(Path(request["artifact_dir"]), device=request["device"])
    runnable = runnable_for(artifact, threads=request["threads"], device=request["device"])
    timed = latency_cells.timing_runnable(runnable, request["threads"], request["spinning"])
    return timed.timed_call(np.load(request["inputs"])), timed.describe()


def main() -> int:
    # As the CLI does, before torch loads: spinning OpenMP threads would take the cores from the
    # other worker's call.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    replies, sys.stdout = sys.stdout, sys.stderr  # a library's print must not corrupt the protocol
    # Imported before the greeting, which the coordinator awaits only once both workers are started,
    # so the two sides' seconds of imports overlap.
    from ffnbench.bench import latency_cells, runnables  # noqa: F401
    from ffnbench.bench.latency import CpuTimer
    from ffnbench.quant import load_artifact  # noqa: F401
    from ffnbench.versions import stack_versions

    def reply(obj: dict) -> None:
        replies.write(json.dumps(obj) + "\n")
        replies.flush()

    reply({"protocol": PROTOCOL, "versions": stack_versions()})
    calls, timer = {}, CpuTimer()
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if request["op"] == "load":
                calls[request["key"]], runtime = _load(request)
                reply({"runtime": runtime})
            elif request["op"] == "call":
                reply({"ms": timer.time_ms(calls[request["key"]])})
            elif request["op"] == "exit":
                return 0
            else:
                reply({"error": f"unknown op {request['op']!r} (protocol {PROTOCOL})"})
        except Exception as e:  # reported to the coordinator, which names the side and the cell
            reply({"error": f"{type(e).__name__}: {e}"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
