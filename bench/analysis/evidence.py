"""The evidence a decision reads: the runs' records loaded once, and, per served family and drift
scenario, every A-vs-B comparison the runs hold, strongest kind first — the drift-trained pair, the
trained pair (downstream verdicts, intervals over seeds, drift draws and windows), whole models
(one design each: A against B only where both are measured), sublayers (seeded weights, an interval
over requests) — each with a claim whose figure a reader can recompute from the cells it lists."""

import functools
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ffnbench.bench.analysis import downstream
from ffnbench.bench.store import label, load_run
from ffnbench.errors import UsageError
from ffnbench.quant import FAMILY_OF, mitigations

KINDS = ("drift-trained pair", "trained pair", "whole models", "sublayers")  # strongest first
PAIR_KIND = {"drift": "drift-trained pair", "trained": "trained pair"}
RESAMPLES = 2000


@dataclass
class Claim:
    """A figure and how to recompute it from the cells it cites: `statistic` of their `field` values.
    `ratio` and `difference` set the mean over the first `split` cells against the mean over the
    rest; `median_ratio` the median latency round of the first against the second (over the rounds
    both ran); `mean`, `max` and `mean_of_ratios` (field `x/y`: each cell's x over its y) take every
    cell. A cell's value of a list is its mean (per window, per layer); `drift_stats.NAME` is the
    mean over layers; `requests.centered_error` is Σ noise / Σ signal over the requests."""

    text: str
    figure: float | None
    ci95: list[float] | None
    evidence_kind: str
    statistic: str
    field: str
    cells: list[str]
    split: int | None = None  # ratio, difference, median_ratio: how many cells the numerator holds

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Run:
    """One run directory's records, its analysis' verdicts per pair, and a name its cells are cited by."""

    name: str
    dir: Path
    manifest: dict
    cells: list[dict]
    comparisons: dict[str, list] = field(default_factory=dict)

    def ref(self, cell: dict) -> str:
        return f"{self.name}:{cell['key']}"

    @property
    def machine_class(self) -> str | None:
        return (self.manifest.get("machine") or {}).get("machine_class")

    @property
    def threshold(self) -> float:
        """The run's health threshold (load_run upgrades a flat config of an older run to the nested one)."""
        return ((self.manifest.get("config") or {}).get("downstream") or {}).get("healthy_delta_bpb", 0.1)

    @functools.cached_property
    def indexed(self) -> tuple[dict, dict]:
        """(pairs, doses) of its lm cells, as downstream.index gives them: indexed once, read by every row."""
        return downstream.index(self.cells)


def load_runs(run_dirs: list[Path]) -> list[Run]:
    """Each directory's records (ok cells), cited as its folder name (with its position where two
    share one). A directory that is not a run is a UsageError naming it."""
    if not run_dirs:
        raise UsageError("decide: give at least one run directory (the --out of `ffnbench run`)")
    resolved = [Path(d).resolve() for d in run_dirs]
    twice = next((d for i, d in enumerate(resolved) if d in resolved[:i]), None)
    if twice is not None:
        raise UsageError(f"decide: {twice} is given twice; its evidence would count twice, give it once")
    names = [d.name for d in resolved]
    runs = []
    for i, run_dir in enumerate(run_dirs):
        manifest, cells = load_run(Path(run_dir), "decide")
        name = names[i] if names.count(names[i]) == 1 else f"{names[i]}#{i + 1}"
        ok = [c for c in cells if c["status"] == "ok"]
        runs.append(Run(name, Path(run_dir), manifest, ok, downstream.found(Path(run_dir), manifest, cells)))
    return runs


@dataclass
class Evidence:
    kind: str
    run: str
    verdict: str  # A, B, none or broken
    claim: Claim
    reason: str | None = None  # why broken

    def to_dict(self, cite) -> dict:
        """`cite(claim) -> its index` in the decision's claims."""
        return {"kind": self.kind, "run": self.run, "verdict": self.verdict, "reason": self.reason,
                "claim": cite(self.claim)}


