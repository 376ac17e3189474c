"""RunConfig: what a benchmark run covers, from a preset, a TOML file and command-line filters."""

import copy
import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path

from ffnbench.bench import config_check, records
from ffnbench.bench.cells.latency import LatencyConfig
from ffnbench.bench.studies import STUDIES, DoseConfig, DownstreamConfig, WholeConfig
from ffnbench.bench.traffic import model_specs
from ffnbench.bench.traffic.model_specs import SHIPPED_WHOLE, ModelSpec, WholeSpec
from ffnbench.bench.traffic.scenarios import (
    MAGNITUDES,
    NAMED,
    SHIFTS,
    Replay,
    Scenario,
    replay_from_table,
)
from ffnbench.errors import UsageError
from ffnbench.models import DESIGNS, FFNBlock, FFNConfig, build_model, preset
from ffnbench.quant import FAMILIES, RECIPES, mitigations

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
    device: str = "cpu"
    # The studies beside the sublayer matrix, each a TOML table of its own (bench/studies.py).
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    downstream: DownstreamConfig = field(default_factory=DownstreamConfig)
    dose: DoseConfig = field(default_factory=DoseConfig)
    whole: WholeConfig = field(default_factory=WholeConfig)
    user_scenarios: dict[str, Scenario | Replay] = field(default_factory=dict)
    # The folder the config's files (weights, replays) are relative to; a run records it relative to
    # itself, so a re-timing finds them from the run directory.
    files_dir: str = "."
    # Real FFN layers by name ([model.NAME]), usable in `models` beside the size presets.
    user_models: dict[str, ModelSpec] = field(default_factory=dict)
    # Whole models by name ([model.NAME] with `checkpoint` or `gguf`), usable in [whole] models.
    user_whole: dict[str, WholeSpec] = field(default_factory=dict)
    # Recipe variants by name: {"torch-fp16-norm32": {"base": "torch-fp16", "norm_fp32": True}}
    user_recipes: dict[str, dict] = field(default_factory=dict)
    # Settings for one model size of the run ([per_model.NAME] tables): fewer designs, scenarios and
    # requests and a smaller prefill where a size is large (the full preset's llama-7b).
    per_model: dict[str, dict] = field(default_factory=dict)
    # False leaves the mitigated recipes (RECIPE+shift, ...) out: of the run, or in a [per_model]
    # table of one model size (llama-7b's dense rotations would hold 485 MB matrices).
    mitigations: bool = True
    # The deployment the run's decision.md is written for ([deployment]: served families and their
    # shares of traffic, machine_class, scenarios, budget); {} for the default profile.
    deployment: dict = field(default_factory=dict)

    def for_model(self, model: str) -> "RunConfig":
        """The run's settings for one model: its per_model table applied. Its designs, recipes and
        scenarios narrow the run's (so `--designs A` still holds); other keys replace the run's values."""
        overrides = copy.deepcopy(self.per_model.get(model) or {})
        for axis in ("designs", "recipes", "scenarios"):
            if axis in overrides:
                overrides[axis] = [v for v in getattr(self, axis) if v in overrides[axis]]
        config = self.overridden(overrides) if overrides else self
        if not config.mitigations:
            config = dataclasses.replace(config, recipes=[r for r in config.recipes if not config.mitigations_of(r)])
        return config

    def overridden(self, overrides: dict) -> "RunConfig":
        """The run with a [per_model] table's keys replaced, the timing ones in its latency study."""
        timing = {k: v for k, v in overrides.items() if k in LATENCY_KEYS}
        rest = {k: v for k, v in overrides.items() if k not in timing}
        return dataclasses.replace(self, **rest, latency=dataclasses.replace(self.latency, **timing))

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
        """The run's own keys, each study's own check, and what spans them (bench/config_check.py)."""
        config_check.check(self)
        return self

    def to_dict(self) -> dict:
        """What a run's manifest records: each study a table of its own, as in the TOML."""
        out = dataclasses.asdict(self)
        out["latency"] |= {shape: list(size) for shape, size in self.latency.shapes().items()}  # as JSON reads back
        out["user_scenarios"] = {k: v.describe() for k, v in self.user_scenarios.items()}
        out["user_models"] = {k: v.describe() for k, v in self.user_models.items()}
        out["user_whole"] = {k: self.whole_spec(k).describe() for k in dict.fromkeys([*self.user_whole,
                                                                                       *self.whole.models])}
        out.pop("files_dir")  # machine-specific; the run records it relative to its own directory
        return out

    @classmethod
    def from_dict(cls, data: dict, files_dir: Path = Path(".")) -> "RunConfig":
        """The inverse of to_dict, as a run's manifest records it (its shard spec aside), an older run's
        flat config too. Checkpoint and trace files resolve against `files_dir` (the folder of the
        run's config, or --weights-dir) and must have the hashes the run recorded."""
        data = {k: v for k, v in records.upgrade_config(data).items() if k not in ("shard", "files_dir")}
        studies = {name: study(**data.pop(name, {})) for name, study in STUDIES.items()}
        scenarios = {name: replay_from_table(name, Path(d["replay"]), d, files_dir) if "replay" in d else Scenario(**d)
                     for name, d in data.pop("user_scenarios", {}).items()}
        models = {name: ModelSpec(name, base=str(files_dir), sha256=d.get("sha256"),
                                  **{k: v for k, v in d.items() if k in model_specs.KEYS})
                  for name, d in data.pop("user_models", {}).items()}
        whole = {name: WholeSpec(name, base=str(files_dir),
                                 **{k: v for k, v in d.items() if k in model_specs.WHOLE_KEYS})
                 for name, d in data.pop("user_whole", {}).items()}
        return cls(**data, **studies, user_scenarios=scenarios, user_models=models, user_whole=whole,
                   files_dir=str(files_dir))


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
    "quick": RunConfig(preset="quick",
                       downstream=DownstreamConfig(recipes=list(QUICK_LM_RECIPES), windows=8, draws=2, seeds=[0])),
    "default": RunConfig(preset="default", models=["default"], recipes=[*RECIPES, *DEFAULT_MITIGATED],
                         scenarios=list(NAMED),
                         downstream=DownstreamConfig(recipes=list(DEFAULT_LM_RECIPES),
                                                     scenarios=list(DEFAULT_LM_SCENARIOS), pairs=["drift", "trained"],
                                                     windows=32),
                         dose=DoseConfig(scenarios=list(DOSE_SCENARIOS))),
    "full": RunConfig(preset="full", designs=list(DESIGNS), models=["small", "default", "llama-7b"],
                      recipes=[*RECIPES, *FULL_MITIGATED], scenarios=list(NAMED), calibration=["clean", "production"],
                      downstream=DownstreamConfig(recipes=[*RECIPES, *FULL_MITIGATED],
                                                  scenarios=[*NAMED, "domain-code", "domain-chat"],
                                                  pairs=["drift", "trained"]),
                      # the matrix holds every level at ffn-input already: the dose adds the residual stream
                      dose=DoseConfig(scenarios=list(DOSE_SCENARIOS), inject=["residual"], seeds=[0, 1, 2],
                                      windows=64),
                      per_model={"llama-7b": LLAMA_7B}, whole=WholeConfig(models=list(SHIPPED_WHOLE))),
}

# The [per_model.NAME] keys (config_check.PER_MODEL_KEYS) that replace those of the run's latency study.
LATENCY_KEYS = {f.name for f in dataclasses.fields(LatencyConfig)}


def preset_config(name: str) -> RunConfig:
    if name not in PRESETS_RUN:
        raise UsageError(f"--preset: unknown '{name}'; choose one of {', '.join(PRESETS_RUN)}")
    return copy.deepcopy(PRESETS_RUN[name])
