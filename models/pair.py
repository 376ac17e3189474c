"""The committed trained pair (models/trained/seeds/DESIGN/SEED: three training seeds a design), and
any checkpoint `ffnbench train` wrote, loaded only when its weights match the hash its manifest records."""

import dataclasses
import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file

from ffnbench.errors import UsageError
from ffnbench.files import sha256_file
from ffnbench.models.layers import FFNBlock
from ffnbench.models.lm import CausalLM, LMConfig

TRAINED = Path(__file__).resolve().parent / "trained"
CHECKPOINT_KIND = "ffnbench.lm"


# The committed models by kind: "trained" (models/trained/seeds: trained on clean prose) and "drift"
# (models/trained/drift: the same seeds fine-tuned with drift on a share of requests).
KINDS = {"trained": "seeds", "drift": "drift"}


def trained_dir(design: str, seed: int = 0, kind: str = "trained") -> Path:
    return TRAINED / KINDS[kind] / design / str(seed)


def trained_seeds(design: str, kind: str = "trained") -> list[int]:
    """The committed training seeds of a design and kind, in order."""
    return sorted(int(p.name) for p in (TRAINED / KINDS[kind] / design).glob("*") if (p / "manifest.json").is_file())


def load_lm(path: Path, design: str | None = None) -> tuple[CausalLM, dict]:
    """(model in eval mode, its manifest) from a checkpoint directory, or a UsageError naming the fix."""
    path = Path(path)
    manifest_path, weights = path / "manifest.json", path / "model.safetensors"
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise UsageError(f"checkpoint {path}: no manifest.json; train one with `ffnbench train --design A "
                         "--out DIR` (or restore models/trained with git checkout)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"checkpoint {path}: manifest.json is not valid JSON ({e}); restore or retrain it") from e
    if not isinstance(manifest, dict) or manifest.get("kind") != CHECKPOINT_KIND:
        raise UsageError(f"checkpoint {path}: manifest.json is not an ffnbench language-model manifest; "
                         "point at a directory `ffnbench train` wrote")
    want = manifest.get("sha256")
    if not weights.is_file():
        raise UsageError(f"checkpoint {path}: no model.safetensors (want sha256 {want}); restore it or retrain")
    got = sha256_file(weights)
    if got != want:
        raise UsageError(f"checkpoint {path}: model.safetensors has sha256 {got[:12]}…, its manifest wants "
                         f"{want}; restore the file (git checkout) or retrain")
    cfg = LMConfig(**manifest["config"])
    if design is not None and cfg.design != design:
        raise UsageError(f"checkpoint {path}: holds design {cfg.design}, not {design}; point at a design-{design} "
                         "checkpoint")
    model = CausalLM(cfg)
    try:
        model.load_state_dict(load_file(str(weights)), strict=True)
    except (RuntimeError, SafetensorError) as e:
        first = str(e).strip().splitlines()[0]
        raise UsageError(f"checkpoint {path}: its weights do not fit its config ({first}); retrain it") from e
    return model.eval(), manifest


def trained_ffn(design: str, layer: int, residual: bool = True, seed: int = 0) -> FFNBlock:
    """The FFN sublayer of layer `layer` of the committed design-`design` model of training seed
    `seed`, as a standalone FFNBlock (its own norm), with the residual as asked."""
    model, manifest = load_lm(trained_dir(design, seed), design)
    if not isinstance(layer, int) or not 0 <= layer < model.cfg.n_layers:
        raise UsageError(f"layer: the trained pair has layers 0-{model.cfg.n_layers - 1}, got {layer!r}")
    ffn = model.blocks[layer].ffn
    block = FFNBlock(dataclasses.replace(ffn.cfg, residual=residual))
    block.load_state_dict(ffn.state_dict())
    block.source = {"kind": "trained", "name": f"trained/{design}/{seed}", "sha256": manifest["sha256"], "layer": layer}
    return block.eval()
