"""`run(config, out) -> results`: build -> export -> quantize -> measure -> record, cell by cell."""

import contextlib
import itertools
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ffnbench import files
from ffnbench.bench.analysis import downstream
from ffnbench.bench.cells import diagnosis, latency_cells, lm_cells, memory, metrics, prebuild, whole_cells
from ffnbench.bench.cells.cell_record import artifact_summary, finite, recording
from ffnbench.bench.cells.lm_cells import LM_DESIGNS, LMSubject, measure_lm
from ffnbench.bench.cells.lm_names import lm_model
from ffnbench.bench.cells.runnables import Runnable, TorchRunnable, ort_has_cuda, runnable_for
from ffnbench.bench.cells.whole_cells import WholeSubject, measure_whole
from ffnbench.bench.config import RunConfig
from ffnbench.bench.machine import doctor, fit, u8s8
from ffnbench.bench.progress import Progress
from ffnbench.bench.store import RunStore
from ffnbench.bench.traffic import whole_model
from ffnbench.errors import UsageError
from ffnbench.export import NATIVE_OPSET, ExportedModel, export_onnx
from ffnbench.models import FFNBlock
from ffnbench.quant import RECIPES, Calibration, Skipped, load_artifact, mitigations, quantize
from ffnbench.versions import stack_versions


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
    """Run the matrix of `config` into the run directory `out`; returns one record per cell.

    Each cell is appended to out/results.jsonl as it finishes; with resume=True, cells already
    measured or skipped there are not run again. shard_spec=(k, n) runs shard k of n only.
    progress=None shows a bar on a terminal and log lines elsewhere (bench/progress.py).
    """
    config.check()
    _check_inputs(config)  # a bad scenario or trace fails here, before anything is written
    machine = doctor.collect(threads=config.threads)
    peaks = machine["peaks"]
    recorded = config.to_dict() | {"shard": list(shard_spec) if shard_spec else None,
                                   "files_dir": os.path.relpath(config.files_dir, Path(out).resolve())}
    store = RunStore(out, recorded, resume, machine)
    cells = plan(config) if shard_spec is None else shard(plan(config), *shard_spec)
    finished = store.finished()
    todo = [cell for cell in cells if cell.key not in finished]
    with Progress(len(todo), progress) as bar:
        lm = [c for c in todo if c.kind in ("lm", "whole")]
        for model, group in itertools.groupby((c for c in todo if c.kind not in ("lm", "whole")),
                                              key=lambda c: c.model):
            group = list(group)
            mc = config.for_model(model)
            designs = list(dict.fromkeys(c.design for c in group))
            accuracy = [c for c in group if c.kind == "accuracy"]
            with prebuild.workers(mc, model) as pool:
                pending = {}
                if pool:
                    bar.phase(f"{model}: exporting {len(designs)} designs in parallel")
                    prebuild.exports(pool, mc, model, designs, store.out / "artifacts")
                subjects = {d: Subject(mc, d, model, store.out / "artifacts") for d in designs}
                if pool:
                    pending = prebuild.quantizations(pool, subjects, group)
                bar.phase(f"{model}: {len(accuracy)} accuracy cells")
                _measure_beside_builds(accuracy, subjects, pending, mc, measure, store, bar, model)
            timed = [c for c in group if c.kind == "latency"]
            if timed:
                bar.phase(f"{model}: memory of {len({c.artifact for c in timed})} runnables, "
                                    "each in a process of its own")
                memory_mb = measure_memory(subjects, timed, mc)
            for shape, shape_cells in itertools.groupby(timed, key=lambda c: c.scenario):
                shape_cells = list(shape_cells)
                bar.phase(f"{model}: timing {len(shape_cells)} cells at {shape}, interleaved")
                for record in measure_latency(subjects, shape_cells, mc, peaks, memory_mb):
                    store.append(record)
                    bar.update()
        if lm:
            run_lm(lm, config, store, bar)
    downstream.write(store.out)  # what the run concludes, with or without a report
    return store.results()


