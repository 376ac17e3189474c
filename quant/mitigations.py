"""Deployment-time mitigations as recipe modifiers: `RECIPE+shift`, `+smooth`, `+rotate`, `+keep`,
composable (`ort-int8-dynamic+shift+smooth`) and applied in that order. Each is a transform of the
fp32 model before its recipe quantizes it, exact in fp32, set from statistics of the FFN's inputs on
calibration data (the cell's calibration scenario: z, s and the spikes are measured on one domain
and served on another, the realistic mismatch).

- shift (Outlier Suppression+, Wei et al. 2023): z_j = (max_j + min_j) / 2 of the norm's output; the
  MLP reads x − z and W·z folds into its first layer's bias. LayerNorm's β absorbs −z; RMSNorm has
  no bias, so the subtraction is explicit (FFNBlock.in_shift) — design B's case.
- smooth (SmoothQuant, Xiao et al. 2023): s_j = max|X_j|^α / max|W_:,j|^(1−α) over the first
  layer(s); x / s folds into the norm's gain (and β, and z), W's column j takes × s_j.
- rotate (QuaRot, Ashkboos et al. 2024; Yang et al. 2024 at the down-projection): an orthogonal R at
  the norm's output and R₂ at the down-projection's input, online (a fp32 MatMul each,
  FFNBlock.in_rotation, mlp.down_rotation), the weights rotated to match: Hadamard / √n where the
  width is a power of two (scipy.linalg.hadamard), else a seeded random orthogonal matrix (QR).
- keep (QFeM, Yang et al. 2024): a down-projection whose spike_ratio on the calibration data exceeds
  `spike_threshold` stays fp32 (`keep_fp32` on the Linear; ONNX Runtime recipes leave its MatMul alone).
"""

import copy
import math
from dataclasses import asdict, dataclass

import numpy as np
import scipy.linalg
import torch
from torch import nn

from ffnbench.errors import UsageError
from ffnbench.models.layers import FFNBlock, LayerNorm, Rotation

MITIGATIONS = ("shift", "smooth", "rotate", "keep")


@dataclass(frozen=True)
class Settings:
    alpha: float = 0.5  # SmoothQuant's migration strength: 0 moves nothing to the weights, 1 everything
    # keep: a down-projection input whose worst token is 8× a typical one's (not `threshold`: bnb-int8 has one)
    spike_threshold: float = 8.0
    seed: int = 0  # the random orthogonal matrices where a width is no power of two


# Each setting, the mitigation it sets: a [recipe.NAME] variant of a mitigated recipe may give it,
# `[recipe.smooth75] base = "ort-int8-dynamic+smooth"`, `alpha = 0.75`.
SETTINGS = {"alpha": "smooth", "spike_threshold": "keep", "seed": "rotate"}


