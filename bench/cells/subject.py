"""The subject base: artifact identity, the one caching rule, mitigated models and a recipe's runnable.

A subject is one model a study measures: a sublayer (sublayer_cells.Subject), one design and training
seed of a trained pair (lm_cells.LMSubject) or a user's whole model (whole_cells.WholeSubject). They
differ in what model, what export, what inputs and what a cell measures; the rest is here, once.

Identity: an export or artifact directory is named by what it is made from (`files.digest` of its
identity: the model's, the recipe and its parameters, the calibration data's description), never by
when or where it was made, so a second subject of the same content finds it.

Caching, one rule: an export or artifact is used from the run's `artifacts/` folder only while its
manifest's sha256 matches its file (`intact`); anything else is made again. An export whose identity
names the code that makes it (`user_cache`: the trained pair's and users' whole models, 6-8 s to a
minute to export) is also kept in the user's cache under the same name and copied into the run from
there after the same check. A sublayer's export is not: its identity names the package version, not
the export code (naming the code would rename every export already cached), it takes under a second
at the sizes that run often, and at llama-7b the cache would hold a second 540 MB copy of seeded
weights for nothing.
"""

import contextlib
import functools
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from ffnbench import files
from ffnbench.export import ExportedModel
from ffnbench.quant import RECIPES, Artifact, load_artifact, quantize


def intact(directory: Path) -> bool:
    """Whether an export's or artifact's directory holds the file its manifest names, unchanged."""
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
        return manifest["sha256"] == files.sha256_file(directory / manifest["file"])
    except (OSError, ValueError, KeyError):
        return False


