"""`ffnbench compare OLD_RUN NEW_RUN --remeasure`: both runs' artifacts re-timed in one process.

Latency recorded in two runs differs by whatever else the machine did during each; re-timing the
old and the new artifact round-robin in one process cancels that, which is how latency should be
gated on shared CI runners.

In this process only ONNX Runtime cells are re-measured: the old side is the old run's own
model.onnx, run by the same ONNX Runtime (the gate refuses a stack change unless told). A
bitsandbytes or torch artifact is a module rebuilt by this process's code, so both sides would run
the new code and a regression in it could never show: those cells are reported "not re-measured"
and judged as recorded. Given the old revision's environment (`--old-python`), every cell is
re-measured by workers, each side loading and calling its artifacts with its own code.

A worker process is a sample too: each has its own address-space layout, allocator state and
first-call repacks, a constant that its rounds cannot average away (one pair of workers timed the
same build at new/old 1.18, Wilcoxon p 0.0006 over its 19 rounds). So each side runs in several
workers (`[latency] remeasure_processes`, 5 by default), started alternately and called in turn,
round r by each side's worker r mod n, and a cell is tested over the process medians, not the
rounds (stats.process_ratio).
"""

import contextlib
import dataclasses
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from ffnbench import files
from ffnbench.bench import stats
from ffnbench.bench.cells import latency, latency_cells
from ffnbench.bench.cells.runnables import OrtRunnable, ort_has_cuda
from ffnbench.bench.config import RunConfig
from ffnbench.bench.gate import worker
from ffnbench.bench.store import load_run
from ffnbench.errors import UsageError
from ffnbench.quant import load_artifact


def _artifact_dir(run_dir: Path, cell: dict) -> Path:
    artifact_dir = cell.get("artifact", {}).get("dir")
    if not artifact_dir or not (run_dir / artifact_dir / "manifest.json").is_file():
        raise UsageError(f"compare: {run_dir} has no artifact for {cell['key']}; re-run it with this ffnbench")
    return run_dir / artifact_dir


def _runnable(run_dir: Path, cell: dict, threads: int, config: RunConfig):
    artifact = load_artifact(_artifact_dir(run_dir, cell), device=config.device, files_dir=Path(config.files_dir))
    assert artifact.runtime == "ort", "only ONNX Runtime cells are re-measured"
    return OrtRunnable(latency_cells.latency_model(artifact.path), threads=threads,
                       spinning=config.latency.ort_spinning, device=config.device if ort_has_cuda() else "cpu")


# Rounds each worker process times a cell, at least: its median is one observation of the test.
ROUNDS_PER_PROCESS = 6


