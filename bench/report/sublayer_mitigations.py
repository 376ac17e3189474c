"""The report's mitigations on sublayer cells: per model, mitigated recipe (RECIPE+shift@clean, ...)
and scenario, the share of its parent recipe's loss it recovers in each design, 1 − (centered error
power mitigated / parent), and its prefill and decode time over its parent's; then per scenario
whether B with its best mitigation reaches A without one, and A with it.

Both sides read the same requests (a scenario's draws, seeded), so the intervals are paired
bootstraps over requests; the time ratios pair the rounds of one interleaved timing loop. B's "best"
mitigation of a parent recipe is the one that recovers the largest share of B's loss under that
scenario, picked on these same figures: read its interval as optimistic for B."""

import itertools

import numpy as np

from ffnbench.bench.cells import latency
from ffnbench.bench.report.variants import unmitigated_parent
from ffnbench.bench.stats import bootstrap_ci
from ffnbench.bench.store import label


def index(cells: list[dict]) -> dict[tuple[str, str, str, str], dict]:
    """(model, design, label, scenario) -> per-request sums, for the accuracy cells that record them."""
    return {(c["model"], c["design"], label(c), c["scenario"]): c["requests"] for c in cells
            if c["kind"] == "accuracy" and c.get("requests")}


def recovered(mitigated: dict, parent: dict) -> tuple[float, float, float] | None:
    """(share, low, high): 1 − Σ centered error² of the mitigated recipe over its parent's, paired
    over requests; None where the parent has no error to recover."""
    m, p = (np.asarray(side["centered_noise"], np.float64) for side in (mitigated, parent))
    if len(m) != len(p) or p.sum() <= 0:
        return None

    def share(x, y, axis=-1):
        return 1 - x.sum(axis) / y.sum(axis)

    low, high = bootstrap_ci((m, p), share) if len(m) > 1 else (None, None)
    return float(share(m, p)), low, high


def gap_db(a: dict, b: dict) -> tuple[float, float, float] | None:
    """(dB, low, high): centered SQNR of A minus B's, both over the same requests, paired."""
    sa, na, sb, nb = (np.asarray(x, np.float64) for x in (a["centered_signal"], a["centered_noise"],
                                                           b["centered_signal"], b["centered_noise"]))
    if len({len(sa), len(sb)}) != 1 or min(na.sum(), nb.sum()) <= 0:
        return None

    def gap(sa, na, sb, nb, axis=-1):
        return 10 * np.log10(sa.sum(axis) / na.sum(axis)) - 10 * np.log10(sb.sum(axis) / nb.sum(axis))

    low, high = bootstrap_ci((sa, na, sb, nb), gap) if len(sa) > 1 else (None, None)
    return float(gap(sa, na, sb, nb)), low, high


def _share(found) -> str:
    """"+66% [+63%, +69%]"; where the mitigation more than doubles the error, the error's ratio to
    the parent's instead ("error ×9.6 [8.8, 10.5]"), a share of −860 % being no reading at all."""
    if found is None:
        return "–"
    point, low, high = found
    if point < -1:
        text = f"error ×{1 - point:.1f}"
        return text + (f" [{1 - high:.1f}, {1 - low:.1f}]" if low is not None else "")
    return f"{point:+.0%}" + (f" [{low:+.0%}, {high:+.0%}]" if low is not None else "")


def _db(found) -> str:
    if found is None:
        return "–"
    point, low, high = found
    return f"{point:+.1f}" + (f" [{low:+.1f}, {high:+.1f}]" if low is not None else "")


def _reaches(found) -> str:
    if found is None:
        return "–"
    _, low, high = found
    if low is None:
        return "one request, no interval"
    return "A ahead" if low > 0 else "B ahead" if high < 0 else "no difference"


