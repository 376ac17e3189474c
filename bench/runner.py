"""`run(config, out) -> results`: the studies of a run, each plan -> subjects -> measure -> record.

What a subject is and how a cell is measured live in bench/cells/ (subject.py, sublayer_cells.py,
latency_cells.py, lm_cells.py, whole_cells.py); this module plans the cells and runs them in order.
"""

import contextlib
import itertools
import os
from dataclasses import dataclass
from pathlib import Path

from ffnbench.bench.analysis import downstream
from ffnbench.bench.cells import latency_cells, lm_cells, prebuild, whole_cells
from ffnbench.bench.cells.lm_cells import LM_DESIGNS, LMSubject, measure_lm
from ffnbench.bench.cells.lm_names import lm_model
from ffnbench.bench.cells.sublayer_cells import Subject, measure
from ffnbench.bench.cells.whole_cells import WholeSubject, measure_whole
from ffnbench.bench.config import RunConfig
from ffnbench.bench.machine import doctor, fit
from ffnbench.bench.progress import Progress
from ffnbench.bench.store import RunStore
from ffnbench.bench.traffic import whole_model
from ffnbench.errors import UsageError
from ffnbench.quant import RECIPES

SUBLAYER_KINDS = ("accuracy", "latency")  # the other kinds, "lm" and "whole", are whole models


@dataclass(frozen=True)
class Cell:
    design: str
    model: str
    recipe: str
    scenario: str  # a scenario name, or the latency shape ("decode", "prefill") for latency cells
    calibration: str | None  # QDQ recipes only
    kind: str = "accuracy"  # or "latency", or "lm" (a whole trained model), or "whole" (a user's whole model)
    # lm cells only: which committed models ("trained", "drift"), their training seed, and for a
    # dose-response cell its injection point (None: the run's [downstream] inject, a matrix cell). `model` is
    # the name made from them for keys and reports; nothing reads them back out of it.
    pair: str | None = None
    seed: int | None = None
    dose_inject: str | None = None

    @property
    def key(self) -> str:
        where = self.scenario if self.kind == "accuracy" else f"{self.kind}:{self.scenario}"
        return f"{self.design}/{self.model}/{self.recipe}/{where}/cal={self.calibration or '-'}"

    @property
    def artifact(self) -> tuple:
        return self.design, self.model, self.recipe, self.calibration


def plan(config: RunConfig) -> list[Cell]:
    """Every cell of the matrix, ordered by model size, then accuracy before latency; the trained
    pair's lm cells last, for the run's designs among the pair's, its recipes among the downstream
    study's, each of its pairs and training seeds; then the dose-response cells, and the users' whole
    models ([whole] models) of the run's designs, under the same recipes and downstream scenarios."""
    cells = []
    for model in config.models:
        mc = config.for_model(model)
        for design, recipe in itertools.product(mc.model_designs(model), mc.recipes):
            for cal in _calibrations(mc, recipe):
                cells += [Cell(design, model, recipe, s, cal) for s in mc.scenarios]
        if mc.latency.enabled:
            for shape, design, recipe in itertools.product(("decode", "prefill"), mc.model_designs(model),
                                                           mc.recipes):
                cells += [Cell(design, model, recipe, shape, cal, kind="latency") for cal in _calibrations(mc, recipe)]
    lm_designs = [d for d in config.designs if d in LM_DESIGNS]
    downstream, dose = config.downstream, config.dose
    whole_model_recipes = [r for r in config.recipes if r in downstream.recipes
                           and (config.mitigations or not config.mitigations_of(r))]
    for kind, seed, design, recipe in itertools.product(downstream.pairs, downstream.seeds, lm_designs,
                                                        whole_model_recipes):
        for cal in _calibrations(config, recipe):
            cells += [Cell(design, lm_model(seed, kind), recipe, s, cal, kind="lm", pair=kind, seed=seed)
                      for s in downstream.scenarios]
    for kind, seed, inject, design, recipe in itertools.product(dose.pairs, dose.seeds, dose.inject, lm_designs,
                                                                whole_model_recipes):
        for cal in _calibrations(config, recipe):
            cells += [Cell(design, lm_model(seed, kind, inject), recipe, s, cal, kind="lm", pair=kind, seed=seed,
                           dose_inject=inject) for s in dose.scenarios]
    for name, recipe in itertools.product(config.whole.models, whole_model_recipes):
        spec = config.whole_spec(name)
        design = whole_model.design_of(spec.path, spec.where)
        for cal in _calibrations(config, recipe) if design in config.designs else ():
            cells += [Cell(design, name, recipe, s, cal, kind="whole") for s in downstream.scenarios]
    return cells