def run_lm(cells: list[Cell], config: RunConfig, store: RunStore, bar: Progress) -> None:
    """The trained pair's cells, one model (design and training seed) after another, then each user's
    whole model, each model's references dropped when its cells are done. Their ONNX Runtime
    artifacts are built in worker processes while the others (fp32, bitsandbytes, torch) are
    measured: ORT's entropy calibration of one trained model is about 27 s of single-threaded Python."""
    groups = {}
    for cell in cells:
        groups.setdefault((cell.design, cell.model), []).append(cell)
    subjects = {}
    for (design, model), group in groups.items():
        if group[0].kind == "whole":
            bar.phase(f"{model}: loading the whole model")
            subjects[design, model] = WholeSubject(config, model, store.out / "artifacts")
            continue
        bar.phase(f"{model} {design}: export (whole model)")
        first = group[0]
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


class Subject:
    """One (design, model size): its fp32 block and export, inputs, references and artifacts."""

    def __init__(self, config: RunConfig, design: str, model: str, artifacts: Path):
        self.config, self.artifacts = config, artifacts
        self.block = config.build_block(model, design).to(config.device)
        self.export = self._export(self.block)
        self.head = metrics.readout_head(self.block.cfg.d_model, seed=config.seed)
        self.reference_runnable = TorchRunnable(self.block, threads=config.threads, device=config.device)
        self._inputs: dict[str, np.ndarray] = {}
        self._references: dict[str, tuple] = {}
        self._runnables: dict[tuple, tuple] = {}
        self._mitigated: dict[tuple, tuple[FFNBlock, ExportedModel]] = {}

    def _export(self, block: FFNBlock) -> ExportedModel:
        """`block` (the subject's, or a mitigated copy: its source names the transform) in ONNX, with taps."""
        cfg = block.cfg
        identity = {"config": cfg.to_dict(), "source": block.source, "opset": NATIVE_OPSET, "taps": True,
                    "ffnbench": stack_versions()["ffnbench"]}
        out = self.artifacts / f"export-{cfg.design}-{files.digest(identity)}"
        if (out / "manifest.json").exists():  # cached by content: a re-run does not re-export
            return ExportedModel(out / "model.onnx", json.loads((out / "manifest.json").read_text()))
        return export_onnx(block, out, taps=True)

    def mitigated(self, recipe: str, calibration: str) -> tuple[FFNBlock, ExportedModel]:
        """The block with the recipe's mitigations applied, set from the calibration scenario's data,
        and its export, made once a subject. Its equivalence to the fp32 block on the first calibration
        request is recorded in its source (`mitigation`), which names its export and artifacts."""
        mods, settings = self.config.mitigations_of(recipe), self.config.mitigation_settings(recipe)
        key = (mods, settings, calibration)
        if key not in self._mitigated:
            cal = self.calibration(calibration)
            data = torch.from_numpy(cal.data).to(self.config.device)
            block = mitigations.mitigate(self.block, mods, settings, data, mitigations.block_forward, cal.describe())
            self._mitigated[key] = (block, self._export(block))
        return self._mitigated[key]

    def inputs(self, name: str) -> np.ndarray:
        if name not in self._inputs:
            cfg = self.config
            self._inputs[name] = cfg.scenario(name).generate(cfg.n_requests, cfg.seq_len, self.block.cfg.d_model,
                                                             seed=cfg.seed)
        return self._inputs[name]

    def batches(self, name: str) -> list[np.ndarray]:
        """Mixed-batch scenarios run as one batch (one dynamic range); others one request a call."""
        x = self.inputs(name)
        return [x] if self.config.scenario(name).mixed_batch else [x[i:i + 1] for i in range(len(x))]

    def reference(self, name: str) -> tuple[np.ndarray, dict]:
        if name not in self._references:
            self._references[name] = evaluate(self.reference_runnable, self.batches(name))
        return self._references[name]

    def drift_db(self, name: str) -> float | None:
        base = self.config.scenario(name).unshifted()
        if base is None:
            return None
        x_base = base.generate(self.config.n_requests, self.config.seq_len, self.block.cfg.d_model,
                               seed=self.config.seed)
        shifted, _ = self.reference(name)
        base_out = self.reference_runnable.run(x_base)
        if self.block.cfg.residual:  # the sublayer's own contribution, without the input it adds back
            shifted, base_out = shifted - self.inputs(name), base_out - x_base
        return metrics.fp32_drift_db(base_out, shifted)

    def calibration(self, name: str) -> Calibration:
        cfg = self.config
        data = cfg.scenario(name).calibration_data(cfg.calibration_requests, cfg.seq_len, self.block.cfg.d_model,
                                                   seed=cfg.seed)
        return Calibration(name, data)

    def artifact_job(self, recipe: str, calibration: str | None) -> tuple[Path, dict]:
        """Where the recipe's artifact goes (named by what it is made from) and quantize()'s arguments."""
        base, params = self.config.recipe_spec(recipe)
        if self.config.device == "cuda" and RECIPES[base].runtime == "ort" and not ort_has_cuda():
            raise Skipped("ONNX Runtime here has no CUDAExecutionProvider (install onnxruntime-gpu)")
        cal = self.calibration(calibration) if calibration else None
        block, export = self.source(recipe, calibration)
        identity = {"export": export.manifest["sha256"], "recipe": base, "params": params,
                    "device": self.config.device, "calibration": cal.describe() if cal else None}
        if block.source.get("mitigation"):  # +keep changes what is quantized, not the export's bytes
            identity["mitigation"] = block.source["mitigation"]
        out = self.artifacts / f"{recipe}-{self.block.cfg.design}-{files.digest(identity)}"
        source = export.path if RECIPES[base].runtime in ("ort", "fp32") else block
        return out, {"source": source, "recipe": base, "calibration": cal, "device": self.config.device, **params}

    def source(self, recipe: str, calibration: str | None) -> tuple[FFNBlock, ExportedModel]:
        """What the recipe quantizes: the block, or its mitigated copy for a RECIPE+shift (...)."""
        return self.mitigated(recipe, calibration) if self.config.mitigations_of(recipe) else (self.block, self.export)

    def runnable(self, recipe: str, calibration: str | None) -> tuple[Runnable, dict]:
        key = (recipe, calibration)
        if key not in self._runnables:
            out, job = self.artifact_job(recipe, calibration)
            if (out / "manifest.json").exists():
                artifact = load_artifact(out, self.source(recipe, calibration)[0], device=self.config.device)
            else:
                source, base = job.pop("source"), job.pop("recipe")
                artifact = quantize(source, base, out, **job)
                artifact.module = self.block if base == "fp32" else artifact.module
            manifest = {**artifact.manifest, "dir": out.relative_to(self.artifacts.parent).as_posix()}
            prefer = "torch" if self.config.device == "cuda" and not ort_has_cuda() else "ort"
            self._runnables[key] = (runnable_for(artifact, prefer=prefer, threads=self.config.threads,
                                                 device=self.config.device), manifest)
        return self._runnables[key]

    def timed(self, recipe: str, calibration: str | None) -> tuple[Runnable, dict]:
        """What latency times (an ONNX artifact without its tap outputs), made once for every shape.
        The accuracy session it replaces is dropped (a run's accuracy cells come first): with both
        kept, examples/latency-7b.toml peaked at 16.8 GB of RSS; with one, 11.4 GB."""
        key = ("timed", recipe, calibration)
        if key not in self._runnables:
            runnable, manifest = self.runnable(recipe, calibration)
            timed = latency_cells.timing_runnable(runnable, self.config.threads, self.config.latency.ort_spinning)
            self._runnables[key] = (timed, manifest)
            if timed is not runnable:
                del self._runnables[(recipe, calibration)]
        return self._runnables[key]


