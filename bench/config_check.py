"""The checks of a RunConfig: its own keys, each study's check, and what spans them, before a run
writes anything; each failure one line naming the field and the fix."""

import dataclasses

from ffnbench.bench.analysis.deployment import deployment_from_table
from ffnbench.bench.traffic.scenarios import NAMED, Replay
from ffnbench.errors import UsageError
from ffnbench.models import DESIGNS, PRESETS
from ffnbench.quant import RECIPES, mitigations, recipe_config

# [per_model.NAME] keys, flat: the timing ones (config.LATENCY_KEYS) replace those of the run's latency study.
PER_MODEL_KEYS = ("designs", "recipes", "mitigations", "scenarios", "n_requests", "seq_len", "calibration_requests",
                  "decode", "prefill", "warmup", "min_iterations", "max_seconds", "max_runnable_seconds", "memory")


def check(config) -> None:
    """A RunConfig's own keys, each study's own check, and what spans them (the recipes whole models
    run, calibrating lm recipes, the per_model tables)."""
    if config.deployment:
        deployment_from_table(config.deployment, "config")
    known_scenarios = {**NAMED, **config.user_scenarios}
    for name, spec in config.user_recipes.items():
        if not isinstance(spec.get("base"), str) or mitigations.parse(spec["base"])[0] not in RECIPES:
            raise UsageError(f"recipe {name}: base must be one of {', '.join(RECIPES)} (with mitigations, "
                             f"RECIPE+smooth, ...), got {spec.get('base')!r}")
        base, params = config.recipe_spec(name)
        recipe_config(base, **params)
        config.mitigation_settings(name)
    known_recipes = {**RECIPES, **config.user_recipes}
    for model in config.models:
        if model in config.user_whole:
            raise UsageError(f"models: '{model}' is a whole model ([model.{model}] names a checkpoint or GGUF); "
                             "list it in [whole] models")
    config.whole.check(config.user_whole)
    if config.whole.models and not [r for r in config.recipes if r in config.downstream.recipes]:
        raise UsageError("[whole] models: whole-model cells run the recipes that are in both recipes and "
                         "[downstream] recipes, and none is; name some in both")
    for axis, values, known in (("designs", config.designs, DESIGNS),
                                ("models", config.models, {**PRESETS, **config.user_models}),
                                ("recipes", config.recipes, known_recipes),
                                ("scenarios", config.scenarios, known_scenarios),
                                ("calibration", config.calibration, known_scenarios)):
        if not values and not (axis == "models" and config.whole.models):  # a run of whole models alone
            raise UsageError(f"{axis}: empty; name at least one of {', '.join(known)}")
        for value in values:
            if (mitigations.parse(value)[0] if axis == "recipes" else value) not in known:
                raise UsageError(f"{axis}: unknown '{value}'; choose from {', '.join(known)}")
            if axis == "recipes":
                _check_mitigated(config, value)
    for model in config.models:
        if not config.model_designs(model):
            design = config.user_models[model].design
            raise UsageError(f"models: '{model}' is a design-{design} layer and the run's designs are "
                             f"{', '.join(config.designs)}; add {design} to designs")
    config.downstream.check(config.designs, known_recipes, known_scenarios, bool(config.whole.models))
    _check_lm_calibration(config)
    config.dose.check(config.designs, known_scenarios)
    for model, overrides in config.per_model.items():
        _check_per_model(config, model, overrides)
    for name in ("n_requests", "seq_len", "calibration_requests", "threads"):
        if getattr(config, name) <= 0:
            raise UsageError(f"{name}: must be positive, got {getattr(config, name)}")
    if not config.delta > 0:
        raise UsageError(f"delta: must be positive, got {config.delta}")
    if config.seed < 0:
        raise UsageError(f"seed: must be >= 0, got {config.seed}")
    if config.device not in ("cpu", "cuda"):
        raise UsageError(f"device: '{config.device}' is not cpu or cuda (the CLI's --device auto resolves to one)")
    if config.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("device: cuda, but no CUDA device is usable here; use cpu")
    config.latency.check()


def _check_per_model(config, model: str, overrides: dict) -> None:
    if model not in config.models:
        raise UsageError(f"per_model: '{model}' is not one of the run's models ({', '.join(config.models)}); "
                         "add it to models or drop its table")
    unknown = set(overrides) - set(PER_MODEL_KEYS)
    if unknown:
        raise UsageError(f"per_model.{model}: unknown key '{sorted(unknown)[0]}'; "
                         f"known: {', '.join(PER_MODEL_KEYS)}")
    alone = dataclasses.replace(config, models=[model], per_model={},
                                downstream=dataclasses.replace(config.downstream, recipes=[]),
                                whole=dataclasses.replace(config.whole, models=[]))
    try:  # the table's values, checked as a run of that model alone would check them
        alone.overridden(overrides).check()
    except UsageError as e:
        raise UsageError(f"per_model.{model}: {e}") from None
    narrowed = config.for_model(model)
    for axis in ("designs", "recipes", "scenarios"):
        if axis in overrides and not getattr(narrowed, axis):
            raise UsageError(f"per_model.{model}: its {axis} ({', '.join(overrides[axis])}) are none of the run's "
                             f"({', '.join(getattr(config, axis))}); widen one or the other")

def _check_lm_calibration(config) -> None:
    """Whole models read text: a replay of hidden states cannot calibrate their QDQ recipes."""
    calibrated = any(getattr(RECIPES.get(config.recipe_spec(r)[0]), "needs_calibration", False)
                     for r in config.downstream.recipes)
    for name in config.calibration if calibrated else ():
        if isinstance(config.user_scenarios.get(name), Replay):
            raise UsageError(f"calibration: '{name}' replays hidden states, which cannot calibrate a whole model "
                             "(lm cells read text); calibrate on a synthetic scenario, or drop QDQ from "
                             "[downstream] recipes")

def _check_mitigated(config, recipe: str) -> None:
    """A mitigated recipe (RECIPE+shift, ...) quantizes, after calibration."""
    mods = config.mitigations_of(recipe)
    if not mods:
        return
    base, _ = config.recipe_spec(recipe)
    if base == "fp32":
        raise UsageError(f"recipes: '{recipe}' mitigates fp32, which quantizes nothing; mitigate a quantizing "
                         "recipe")
    if "keep" in mods and RECIPES[base].runtime == "torch":
        raise UsageError(f"recipes: '{recipe}': +keep leaves a quantized layer in fp32, and {base} quantizes "
                         "nothing to leave; drop +keep")