def remeasure(old_run: Path, new_run: Path, old_python: str | None = None,
              new_python: str | None = None, files_dir: Path | None = None,
              processes: int | None = None) -> dict[str, dict]:
    """new/old p50 ratio with a 95 % interval and a one-sided p of a slowdown, per latency cell
    present in both runs. With old_python or new_python, every cell is re-timed by workers, each
    side's in its own interpreter (the other side's defaults to this one), `processes` a side (default:
    the new run's [latency] remeasure_processes), tested over process medians; without, ONNX Runtime cells
    only, in this process, tested over paired rounds. files_dir: where the runs' checkpoint and trace
    files are (default: here)."""
    old_run, new_run = Path(old_run), Path(new_run)
    (old_manifest, old_cells), (new_manifest, new_cells) = load_run(old_run, "compare"), load_run(new_run, "compare")
    files_dir = Path(files_dir) if files_dir else new_run / new_manifest["config"].get("files_dir", ".")
    config = RunConfig.from_dict(new_manifest["config"], files_dir)
    # Each side runs as its run did: a thread-count change is a change to measure, not to erase.
    threads = {"old": RunConfig.from_dict(old_manifest["config"]).threads, "new": config.threads}
    old = {c["key"]: c for c in old_cells if c["kind"] == "latency" and c["status"] == "ok"}
    shared = [c for c in new_cells if c["kind"] == "latency" and c["status"] == "ok" and c["key"] in old]
    if not shared:
        raise UsageError(f"compare: {old_run} and {new_run} share no measured latency cell")
    in_workers = old_python is not None or new_python is not None
    processes = processes or config.latency.remeasure_processes
    if in_workers and processes < 2:
        raise UsageError(f"--processes: a test over worker processes needs at least 2 a side, got {processes}")
    out = {} if in_workers else {
        c["key"]: {"not_remeasured": f"a {c['runtime']['runtime']} artifact runs this process's code on both sides; "
                                    "--old-python re-times it in the old environment"}
        for c in shared if c["runtime"]["runtime"] != "ort"}
    common = [c for c in shared if c["key"] not in out]
    with contextlib.ExitStack() as stack:
        if in_workers:
            workers = {"old": [], "new": []}
            for _ in range(processes):  # started alternately, so neither side's start is the machine's quieter one
                for side, python in (("old", old_python), ("new", new_python)):
                    workers[side].append(stack.enter_context(Worker(python or sys.executable, side)))
            for side_workers in workers.values():
                for w in side_workers:
                    w.greeted()
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ffnbench-compare-")))
        # One timing group per model and shape, as the run timed them, with that model's settings.
        for model, shape in dict.fromkeys((c["model"], c["shape"]["name"]) for c in common):
            cells = [c for c in common if (c["model"], c["shape"]["name"]) == (model, shape)]
            model_config = config.for_model(model)
            inputs = {c["key"]: _inputs(model_config, c) for c in cells}
            sides = {c["key"]: {"old": (old_run, old[c["key"]]), "new": (new_run, c)} for c in cells}
            if in_workers:
                samples, stopped_by = _time_in_workers(workers, sides, inputs, threads, model_config, scratch)
            else:
                samples, stopped_by = _time_here(sides, inputs, threads, model_config)
            for cell in cells:
                new_ms, old_ms = samples[f"new:{cell['key']}"], samples[f"old:{cell['key']}"]
                rounds = min(len(new_ms), len(old_ms))  # paired by round; a side that left first has fewer
                out[cell["key"]] = {**cell_test(new_ms[:rounds], old_ms[:rounds], processes if in_workers else 1),
                                    "stopped_by": stopped_by[f"new:{cell['key']}"],
                                    "code": "each side's own" if in_workers else "this process's"}
    return out


def cell_test(new_ms: np.ndarray, old_ms: np.ndarray, processes: int) -> dict:
    """One re-measured cell's new/old figures from its paired samples: over process medians when the
    samples came from `processes` workers a side in turn (sample i from worker i mod processes), over
    paired rounds when one process timed both sides (processes=1)."""
    if processes > 1:
        test = {**stats.process_ratio(new_ms, old_ms, processes), "test": "Welch t over process medians"}
    else:
        test = {**latency.ratio(new_ms, old_ms), "p_slower": stats.wilcoxon_greater(new_ms, old_ms),
                "processes": 1, "test": "Wilcoxon over paired rounds", "between_process_pct": None,
                "within_process_pct": stats.process_ratio(new_ms, old_ms, 1)["within_process_pct"]}
    return {**test, "old_p50_ms": float(np.median(old_ms)), "new_p50_ms": float(np.median(new_ms)),
            "iterations": len(new_ms)}


def _inputs(config: RunConfig, cell: dict) -> np.ndarray:
    return config.scenario(cell["inputs"]).generate(cell["shape"]["batch"], cell["shape"]["seq"],
                                                    config.model_config(cell["model"], cell["design"]).d_model,
                                                    seed=config.seed)