def evaluate(runnable: Runnable, batches: list[np.ndarray]) -> tuple[np.ndarray, dict | str]:
    """Output and taps over all batches, concatenated along requests; taps are a reason if unavailable."""
    try:
        per_batch = [runnable.run_with_taps(b) for b in batches]
    except UsageError as e:  # an artifact without tap outputs says so before it runs anything
        return np.concatenate([runnable.run(b) for b in batches]), str(e)
    taps = [t for _, t in per_batch]
    return np.concatenate([y for y, _ in per_batch]), {k: np.concatenate([t[k] for t in taps]) for k in taps[0]}


def measure(subject: Subject, cell: Cell) -> dict:
    record = {"key": cell.key, "kind": "accuracy", "design": cell.design, "model": cell.model, "recipe": cell.recipe,
              "scenario": cell.scenario, "calibration": cell.calibration}
    with recording(record):
        runnable, manifest = subject.runnable(cell.recipe, cell.calibration)
        ref, ref_taps = subject.reference(cell.scenario)
        batches = subject.batches(cell.scenario)
        y, taps = evaluate(runnable, batches)
        values = metrics.output_metrics(ref, y, subject.head)
        record["requests"] = metrics.per_request(ref, y)
        values["fp32_drift_db"] = subject.drift_db(cell.scenario) if cell.recipe == "fp32" else None
        values["u8s8_saturation_rate"] = None
        int8 = {"MatMulInteger", "DequantizeLinear"} & set(manifest.get("ops", {}))
        if not isinstance(taps, str) and int8 and hasattr(runnable, "path"):
            sizes = np.cumsum([len(b) for b in batches])[:-1]
            calls = [dict(zip(taps, parts, strict=True))
                     for parts in zip(*(np.split(t, sizes) for t in taps.values()), strict=True)]
            values["u8s8_saturation_rate"] = u8s8.saturation_rate(runnable.path, calls)
        if isinstance(taps, str):
            values |= dict.fromkeys(metrics.TAP_METRICS)
            record["taps_unavailable"] = taps
        else:
            values |= metrics.tap_metrics(ref_taps, taps, subject.config.delta)
        record |= {"status": "ok", "metrics": finite(values), "runtime": runnable.describe(),
                   "artifact": artifact_summary(manifest)}
        if subject.config.mitigations_of(cell.recipe):
            record["mitigation"] = subject.source(cell.recipe, cell.calibration)[0].source["mitigation"]
    return record


