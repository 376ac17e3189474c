"""A large model's exports and ONNX Runtime quantizations, built in worker processes before its cells.

ORT's quantizers are mostly single-threaded Python and protobuf (llama-7b's quantize_dynamic spends
10 s of its 23 s in per-channel loops), and the two designs' exports are independent, so two workers
overlap them on two cores. The workers allocate torch tensors with transparent huge pages
(`THP_MEM_ALLOC_ENABLE=1`): HQQ's optimizer allocates a fresh 180 MB tensor per step, and page faults
made it 2.5x slower (one llama-7b weight: 38 s without, 15 s with; 2 threads). Nothing timed runs in
a worker, and the benchmark process keeps torch's default allocator. A build that fails in a worker
is left to its cell, which builds it again in the benchmark process and records why.
"""

import concurrent.futures
import contextlib
import multiprocessing
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from ffnbench.bench.cells.subject import intact
from ffnbench.bench.cells.sublayer_cells import Subject
from ffnbench.quant import RECIPES, quantize, recipe_config

BUILD_WORKERS = 2
# Below this a model's builds take less than the 5 s a worker needs to start (torch, ONNX Runtime
# and ffnbench imported): llama-7b's 135M weights qualify, `default`'s 8.4M do not.
PREBUILD_MIN_WEIGHTS = 50_000_000


@contextlib.contextmanager
def workers(config, model: str) -> Iterator[concurrent.futures.Executor | None]:
    """BUILD_WORKERS fresh processes for a model size this large, else None."""
    designs = config.model_designs(model)
    if not designs or max(config.model_config(model, d).mlp_params for d in designs) < \
            PREBUILD_MIN_WEIGHTS:
        yield None
        return
    with pool(config) as started:
        yield started


@contextlib.contextmanager
def pool(config) -> Iterator[concurrent.futures.Executor]:
    """BUILD_WORKERS fresh processes, their threads shared out of the run's."""
    previous = os.environ.get("THP_MEM_ALLOC_ENABLE")
    os.environ["THP_MEM_ALLOC_ENABLE"] = "1"  # inherited by the workers only: this process's torch has started
    try:
        with concurrent.futures.ProcessPoolExecutor(
                BUILD_WORKERS, mp_context=multiprocessing.get_context("spawn"), initializer=_start,
                initargs=(max(1, config.threads // BUILD_WORKERS),)) as started:
            yield started
    finally:
        if previous is None:
            os.environ.pop("THP_MEM_ALLOC_ENABLE")
        else:
            os.environ["THP_MEM_ALLOC_ENABLE"] = previous


def exports(pool: concurrent.futures.Executor, config, model: str, designs: list[str], artifacts: Path) -> None:
    """Each design's export, where a run would write it (the run then finds it by content)."""
    wait({pool.submit(_export, config, design, model, artifacts): f"the {design} export" for design in designs})


def quantizations(pool: concurrent.futures.Executor, subjects: dict, cells: list) -> dict:
    """Start `builds` in order. Returns the pending builds for `wait`; meanwhile the run measures the
    cells that need none."""
    return submit(pool, builds(subjects, cells))


def submit(pool: concurrent.futures.Executor, jobs: list[tuple[Path, dict]]) -> dict:
    return {pool.submit(_quantize, out, job): out.name for out, job in jobs}


def builds(subjects: dict, cells: list) -> list[tuple[Path, dict]]:
    """Every ONNX Runtime artifact the cells need and the run directory lacks, longest first (HQQ,
    then calibrated QDQ), so the last job does not run alone: at llama-7b (B) HQQ took 142 s,
    calibrated QDQ 27-39 s, dynamic int8 19-23 s, RTN and bnb4 8 s (in one process, 2 threads)."""
    jobs = {}
    for cell in cells:
        try:
            out, job = subjects[cell.design].artifact_job(cell.recipe, cell.calibration)
        except Exception:  # recorded by the cell itself
            continue
        if RECIPES[job["recipe"]].runtime == "ort" and not intact(out):
            jobs[out] = job

    def cost(item) -> tuple[bool, bool]:  # HQQ first, then calibrated recipes: the longest builds
        job = item[1]
        params = {k: v for k, v in job.items() if k not in ("source", "recipe", "calibration", "device")}
        recipe = recipe_config(job["recipe"], **params)  # a variant's own parameters (algorithm = "hqq")
        return getattr(recipe, "algorithm", "") != "hqq", not getattr(recipe, "needs_calibration", False)

    return sorted(jobs.items(), key=cost)


def needs_build(cell, config) -> bool:
    """Whether the cell waits for the workers' ONNX Runtime builds."""
    return RECIPES[config.recipe_spec(cell.recipe)[0]].runtime == "ort"


def wait(futures: dict) -> None:
    """futures: future -> what it builds. A failure is said on stderr and redone, and recorded, by the
    run itself."""
    for future in concurrent.futures.as_completed(futures):
        if future.exception() is not None:
            print(f"prebuild: {futures[future]} failed in a worker ({type(future.exception()).__name__}: "
                  f"{future.exception()}); the run builds it itself", file=sys.stderr)


def _start(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _export(config, design: str, model: str, artifacts: Path) -> None:
    subject = Subject(config, design, model, artifacts)
    subject.exported(subject.model)


def _quantize(out: Path, job: dict) -> None:
    job = dict(job)
    quantize(job.pop("source"), job.pop("recipe"), out, **job)
