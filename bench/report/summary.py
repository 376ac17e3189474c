"""What `ffnbench run` and `ffnbench report` print when they finish: the cell count, the measured
drift at the trained pairs' FFN inputs, the downstream verdict per scenario by family, and the
decision memo's first lines."""

import json
from pathlib import Path

from ffnbench.bench.analysis import downstream
from ffnbench.bench.analysis.decision import DECISION_JSON, DECISION_MD
from ffnbench.bench.analysis.verdicts import VERDICTS
from ffnbench.bench.report.decision import headline
from ffnbench.bench.traffic.drift_stats import PER_LAYER_LEGEND, per_layer


def count_line(out: Path, results: list[dict]) -> str:
    counts = {s: sum(r["status"] == s for r in results) for s in ("ok", "skipped", "error")}
    return (f"{out}: {counts['ok']} cells measured, {counts['skipped']} skipped, {counts['error']} failed "
            f"(see {out}/results.jsonl)")


def drift_lines(results: list[dict]) -> list[str]:
    """The measured drift at each pair's FFN inputs (its first seed, matrix cells): printed, not assumed."""
    measured = [r for r in results if r.get("drift_stats") and r["kind"] == "lm" and r["study"] != "dose"]
    first = min((r["seed"] for r in measured), default=0)
    lines = []
    for pair in dict.fromkeys(r["pair"] for r in measured):
        lines.append(f"drift at the FFN inputs, fp32, {pair} models, seed {first} (per layer: {PER_LAYER_LEGEND}):")
        lines += [f"  {r['design']} {r['scenario']:<12} {per_layer(r['drift_stats'])}"
                  for r in measured if r["seed"] == first and r["pair"] == pair]
    return lines


def downstream_lines(run_dir: Path) -> list[str]:
    """The downstream verdict per pair and scenario, counted by family, as downstream.json holds it."""
    found = [v for v in downstream.load(run_dir) if v["family"] != "fp32"]
    if not found:
        return []
    lines = [f"downstream, A vs B by recipe family (95 % intervals over seeds and windows; "
             f"{Path(run_dir) / downstream.DOWNSTREAM_JSON}):"]
    pairs = list(dict.fromkeys(v["pair"] for v in found))
    for pair, scenario in dict.fromkeys((v["pair"], v["scenario"]) for v in found):
        rows = [v for v in found if (v["pair"], v["scenario"]) == (pair, scenario)]
        counts = ", ".join(f"{verdict} {n}" for verdict in VERDICTS
                           if (n := sum(v["verdict"] == verdict for v in rows)))
        where = f"{pair} {scenario}" if len(pairs) > 1 else scenario
        lines.append(f"  {where:<12} {counts}" + (f" ({rows[0]['reason']})" if rows[0]["reason"] else ""))
    return lines


def decision_lines(run_dir: Path) -> list[str]:
    """The memo's headline and where it is (a run without one, e.g. a shard still merging: nothing)."""
    path = Path(run_dir) / DECISION_JSON
    if not path.exists():
        return []
    return [*headline(json.loads(path.read_text())), f"(the memo: {Path(run_dir) / DECISION_MD})"]