def pair_evidence(run: Run, family: str, scenario: str) -> list[Evidence]:
    """The analysis' verdict for the family under the scenario, one per pair the run measured."""
    pairs, _ = run.indexed
    out = []
    for pair, found in run.comparisons.items():
        for c in found:
            if c.family != family or c.scenario != scenario:
                continue
            lm = pairs.get(pair, {})
            # the cells compare() read: its recipes, its seeds, each with per-window figures
            seeds = set(c.seed_ids) if c.seed_ids else set.intersection(*(
                {x["seed"] for x in lm.get((d, r, scenario), []) if x.get("windows")}
                for d in "AB" for r in c.recipes)) if c.recipes else set()
            cells = [run.ref(x) for d in "AB" for r in c.recipes for x in lm.get((d, r, scenario), [])
                     if x["seed"] in seeds and x.get("windows")]
            split = len(cells) // 2  # A's cells first, as many as B's
            if family == "fp32":
                claim = Claim(f"fp32 drift cost A − B under {scenario} ({PAIR_KIND[pair]}), bits per byte",
                              c.delta_bpb_diff, c.delta_bpb_ci95, PAIR_KIND[pair], "difference", "windows.delta_bpb",
                              cells, split)
            else:
                claim = Claim(f"{family} under {scenario}: KL to fp32, A / B ({PAIR_KIND[pair]}, {c.seeds} seeds, "
                              f"{c.draws} draws, {c.windows} windows)", c.kl_ratio, c.ci95, PAIR_KIND[pair],
                              "ratio", "windows.kl_to_fp32", cells, split)
            out.append(Evidence(PAIR_KIND[pair], run.name, c.verdict, claim, c.reason))
    return out


def _family_labels(cells: list[dict]) -> dict[str, list[dict]]:
    """label -> cells, for the unmitigated recipes of one family (its first calibration only)."""
    by: dict[str, list[dict]] = {}
    calibrations = [c.get("calibration") for c in cells if c.get("calibration")]
    first = calibrations[0] if calibrations else None
    for c in cells:
        if mitigations.parse(c["recipe"])[1] or c.get("mitigation") or c.get("calibration") not in (None, first):
            continue
        by.setdefault(label(c), []).append(c)
    return by


def sublayer_evidence(run: Run, family: str, scenario: str) -> list[Evidence]:
    """A vs B on the run's largest seeded sublayer that has both designs: centered error energy
    (Σ noise / Σ signal over requests), A / B, pooled over the family's recipes, with a paired
    bootstrap over requests (the one source of variation a seeded sublayer has)."""
    cells = [c for c in run.cells if c["kind"] == "accuracy" and c["scenario"] == scenario
             and FAMILY_OF.get(c["recipe"]) == family and family != "fp32" and c.get("requests")]
    models = {c["model"] for c in cells if {x["design"] for x in cells if x["model"] == c["model"]} >= {"A", "B"}}
    if not models:
        return []
    model = max(models, key=lambda m: max((c.get("artifact") or {}).get("bytes", 0) for c in cells if c["model"] == m))
    by = _family_labels([c for c in cells if c["model"] == model])
    labels = [r for r, cs in by.items() if {c["design"] for c in cs} == {"A", "B"}]
    if not labels:
        return []
    pick = {(c["design"], r): c for r in labels for c in by[r]}
    noise = {d: np.array([pick[d, r]["requests"]["centered_noise"] for r in labels]) for d in "AB"}
    signal = {d: np.array([pick[d, r]["requests"]["centered_signal"] for r in labels]) for d in "AB"}
    if len({x.shape for x in (*noise.values(), *signal.values())}) != 1:
        return []

    def ratio(index):
        a = (noise["A"][:, index].sum(-1) / signal["A"][:, index].sum(-1)).mean(0)
        b = (noise["B"][:, index].sum(-1) / signal["B"][:, index].sum(-1)).mean(0)
        return a / b

    requests = noise["A"].shape[1]
    draws = np.random.default_rng(0).integers(requests, size=(RESAMPLES, requests))
    point = float(ratio(np.arange(requests)[None])[0])
    low, high = (float(v) for v in np.percentile(ratio(draws), [2.5, 97.5]))
    verdict = "A" if high < 1 else "B" if low > 1 else "none"
    claim = Claim(f"{family} under {scenario}: centered error energy of the sublayer `{model}`, A / B "
                  f"({len(labels)} recipe(s), {requests} requests, one seeded weight draw)", point, [low, high],
                  "sublayers", "ratio", "requests.centered_error", [run.ref(pick[d, r]) for d in "AB" for r in labels],
                  len(labels))
    return [Evidence("sublayers", run.name, verdict, claim)]


