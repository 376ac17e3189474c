"""The analysis step: the lm cells of a run indexed by pair (matrix) and by (pair, injection point)
(dose-response), their verdicts computed, and downstream.json written, whether or not a report is."""

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from ffnbench import files
from ffnbench.bench import records
from ffnbench.bench.store import label, load_run
from ffnbench.errors import UsageError

if TYPE_CHECKING:
    from ffnbench.bench.analysis.verdicts import Comparison

DOWNSTREAM_JSON = "downstream.json"
KIND = "ffnbench.downstream"


def index(cells: list[dict]) -> tuple[dict[str, dict], dict[tuple[str, str], dict]]:
    """(pairs, doses) of the measured lm cells: pair -> (design, recipe label, scenario) -> its cells,
    one a seed in seed order; the dose-response cells apart, by (pair, injection point)."""
    pairs: dict[str, dict] = {}
    doses: dict[tuple[str, str], dict] = {}
    for c in sorted((c for c in cells if c["status"] == "ok" and c["kind"] == "lm"), key=lambda c: c["seed"]):
        group = doses.setdefault((c["pair"], c["inject"]), {}) if c["study"] == "dose" else \
            pairs.setdefault(c["pair"], {})
        group.setdefault((c["design"], label(c), c["scenario"]), []).append(c)
    return pairs, doses


def analyse(manifest: dict, cells: list[dict]) -> dict[str, list["Comparison"]]:
    """pair -> its comparisons (A vs B per family and scenario), at the run's health threshold."""
    threshold = ((manifest.get("config") or {}).get("downstream") or {}).get("healthy_delta_bpb", 0.1)
    pairs, _ = index(cells)
    if not pairs:
        return {}
    from ffnbench.bench.analysis import verdicts  # scipy.stats: 1.3 s to import, for runs with lm cells only

    variants = (manifest.get("config") or {}).get("user_recipes") or {}
    return {pair: verdicts.comparisons(lm, threshold, pair, variants) for pair, lm in pairs.items()}


def write(run_dir: Path) -> Path | None:
    """downstream.json of a run with lm cells (None without any): every pair's comparisons."""
    manifest, cells = load_run(run_dir, "analysis")
    found = analyse(manifest, cells)
    if not found:
        return None
    path = Path(run_dir) / DOWNSTREAM_JSON
    files.write_json(path, {"kind": KIND, "format": records.FORMAT,
                            "comparisons": [asdict(c) for comparisons in found.values() for c in comparisons]})
    return path


def found(run_dir: Path, manifest: dict, cells: list[dict]) -> dict[str, list["Comparison"]]:
    """pair -> its comparisons as the run's analysis wrote them (no second bootstrap), computed now
    only for a run whose downstream.json is missing or of an older format."""
    path = Path(run_dir) / DOWNSTREAM_JSON
    data = json.loads(path.read_text()) if path.exists() else None
    if not (isinstance(data, dict) and data.get("format") == records.FORMAT):
        return analyse(manifest, cells)
    from ffnbench.bench.analysis.verdicts import Comparison

    out: dict[str, list[Comparison]] = {pair: [] for pair in index(cells)[0]}
    for comparison in data["comparisons"]:
        out.setdefault(comparison["pair"], []).append(Comparison(**comparison))
    return out


def load(run_dir: Path) -> list[dict]:
    """The comparisons downstream.json holds (none where the run wrote none); format 1 was a bare list."""
    path = Path(run_dir) / DOWNSTREAM_JSON
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise UsageError(f"{path} is not valid JSON ({e}); write it again with `ffnbench report`") from e
    if isinstance(data, list):  # format 1: the comparisons alone, the trained pair's where unnamed
        return [{"pair": "trained", **v} for v in data]
    return records.upgrade_document(data, str(path))["comparisons"]