def _calibrations(config: RunConfig, recipe: str) -> list[str | None]:
    """The calibration scenarios a recipe's cells come in: QDQ's ranges and a mitigation's statistics."""
    base, _ = config.recipe_spec(recipe)
    calibrated = getattr(RECIPES[base], "needs_calibration", False) or config.mitigations_of(recipe)
    return config.calibration if calibrated else [None]


def shard(cells: list[Cell], k: int, n: int) -> list[Cell]:
    """Shard k of n (1-based): whole artifacts (a design, model, recipe and calibration, with all its
    cells) go to one shard, assigned round-robin in plan order, so every shard is deterministic."""
    artifacts = list(dict.fromkeys(c.artifact for c in cells))
    mine = {a for i, a in enumerate(artifacts) if i % n == k - 1}
    return [c for c in cells if c.artifact in mine]


def run(config: RunConfig, out: Path, resume: bool = False, progress: bool | None = None,
        shard_spec: tuple[int, int] | None = None) -> list[dict]:
    """Run the studies of `config` into the run directory `out`; returns one record per cell.

    plan -> subjects -> measure -> record, study by study: the sublayers (accuracy, then latency, one
    model size at a time), then the whole models (the trained pairs' lm cells, users' whole models).
    Each cell is appended to out/results.jsonl as it finishes; with resume=True, cells already
    measured or skipped there are not run again. shard_spec=(k, n) runs shard k of n only.
    progress=None shows a bar on a terminal and log lines elsewhere (bench/progress.py).
    """
    config.check()
    _check_inputs(config)  # a bad scenario or trace fails here, before anything is written
    machine = doctor.collect(threads=config.threads)
    recorded = config.to_dict() | {"shard": list(shard_spec) if shard_spec else None,
                                   "files_dir": os.path.relpath(config.files_dir, Path(out).resolve())}
    store = RunStore(out, recorded, resume, machine)
    cells = plan(config) if shard_spec is None else shard(plan(config), *shard_spec)
    finished = store.finished()
    todo = [cell for cell in cells if cell.key not in finished]
    with Progress(len(todo), progress) as bar:
        run_sublayers([c for c in todo if c.kind in SUBLAYER_KINDS], config, store, bar, machine["peaks"])
        run_models([c for c in todo if c.kind not in SUBLAYER_KINDS], config, store, bar)
    downstream.write(store.out)  # what the run concludes, with or without a report
    return store.results()


def run_sublayers(cells: list[Cell], config: RunConfig, store: RunStore, bar: Progress, peaks: dict) -> None:
    """The sublayer study, one model size after another: a subject a design, its accuracy cells (beside
    a large size's ONNX Runtime builds in worker processes), then each runnable's memory and the
    latency cells, every shape's timed round-robin in one loop."""
    for model, group in itertools.groupby(cells, key=lambda c: c.model):
        group = list(group)
        mc = config.for_model(model)
        designs = list(dict.fromkeys(c.design for c in group))
        accuracy = [c for c in group if c.kind == "accuracy"]
        with prebuild.workers(mc, model) as pool:
            if pool:
                bar.phase(f"{model}: exporting {len(designs)} designs in parallel")
                prebuild.exports(pool, mc, model, designs, store.out / "artifacts")
            subjects = {d: Subject(mc, d, model, store.out / "artifacts") for d in designs}
            pending = prebuild.quantizations(pool, subjects, group) if pool else {}
            bar.phase(f"{model}: {len(accuracy)} accuracy cells")
            _measure_beside_builds(accuracy, subjects, pending, mc, measure, store, bar, model)
        timed = [c for c in group if c.kind == "latency"]
        if timed:
            bar.phase(f"{model}: memory of {len({c.artifact for c in timed})} runnables, each in a process of its own")
            memory_mb = latency_cells.measure_memory(subjects, timed, mc)
        for shape, shape_cells in itertools.groupby(timed, key=lambda c: c.scenario):
            shape_cells = list(shape_cells)
            bar.phase(f"{model}: timing {len(shape_cells)} cells at {shape}, interleaved")
            for record in latency_cells.measure_latency(subjects, shape_cells, mc, peaks, memory_mb):
                store.append(record)
                bar.update()


