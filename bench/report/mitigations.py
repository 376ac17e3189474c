"""The report's answer to "does B with a mitigation reach A?": for each pair of committed models, scenario
and mitigated recipe (RECIPE+rotate@clean, ...), the KL ratio of A with the plain parent recipe over
B with the mitigation, and of A over B both mitigated, with the downstream interval (paired over
training seeds, drift draws and windows; both designs read the same windows). A ratio below 1: A is
still closer to fp32; an interval across 1: no difference."""

import numpy as np

from ffnbench.bench.analysis.verdicts import health, interval
from ffnbench.bench.report.variants import unmitigated_parent


def _stack(cells: list[dict]) -> dict[int, list[float]]:
    return {c["seed"]: c["windows"]["kl_to_fp32"] for c in cells if c.get("windows")}


def _ratio(a_cells: list[dict], b_cells: list[dict]) -> tuple[float, float, float] | None:
    a, b = _stack(a_cells), _stack(b_cells)
    seeds = sorted(set(a) & set(b))
    if not seeds or len({len(a[s]) for s in seeds} | {len(b[s]) for s in seeds}) != 1:
        return None
    draws = np.arange(len(a[seeds[0]])) % a_cells[0]["draws"]
    return interval(np.array([a[s] for s in seeds]), np.array([b[s] for s in seeds]), "ratio", draws)


def _text(found) -> str:
    return "–" if found is None else f"{found[0]:.2f} [{found[1]:.2f}, {found[2]:.2f}]"


def section(run, threshold: float) -> list[str]:
    """Markdown lines; [] where no pair has a mitigated recipe in both designs. A scenario whose fp32
    models the drift breaks (`health`) is marked: no answer rests on it, nor on B's best there."""
    rows, candidates = [], {}
    for kind, lm in run.lm_pairs.items():
        labels = {label for _, label, _ in lm}
        for variant in sorted(labels):
            parent = unmitigated_parent(run, variant, labels)
            for scenario in dict.fromkeys(s for _, label, s in lm if label == variant) if parent else ():
                mitigated = {d: lm.get((d, variant, scenario), []) for d in ("A", "B")}
                plain = lm.get(("A", parent, scenario), [])
                if mitigated["A"] and mitigated["B"] and plain:
                    broken = health(lm, scenario, threshold)
                    against_plain = _ratio(plain, mitigated["B"])
                    rows.append(f"| {kind} | {f'{scenario} (fp32 broken)' if broken else scenario} | `{variant}` | "
                                f"{_text(against_plain)} | {_text(_ratio(mitigated['A'], mitigated['B']))} |")
                    if not broken and against_plain:
                        b_kl = float(np.mean([np.mean(c["windows"]["kl_to_fp32"]) for c in mitigated["B"]]))
                        candidates.setdefault((kind, scenario, parent), []).append((b_kl, variant, against_plain))
    if not rows:
        return []
    return ["### Downstream: does B with one reach A?", "",
            "KL to fp32 of A over B on the same windows, with the 95 % interval over seeds, drift draws and "
            "windows: A with the plain parent recipe against B with the mitigation, and both mitigated. Below 1: "
            "A is still closer to fp32; an interval across 1: no difference.", "", *_best(candidates),
            "| models | scenario | mitigated recipe | A plain / B mitigated | A / B, both mitigated |",
            "|---|---|---|---|---|", *rows, ""]


def _best(candidates: dict) -> list[str]:
    """Per pair, scenario (fp32 working) and parent recipe, B's best mitigation of it (its lowest KL)
    against A with the plain parent."""
    lines = []
    for (kind, scenario, parent), found in candidates.items():
        _, best, (point, low, high) = min(found)
        verdict = "B ahead" if low > 1 else "A ahead" if high < 1 else "no difference"
        lines.append(f"- {kind} pair, {scenario}, `{parent}`: B's best mitigation of it is `{best}`; A plain / B "
                     f"with it {point:.2f} [{low:.2f}, {high:.2f}], {verdict}.")
    return [*lines, ""] if lines else []
