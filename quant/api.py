"""`quantize(model_or_onnx, recipe) -> Artifact`: the one entry point, dispatching through a dict."""

import contextlib
import copy
import dataclasses
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import torch

from ffnbench import files
from ffnbench.errors import UsageError
from ffnbench.export import export_onnx, load_onnx, op_histogram
from ffnbench.export.lm_export import export_lm
from ffnbench.models import FFNBlock, FFNConfig, rebuild
from ffnbench.models.lm import CausalLM
from ffnbench.models.real_lm import RealLM
from ffnbench.quant import bnb_recipes, mitigations, ort_recipes
from ffnbench.quant.calibration import Calibration, Reader
from ffnbench.quant.recipes import (
    Bnb4bit,
    BnbInt8,
    Fp32,
    OrtBnb4,
    OrtDynamicInt8,
    OrtInt4,
    OrtStaticQdq,
    TorchHalf,
    recipe_config,
)
from ffnbench.versions import stack_versions

MITIGATED_SOURCE = "source.pt"  # beside a mitigated block's module artifact: its fp32 transformed block


class Skipped(Exception):
    """This recipe cannot run on this machine or device; str(e) is the reason, recorded in the cell."""


@dataclass
class Artifact:
    recipe: str
    runtime: str  # "ort" (an ONNX file) | "bnb" | "torch" (a module)
    path: Path  # model.onnx or model.pt
    manifest: dict
    module: FFNBlock | CausalLM | RealLM | None = field(default=None, repr=False)


@functools.cache
def _u8s8_saturates() -> bool:
    from ffnbench.bench.machine.isa import u8s8_saturates

    return u8s8_saturates()


def needs_calibration(recipe: str, params: dict) -> bool:
    """Whether `recipe` (RECIPE+mods, with `params`) needs calibration data: QDQ's ranges or a
    mitigation's statistics. An unknown recipe, mitigation or parameter is refused here, before any
    work."""
    base, mods = mitigations.parse(recipe)
    cfg = recipe_config(base, **{k: v for k, v in params.items() if not (mods and k in mitigations.SETTINGS)})
    return bool(getattr(cfg, "needs_calibration", False) or mods)


def quantize(source: FFNBlock | CausalLM | Path, recipe: str, out_dir: Path, calibration: Calibration | None = None,
             device: str = "cpu", **params) -> Artifact:
    """Quantize an fp32 block, or the model.onnx that `export` wrote, with the named recipe.

    ORT recipes write out_dir/model.onnx; bitsandbytes and torch recipes return the swapped module
    and save its state as out_dir/model.pt. Either way out_dir/manifest.json records the recipe's
    parameters, the artifact's size and hash, and the calibration data's scenario and hash. A whole
    language model (a CausalLM, or its export from `export.lm_export`) gets the recipe on its FFN
    sublayers only; attention and the head stay fp32. A mitigated recipe (RECIPE+shift, ...) on a
    block transforms it first, set on `calibration` (params may give alpha, threshold and seed).
    """
    base, mods = mitigations.parse(recipe)
    if mods:
        source, params = _mitigated(source, recipe, calibration, params)
    cfg = recipe_config(base, **params)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out: {out_dir} is an existing file; give a directory path")
    if not isinstance(source, torch.nn.Module) and out_dir.resolve() == Path(source).resolve().parent:
        raise UsageError(f"--out: {out_dir} holds the source model; write the artifact to another directory")
    resolved = {}
    if getattr(cfg, "reduce_range", False) is None:
        cfg = dataclasses.replace(cfg, reduce_range=_u8s8_saturates())
        resolved["reduce_range_from"] = f"measured U8S8 probe (saturates: {cfg.reduce_range})"
    with files.staged_dir(out_dir) as stage:
        artifact = BUILDERS[type(cfg)](source, cfg, stage, calibration=calibration, device=device)
        manifest = {
            "kind": "ffnbench.artifact",
            "recipe": recipe,
            "runtime": artifact.runtime,
            "params": dataclasses.asdict(cfg) | resolved | artifact.manifest.pop("extra_params", {}),
            "file": artifact.path.name,
            "sha256": files.sha256_file(artifact.path),
            "bytes": artifact.path.stat().st_size,
            "versions": stack_versions(),
            **artifact.manifest,
        }
        files.write_json(stage / "manifest.json", manifest)
    artifact.recipe = recipe
    artifact.path = out_dir / artifact.path.name
    artifact.manifest = manifest
    return artifact