def run_models(cells: list[Cell], config: RunConfig, store: RunStore, bar: Progress) -> None:
    """The whole-model studies: the trained pairs' cells (downstream, then dose-response), one model
    (design and training seed) after another, then each user's whole model, each model's references
    dropped when its cells are done. Their ONNX Runtime artifacts are built in worker processes while
    the others (fp32, bitsandbytes, torch) are measured: ORT's entropy calibration of one trained model
    is about 27 s of single-threaded Python."""
    groups = {}
    for cell in cells:
        groups.setdefault((cell.design, cell.model), []).append(cell)
    subjects = {}
    for (design, model), group in groups.items():
        first = group[0]
        if first.kind == "whole":
            bar.phase(f"{model}: loading the whole model")
            subjects[design, model] = WholeSubject(config, model, store.out / "artifacts")
            continue
        windows = config.dose.windows if first.dose_inject else config.downstream.windows
        subjects[design, model] = LMSubject(config, design, first.seed, store.out / "artifacts", first.pair,
                                            first.dose_inject, windows)
    jobs, seen = {}, set()
    for key, group in groups.items():
        bar.phase(f"{key[1]} {key[0]}: what its artifacts are made from (exports, mitigated models)")
        # A dose cell at the matrix's injection point shares the matrix model's artifacts: built once,
        # by the earlier group, which has waited for them before the later one starts.
        jobs[key] = [(out, job) for out, job in prebuild.builds({key[0]: subjects[key]}, group) if out not in seen]
        seen |= {out for out, _ in jobs[key]}
    calibrated = any(job["calibration"] is not None for js in jobs.values() for _, job in js)  # else starting
    with prebuild.pool(config) if calibrated else contextlib.nullcontext() as pool:  # workers costs more
        pending = {key: prebuild.submit(pool, js) if pool else {} for key, js in jobs.items()}
        for (design, model), group in groups.items():
            bar.phase(f"{model} {design}: {len(group)} whole-model cells")
            measure_cell = measure_whole if group[0].kind == "whole" else measure_lm
            _measure_beside_builds(group, {design: subjects[design, model]}, pending[design, model], config,
                                   measure_cell, store, bar, model)
            subjects[design, model].release()


def _measure_beside_builds(cells: list[Cell], subjects: dict, pending: dict, config: RunConfig, measure_cell,
                           store: RunStore, bar: Progress, label: str) -> None:
    """Measure each cell; while ONNX Runtime builds are `pending` in workers, the cells that need none
    (bitsandbytes, torch, fp32) go first, and the first that needs one waits for them all."""
    if pending:
        cells = sorted(cells, key=lambda c: prebuild.needs_build(c, config))
    for cell in cells:
        if pending and prebuild.needs_build(cell, config):
            bar.phase(f"{label}: waiting for {len(pending)} ONNX Runtime quantizations")
            prebuild.wait(pending)
            pending = {}
        bar.cell(cell.key)
        store.append(measure_cell(subjects[cell.design], cell))
        bar.update()
    prebuild.wait(pending)


def _check_inputs(config: RunConfig) -> None:
    for name in config.whole.models:
        spec = config.whole_spec(name)
        design = whole_model.design_of(spec.path, spec.where)
        if design not in config.designs:
            raise UsageError(f"[whole] models: '{name}' is a design-{design} model and the run's designs are "
                             f"{', '.join(config.designs)}; add {design} to designs")
    kinds = {c.kind for c in plan(config)}
    if "lm" in kinds:
        lm_cells.check(config)
    if "whole" in kinds:
        whole_cells.check(config)
    for model in config.models:
        mc = config.for_model(model)
        fit.check(mc, model, prebuild.BUILD_WORKERS)
        d_model = config.model_config(model, config.model_designs(model)[0]).d_model  # loads a real layer: checks it
        for name in {*mc.scenarios, *mc.calibration}:
            mc.scenario(name).generate(1, 1, d_model)