def section(run, cells: list[dict]) -> list[str]:
    """Markdown lines; [] where no sublayer cell has a mitigated recipe beside its parent."""
    found = index(cells)
    lines = []
    for model in run.models:
        labels = {k[2] for k in found if k[0] == model}
        pairs = {m: p for m in labels if (p := unmitigated_parent(run, m, labels)) in labels}
        if pairs:
            lines += _model(run, found, model, pairs)
    return lines


def _model(run, found: dict, model: str, pairs: dict[str, str]) -> list[str]:
    scenarios = [s for s in run.scenarios if any((model, d, m, s) in found for d in ("A", "B") for m in pairs)]
    rows = []
    for mitigated, parent in sorted(pairs.items()):
        for scenario in scenarios:
            share = {d: _pair(found, model, d, scenario, mitigated, parent) for d in ("A", "B")}
            times = {(d, shape): latency.ratio_text((run.lat.get((d, model, mitigated, shape)) or {}).get("vs_parent"))
                     for d in ("A", "B") for shape in ("prefill", "decode")}
            rows.append(f"| `{mitigated}` | {scenario} | {_share(share['A'])} | {_share(share['B'])} | "
                        f"{times['A', 'prefill']} | {times['B', 'prefill']} | {times['A', 'decode']} | "
                        f"{times['B', 'decode']} |")
    lines = [f"### On sublayers (model `{model}`)", "",
             "Each mitigated recipe against its parent recipe on the same requests: the share of the parent's loss "
             "it recovers, 1 − (centered error power mitigated / parent), with a 95 % interval paired over "
             "requests (negative: the mitigation adds error; past doubling it, the error's ratio), and its time "
             "over the parent's (paired rounds; an online rotation is a dense fp32 MatMul more).", "",
             "| mitigated recipe | scenario | recovered A | recovered B | prefill × parent A | B | decode × parent A "
             "| B |", "|---|---|---|---|---|---|---|---|", *rows, ""]
    return lines + _reaches_a(found, model, pairs, scenarios)


def _pair(found: dict, model: str, design: str, scenario: str, mitigated: str, parent: str):
    m, p = found.get((model, design, mitigated, scenario)), found.get((model, design, parent, scenario))
    return recovered(m, p) if m and p else None


def _reaches_a(found: dict, model: str, pairs: dict[str, str], scenarios: list[str]) -> list[str]:
    """Per scenario and parent recipe: B's best mitigation of it (the largest share recovered), and
    A − B in centered SQNR with A plain and A with the same mitigation."""
    rows, verdicts = [], []
    for scenario, parent in itertools.product(scenarios, sorted(set(pairs.values()))):
        shares = {m: share for m, p in pairs.items()
                  if p == parent and (share := _pair(found, model, "B", scenario, m, p)) is not None}
        a_plain = found.get((model, "A", parent, scenario))
        if not shares or not a_plain:
            continue
        best = max(shares, key=lambda m: shares[m][0])
        b_best, a_best = found[model, "B", best, scenario], found.get((model, "A", best, scenario))
        plain, both = gap_db(a_plain, b_best), gap_db(a_best, b_best) if a_best else None
        if plain is None:
            continue  # nothing to compare (no error on either side): not counted either way
        verdicts.append(_reaches(plain))
        rows.append(f"| {scenario} | `{parent}` | `{best}` ({_share(shares[best])}) | {_db(plain)} | "
                    f"{_reaches(plain)} | {_db(both)} | {_reaches(both)} |")
    if not rows:
        return []
    reached = sum(v in ("no difference", "B ahead") for v in verdicts)
    return [f"**Does B with its best mitigation reach A?** Against A without one (the same parent recipe), B "
            f"reaches A (no difference, or B ahead) in {reached} of {len(verdicts)} scenarios × parent recipes.", "",
            "| scenario | parent | B's best mitigation of it (share recovered) | A plain − B mitigated, dB [95 % CI] "
            "| | A mitigated − B mitigated | |", "|---|---|---|---|---|---|---|", *rows, ""]
