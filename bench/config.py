"""RunConfig: what a benchmark run covers, from a preset, a TOML file and command-line filters."""

import copy
import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path

from ffnbench.bench.cells.latency import LatencyConfig
from ffnbench.bench.traffic import model_specs
from ffnbench.bench.traffic.model_specs import SHIPPED_WHOLE, ModelSpec, WholeSpec
from ffnbench.bench.traffic.scenarios import (
    MAGNITUDES,
    NAMED,
    SHIFTS,
    TEXT_DOMAINS,
    Replay,
    Scenario,
    replay_from_table,
)
from ffnbench.errors import UsageError
from ffnbench.models import DESIGNS, PRESETS, FFNBlock, FFNConfig, build_model, preset
from ffnbench.models.lm import INJECT
from ffnbench.models.pair import KINDS, trained_seeds
from ffnbench.quant import FAMILIES, RECIPES, mitigations, recipe_config

QUICK_RECIPES = ("fp32", "ort-int8-dynamic", "ort-int4-rtn", "bnb-int8", "bnb-nf4")
QUICK_LM_RECIPES = ("fp32", "ort-int8-dynamic", "bnb-nf4")
# One recipe a family (quant.recipes.FAMILIES): the families are the independent evidence; and
# `ort-int8-dynamic+rotate` beside its parent, the mitigation that needs no calibration data (no
# family of its own). `default` must stay within a quarter of an hour on 2 cores: both kinds of
# committed model (the drift-trained pair, the answer, and the trained pair, its contrast) × three
# seeds at 32 windows, and the dose-response on seed 0 of the trained pair at 16 windows, fit no
# other way.
DEFAULT_LM_RECIPES = ("fp32", *(members[0] for members in FAMILIES.values()), "ort-int8-dynamic+rotate")
DEFAULT_LM_SCENARIOS = ("clean", "production", "massive", "domain-code")
# Deployment-time mitigations of int8's activation quantization (quant/mitigations.py) on the
# `default` sublayers, beside their parent, and rotation (which depends on no calibration data)
# downstream too; `full` adds the rest, on sublayers and downstream.
DEFAULT_MITIGATED = ("ort-int8-dynamic+shift", "ort-int8-dynamic+smooth", "ort-int8-dynamic+rotate")
FULL_MITIGATED = (*DEFAULT_MITIGATED, "ort-int8-dynamic+shift+smooth", "ort-int8-dynamic+keep",
                  "ort-int8-qdq-minmax+shift", "bnb-int8+keep", "ort-int4-rtn+rotate")
# Every level of the two strength axes (scenarios.SHIFTS, MAGNITUDES), `clean` their zero.
DOSE_SCENARIOS = tuple(dict.fromkeys([*SHIFTS, *MAGNITUDES]))