def latency_inputs(subject: Subject, shape: tuple[int, int]) -> np.ndarray:
    """What latency calls a runnable on: the run's latency scenario (production when it has it)."""
    config = subject.config
    return config.scenario(config.latency_scenario()).generate(shape[0], shape[1], subject.block.cfg.d_model,
                                                               seed=config.seed)


def measure_memory(subjects: dict, cells: list[Cell], config: RunConfig) -> dict[tuple, dict]:
    """Cell.artifact -> {resident_mb, peak_call_mb: {shape: MB}} or {error}: each
    latency cell's runnable loaded and called at every shape by a child process of its own (bench/cells/memory.py)."""
    if not config.latency.memory or config.device != "cpu":
        return {}
    requests, inputs = {}, {}
    for design, subject in subjects.items():
        inputs[design] = {name: latency_inputs(subject, shape) for name, shape in config.latency.shapes().items()}
        for cell in {c.artifact: c for c in cells if c.design == design}.values():
            try:
                runnable, manifest = subject.timed(cell.recipe, cell.calibration)
            except Exception:  # the timing records why (skipped or failed); nothing to measure
                continue
            common = {"threads": config.threads, "spinning": config.latency.ort_spinning, "inputs": design}
            requests[cell.artifact] = (
                {"kind": "onnx", "path": str(runnable.path), **common}
                if hasattr(runnable, "path") else
                {"kind": "module", "artifact_dir": str(subject.artifacts.parent / manifest["dir"]),
                 "files_dir": config.files_dir, **common})
    try:
        return memory.measure(requests, inputs)
    except OSError as e:  # the inputs could not be written: every runnable says why, the timing goes on
        return {key: {"error": f"{type(e).__name__}: {e}"} for key in requests}


