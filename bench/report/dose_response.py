"""Dose-response of the trained models: fp32's own cost and each family's quantization cost (KL to
fp32) against drift strength, A and B on one figure, with the strength at which each design's fp32
stops being healthy and where each family's KL has doubled from `clean`.

Drawn from whichever named scenarios along an axis a group of lm cells covers (three or more
levels): mean shift (`clean`, `shift-0.5` … `shift-8`) and request magnitude (`clean`,
`magnitude-1`, `magnitude-2`). The dose-response cells (`[dose] scenarios`) make one group per
injection point; without them, the matrix's own cells at the run's `[downstream] inject`.
"""

import statistics
from pathlib import Path

from ffnbench.bench.analysis.verdicts import design_mean, families, seed_mean
from ffnbench.bench.report import plots
from ffnbench.bench.traffic.scenarios import MAGNITUDES, SHIFTS

AXES = (("shift", SHIFTS, "mean shift (feature std)"), ("magnitude", MAGNITUDES, "request magnitude σ"))


def _mean(lm: dict, design: str, recipes: list[str], scenario: str, metric: str) -> float | None:
    """The metric averaged over seeds, then over the recipes (a family); None where a cell lacks it."""
    means = [seed_mean(lm.get((design, r, scenario), []), metric) for r in recipes]
    return None if None in means else statistics.fmean(means)


def _worst_fp32(lm: dict, design: str, scenario: str) -> float | None:
    """The largest drift cost of the design's fp32 reference over its seeds (health holds for all):
    every cell records its reference's; a run before they did has it in its fp32 cells only."""
    costs = [c["reference"]["delta_bpb"] if c.get("reference") else c["metrics"].get("delta_bpb") if r == "fp32"
             else None for r in {k[1] for k in lm} for c in lm.get((design, r, scenario), [])]
    costs = [c for c in costs if c is not None]
    return max(costs) if costs else None


def healthy_up_to(lm: dict, design: str, levels: list[tuple[float, str]], threshold: float) -> str:
    """Where the design's fp32 stops being healthy along the levels (every seed's drift cost within
    `threshold`)."""
    last = None
    for x, scenario in levels:
        cost = _worst_fp32(lm, design, scenario)
        if cost is None:
            continue
        if cost > threshold:
            if last is None:
                return f"not healthy at {x:g} already (+{cost:.2f} bit)"
            reach = "healthy at 0 (clean) only" if last == 0 else f"healthy up to {last:g}"
            return f"{reach}, not at {x:g} (+{cost:.2f} bit)"
        last = x
    return "no fp32 figures" if last is None else f"healthy at every level measured (up to {last:g})"


def kl_doubles(lm: dict, design: str, recipes: list[str], levels: list[tuple[float, str]]) -> float | None:
    """The first level at which the family's KL is at least twice its `clean` KL; None if never."""
    base = _mean(lm, design, recipes, "clean", "kl_to_fp32")
    for x, scenario in levels:
        kl = _mean(lm, design, recipes, scenario, "kl_to_fp32")
        if base and kl is not None and kl >= 2 * base:
            return x
    return None


def section(lm: dict, run_dir: Path, plot_dir: Path, suffix: str, threshold: float, inject: str) -> list[str]:
    lines = []
    found = families(lm)
    quantized = {family: recipes for family, recipes in found.items() if family != "fp32"}
    designs = [d for d in "AB" if any(k[0] == d for k in lm)]
    seeds = sorted({c["seed"] for cells in lm.values() for c in cells})
    for name, axis, xlabel in AXES:
        levels = sorted((x, s) for s, x in axis.items() if any(k[2] == s for k in lm))
        if len(levels) < 3:
            continue
        panels = {"fp32 delta_bpb": found["fp32"]} if "fp32" in found else {}
        panels |= {f"{family} kl_to_fp32": recipes for family, recipes in quantized.items()}
        series = {panel: {d: [(x, *m) for x, s in levels
                              if (m := design_mean(lm, d, recipes, s, panel.rpartition(" ")[2]))]
                          for d in designs} for panel, recipes in panels.items()}
        series = {panel: {d: p for d, p in by.items() if p} for panel, by in series.items()}
        series = {panel: by for panel, by in series.items() if by}
        path = plots.curves(series, xlabel, "delta_bpb (bits); KL (nats a byte, log)",
                            f"Dose-response: {name}, injected at {inject}",
                            plot_dir / f"dose_response_{name}{suffix}.png",
                            log_panels=tuple(p for p in series if p.endswith("kl_to_fp32")))
        lines += [f"### Dose-response: {name} (injected at `{inject}`)", "",
                  f"Seeds {', '.join(map(str, seeds))}; each point the mean over seeds and windows with a 95 % "
                  "interval (seeds, drift draws, windows), the band on the plot. fp32 is healthy while its drift "
                  f"cost stays within {threshold:g} bit a byte for every seed:", ""]
        lines += [f"- {d}: {healthy_up_to(lm, d, levels, threshold)}." for d in designs]
        if "fp32 delta_bpb" in series:
            lines += ["", "| level | " + " | ".join(f"fp32 {d} delta_bpb" for d in designs) + " |",
                      "|---|" + "---|" * len(designs)]
            by_level = {d: {p[0]: p[1:] for p in series["fp32 delta_bpb"].get(d, [])} for d in designs}
            lines += [f"| {x:g} | " + " | ".join(_ci(by_level[d].get(x)) for d in designs) + " |" for x, _ in levels]
        doubled = [f"{family} " + ", ".join(f"{d} {_level(kl_doubles(lm, d, recipes, levels))}" for d in designs)
                   for family, recipes in quantized.items()]
        if doubled:
            lines += ["", "Where quantization's KL to fp32 has doubled from `clean` (means over seeds and windows): "
                      + "; ".join(doubled) + "."]
        lines += ["", f"![dose-response {name} at {inject}]({path.relative_to(run_dir)})", ""]
    return lines


def _ci(value: tuple[float, float, float] | None) -> str:
    return "–" if value is None else f"{value[0]:+.2f} [{value[1]:+.2f}, {value[2]:+.2f}]"


def _level(x: float | None) -> str:
    return "not within the levels measured" if x is None else f"at {x:g}"