@dataclass
class RunConfig:
    preset: str = "quick"
    designs: list[str] = field(default_factory=lambda: ["A", "B"])
    models: list[str] = field(default_factory=lambda: ["small"])  # size presets or [model.NAME] tables
    recipes: list[str] = field(default_factory=lambda: list(QUICK_RECIPES))
    scenarios: list[str] = field(default_factory=lambda: ["clean", "production"])
    calibration: list[str] = field(default_factory=lambda: ["clean"])  # an axis for QDQ recipes only
    n_requests: int = 8  # evaluation requests per scenario
    seq_len: int = 64  # tokens per request
    seed: int = 0  # evaluation data; calibration data uses seed + 1 (a replay: its own part), never the same
    calibration_requests: int = 16
    delta: float = 0.1  # band around zero for act_err_small_*: see README, "The seed's prediction"
    threads: int = 2  # intra-op threads for ORT and torch; this machine has 2 cores
    # Off: metrics judge the FFN branch. With the residual the exact input dominates the output and
    # hides the branch's error: B's int8-dynamic centered SQNR went 34.6 -> 38.1 dB from clean to
    # production with it, 28.7 -> 21.6 dB without (quick preset, small model, this machine).
    residual: bool = False
    latency: bool = True  # time every recipe at decode and prefill shapes, interleaved
    warmup: int = 2  # untimed rounds
    min_iterations: int = 10  # timed rounds, at least
    min_seconds: float = 0.3  # timed work per runnable, at least,
    max_iterations: int = 200  # unless this many rounds are done,
    max_seconds: float = 60.0  # or a round-robin group has been timed this long (never below min_iterations)
    max_runnable_seconds: float = 10.0  # past it one runnable's rounds are bounded and marked so (LatencyConfig)
    # resident_mb and peak_call_mb of every latency cell, each runnable in a child process of its own (CPU)
    memory: bool = True
    # profile what ran where one weight width spreads more than 3x at decode (kernel_path; CPU)
    diagnose: bool = True
    # ORT workers spin after a call; off by default so they do not take the cores from the torch and
    # bitsandbytes calls timed beside them (measured: bnb-nf4 decode 2.8 ms with it, 0.81 without; README).
    ort_spinning: bool = False
    # Worker processes a side when a gate or compare re-measures this run by workers (--old-python):
    # each process is one observation of the test, so at least 2 (bench/gate/compare.py).
    remeasure_processes: int = 5
    decode: list[int] = field(default_factory=lambda: [1, 1])  # (batch, seq)
    prefill: list[int] = field(default_factory=lambda: [8, 128])
    device: str = "cpu"
    # Whole-model (lm) cells on the committed trained pair, for the run's designs among A and B and
    # its recipes among lm_recipes ([] for none; the presets name some); scenarios synthetic or a
    # text domain (domain-code).
    lm_recipes: list[str] = field(default_factory=list)
    lm_scenarios: list[str] = field(default_factory=lambda: ["clean", "production", "domain-code"])
    lm_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # committed training seeds, each design
    # Which committed models: "trained" (on clean prose) and/or "drift" (fine-tuned with drift present).
    lm_models: list[str] = field(default_factory=lambda: ["trained"])
    # Held-out windows of 128 bytes a scenario. 64 resolve a 10 % KL ratio between the designs on
    # clean text; the spread between training seeds is the larger term (docs/downstream.md).
    lm_windows: int = 64
    lm_draws: int = 5  # independent draws of a synthetic drift, the windows dealt among them in turn
    # A model is healthy under a scenario while its fp32 bits per byte stay within this of its clean
    # figure; a verdict needs both designs healthy (docs/design.md).
    healthy_delta_bpb: float = 0.1
    lm_inject: str = "ffn-input"  # where a synthetic drift enters: each FFN's input, or "residual"
    # Dose-response cells: the lm recipes under each of dose_scenarios (levels of one drift's
    # strength), injected at each of dose_inject, on dose_models' dose_seeds; their own cells
    # (model names trained-s0@residual, …), drawn as curves, never in a verdict. [] for none.
    dose_scenarios: list[str] = field(default_factory=list)
    dose_inject: list[str] = field(default_factory=lambda: list(INJECT))
    dose_models: list[str] = field(default_factory=lambda: ["trained"])
    dose_seeds: list[int] = field(default_factory=lambda: [0])
    dose_windows: int = 16  # held-out windows a dose-response cell reads (lm_windows for the matrix)
    user_scenarios: dict[str, Scenario | Replay] = field(default_factory=dict)
    # The folder the config's files (weights, replays) are relative to; a run records it relative to
    # itself, so a re-timing finds them from the run directory.
    files_dir: str = "."
    # Real FFN layers by name ([model.NAME]), usable in `models` beside the size presets.
    user_models: dict[str, ModelSpec] = field(default_factory=dict)
    # Whole causal LMs ([model.NAME] with `checkpoint` or `gguf`, or the shipped "smollm2") whose FFNs
    # the lm recipes quantize, under lm_scenarios, in whole_windows token windows: cells of their own.
    whole_models: list[str] = field(default_factory=list)
    user_whole: dict[str, WholeSpec] = field(default_factory=dict)
    # Token windows a whole-model scenario reads: a window's fp32 logits are 25 MB at a 49,152-token
    # vocabulary, and every scenario's stay in memory while its model is measured.
    whole_windows: int = 16
    # Recipe variants by name: {"torch-fp16-norm32": {"base": "torch-fp16", "norm_fp32": True}}
    user_recipes: dict[str, dict] = field(default_factory=dict)
    # Settings for one model size of the run ([per_model.NAME] tables): fewer designs, scenarios and
    # requests and a smaller prefill where a size is large (the full preset's llama-7b).
    per_model: dict[str, dict] = field(default_factory=dict)
    # False leaves the mitigated recipes (RECIPE+shift, ...) out: of the run, or in a [per_model]
    # table of one model size (llama-7b's dense rotations would hold 485 MB matrices).
    mitigations: bool = True

    def for_model(self, model: str) -> "RunConfig":
        """The run's settings for one model: its per_model table applied. Its designs, recipes and
        scenarios narrow the run's (so `--designs A` still holds); other keys replace the run's values."""
        overrides = copy.deepcopy(self.per_model.get(model) or {})
        for axis in ("designs", "recipes", "scenarios"):
            if axis in overrides:
                overrides[axis] = [v for v in getattr(self, axis) if v in overrides[axis]]
        config = dataclasses.replace(self, **overrides) if overrides else self
        if not config.mitigations:
            config = dataclasses.replace(config, recipes=[r for r in config.recipes if not config.mitigations_of(r)])
        return config

    def recipe_spec(self, name: str) -> tuple[str, dict]:
        """(base recipe, parameters) for a recipe or a user variant of one, its mitigations and their
        settings aside."""
        name, _ = mitigations.parse(name)
        if name in self.user_recipes:
            spec = dict(self.user_recipes[name])
            base, _ = mitigations.parse(spec.pop("base"))
            return base, {k: v for k, v in spec.items() if k not in mitigations.SETTINGS}
        return name, {}

    def mitigations_of(self, recipe: str) -> tuple[str, ...]:
        return mitigations.applied(recipe, self.user_recipes)

    def unmitigated(self, recipe: str) -> str | None:
        return mitigations.unmitigated(recipe, self.user_recipes)

    def mitigation_settings(self, recipe: str) -> "mitigations.Settings":
        """α, the spike threshold and the rotation seed: a variant's where it gives them, else the defaults."""
        spec = self.user_recipes.get(mitigations.parse(recipe)[0]) or {}
        return mitigations.settings({k: v for k, v in spec.items() if k in mitigations.SETTINGS},
                                    self.mitigations_of(recipe), recipe)

    def latency_config(self) -> LatencyConfig:
        return LatencyConfig(warmup=self.warmup, min_iterations=self.min_iterations, min_seconds=self.min_seconds,
                             max_iterations=self.max_iterations, max_seconds=self.max_seconds,
                             max_runnable_seconds=self.max_runnable_seconds,
                             decode=tuple(self.decode),
                             prefill=tuple(self.prefill))

    def latency_shapes(self) -> dict[str, tuple[int, int]]:
        return self.latency_config().shapes()

    def latency_scenario(self) -> str:
        """Timing inputs come from `production` when the run has it: values matter to some kernels
        (bitsandbytes' outlier path), and production is what is served. Never from a replay: a capture
        has its own shapes, not the decode and prefill shapes being timed."""
        if "production" in self.scenarios:
            return "production"
        synthetic = [s for s in self.scenarios if not isinstance(self.scenario(s), Replay)]
        return synthetic[0] if synthetic else "clean"

    def model_designs(self, model: str) -> list[str]:
        """The run's designs a model comes in: every one for a size preset, its own for a real layer."""
        spec = self.user_models.get(model)
        return [d for d in self.designs if spec is None or d == spec.design]

    def build_block(self, model: str, design: str) -> FFNBlock:
        spec = self.user_models.get(model)
        if spec is not None:
            return spec.build(residual=self.residual)
        return build_model(preset(model, design, residual=self.residual))

    def model_config(self, model: str, design: str) -> FFNConfig:
        spec = self.user_models.get(model)
        return _spec_config(spec, self.residual) if spec else preset(model, design, residual=self.residual)

    def whole_spec(self, name: str) -> WholeSpec:
        """A whole model by name: the config's [model.NAME] table, or a shipped model."""
        return self.user_whole.get(name) or SHIPPED_WHOLE[name]

    def scenario(self, name: str) -> Scenario | Replay:
        return self.user_scenarios.get(name) or NAMED[name]

    def check(self) -> "RunConfig":
        known_scenarios = {**NAMED, **self.user_scenarios}
        for name, spec in self.user_recipes.items():
            if not isinstance(spec.get("base"), str) or mitigations.parse(spec["base"])[0] not in RECIPES:
                raise UsageError(f"recipe {name}: base must be one of {', '.join(RECIPES)} (with mitigations, "
                                 f"RECIPE+smooth, ...), got {spec.get('base')!r}")
            base, params = self.recipe_spec(name)
            recipe_config(base, **params)
            self.mitigation_settings(name)
        known_recipes = {**RECIPES, **self.user_recipes}
        for model in self.models:
            if model in self.user_whole:
                raise UsageError(f"models: '{model}' is a whole model ([model.{model}] names a checkpoint or GGUF); "
                                 "list it in whole_models")
        for model in self.whole_models:
            if model not in {**SHIPPED_WHOLE, **self.user_whole}:
                raise UsageError(f"whole_models: '{model}' is not a whole model of the config or a shipped one "
                                 f"({', '.join(SHIPPED_WHOLE)}); define [model.{model}] with checkpoint = \"DIR\" or "
                                 "gguf = \"FILE.gguf\"")
        if self.whole_models and not [r for r in self.recipes if r in self.lm_recipes]:
            raise UsageError("whole_models: whole-model cells run the recipes that are in both recipes and lm_recipes, "
                             "and none is; name some in both")
        for axis, values, known in (("designs", self.designs, DESIGNS),
                                    ("models", self.models, {**PRESETS, **self.user_models}),
                                    ("recipes", self.recipes, known_recipes),
                                    ("scenarios", self.scenarios, known_scenarios),
                                    ("calibration", self.calibration, known_scenarios)):
            if not values and not (axis == "models" and self.whole_models):  # a run of whole models alone
                raise UsageError(f"{axis}: empty; name at least one of {', '.join(known)}")
            for value in values:
                if (mitigations.parse(value)[0] if axis == "recipes" else value) not in known:
                    raise UsageError(f"{axis}: unknown '{value}'; choose from {', '.join(known)}")
                if axis == "recipes":
                    self._check_mitigated(value)
        for model in self.models:
            if not self.model_designs(model):
                design = self.user_models[model].design
                raise UsageError(f"models: '{model}' is a design-{design} layer and the run's designs are "
                                 f"{', '.join(self.designs)}; add {design} to designs")
        self._check_lm(known_recipes, known_scenarios)
        for model, overrides in self.per_model.items():
            self._check_per_model(model, overrides)
        for name in ("n_requests", "seq_len", "calibration_requests", "threads", "lm_windows", "whole_windows",
                     "lm_draws", "dose_windows"):
            if getattr(self, name) <= 0:
                raise UsageError(f"{name}: must be positive, got {getattr(self, name)}")
        if self.remeasure_processes < 2:
            raise UsageError(f"remeasure_processes: a test over worker processes needs at least 2 a side, got "
                             f"{self.remeasure_processes}")
        if not self.delta > 0:
            raise UsageError(f"delta: must be positive, got {self.delta}")
        if not self.healthy_delta_bpb > 0:
            raise UsageError(f"healthy_delta_bpb: must be positive, got {self.healthy_delta_bpb}")
        if self.seed < 0:
            raise UsageError(f"seed: must be >= 0, got {self.seed}")
        if self.device not in ("cpu", "cuda"):
            raise UsageError(f"device: '{self.device}' is not cpu or cuda (the CLI's --device auto resolves to one)")
        if self.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise UsageError("device: cuda, but no CUDA device is usable here; use cpu")
        self.latency_config()  # validates the timing settings
        return self

    def _check_per_model(self, model: str, overrides: dict) -> None:
        if model not in self.models:
            raise UsageError(f"per_model: '{model}' is not one of the run's models ({', '.join(self.models)}); "
                             "add it to models or drop its table")
        unknown = set(overrides) - set(PER_MODEL_KEYS)
        if unknown:
            raise UsageError(f"per_model.{model}: unknown key '{sorted(unknown)[0]}'; "
                             f"known: {', '.join(PER_MODEL_KEYS)}")
        try:  # the table's values, checked as a run of that model alone would check them
            dataclasses.replace(self, models=[model], per_model={}, lm_recipes=[], whole_models=[],
                                **overrides).check()
        except UsageError as e:
            raise UsageError(f"per_model.{model}: {e}") from None
        narrowed = self.for_model(model)
        for axis in ("designs", "recipes", "scenarios"):
            if axis in overrides and not getattr(narrowed, axis):
                raise UsageError(f"per_model.{model}: its {axis} ({', '.join(overrides[axis])}) are none of the run's "
                                 f"({', '.join(getattr(self, axis))}); widen one or the other")

    def _check_lm(self, known_recipes: dict, known_scenarios: dict) -> None:
        for recipe in self.lm_recipes:
            if mitigations.parse(recipe)[0] not in known_recipes:
                raise UsageError(f"lm_recipes: unknown '{recipe}'; choose from {', '.join(known_recipes)}")
        for name in self.lm_scenarios:
            if name not in {**known_scenarios, **TEXT_DOMAINS}:
                raise UsageError(f"lm_scenarios: unknown '{name}'; choose from "
                                 f"{', '.join([*known_scenarios, *TEXT_DOMAINS])}")
            if isinstance(self.user_scenarios.get(name), Replay):
                raise UsageError(f"lm_scenarios: '{name}' replays hidden states, and a whole model reads text; "
                                 "use a synthetic scenario or a text domain (domain-code)")
        calibrated = any(getattr(RECIPES.get(self.recipe_spec(r)[0]), "needs_calibration", False)
                         for r in self.lm_recipes)
        for name in self.calibration if calibrated else ():
            if isinstance(self.user_scenarios.get(name), Replay):
                raise UsageError(f"calibration: '{name}' replays hidden states, which cannot calibrate a whole model "
                                 "(lm cells read text); calibrate on a synthetic scenario, or drop QDQ from lm_recipes")
        if self.lm_recipes and not self.lm_scenarios:
            raise UsageError("lm_scenarios: empty; name at least one (e.g. clean) or set lm_recipes = []")
        if self.lm_recipes and (self.lm_models or not self.whole_models):  # whole models may run alone
            self._check_models("lm", self.lm_models, self.lm_seeds)
        if self.lm_inject not in INJECT:
            raise UsageError(f"lm_inject: unknown '{self.lm_inject}'; choose one of {', '.join(INJECT)}")
        if self.lm_recipes and self.dose_scenarios:
            self._check_dose(known_scenarios)

    def _check_mitigated(self, recipe: str) -> None:
        """A mitigated recipe (RECIPE+shift, ...) quantizes, after calibration."""
        mods = self.mitigations_of(recipe)
        if not mods:
            return
        base, _ = self.recipe_spec(recipe)
        if base == "fp32":
            raise UsageError(f"recipes: '{recipe}' mitigates fp32, which quantizes nothing; mitigate a quantizing "
                             "recipe")
        if "keep" in mods and RECIPES[base].runtime == "torch":
            raise UsageError(f"recipes: '{recipe}': +keep leaves a quantized layer in fp32, and {base} quantizes "
                             "nothing to leave; drop +keep")

    def _check_models(self, prefix: str, kinds: list[str], seeds: list[int]) -> None:
        """Each kind of committed model known and holding every seed asked, for the run's designs."""
        if not kinds:
            raise UsageError(f"{prefix}_models: empty; name at least one of {', '.join(KINDS)} or set "
                             f"{'lm_recipes' if prefix == 'lm' else 'dose_scenarios'} = []")
        for kind in kinds:
            if kind not in KINDS:
                raise UsageError(f"{prefix}_models: unknown '{kind}'; choose from {', '.join(KINDS)}")
            for design in (d for d in self.designs if d in ("A", "B")):
                committed = trained_seeds(design, kind)
                if not seeds or any(s not in committed for s in seeds):
                    raise UsageError(f"{prefix}_seeds: {seeds} are not all committed training seeds of the {kind} "
                                     f"design {design}; choose from {', '.join(map(str, committed)) or 'none'}")

    def _check_dose(self, known_scenarios: dict) -> None:
        synthetic = [name for name, spec in known_scenarios.items() if isinstance(spec, Scenario)]
        for name in self.dose_scenarios:
            if name not in synthetic:
                raise UsageError(f"dose_scenarios: '{name}' is not a synthetic scenario (a dose is a drift's "
                                 f"strength); choose from {', '.join(synthetic)}")
        for inject in self.dose_inject or [None]:
            if inject not in INJECT:
                raise UsageError(f"dose_inject: {'empty' if inject is None else f'unknown {inject!r}'}; choose from "
                                 f"{', '.join(INJECT)}")
        self._check_models("dose", self.dose_models, self.dose_seeds)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["user_scenarios"] = {k: v.describe() for k, v in self.user_scenarios.items()}
        out["user_models"] = {k: v.describe() for k, v in self.user_models.items()}
        out["user_whole"] = {k: self.whole_spec(k).describe() for k in dict.fromkeys([*self.user_whole,
                                                                                       *self.whole_models])}
        out.pop("files_dir")  # machine-specific; the run records it relative to its own directory
        return out

    @classmethod
    def from_dict(cls, data: dict, files_dir: Path = Path(".")) -> "RunConfig":
        """The inverse of to_dict, as a run's manifest records it (its shard spec aside). Checkpoint and
        trace files resolve against `files_dir` (the folder of the run's config, or --weights-dir)
        and must have the hashes the run recorded."""
        data = {k: v for k, v in data.items() if k not in ("shard", "files_dir")}
        scenarios = {name: replay_from_table(name, Path(d["replay"]), d, files_dir) if "replay" in d else Scenario(**d)
                     for name, d in data.pop("user_scenarios", {}).items()}
        models = {name: ModelSpec(name, base=str(files_dir), sha256=d.get("sha256"),
                                  **{k: v for k, v in d.items() if k in model_specs.KEYS})
                  for name, d in data.pop("user_models", {}).items()}
        whole = {name: WholeSpec(name, base=str(files_dir),
                                 **{k: v for k, v in d.items() if k in model_specs.WHOLE_KEYS})
                 for name, d in data.pop("user_whole", {}).items()}
        return cls(**data, user_scenarios=scenarios, user_models=models, user_whole=whole, files_dir=str(files_dir))


