"""The decision: A or B for a deployment profile, argued from the runs' records (decision.json).

Each served family × scenario of the profile is one row, weighted by the family's share of traffic
and an equal share of the scenarios. A row takes its winner from the strongest evidence present that
is not broken (the order of `evidence.KINDS`), and shows the stronger evidence it could not use;
runs that disagree at one strength make the row a `conflict`, never an average. The recommendation
is the design that wins more of the decided traffic; its confidence is how the traffic splits into
decided, undecided (`none`, `conflict`), broken and unmeasured rows.
"""

from dataclasses import dataclass
from pathlib import Path

from ffnbench import files
from ffnbench.bench import records
from ffnbench.bench.analysis import cost, mechanisms, traffic_map
from ffnbench.bench.analysis.deployment import Budget, Deployment
from ffnbench.bench.analysis.evidence import Claim, Evidence, Run, gather, measured_scenarios
from ffnbench.bench.traffic.scenarios import NAMED, TEXT_DOMAINS
from ffnbench.errors import UsageError

DECISION_JSON = "decision.json"
DECISION_MD = "decision.md"
KIND = "ffnbench.decision"
UNDECIDED = ("none", "conflict")
WEAKER = ("whole models", "sublayers")  # evidence without a trained model's downstream verdict
TIE = 1e-9  # shares are sums of float weights: equal within rounding is a tie


@dataclass
class Row:
    family: str
    scenario: str
    weight: float
    winner: str  # A, B, none, conflict, broken or unmeasured
    used: list[Evidence]  # the evidence the winner is taken from (one a run)
    stronger: list[Evidence]  # stronger evidence that is broken, shown beside it

    def to_dict(self, cite) -> dict:
        return {"family": self.family, "scenario": self.scenario, "weight": self.weight, "winner": self.winner,
                "evidence_kind": self.used[0].kind if self.used else None,
                "used": [e.to_dict(cite) for e in self.used], "stronger": [e.to_dict(cite) for e in self.stronger]}


def row(runs: list[Run], family: str, scenario: str, weight: float) -> Row:
    found = gather(runs, family, scenario)
    usable = [e for e in found if e.verdict != "broken"]
    if not usable:
        return Row(family, scenario, weight, "broken" if found else "unmeasured", [], found)
    kind = usable[0].kind
    used = [e for e in usable if e.kind == kind]
    stronger = [e for e in found if e.verdict == "broken" and found.index(e) < found.index(used[0])]
    verdicts = {e.verdict for e in used}
    winner = verdicts.pop() if len(verdicts) == 1 else "conflict"
    return Row(family, scenario, weight, winner, used, stronger)


def confidence(rows: list[Row]) -> dict:
    """Shares of the served traffic; with no rows at all (no scenario the runs measured), all of it
    is unmeasured."""
    share = {k: sum(r.weight for r in rows if r.winner in k) for k in (("A", "B"), UNDECIDED, ("broken",),
                                                                        ("unmeasured",))}
    if not rows:
        share["unmeasured",] = 1.0
    return {"decided_share": share["A", "B"], "none_share": share[UNDECIDED], "broken_share": share["broken",],
            "unmeasured_share": share["unmeasured",],
            "A_share": sum(r.weight for r in rows if r.winner == "A"),
            "B_share": sum(r.weight for r in rows if r.winner == "B"),
            # how much of the decided traffic each kind of evidence carries
            "decided_by": {kind: sum(r.weight for r in rows if r.winner in ("A", "B") and r.used[0].kind == kind)
                           for kind in dict.fromkeys(r.used[0].kind for r in rows if r.winner in ("A", "B"))}}


def recommendation(conf: dict) -> str:
    if abs(conf["A_share"] - conf["B_share"]) < TIE:
        return "none"
    return "A" if conf["A_share"] > conf["B_share"] else "B"


def conditions(rows: list[Row], profile: Deployment, pick: str) -> list[str]:
    """What would change the recommendation: the undecided traffic going to the other design, the
    rows only weaker evidence (whole models, sublayers) decides turning once a pair measures them,
    or one family whose rows the other design wins taking more of the traffic (the rest scaled
    down). Where nothing in the profile would, that is said with the figures that show it."""
    if pick == "none":
        return ["a verdict on the rows that are undecided, broken or unmeasured, or a profile weighted toward "
                "the families that do resolve"]
    other = "B" if pick == "A" else "A"
    conf = confidence(rows)
    out = []
    margin = conf[f"{pick}_share"] - conf[f"{other}_share"]
    open_share = 1 - conf["decided_share"]
    if open_share > margin:
        out.append(f"the {open_share:.0%} of traffic not decided here going to {other} (it trails by {margin:.0%})")
    weak = sum(r.weight for r in rows if r.winner == pick and r.used[0].kind in WEAKER)
    if 2 * weak > margin:
        out.append(f"the {weak:.0%} of traffic only whole models or sublayers decide for {pick} going to {other} "
                   "once a healthy pair measures it")
    for family, share in profile.families.items():
        per_unit = {d: sum(r.weight for r in rows if r.family == family and r.winner == d) / share for d in "AB"}
        if per_unit[other] <= per_unit[pick]:
            continue
        rest = {d: conf[f"{d}_share"] - share * per_unit[d] for d in "AB"}
        # At share s the winners' weights are s·per_unit + (1 − s)/(1 − share)·rest: solve for equality.
        scale = 1 / (1 - share) if share < 1 else 0.0
        gain = (per_unit[other] - per_unit[pick]) - scale * (rest[other] - rest[pick])
        if gain > 0:
            s = -scale * (rest[other] - rest[pick]) / gain
            if share < s <= 1:
                out.append(f"{family} carrying more than {s:.0%} of traffic (now {share:.0%}), where {other} wins")
    if not out:
        out.append(f"nothing within this profile: {pick} leads by {margin:.0%} of traffic, more than the "
                   f"{open_share:.0%} undecided and twice the {weak:.0%} only weaker evidence decides for it, and no "
                   f"family {other} wins would lead at any share")
    return out


