"""`ffnbench capture`: the hidden states entering chosen FFN norms of a real model, over a text file.

The trained pair (a directory `ffnbench train` wrote) runs here without extras; a Hugging Face-format
checkpoint (GPT-2, BERT, Llama-family names) runs through `transformers` (`pip install 'ffnbench[hf]'`),
from local files only. The output holds one tensor a layer, `layer.N` (windows, tokens, d_model),
replayable as a scenario (`[scenario.x] replay = "traces.safetensors"`, `tensor = "layer.3"`), and a
JSON file beside it with each layer's drift statistics and where the states came from.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file

from ffnbench import files
from ffnbench.bench.traffic import hf_capture
from ffnbench.bench.traffic.drift_stats import PER_LAYER_LEGEND, drift_stats, moments, per_layer
from ffnbench.errors import UsageError
from ffnbench.models.pair import load_lm
from ffnbench.versions import stack_versions


@dataclass(frozen=True)
class Capture:
    states: dict[int, np.ndarray]  # layer -> (windows, tokens, d_model) float32
    source: dict  # the checkpoint: kind, name, sha256


def parse_layers(spec: str) -> list[int]:
    try:
        layers = [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--layers: '{spec}' is not a comma-separated list of layer numbers, e.g. 0,6,11") from None
    if not layers or any(layer < 0 for layer in layers):
        raise UsageError(f"--layers: '{spec}' names no layer, or a negative one; e.g. --layers 0,6,11")
    return sorted(set(layers))


def read_text(path: Path) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--text: no file at {path}; give a text file of the traffic to capture")
    data = path.read_bytes()
    if not data.strip():
        raise UsageError(f"--text: {path} is empty; give it the text of real requests")
    return data


def capture_trained(checkpoint: Path, text: bytes, layers: list[int], max_windows: int) -> Capture:
    """The states entering each chosen FFN norm of an `ffnbench train` checkpoint, over byte windows."""
    model, manifest = load_lm(checkpoint)
    _check_layers(layers, model.cfg.n_layers)
    context = model.cfg.context
    n = min(max_windows, len(text) // context)
    if n == 0:
        raise UsageError(f"--text: {len(text)} bytes is shorter than one context of {context} bytes; give more text")
    tokens = torch.from_numpy(np.frombuffer(text[:n * context], np.uint8).astype(np.int64).reshape(n, context))
    taps: dict = {}
    with torch.no_grad():
        model(tokens, taps=taps)
    states = {layer: taps[f"ffn_in.{layer}"].numpy() for layer in layers}
    return Capture(states, {"kind": "ffnbench.lm", "name": Path(checkpoint).name, "design": model.cfg.design,
                            "sha256": manifest["sha256"]})


def capture(checkpoint: Path, text_path: Path, layers: list[int], out: Path, max_windows: int = 64,
            reference_path: Path | None = None) -> dict:
    """Capture, then write out (safetensors) and out.json; returns the JSON record. With
    `reference_path` (a text of the model's usual traffic, e.g. clean prose), each layer's
    domain_shift_std measures the captured states against that text's through the same model."""
    checkpoint, out = Path(checkpoint), Path(out)
    if out.suffix != ".safetensors":
        raise UsageError(f"--out: {out} must end in .safetensors (the states replay from it)")
    if out.exists() or _json_path(out).exists():
        raise UsageError(f"--out: {out} or {_json_path(out).name} already exists; choose a new file")
    if not out.parent.is_dir():
        raise UsageError(f"--out: no folder {out.parent}; create it first")
    if max_windows <= 0:
        raise UsageError(f"--max-windows: must be positive, got {max_windows}")
    text = read_text(text_path)
    reference = read_text(reference_path) if reference_path is not None else None
    result = _capture_states(checkpoint, text, layers, max_windows)
    baseline = _capture_states(checkpoint, reference, layers, max_windows).states if reference else {}
    record = {
        "kind": "ffnbench.capture", "file": out.name, "checkpoint": result.source,
        "text": _describe_text(text_path, text),
        "reference": _describe_text(reference_path, reference) if reference else None,
        "layers": {str(layer): {"tensor": f"layer.{layer}", "shape": list(states.shape),
                                **drift_stats(states, moments(baseline[layer]) if baseline else None)}
                   for layer, states in result.states.items()},
        "versions": stack_versions() | _transformers_version(result.source),
    }
    tensors = {f"layer.{layer}": np.ascontiguousarray(states, np.float32) for layer, states in result.states.items()}
    # The states go to a temporary name and into place, then the JSON (itself written atomically);
    # if the JSON cannot be written, the states are taken back: both files or neither.
    staged = out.parent / f".{out.name}.tmp"
    try:
        save_file(tensors, str(staged), metadata={"ffnbench": json.dumps(record["checkpoint"])})
        record["sha256"] = files.sha256_file(staged)
        staged.replace(out)
        try:
            files.write_json(_json_path(out), record)
        except BaseException:
            out.unlink(missing_ok=True)
            raise
    finally:
        staged.unlink(missing_ok=True)
    return record


def _capture_states(checkpoint: Path, text: bytes, layers: list[int], max_windows: int) -> Capture:
    if (checkpoint / "manifest.json").is_file():
        result = capture_trained(checkpoint, text, layers, max_windows)
    elif (checkpoint / "config.json").is_file():
        hf = hf_capture.open_checkpoint(checkpoint)
        _check_layers(layers, hf.n_layers)
        result = Capture(hf.run(text, layers, max_windows), hf.source)
    else:
        raise UsageError(f"--checkpoint: {checkpoint} holds neither an ffnbench checkpoint (manifest.json) nor a "
                         "Hugging Face one (config.json); point at the model's directory")
    for layer, states in result.states.items():
        bad = int(states.size - np.count_nonzero(np.isfinite(states)))
        if bad:
            raise UsageError(f"capture: layer {layer} produced {bad} NaN/Inf values; the checkpoint or text is broken")
    return result


def _describe_text(path: Path, text: bytes) -> dict:
    return {"file": Path(path).name, "bytes": len(text), "sha256": hashlib.sha256(text).hexdigest()}


def summary_lines(record: dict) -> list[str]:
    """One terminal line a layer: its tensor, shape and drift statistics."""
    return [f"layer {layer}: {stats['shape']} {per_layer([stats]).removeprefix('L0 ')} ({PER_LAYER_LEGEND})"
            for layer, stats in record["layers"].items()]


def _transformers_version(source: dict) -> dict:
    if source["kind"] != "hf":
        return {}
    import transformers

    return {"transformers": transformers.__version__}


def _json_path(out: Path) -> Path:
    return out.with_suffix(".json")


def _check_layers(layers: list[int], n_layers: int) -> None:
    wrong = [layer for layer in layers if layer >= n_layers]
    if wrong:
        raise UsageError(f"--layers: the model has layers 0-{n_layers - 1}, not {', '.join(map(str, wrong))}")