def _time_here(sides: dict, inputs: dict, threads: dict, config: RunConfig) -> tuple[dict, str]:
    """ONNX Runtime cells, both sides in this process: the old side is the old run's own graph."""
    entries = {}
    for key, by_side in sides.items():
        for side, (run_dir, record) in by_side.items():
            entries[f"{side}:{key}"] = {"runnable": _runnable(run_dir, record, threads[side], config), "x": inputs[key],
                                        "block_cfg": config.model_config(record["model"], record["design"]),
                                        "model_bytes": record["metrics"]["model_bytes"]}
    shape = next(iter(inputs.values())).shape[:2]
    timed = latency_cells.time_group(entries, shape, config.latency, None, config.threads)
    return ({k: np.asarray(t["samples_ms"]) for k, t in timed.items()},
            {k: t["stopped_by"] for k, t in timed.items()})


def _time_in_workers(workers: dict, sides: dict, inputs: dict, threads: dict, config: RunConfig,
                     scratch: Path) -> tuple[dict, dict]:
    """Every cell, one at a time: both sides' workers load it, call it in turn (InTurn), its old and
    new calls interleaved round-robin (sample i of a side from its worker i mod n), then unload it, so
    a worker holds one artifact however many workers run (ten at the default size held them all: out
    of memory)."""
    n = len(workers["new"])
    cfg = config.latency
    # Every worker warms the cell up as a run would (warm-up calls go in turn too), and times it for
    # ROUNDS_PER_PROCESS rounds at least; warm-up rounds a multiple of n keep sample i on worker i mod n.
    least = ROUNDS_PER_PROCESS * n
    cfg = dataclasses.replace(cfg, warmup=cfg.warmup * n, min_iterations=max(cfg.min_iterations, least),
                              max_iterations=max(cfg.max_iterations, least))
    samples, stopped_by = {}, {}
    for key, by_side in sides.items():
        path = scratch / (re.sub(r"[^\w.=-]", "_", key) + ".npy")
        np.save(path, inputs[key])
        for side, (run_dir, record) in by_side.items():
            for w in workers[side]:
                w.send(op="load", key=key, artifact_dir=str(_artifact_dir(run_dir, record)), inputs=str(path),
                       files_dir=config.files_dir, threads=threads[side], spinning=config.latency.ort_spinning,
                       device=config.device)
        for side, (_, record) in by_side.items():  # all workers load at once; loading is not timed
            for w in workers[side]:
                runtime = w.receive(key)["runtime"]["runtime"]
                if runtime != record["runtime"]["runtime"]:
                    raise UsageError(f"compare: the {side} side would time {key} in {runtime}, its run timed it in "
                                     f"{record['runtime']['runtime']}; re-measure on the device the runs used")
        timed, stopped = latency.interleaved({f"{side}:{key}": InTurn(workers[side], key) for side in by_side}, cfg,
                                             ReportedTimer())
        samples |= timed
        stopped_by |= stopped
        for w in (w for side in by_side for w in workers[side] if w.protocol >= 2):
            w.ask(op="unload", key=key)
    return samples, stopped_by


class InTurn:
    """One side's calls of one cell, sent to that side's workers in turn: call c to worker c mod n."""

    def __init__(self, workers: list["Worker"], key: str):
        self.workers, self.key, self.calls = workers, key, 0

    def __call__(self) -> float:
        worker_ = self.workers[self.calls % len(self.workers)]
        self.calls += 1
        return worker_.call(self.key)


class ReportedTimer:
    """The time a worker measured around its own call: the request and reply are not in it."""

    def time_ms(self, fn) -> float:
        return fn()


# The worker module of whichever revision the environment holds: ffnbench.bench.gate.worker since
# bench/ was arranged by concern, ffnbench.bench.worker before (where ffnbench.bench.gate was a
# module, so looking for a submodule of it fails).
LAUNCH_WORKER = """import importlib.util, runpy
try:
    moved = importlib.util.find_spec("ffnbench.bench.gate.worker") is not None
except ModuleNotFoundError:
    moved = False
runpy.run_module("ffnbench.bench.gate.worker" if moved else "ffnbench.bench.worker", run_name="__main__")
"""