def _mitigated(source, recipe: str, calibration: Calibration | None, params: dict) -> tuple[FFNBlock, dict]:
    """The block `source` is, with the recipe's mitigations applied, and the recipe's own parameters
    (the mitigations' settings taken out)."""
    if isinstance(source, CausalLM | RealLM) or (not isinstance(source, torch.nn.Module) and _is_lm_export(source)):
        raise UsageError(f"recipe {recipe}: a whole language model is mitigated in `ffnbench run` ([downstream] "
                         "recipes), where its calibration text is; quantize a sublayer export here")
    if calibration is None:
        raise UsageError(f"calibration: {recipe} sets its mitigations from calibration data; pass --calibration "
                         "SCENARIO")
    block = _source_block(source)
    calibration.check(block.cfg.d_model)
    _, mods = mitigations.parse(recipe)
    given = {k: _number(recipe, k, params.pop(k)) for k in list(params) if k in mitigations.SETTINGS}
    settings = mitigations.settings(given, mods, recipe)
    data = torch.from_numpy(calibration.data).to(next(block.parameters()).device)
    return mitigations.mitigate(block, mods, settings, data, mitigations.block_forward, calibration.describe()), params


def _is_lm_export(path) -> bool:
    manifest = Path(path).parent / "manifest.json"
    return manifest.is_file() and json.loads(manifest.read_text()).get("kind") == "ffnbench.lm-export"


def _number(recipe: str, key: str, value) -> float | int:
    """A mitigation setting as given in Python, or from a CLI's --set key=value (a string)."""
    if not isinstance(value, str):
        return value
    try:
        return int(value) if key == "seed" else float(value)
    except ValueError:
        raise UsageError(f"recipe {recipe}: {key} must be a number, got {value!r}") from None


def load_artifact(out_dir: Path, block: FFNBlock | CausalLM | RealLM | None = None, device: str = "cpu",
                  files_dir: str | Path | None = None) -> Artifact:
    """An artifact `quantize` wrote earlier. ORT artifacts are files; a module artifact is rebuilt
    in memory from `block` (or the mitigated block saved beside it, or its export's source, a
    checkpoint file found from `files_dir`), since bitsandbytes layers quantize on creation."""
    out_dir = Path(out_dir)
    manifest = json.loads((out_dir / "manifest.json").read_text())
    module = None
    if manifest["runtime"] in ("bnb", "torch"):
        base, _ = mitigations.parse(manifest["recipe"])  # a mitigated block is saved beside, transformed
        params = {k: v for k, v in manifest["params"].items()
                  if k in {f.name for f in dataclasses.fields(recipe_config(base))}}
        cfg = recipe_config(base, **params)
        if block is not None:
            source = block
        elif (out_dir / MITIGATED_SOURCE).is_file():
            # A whole module pickled by `quantize` (so not weights_only): trusted as the artifact's model.pt is.
            source = torch.load(out_dir / MITIGATED_SOURCE, weights_only=False, map_location=device)
        else:
            source = rebuild(FFNConfig.from_dict(manifest["config"]), manifest["source"], files_dir)
        module = _module_recipe(source, cfg, device)
    elif manifest["recipe"] == "fp32":
        module = block
    return Artifact(manifest["recipe"], manifest["runtime"], out_dir / manifest["file"], manifest, module=module)