def whole_evidence(run: Run, family: str, scenario: str) -> list[Evidence]:
    """Whole models of both designs (e.g. a GPT-2 and a Llama checkpoint) under the scenario: KL to
    fp32 A / B over their windows, bootstrapped within each model (different models, unpaired); a
    model whose fp32 the drift breaks leaves the comparison broken."""
    cells = [c for c in run.cells if c["kind"] == "whole" and c["scenario"] == scenario and c.get("windows")
             and FAMILY_OF.get(c["recipe"]) == family and not mitigations.parse(c["recipe"])[1]]
    designs = {d: [c for c in cells if c["design"] == d] for d in "AB"}
    if not designs["A"] or not designs["B"] or family == "fp32":
        return []
    rng = np.random.default_rng(0)

    def resampled(group):
        return np.mean([np.mean(np.asarray(c["windows"]["kl_to_fp32"])[
            rng.integers(len(c["windows"]["kl_to_fp32"]), size=(RESAMPLES, len(c["windows"]["kl_to_fp32"])))],
            axis=1) for c in group], axis=0)

    point = float(np.mean([np.mean(c["windows"]["kl_to_fp32"]) for c in designs["A"]])
                  / np.mean([np.mean(c["windows"]["kl_to_fp32"]) for c in designs["B"]]))
    low, high = (float(v) for v in np.percentile(resampled(designs["A"]) / resampled(designs["B"]), [2.5, 97.5]))
    costs = {c["model"]: d for c in cells if (d := (c.get("reference") or {}).get("delta_bpb")) is not None}
    broken = next((f"fp32 {model} loses {d:+.2f} bits per byte to the drift" for model, d in costs.items()
                   if d > run.threshold), None)
    verdict = "broken" if broken else "A" if high < 1 else "B" if low > 1 else "none"
    models = ", ".join(sorted({f"{c['model']} ({c['design']})" for c in cells}))
    claim = Claim(f"{family} under {scenario}: KL to fp32 of whole models, A / B ({models})", point, [low, high],
                  "whole models", "ratio", "windows.kl_to_fp32",
                  [run.ref(c) for d in "AB" for c in designs[d]], len(designs["A"]))
    return [Evidence("whole models", run.name, verdict, claim, broken)]


def gather(runs: list[Run], family: str, scenario: str) -> list[Evidence]:
    """Every run's evidence for the family under the scenario, strongest kind first."""
    found = [e for run in runs for e in (*pair_evidence(run, family, scenario), *whole_evidence(run, family, scenario),
                                         *sublayer_evidence(run, family, scenario))]
    return sorted(found, key=lambda e: KINDS.index(e.kind))


def measured_scenarios(runs: list[Run]) -> list[str]:
    """Scenarios with downstream verdicts or whole-model cells, in the runs' order; the sublayers'
    where no run has either."""
    downstream_ = [c.scenario for run in runs for found in run.comparisons.values() for c in found]
    downstream_ += [c["scenario"] for run in runs for c in run.cells if c["kind"] == "whole"]
    if downstream_:
        return list(dict.fromkeys(downstream_))
    return list(dict.fromkeys(c["scenario"] for run in runs for c in run.cells if c["kind"] == "accuracy"))
