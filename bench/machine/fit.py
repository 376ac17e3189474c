"""Will the run fit in memory? An estimate made before anything runs, so an oversized model or shape
is refused with the estimate and the fix instead of swapping or being killed halfway.

One model size runs at a time, and while it runs the benchmark holds, per design: the fp32 block,
the fp32 export's ONNX Runtime sessions (the fp32 cell with taps, its timing copy and the reference:
three), every recipe's weights twice (accuracy and timing sessions share nothing), the quantizers'
working copies of the fp32 model (one per build worker at once, about three copies each), and the largest
call's activations (its hidden width, fp32, a few tensors of it kept as taps and references).
An upper bound rather than a prediction: examples/latency-7b.toml is estimated at 15.5 GB and peaked
at 11.4 GB (RSS, this project's 2-core machine), since a timing session replaces its accuracy one.
"""

from pathlib import Path
from typing import TYPE_CHECKING

from ffnbench.errors import UsageError
from ffnbench.quant import RECIPES

if TYPE_CHECKING:  # machine/ imports no cells/, which the run config does
    from ffnbench.bench.config import RunConfig

FP32_COPIES = 4  # block + three ORT sessions of the fp32 export
QUANTIZER_COPIES = 3  # a quantizer's model proto, its numpy weights and the written result
ACTIVATION_COPIES = 8  # hidden-width tensors a call keeps: taps, reference, outputs
MEMINFO = Path("/proc/meminfo")


def available_bytes() -> int | None:
    """MemAvailable from the kernel (what can be allocated without swapping); None off Linux."""
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def estimate(config: "RunConfig", model: str, build_workers: int) -> dict[str, float]:
    """Bytes one model size of the run holds at its peak, by part."""
    designs = config.model_designs(model)
    cfgs = [config.model_config(model, d) for d in designs]
    params = [c.mlp_params for c in cfgs]
    bits = [RECIPES[config.recipe_spec(r)[0]].bits for r in config.recipes if config.recipe_spec(r)[0] != "fp32"]
    weights = sum(p * (4 * FP32_COPIES + 2 * sum(b / 8 for b in bits)) for p in params)
    quantizers = build_workers * QUANTIZER_COPIES * 4 * max(params)
    shapes = config.latency.shapes().values() if config.latency.enabled else ()
    tokens = max([config.n_requests * config.seq_len, config.calibration_requests * config.seq_len,
                  *(b * s for b, s in shapes)])
    activations = ACTIVATION_COPIES * 4 * tokens * max(c.hidden + c.d_model for c in cfgs) * len(designs)
    return {"weights": weights, "quantizers": quantizers, "activations": activations,
            "total": weights + quantizers + activations}


def check(config: "RunConfig", model: str, build_workers: int) -> None:
    """Refuse a model size of the run (`config` its settings) that would not fit in the memory available now."""
    free = available_bytes()
    if free is None or not config.model_designs(model):
        return
    need = estimate(config, model, build_workers)
    if need["total"] > free:
        gb = {k: v / 1e9 for k, v in need.items()}
        calls = ", ".join(f"{name} {b}x{s}" for name, (b, s) in config.latency.shapes().items())
        raise UsageError(
            f"memory: model '{model}' needs about {gb['total']:.1f} GB ({gb['weights']:.1f} GB of weights held at "
            f"once, {gb['quantizers']:.1f} GB quantizing, {gb['activations']:.1f} GB of activations) and "
            f"{free / 1e9:.1f} GB is available; lower the shapes ({calls}; n_requests x seq_len "
            f"{config.n_requests}x{config.seq_len}), run fewer recipes, or one design at a time (--designs A)")
