"""The studies a run composes beside its sublayer matrix, one dataclass each owning its keys, defaults
and checks: downstream (the trained pairs), dose-response and whole models. Each is the TOML table of
its name ([downstream], [dose], [whole]); latency's is LatencyConfig (bench/cells/latency.py)."""

from dataclasses import dataclass, field

from ffnbench.bench.cells.latency import LatencyConfig
from ffnbench.bench.traffic.model_specs import SHIPPED_WHOLE
from ffnbench.bench.traffic.scenarios import TEXT_DOMAINS, Replay, Scenario
from ffnbench.errors import UsageError
from ffnbench.models.lm import INJECT
from ffnbench.models.pair import KINDS, trained_seeds
from ffnbench.quant import mitigations


@dataclass(frozen=True)
class DownstreamConfig:
    """Whole-model (lm) cells on the committed trained pairs, for the run's designs among A and B and
    its recipes among `recipes`; their A-vs-B verdicts carry intervals over seeds, draws and windows."""

    recipes: list[str] = field(default_factory=list)  # [] for no lm cells; the presets name some
    # synthetic drifts, or a second text domain (domain-code): real drift, measured
    scenarios: list[str] = field(default_factory=lambda: ["clean", "production", "domain-code"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # committed training seeds, each design
    # Which committed models: "trained" (on clean prose) and/or "drift" (fine-tuned with drift present).
    pairs: list[str] = field(default_factory=lambda: ["trained"])
    # Held-out windows of 128 bytes a scenario. 64 resolve a 10 % KL ratio between the designs on
    # clean text; the spread between training seeds is the larger term (docs/downstream.md).
    windows: int = 64
    draws: int = 5  # independent draws of a synthetic drift, the windows dealt among them in turn
    inject: str = "ffn-input"  # where a synthetic drift enters: each FFN's input, or "residual"
    # A model is healthy under a scenario while its fp32 bits per byte stay within this of its clean
    # figure; a verdict needs both designs healthy (docs/design.md).
    healthy_delta_bpb: float = 0.1

    def check(self, designs: list[str], known_recipes: dict, known_scenarios: dict, has_whole: bool) -> None:
        """`known_scenarios`: name -> spec, the run's own among them; `has_whole`: the run has whole
        models, which may run without any pair."""
        for recipe in self.recipes:
            if mitigations.parse(recipe)[0] not in known_recipes:
                raise UsageError(f"[downstream] recipes: unknown '{recipe}'; choose from {', '.join(known_recipes)}")
        for name in self.scenarios:
            if name not in {**known_scenarios, **TEXT_DOMAINS}:
                raise UsageError(f"[downstream] scenarios: unknown '{name}'; choose from "
                                 f"{', '.join([*known_scenarios, *TEXT_DOMAINS])}")
            if isinstance(known_scenarios.get(name), Replay):
                raise UsageError(f"[downstream] scenarios: '{name}' replays hidden states, and a whole model reads "
                                 "text; use a synthetic scenario or a text domain (domain-code)")
        if self.recipes and not self.scenarios:
            raise UsageError("[downstream] scenarios: empty; name at least one (e.g. clean) or set "
                             "[downstream] recipes = []")
        if self.recipes and (self.pairs or not has_whole):
            _check_committed("downstream", self.pairs, self.seeds, designs, "[downstream] recipes = []")
        if self.inject not in INJECT:
            raise UsageError(f"[downstream] inject: unknown '{self.inject}'; choose one of {', '.join(INJECT)}")
        _check_positive("downstream", windows=self.windows, draws=self.draws, healthy_delta_bpb=self.healthy_delta_bpb)


@dataclass(frozen=True)
class DoseConfig:
    """Dose-response cells: the downstream recipes under each of `scenarios` (levels of one drift's
    strength), injected at each of `inject`, on `pairs`' `seeds`; their own cells (model names
    trained-s0@residual, …), drawn as curves, never in a verdict."""

    scenarios: list[str] = field(default_factory=list)  # [] for none: the presets name the levels
    inject: list[str] = field(default_factory=lambda: list(INJECT))  # each injection point a curve of its own
    pairs: list[str] = field(default_factory=lambda: ["trained"])  # trained on clean prose: it never saw the drift
    # A curve is drawn, never a verdict with an interval over seeds: one seed, and fewer windows than
    # the matrix's ([downstream] windows), keep `default` within its time (bench/config.py).
    seeds: list[int] = field(default_factory=lambda: [0])
    windows: int = 16

    def check(self, designs: list[str], known_scenarios: dict) -> None:
        _check_positive("dose", windows=self.windows)
        if not self.scenarios:
            return
        synthetic = [name for name, spec in known_scenarios.items() if isinstance(spec, Scenario)]
        for name in self.scenarios:
            if name not in synthetic:
                raise UsageError(f"[dose] scenarios: '{name}' is not a synthetic scenario (a dose is a drift's "
                                 f"strength); choose from {', '.join(synthetic)}")
        for inject in self.inject or [None]:
            if inject not in INJECT:
                raise UsageError(f"[dose] inject: {'empty' if inject is None else f'unknown {inject!r}'}; choose "
                                 f"from {', '.join(INJECT)}")
        _check_committed("dose", self.pairs, self.seeds, designs, "[dose] scenarios = []")


@dataclass(frozen=True)
class WholeConfig:
    """Whole causal LMs ([model.NAME] with `checkpoint` or `gguf`, or the shipped "smollm2") whose FFNs
    the downstream recipes quantize, under the downstream scenarios: cells of their own."""

    models: list[str] = field(default_factory=list)  # [] for none; `full` names the shipped ones
    # Token windows a scenario reads: a window's fp32 logits are 25 MB at a 49,152-token vocabulary,
    # and every scenario's stay in memory while its model is measured.
    windows: int = 16

    def check(self, user_whole: dict) -> None:
        """`user_whole`: the config's own whole models ([model.NAME]), by name."""
        for model in self.models:
            if model not in {**SHIPPED_WHOLE, **user_whole}:
                raise UsageError(f"[whole] models: '{model}' is not a whole model of the config or a shipped one "
                                 f"({', '.join(SHIPPED_WHOLE)}); define [model.{model}] with checkpoint = \"DIR\" or "
                                 "gguf = \"FILE.gguf\"")
        _check_positive("whole", windows=self.windows)


# Each study's TOML table and RunConfig field, by name.
STUDIES = {"latency": LatencyConfig, "downstream": DownstreamConfig, "dose": DoseConfig, "whole": WholeConfig}


def _check_positive(table: str, **values) -> None:
    for key, value in values.items():
        if not value > 0:
            raise UsageError(f"[{table}] {key}: must be positive, got {value}")


def _check_committed(table: str, pairs: list[str], seeds: list[int], designs: list[str], off: str) -> None:
    """Each kind of committed model known and holding every seed asked, for the run's designs; `off`
    the setting that turns the study off."""
    if not pairs:
        raise UsageError(f"[{table}] pairs: empty; name at least one of {', '.join(KINDS)} or set {off}")
    for kind in pairs:
        if kind not in KINDS:
            raise UsageError(f"[{table}] pairs: unknown '{kind}'; choose from {', '.join(KINDS)}")
        for design in (d for d in designs if d in ("A", "B")):
            committed = trained_seeds(design, kind)
            if not seeds or any(s not in committed for s in seeds):
                raise UsageError(f"[{table}] seeds: {seeds} are not all committed training seeds of the {kind} "
                                 f"design {design}; choose from {', '.join(map(str, committed)) or 'none'}")