def decide(runs: list[Run], profile: Deployment, budget: Budget, capture: Path | None = None) -> dict:
    """decision.json's content for the runs under the profile and budget."""
    scenarios = list(profile.scenarios or measured_scenarios(runs))
    check_scenarios(runs, scenarios)
    rows = [row(runs, family, scenario, share / len(scenarios))
            for family, share in profile.families.items() for scenario in scenarios]
    conf = confidence(rows)
    pick = recommendation(conf)
    claims: list[Claim] = []

    def cite(claim: Claim) -> int:
        claims.append(claim)
        return len(claims) - 1

    placed = traffic_map.place(runs, capture) if capture else None  # a bad file is refused before any work
    rows_out = [r.to_dict(cite) for r in rows]
    mech = mechanisms.gather(runs, scenarios, cite)
    flips = mechanisms.flips(runs, rows, pick, cite)
    costs = cost.at_budget(runs, scenarios, budget, profile, cite)
    return {"kind": KIND, "format": records.FORMAT, "recommendation": pick, "profile": profile.to_dict(),
            "budget": {"metric": budget.metric, "op": budget.op, "bound": budget.bound, "stated": budget.stated},
            "confidence": conf, "change_if": conditions(rows, profile, pick),
            "runs": [{"name": r.name, "dir": str(r.dir), "machine_class": r.machine_class,
                      "preset": (r.manifest.get("config") or {}).get("preset"),
                      "revision": r.manifest.get("git_revision")} for r in runs],
            "rows": rows_out, "mechanisms": mech, "cost_at_budget": costs, "flips": flips,
            "unknowns": unknowns(runs, rows, profile), "claims": [c.to_dict() for c in claims], "traffic": placed}


def check_scenarios(runs: list[Run], scenarios: list[str]) -> None:
    """A profile's scenario must be one a run could measure (a named one, a text domain, or a run's own)."""
    known = {*NAMED, *TEXT_DOMAINS, *(c["scenario"] for run in runs for c in run.cells)}
    for name in scenarios:
        if name not in known:
            raise UsageError(f"[deployment] scenarios: unknown '{name}'; choose from the named scenarios "
                             f"({', '.join(NAMED)}), the text domains or the runs' own")


def unknowns(runs: list[Run], rows: list[Row], profile: Deployment) -> list[str]:
    out = [] if rows else ["every row: no scenario of the profile has A-vs-B evidence in these runs"]
    for scenario in dict.fromkeys(r.scenario for r in rows):
        mine = [r for r in rows if r.scenario == scenario]
        broken = [r for r in mine if r.winner == "broken"]
        if broken:
            reason = next((e.reason for r in broken for e in r.stronger if e.reason), "its fp32 reference fails there")
            out.append(f"under {scenario}, {', '.join(r.family for r in broken)}: broken ({reason})")
        weaker = [r for r in mine if r.used and r.stronger]
        if weaker:
            kinds = sorted({r.used[0].kind for r in weaker})
            out.append(f"under {scenario}, {', '.join(r.family for r in weaker)}: decided by {' and '.join(kinds)} "
                       f"only, the {weaker[0].stronger[0].kind} being broken there ({weaker[0].stronger[0].reason})")
        missing = [r.family for r in mine if r.winner == "unmeasured"]
        if missing:
            out.append(f"under {scenario}, {', '.join(missing)}: not measured by these runs")
    whole = {c["model"]: c["design"] for run in runs for c in run.cells if c["kind"] == "whole"}
    if whole and len(set(whole.values())) == 1:
        out.append(f"whole models of design {next(iter(whole.values()))} only ({', '.join(sorted(whole))}): one "
                   "design compares nothing; measure a model of the other design beside it")
    classes = sorted({r.machine_class for r in runs if r.machine_class})
    if profile.machine_class and profile.machine_class not in classes:
        out.append(f"machine class {profile.machine_class}: the runs measured {', '.join(classes) or 'no class'}; "
                   "latency and int8 kernels differ by class")
    if not any((r.manifest.get("config") or {}).get("device") == "cuda" for r in runs):
        out.append("GPU: no run here measured a CUDA device; latency, fp16 and bitsandbytes kernels there are unknown")
    return out


def write(decision: dict, markdown: str, out: Path) -> tuple[Path, Path]:
    """decision.json and the rendered decision.md in `out` (each written whole, to a temporary name first)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out: {out} is an existing file; give a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out: cannot write to {out} ({e.strerror}); choose a writable directory") from None
    json_path, md_path = out / DECISION_JSON, out / DECISION_MD
    files.write_json(json_path, decision)
    files.write_text(md_path, markdown)
    return json_path, md_path