def settings(values: dict, mods: tuple[str, ...], recipe: str) -> Settings:
    """The Settings a recipe's variant gives, checked against its mitigations, or a UsageError."""
    for key, value in values.items():
        if SETTINGS[key] not in mods:
            raise UsageError(f"recipe {recipe}: {key} sets +{SETTINGS[key]}, which it does not apply; add "
                             f"+{SETTINGS[key]} or drop {key}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UsageError(f"recipe {recipe}: {key} must be a number, got {value!r}")
    out = Settings(**values)
    if not 0 <= out.alpha <= 1:
        raise UsageError(f"recipe {recipe}: alpha must be within [0, 1], got {out.alpha}")
    if not out.spike_threshold > 1:
        raise UsageError(f"recipe {recipe}: spike_threshold is a spike ratio (worst token / median) and must be > 1, "
                         f"got {out.spike_threshold}")
    if not isinstance(out.seed, int) or out.seed < 0:
        raise UsageError(f"recipe {recipe}: seed must be a non-negative integer, got {out.seed!r}")
    return out


def parse(name: str) -> tuple[str, tuple[str, ...]]:
    """("base recipe", mitigations in application order) of `RECIPE+m1+m2`, or a UsageError."""
    base, *mods = name.split("+")
    for mod in mods:
        if mod not in MITIGATIONS:
            raise UsageError(f"recipe {name}: unknown mitigation '+{mod}'; choose from "
                             f"{', '.join('+' + m for m in MITIGATIONS)}")
    if len(set(mods)) != len(mods):
        raise UsageError(f"recipe {name}: a mitigation appears twice; name each once")
    return base, tuple(m for m in MITIGATIONS if m in mods)


def applied(recipe: str, variants: dict[str, dict]) -> tuple[str, ...]:
    """The mitigations a recipe applies, in application order: its name's (RECIPE+shift) and, for a
    [recipe] variant (`variants`: name -> its table), its base's."""
    name, mods = parse(recipe)
    inherited = parse(variants[name]["base"])[1] if name in variants else ()
    return tuple(m for m in MITIGATIONS if m in {*mods, *inherited})


def unmitigated(recipe: str, variants: dict[str, dict]) -> str | None:
    """The recipe a mitigated one applies its mitigations to (RECIPE+shift -> RECIPE, a variant based
    on RECIPE+smooth -> RECIPE), or None for one that mitigates nothing."""
    name, _ = parse(recipe)
    if name in variants and parse(variants[name]["base"])[1]:
        name = parse(variants[name]["base"])[0]
    return name if applied(recipe, variants) else None


class Statistics:
    """What each FFN's inputs look like on calibration data, gathered by forward hooks while the
    caller runs the fp32 model: per channel max and min of the MLP's input (the norm's output), and
    per token max |x| of the down-projection's input."""

    def __init__(self, blocks: list[FFNBlock]):
        self.blocks = blocks
        self.high = [None] * len(blocks)
        self.low = [None] * len(blocks)
        self.token_max: list[list[np.ndarray]] = [[] for _ in blocks]
        self._hooks = []

    def __enter__(self) -> "Statistics":
        for i, block in enumerate(self.blocks):
            mlp, down = block.mlp, block.mlp.down
            self._hooks += [mlp.register_forward_pre_hook(lambda _m, args, i=i: self._mlp_input(i, args[0])),
                            down.register_forward_pre_hook(lambda _m, args, i=i: self._down_input(i, args[0]))]
        return self

    def __exit__(self, *exc) -> None:
        for hook in self._hooks:
            hook.remove()

    def _mlp_input(self, i: int, x: torch.Tensor) -> None:
        flat = x.detach().double().reshape(-1, x.shape[-1])
        high, low = flat.amax(0), flat.amin(0)
        self.high[i] = high if self.high[i] is None else torch.maximum(self.high[i], high)
        self.low[i] = low if self.low[i] is None else torch.minimum(self.low[i], low)

    def _down_input(self, i: int, x: torch.Tensor) -> None:
        self.token_max[i].append(x.detach().abs().amax(-1).double().flatten().cpu().numpy())

    def spike_ratio(self, i: int) -> float:
        m = np.concatenate(self.token_max[i])
        typical = float(np.median(m))
        return float(m.max() / typical) if typical > 0 else math.inf


def orthogonal(n: int, seed: int) -> tuple[torch.Tensor, str]:
    """An n × n orthogonal matrix and what it is."""
    if n & (n - 1) == 0:
        return torch.from_numpy(scipy.linalg.hadamard(n) / math.sqrt(n)).float(), "hadamard"
    gaussian = np.random.default_rng(seed).standard_normal((n, n))
    q, r = np.linalg.qr(gaussian)
    return torch.from_numpy(q * np.sign(np.diag(r))).float(), f"random orthogonal (seed {seed})"


def _first_layers(block: FFNBlock) -> list[nn.Linear]:
    mlp = block.mlp
    return [mlp.fc1] if hasattr(mlp, "fc1") else [mlp.gate, mlp.up]


def _fold_bias(linear: nn.Linear, extra: torch.Tensor) -> None:
    if linear.bias is None:
        linear.bias = nn.Parameter(extra.clone())
    else:
        linear.bias.add_(extra)


def transform(blocks: list[FFNBlock], stats: Statistics, mods: tuple[str, ...], settings: Settings) -> list[dict]:
    """Apply `mods` to each block in place (its copy, from `apply`); returns what each layer got."""
    records = []
    with torch.no_grad():
        for i, block in enumerate(blocks):
            high, low = stats.high[i].clone(), stats.low[i].clone()
            record: dict = {}
            if "shift" in mods:
                z = (high + low) / 2
                for linear in _first_layers(block):
                    _fold_bias(linear, (linear.weight.double() @ z).float())
                if isinstance(block.norm, LayerNorm):
                    block.norm.bias.sub_(z.float())
                else:
                    block.in_shift = z.float()
                high, low = high - z, low - z
                record["shift_abs_mean"] = float(z.abs().mean())
            if "smooth" in mods:
                act = torch.maximum(high.abs(), low.abs())
                weight = torch.stack([lin.weight.double().abs().amax(0) for lin in _first_layers(block)]).amax(0)
                s = torch.where((act > 0) & (weight > 0), act**settings.alpha / weight ** (1 - settings.alpha),
                                torch.ones_like(act)).clamp(1e-5, 1e5)
                block.norm.weight.div_(s.float())
                if isinstance(block.norm, LayerNorm):
                    block.norm.bias.div_(s.float())
                if block.in_shift is not None:
                    block.in_shift = (block.in_shift.double() / s).float()
                for linear in _first_layers(block):
                    linear.weight.mul_(s.float())
                record["smooth_scale_range"] = [float(s.min()), float(s.max())]
            if "rotate" in mods:
                d, hidden = block.cfg.d_model, block.cfg.hidden
                device = block.mlp.down.weight.device  # the block's, on cuda too
                r, kind = orthogonal(d, settings.seed + 2 * i)
                r2, kind2 = orthogonal(hidden, settings.seed + 2 * i + 1)
                r, r2 = r.to(device), r2.to(device)
                block.in_rotation = Rotation(r)
                for linear in _first_layers(block):
                    linear.weight.copy_(linear.weight @ r)
                block.mlp.down_rotation = Rotation(r2)
                block.mlp.down.weight.copy_(block.mlp.down.weight @ r2)
                block.tap_names = (*block.tap_names, "down_in")
                record["rotation"] = {"input": kind, "down": kind2}
            if "keep" in mods:
                ratio = stats.spike_ratio(i)
                block.mlp.down.keep_fp32 = ratio > settings.spike_threshold
                record |= {"spike_ratio": ratio, "kept_fp32": block.mlp.down.keep_fp32}
            records.append(record)
    return records


def blocks_of(model: nn.Module) -> list[FFNBlock]:
    """The FFN sublayers of a block or a whole model, in order."""
    return [model] if isinstance(model, FFNBlock) else [b.ffn for b in model.blocks]


def apply(model: nn.Module, mods: tuple[str, ...], collect, settings: Settings = Settings()) -> tuple[nn.Module, dict]:
    """A transformed copy of `model` (an FFNBlock or a whole model) and the record of what was done.
    `collect(model)` runs the fp32 model on the calibration data; the statistics are read meanwhile."""
    if not mods:
        raise UsageError("mitigations: none named; use RECIPE+shift, +smooth, +rotate or +keep")
    with Statistics(blocks_of(model)) as stats:
        collect(model)
    transformed = copy.deepcopy(model)
    layers = transform(blocks_of(transformed), stats, mods, settings)
    return transformed.eval(), {"mitigations": list(mods), **asdict(settings), "layers": layers}


def mitigate(model: nn.Module, mods: tuple[str, ...], settings: Settings, requests, forward,
             calibration) -> nn.Module:
    """A copy of `model` (a block or a whole model) with `mods` applied, set on the calibration
    `requests` (one call each through `forward(model)`, a function of a request returning the output
    as an array); its source names the transform (`calibration`: what the requests were) and records
    its output's largest difference from `model`'s on the first request."""
    def collect(candidate: nn.Module) -> None:
        call = forward(candidate)
        for request in requests:
            call(request)

    transformed, record = apply(model, mods, collect, settings)
    ours, theirs = forward(transformed)(requests[0]), forward(model)(requests[0])
    record |= {"calibration": calibration, "fp32_max_abs_err": float(np.max(np.abs(ours - theirs))),
               "fp32_max_abs_output": float(np.max(np.abs(theirs)))}
    transformed.source = {**model.source, "mitigation": record}
    return transformed


def block_forward(block: FFNBlock):
    """`mitigate`'s forward for a block: a (seq, d_model) request in, its output as an array."""
    def call(request: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return block(request[None]).cpu().numpy()
    return call