def measure_latency(subjects: dict, cells: list[Cell], config: RunConfig, peaks: dict,
                    memory_mb: dict | None = None) -> list[dict]:
    """Time every cell's runnable, plus each design's fp32 references, round-robin in one loop."""
    shape = config.latency.shapes()[cells[0].scenario]
    entries, records, scenario = {}, {}, config.latency_scenario()
    for design, subject in subjects.items():
        x = latency_inputs(subject, shape)
        references = latency_cells.reference_runnables(subject, config.threads, config.latency.ort_spinning)
        for name, ref in references.items():
            entries[f"{design}/{name}"] = {"runnable": ref, "x": x, "block_cfg": subject.block.cfg, "model_bytes": 0,
                                           "reference": True}
    for cell in cells:
        subject = subjects[cell.design]
        record = {"key": cell.key, "kind": "latency", "design": cell.design, "model": cell.model,
                  "recipe": cell.recipe, "scenario": None, "calibration": cell.calibration,
                  "shape": {"name": cell.scenario, "batch": shape[0], "seq": shape[1]}, "inputs": scenario}
        try:
            timed, manifest = subject.timed(cell.recipe, cell.calibration)
            x = entries[f"{cell.design}/fp32_torch"]["x"]
            refs = {f"vs_{name}": f"{cell.design}/{name}" for name in ("fp32_ort", "fp32_torch")
                    if f"{cell.design}/{name}" in entries}
            entries[cell.key] = {"runnable": timed, "x": x, "block_cfg": subject.block.cfg,
                                 "model_bytes": manifest["bytes"], "ratios": refs}
            record |= {"runtime": timed.describe(), "artifact": {"sha256": manifest["sha256"], "dir": manifest["dir"],
                                                                 "bytes": manifest["bytes"]}}
        except Skipped as e:
            record |= {"status": "skipped", "reason": str(e)}
        except Exception as e:  # recorded like an accuracy cell's failure; the others are still timed
            record |= {"status": "error", "error": f"{type(e).__name__}: {e}"}
        records[cell.key] = record
    for cell in cells:  # a mitigated recipe's time over its parent's, where both run
        for parent in _parents(cell, cells, config):
            if cell.key in entries and parent.key in entries:
                entries[cell.key]["ratios"]["vs_parent"] = parent.key
    started = time.perf_counter()
    try:
        timings = latency_cells.time_group(entries, shape, config.latency, peaks, config.threads)
    except Exception as e:  # one runnable failing mid-timing fails this group's cells, not the run
        timings = {}
        for record in records.values():
            record.setdefault("status", "error")
            record.setdefault("error", f"{type(e).__name__} while timing the group: {e}")
    if timings and config.latency.diagnose and config.device == "cpu":  # CPU profilers
        diagnosis.diagnose(cells[0].scenario, subjects, records, entries, timings, config)
    seconds = round(time.perf_counter() - started, 3)
    for key, record in records.items():
        if "status" not in record:
            record |= {"status": "ok", "metrics": timings[key], "seconds": seconds}
            _add_memory(record, (memory_mb or {}).get((record["design"], record["model"], record["recipe"],
                                                       record["calibration"])), config)
        record.setdefault("seconds", 0.0)
    return list(records.values())


def _parents(cell: Cell, cells: list[Cell], config: RunConfig) -> list[Cell]:
    """A mitigated cell's unmitigated recipe among `cells` (the same design and shape; calibrated on
    the same scenario where the parent is calibrated at all), whose time its own is a ratio of."""
    parent = config.unmitigated(cell.recipe)
    return [c for c in cells if parent and c.recipe == parent and c.design == cell.design
            and c.calibration in (cell.calibration, None)]


def _add_memory(record: dict, measured: dict | None, config: RunConfig) -> None:
    shape = record["shape"]["name"]
    ok = measured is not None and "error" not in measured
    record["metrics"] |= {"resident_mb": measured["resident_mb"] if ok else None,
                          "peak_call_mb": measured["peak_call_mb"][shape] if ok else None}
    if ok:
        record["memory_probe"] = measured["probe"]  # a forked child, or a new interpreter (bench/cells/memory.py)
        return
    if measured is not None:
        record["memory_unavailable"] = measured["error"]
    elif not config.latency.memory:
        record["memory_unavailable"] = "memory = false in the run's config"
    elif config.device != "cpu":
        record["memory_unavailable"] = (f"not measured on {config.device} (host RSS is not the device's memory; "
                                        "see peak_gpu_mb)")
    else:
        record["memory_unavailable"] = "its runnable could not be built for the memory probe (see the cell's status)"