@functools.cache
def _spec_config(spec: ModelSpec, residual: bool) -> FFNConfig:
    """A real layer's config, loaded (and hashed) once a process, however many cells ask for it."""
    return spec.build(residual=residual).cfg


# The llama-7b FFN size in the full preset: every recipe timed for A and B, accuracy on a few requests
# under production; a prefill of 1 x 128 and bounded rounds keep it within minutes on 2 cores.
# A dense online rotation of its 11,008-wide down-projection input would hold a 485 MB matrix: the
# mitigations stay on the smaller sizes.
LLAMA_7B = {"designs": ["A", "B"], "mitigations": False, "scenarios": ["production"], "n_requests": 4,
            "seq_len": 32, "calibration_requests": 4, "prefill": [1, 128], "warmup": 1, "max_seconds": 15.0,
            "max_runnable_seconds": 1.5}

PRESETS_RUN = {
    "quick": RunConfig(preset="quick", lm_recipes=list(QUICK_LM_RECIPES), lm_windows=8, lm_draws=2, lm_seeds=[0]),
    "default": RunConfig(preset="default", models=["default"], recipes=[*RECIPES, *DEFAULT_MITIGATED],
                         scenarios=list(NAMED),
                         lm_recipes=list(DEFAULT_LM_RECIPES), lm_scenarios=list(DEFAULT_LM_SCENARIOS),
                         lm_models=["drift", "trained"], lm_windows=32, dose_scenarios=list(DOSE_SCENARIOS)),
    "full": RunConfig(preset="full", designs=list(DESIGNS), models=["small", "default", "llama-7b"],
                      recipes=[*RECIPES, *FULL_MITIGATED], scenarios=list(NAMED),
                      lm_recipes=[*RECIPES, *FULL_MITIGATED], calibration=["clean", "production"],
                      lm_scenarios=[*NAMED, "domain-code", "domain-chat"], lm_models=["drift", "trained"],
                      # the matrix holds every level at ffn-input already: the dose adds the residual stream
                      dose_scenarios=list(DOSE_SCENARIOS), dose_inject=["residual"], dose_seeds=[0, 1, 2],
                      dose_windows=64,
                      per_model={"llama-7b": LLAMA_7B}, whole_models=list(SHIPPED_WHOLE)),
}

PER_MODEL_KEYS = ("designs", "recipes", "mitigations", "scenarios", "n_requests", "seq_len", "calibration_requests",
                  "decode", "prefill", "warmup", "min_iterations", "max_seconds", "max_runnable_seconds", "memory")


def preset_config(name: str) -> RunConfig:
    if name not in PRESETS_RUN:
        raise UsageError(f"--preset: unknown '{name}'; choose one of {', '.join(PRESETS_RUN)}")
    return copy.deepcopy(PRESETS_RUN[name])