class Worker:
    """A worker process (bench/gate/worker.py) in a given environment, driven request by reply."""

    def __init__(self, python: str, side: str):
        self.python, self.side = python, side
        # The worker's stderr: a file, not a pipe, so a chatty library cannot block it; closed in close().
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115
        try:
            # -P: the working directory is not on sys.path, so a checkout there cannot shadow the
            # environment's own ffnbench.
            self.proc = subprocess.Popen([python, "-P", "-c", LAUNCH_WORKER], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=self.log, text=True)
        except OSError as e:
            self.log.close()
            raise UsageError(f"--{side}-python: cannot start {python} ({e.strerror}); give the interpreter of "
                             f"the {side} revision's environment, e.g. ../main/.venv/bin/python") from e

    def greeted(self) -> "Worker":
        """Wait for the worker's greeting (separate from starting it, so two workers load at once)."""
        hello = self._read()
        if hello.get("protocol") not in worker.COMPATIBLE:
            self.close()
            raise UsageError(f"--{self.side}-python: {self.python} speaks worker protocol "
                             f"{hello.get('protocol')}, this ffnbench {', '.join(map(str, worker.COMPATIBLE))}; "
                             "re-measure with matching revisions")
        self.protocol = hello["protocol"]
        return self

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            if self.proc.poll() is None:
                self.proc.kill()  # alive but off the protocol
            self.proc.wait()
            self.log.seek(0)
            why = (self.log.read().strip().splitlines() or ["no output"])[-1]
            raise UsageError(f"--{self.side}-python: {self.python} has no usable ffnbench timing worker "
                             f"({why}); give an environment with ffnbench >= this protocol, or drop the flag "
                             "to re-measure ONNX Runtime cells only") from None

    def send(self, **request) -> None:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()

    def receive(self, key: str) -> dict:
        answer = self._read()
        if "error" in answer:
            raise UsageError(f"compare: the {self.side} side ({self.python}) cannot run {key}: {answer['error']}")
        return answer

    def ask(self, **request) -> dict:
        self.send(**request)
        return self.receive(request.get("key"))

    def call(self, key: str) -> float:
        return self.ask(op="call", key=key)["ms"]

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.write(json.dumps({"op": "exit"}) + "\n")
                self.proc.stdin.flush()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None and self.proc.poll() is None:
            self.proc.kill()  # the re-measurement failed: nothing to wait for
        self.close()


def write(ratios: dict[str, dict], new_run: Path) -> Path:
    by_workers = any(r.get("processes", 1) > 1 for r in ratios.values())
    lines = ["# ffnbench compare: re-measured side by side", "",
             "Re-measured by workers, each side in several processes: the test is over process medians, and the "
             "spread between processes is shown beside the spread within one (as %)." if by_workers else
             "Re-measured in this process, old and new interleaved: the test is over paired rounds.", "",
             "| cell | old p50 ms | new p50 ms | new/old [95 % CI] | p (slower) | test | rounds | processes a side "
             "| spread between processes | within |", "|---" * 10 + "|"]
    lines += [f"| {k} | {r['old_p50_ms']:.4f} | {r['new_p50_ms']:.4f} | {latency.ratio_text(r, 3)} | "
              f"{r['p_slower']:.2g} | {r['test']} | {r['iterations']} | {r['processes']} | "
              f"{_pct(r.get('between_process_pct'))} | {_pct(r.get('within_process_pct'))} |"
              for k, r in ratios.items() if "not_remeasured" not in r]
    lines += [f"| {k} | not re-measured: {r['not_remeasured']} | | | | | | | | |"
              for k, r in ratios.items() if "not_remeasured" in r]
    path = Path(new_run) / "compare.md"
    files.write_text(path, "\n".join(lines) + "\n")
    files.write_json(Path(new_run) / "compare.json", ratios)
    return path


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f} %"