@contextlib.contextmanager
def _source_onnx(source: FFNBlock | CausalLM | RealLM | Path) -> Iterator[tuple[Path, dict]]:
    """An fp32 model.onnx and its export manifest ({} for a foreign file), exporting a block first.

    A block is exported with its taps as graph outputs; ORT's quantizers keep graph outputs, so the
    quantized model can report its intermediate tensors too.
    """
    if isinstance(source, torch.nn.Module):
        with tempfile.TemporaryDirectory() as tmp:
            exported = (export_lm(source, Path(tmp) / "fp32") if isinstance(source, CausalLM | RealLM)
                        else export_onnx(source, Path(tmp) / "fp32", taps=True))
            yield exported.path, exported.manifest
        return
    path = Path(source)
    manifest_path = path.parent / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    # An export checked when it was written, and still its size, skips the full check (shape
    # inference over every weight: 2.8 s of a 20 s quantization at llama-7b); any other file gets it.
    ours = (manifest.get("kind") == "ffnbench.export" and isinstance(manifest.get("ops"), dict) and path.is_file()
            and manifest.get("bytes") == path.stat().st_size)
    ops = manifest["ops"] if ours else op_histogram(load_onnx(path))
    if "MatMul" not in ops:
        raise UsageError(f"model: {path} has no MatMul to quantize; give an fp32 model from `ffnbench export`")
    yield path, manifest


def _source_block(source: FFNBlock | CausalLM | Path) -> FFNBlock | CausalLM:
    if isinstance(source, torch.nn.Module):
        return source
    manifest_path = Path(source).parent / "manifest.json"
    if not manifest_path.is_file():
        raise UsageError(f"model: no manifest.json beside {source}; bitsandbytes and torch recipes rebuild "
                         "the torch module from it, so give a model written by `ffnbench export`")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("kind") == "ffnbench.lm-export":
        raise UsageError(f"model: {source} is a whole language model; its bitsandbytes and torch recipes run "
                         "from its checkpoint, in `ffnbench run` (lm cells)")
    return rebuild(FFNConfig.from_dict(manifest["config"]), manifest["source"])


def _lineage(src: Path, manifest: dict) -> dict:
    return {"source_model": {"path": str(src), "sha256": manifest.get("sha256") or files.sha256_file(src)},
            "config": manifest.get("config"), "source": manifest.get("source")}


def _ort(source, cfg, stage: Path, calibration: Calibration | None, device: str) -> Artifact:
    with _source_onnx(source) as (src, src_manifest), tempfile.TemporaryDirectory(prefix="ffnbench-src-") as tmp:
        # ORT's quantizers write `<model>-inferred.onnx` beside the model they read and delete it after:
        # two quantizations of one export at once (the run's build workers) took each other's file.
        # They read it through a private link instead, and leave the export's folder alone.
        private = Path(tmp) / src.name
        private.symlink_to(src.resolve())
        artifact = _ort_from_file(private, src_manifest, cfg, stage, calibration)
        artifact.manifest = {**_lineage(src, src_manifest), **artifact.manifest}
        return artifact


def _ort_from_file(src: Path, src_manifest: dict, cfg, stage: Path, calibration: Calibration | None) -> Artifact:
    dst = stage / "model.onnx"
    extra = {}
    # A whole language model quantizes its FFN sublayers only (attention and the head stay fp32), a
    # mitigated one without the online rotations and the layers it keeps fp32.
    nodes = src_manifest.get("ffn_matmuls")
    if isinstance(cfg, OrtDynamicInt8):
        ort_recipes.dynamic_int8(src, dst, cfg, nodes)
    elif isinstance(cfg, OrtStaticQdq):
        if calibration is None:
            raise UsageError(f"calibration: {cfg.method} QDQ needs calibration data; pass --calibration SCENARIO")
        if src_manifest.get("kind") == "ffnbench.lm-export" and isinstance(calibration, Calibration):
            raise UsageError(f"calibration: {src.resolve()} is a whole language model, which calibrates on text; "
                             "run its QDQ recipes in `ffnbench run` ([downstream] recipes), not `ffnbench quantize`")
        input_name = onnx.load(str(src), load_external_data=False).graph.input[0].name
        d_model = (src_manifest.get("config") or {}).get("d_model")
        ort_recipes.static_qdq(src, dst, cfg, Reader(calibration.feeds(input_name, d_model)), nodes)
        extra["calibration"] = calibration.describe()
        extra["extra_params"] = {"histogram": ort_recipes.histogram_options(cfg)}
    elif isinstance(cfg, OrtInt4):
        ort_recipes.int4(src, dst, cfg, nodes)
    else:
        ort_recipes.bnb4(src, dst, cfg, nodes)
    written = onnx.load(str(dst))
    extra["quantized_nodes"] = ort_recipes.quantized_matmuls(onnx.load(str(src), load_external_data=False), written)
    extra["ops"] = op_histogram(written)
    extra["outputs"] = [o.name for o in written.graph.output]
    return Artifact("", "ort", dst, extra)


