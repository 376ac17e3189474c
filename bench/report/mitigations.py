"""The report's answer to "does B with a mitigation reach A?": for each pair of committed models, scenario
and mitigated recipe (RECIPE+rotate@clean, ...), the KL ratio of A with the plain parent recipe over
B with the mitigation, and of A over B both mitigated, with the downstream interval (paired over
training seeds, drift draws and windows; both designs read the same windows). A ratio below 1: A is
still closer to fp32; an interval across 1: no difference."""

import numpy as np

from ffnbench.bench.report.downstream_verdict import health, interval
from ffnbench.bench.report.variants import parents
from ffnbench.quant import mitigations


def _stack(cells: list[dict]) -> dict[int, list[float]]:
    return {c.get("seed", 0): c["windows"]["kl_to_fp32"] for c in cells if c.get("windows")}


def _ratio(a_cells: list[dict], b_cells: list[dict]) -> str:
    a, b = _stack(a_cells), _stack(b_cells)
    seeds = sorted(set(a) & set(b))
    if not seeds or len({len(a[s]) for s in seeds} | {len(b[s]) for s in seeds}) != 1:
        return "–"
    draws = np.arange(len(a[seeds[0]])) % a_cells[0].get("draws", 1)
    point, low, high = interval(np.array([a[s] for s in seeds]), np.array([b[s] for s in seeds]), "ratio", draws)
    return f"{point:.2f} [{low:.2f}, {high:.2f}]"


def section(run, threshold: float) -> list[str]:
    """Markdown lines; [] where no pair has a mitigated recipe in both designs. A scenario whose fp32
    models the drift breaks (`health`) is marked: no answer rests on it."""
    rows = []
    for kind, lm in run.lm_pairs.items():
        labels = {label for _, label, _ in lm}
        for variant, parent in sorted(parents(run, labels).items()):
            if not mitigations.parse(variant.partition("@")[0])[1]:
                continue  # a [recipe] variant, not a mitigation
            for scenario in dict.fromkeys(s for _, label, s in lm if label == variant):
                mitigated = {d: lm.get((d, variant, scenario), []) for d in ("A", "B")}
                plain = lm.get(("A", parent, scenario), [])
                if mitigated["A"] and mitigated["B"] and plain:
                    where = f"{scenario} (fp32 broken)" if health(lm, scenario, threshold) else scenario
                    rows.append(f"| {kind} | {where} | `{variant}` | {_ratio(plain, mitigated['B'])} | "
                                f"{_ratio(mitigated['A'], mitigated['B'])} |")
    if not rows:
        return []
    return ["## Mitigations: does B with one reach A?", "",
            "KL to fp32 of A over B on the same windows, with the 95 % interval over seeds, drift draws and "
            "windows: A with the plain parent recipe against B with the mitigation, and both mitigated. Below 1: "
            "A is still closer to fp32; an interval across 1: no difference.", "",
            "| models | scenario | mitigated recipe | A plain / B mitigated | A / B, both mitigated |",
            "|---|---|---|---|---|", *rows, ""]