def _copy_whole(src: Path, dst: Path) -> None:
    """Copy a directory's files so that `dst` appears complete or not at all."""
    shutil.rmtree(dst, ignore_errors=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with files.staged_dir(dst) as stage:
        for path in src.iterdir():
            shutil.copyfile(path, stage / path.name)


class BaseSubject:
    """What every subject does the same way; a subclass sets `model`, `design`, `config` and
    `artifacts`, and says what its export, calibration, mitigation and runnable are."""

    user_cache = False  # whether exports are kept in the user's cache too (module docstring)
    artifact_prefix = ""  # before "{recipe}-{design}-{digest}": what kind of model an artifact is of
    # A user's model holds one candidate at a time (its cells come recipe by recipe): a copy of a
    # 30-layer model a recipe would not fit beside its references.
    hold_one_runnable = False

    def __init__(self, config, design: str, model: torch.nn.Module, artifacts: Path):
        self.config, self.design, self.model, self.artifacts = config, design, model, artifacts
        self._runnables: dict[tuple, tuple] = {}
        self._mitigated: dict[tuple, dict] = {}

    # What a subclass says: its export, how it is named, what runs an artifact, how it is mitigated.

    def export_identity(self, model: torch.nn.Module) -> tuple[str, Callable[[Path], ExportedModel]]:
        """(directory name, how to export `model` there)."""
        raise NotImplementedError

    def source_identity(self, model: torch.nn.Module, export: ExportedModel | None) -> dict:
        """What an artifact's source contributes to its identity."""
        raise NotImplementedError

    def calibration(self, name: str):
        raise NotImplementedError

    def mitigate(self, mods: tuple, settings, calibration: str) -> torch.nn.Module:
        """The subject's model with mitigations `mods` applied, set on the calibration scenario's data."""
        raise NotImplementedError

    def runnable_for(self, artifact: Artifact):
        raise NotImplementedError

    def check_runtime(self, runtime: str) -> None:
        """Raise quant.Skipped where this subject cannot run a recipe of `runtime` on the run's device."""

    # The same for every subject.

    @functools.cached_property
    def export(self) -> ExportedModel:
        """The subject's model in ONNX, made when first needed."""
        return self.exported(self.model)

    def exported(self, model: torch.nn.Module) -> ExportedModel:
        """`model` (the subject's, or a mitigated copy) in ONNX, by the caching rule."""
        name, make = self.export_identity(model)
        out = self.artifacts / name
        cached = files.cache_dir() / name if self.user_cache else None
        # A process exporting the same model (a shard beside this one, a test worker): wait for it.
        with files.cache_lock(name) if cached else contextlib.nullcontext():
            if cached and not intact(out) and intact(cached):
                _copy_whole(cached, out)
            if intact(out):  # a re-run does not re-export
                return ExportedModel(out / "model.onnx", json.loads((out / "manifest.json").read_text()))
            made = make(out)
            if cached:
                with contextlib.suppress(OSError):  # a read-only cache costs time, not results
                    _copy_whole(out, cached)
        return made

    def mitigated(self, recipe: str, calibration: str, export: bool = True):
        """The model with the recipe's mitigations applied, set from the calibration scenario's data,
        and its export (where wanted, else None); each made once a subject. Its equivalence to fp32,
        measured on the calibration data, is recorded in its source (`mitigation`), which names its
        export and artifacts."""
        mods, settings = self.config.mitigations_of(recipe), self.config.mitigation_settings(recipe)
        key = (mods, settings, calibration)
        if key not in self._mitigated:
            self._mitigated[key] = {"model": self.mitigate(mods, settings, calibration), "export": None}
        made = self._mitigated[key]
        if export and made["export"] is None:
            made["export"] = self.exported(made["model"])
        return made["model"], made["export"]

    def mitigation(self, recipe: str, calibration: str) -> dict:
        """What `mitigated` did for the recipe, and its measured fp32 equivalence."""
        return self.mitigated(recipe, calibration, export=False)[0].source["mitigation"]

    def source(self, recipe: str, calibration: str | None, export: bool = True):
        """What the recipe quantizes: the model, or its mitigated copy for a RECIPE+shift (...), and
        its export where wanted."""
        if self.config.mitigations_of(recipe):
            return self.mitigated(recipe, calibration, export)
        return self.model, (self.export if export else None)

    def needs_export(self, runtime: str) -> bool:
        """Whether an artifact of `runtime` is made from (or named by) the export."""
        return runtime in ("ort", "fp32")

    def artifact_job(self, recipe: str, calibration: str | None) -> tuple[Path, dict]:
        """Where the recipe's artifact goes (named by what it is made from) and quantize()'s arguments."""
        config = self.config
        base, params = config.recipe_spec(recipe)
        runtime = RECIPES[base].runtime
        self.check_runtime(runtime)
        cal = self.calibration(calibration) if calibration else None
        model, export = self.source(recipe, calibration, self.needs_export(runtime))
        identity = {**self.source_identity(model, export), "recipe": base, "params": params, "device": config.device,
                    "calibration": cal.describe() if cal else None}
        if model.source.get("mitigation"):  # +keep changes what is quantized, not the export's bytes
            identity["mitigation"] = model.source["mitigation"]
        out = self.artifacts / f"{self.artifact_prefix}{recipe}-{self.design}-{files.digest(identity)}"
        on_onnx = runtime in ("ort", "fp32")  # module recipes quantize the model itself
        return out, {"source": export.path if on_onnx else model, "recipe": base, "calibration": cal,
                     "device": config.device, **params}

    def runnable(self, recipe: str, calibration: str | None) -> tuple:
        """(runnable, artifact manifest with its `dir` in the run) of the recipe, made or found once."""
        key = (recipe, calibration)
        if key not in self._runnables:
            if self.hold_one_runnable:
                self._runnables.clear()
            out, job = self.artifact_job(recipe, calibration)
            # The model a module artifact is rebuilt from and fp32 runs in torch: the source, mitigated or not.
            module = self.source(recipe, calibration, export=False)[0]
            if intact(out):
                artifact = load_artifact(out, module, device=self.config.device)
            else:
                source, base = job.pop("source"), job.pop("recipe")
                artifact = quantize(source, base, out, **job)
                artifact.module = module if base == "fp32" else artifact.module
            manifest = {**artifact.manifest, "dir": out.relative_to(self.artifacts.parent).as_posix()}
            self._runnables[key] = (self.runnable_for(artifact), manifest)
        return self._runnables[key]

    def release(self) -> None:
        """Drop runnables and mitigated models once the subject's cells are done."""
        self._runnables.clear()
        self._mitigated.clear()