def _bnb(source, cfg, stage: Path, calibration, device: str) -> Artifact:
    try:
        module = _module_recipe(_source_block(source), cfg, device)
    except bnb_recipes.BackendMissing as e:
        raise Skipped(str(e)) from e
    return _save_module(module, "bnb", stage, {"extra_params": bnb_recipes.recorded_params(cfg, module, device)},
                        source)


def half_block(block: FFNBlock, cfg: TorchHalf, device: str) -> FFNBlock:
    half = copy.deepcopy(block).to(device=device, dtype=getattr(torch, cfg.dtype)).set_primitive_norm(True)
    half.norm.upcast = cfg.norm_fp32
    return half


def _torch_half(source, cfg: TorchHalf, stage: Path, calibration, device: str) -> Artifact:
    return _save_module(_module_recipe(_source_block(source), cfg, device), "torch", stage, {}, source)


def _module_recipe(source: FFNBlock | CausalLM | RealLM, cfg: BnbInt8 | Bnb4bit | TorchHalf, device: str):
    """A copy with the recipe applied: to the block, or to every FFN sublayer of a language model."""
    def apply(block: FFNBlock) -> FFNBlock:  # both copy the block
        return half_block(block, cfg, device) if isinstance(cfg, TorchHalf) else \
            bnb_recipes.quantize_block(block, cfg, device)

    if not isinstance(source, CausalLM | RealLM):
        return apply(source)
    model = copy.deepcopy(source).to(device)
    for block in model.blocks:
        block.ffn = apply(block.ffn)
    return model.eval()


def _fp32(source, cfg: Fp32, stage: Path, calibration, device: str) -> Artifact:
    dst = stage / "model.onnx"
    with _source_onnx(source) as (src, src_manifest):
        try:
            os.link(src, dst)  # the same bytes: a second name, not a second 540 MB copy at llama-7b
        except OSError:  # another filesystem
            shutil.copyfile(src, dst)
        manifest = {**_lineage(src, src_manifest), "ops": src_manifest.get("ops") or op_histogram(onnx.load(str(dst)))}
    # From a file, the fp32 artifact is the file: the torch module, where wanted, is the caller's.
    return Artifact("", "ort", dst, manifest, module=source if isinstance(source, torch.nn.Module) else None)


def _save_module(block: FFNBlock | CausalLM | RealLM, runtime: str, stage: Path, manifest: dict,
                 source: FFNBlock | CausalLM | RealLM) -> Artifact:
    path = stage / "model.pt"
    if isinstance(source, FFNBlock) and source.source.get("mitigation"):
        # A mitigated block cannot be rebuilt from its seed alone (its transform was set on calibration
        # data): its fp32 module goes beside, for a process that rebuilds the artifact (memory, remeasure).
        torch.save(copy.deepcopy(source).cpu(), stage / MITIGATED_SOURCE)
    state = block.state_dict()
    if isinstance(block, RealLM):  # what the recipe changed: its FFNs (the rest is the user's file, 0.5 GB+)
        state = {k: v for k, v in state.items() if ".ffn." in k}
    torch.save(state, path)
    manifest = {"config": block.cfg.to_dict(), "source": getattr(block, "source", None), **manifest}
    return Artifact("", runtime, path, manifest, module=block)


BUILDERS = {
    Fp32: _fp32,
    OrtDynamicInt8: _ort,
    OrtStaticQdq: _ort,
    OrtInt4: _ort,
    OrtBnb4: _ort,
    BnbInt8: _bnb,
    Bnb4bit: _bnb,
    TorchHalf: _torch_half,
}
