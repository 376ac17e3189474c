"""`ffnbench gate`: a run judged against a committed baseline, cell by cell and metric by metric.

Accuracy is deterministic for a fixed stack and seed, so it is judged by absolute change.
Latency fails only when the slowdown exceeds its tolerance *and* is significant. Judged by
re-measurement (`--remeasure BASELINE_RUN`: both runs' artifacts re-timed round-robin, in this
process, where the test is a one-sided Wilcoxon signed-rank test on the paired rounds, or by several
workers per side's environment, where the unit is the process and the test Welch's t over process
medians; see compare.py). Times recorded in two separate runs are only advisory
unless asked for (`strict_recorded_latency`): on a shared machine their level moves between runs
(measured: 5 to 9 false alarms in 10 same-build pairs at +15 %, docs/gate.md), which no test on the
within-run samples can see; there a one-sided Mann-Whitney U test stands in.
Every latency cell is one test of a family: significant means a Holm-adjusted p below ALPHA, so
the chance of any false alarm in one gate stays at most ALPHA however many cells it judges.
"""

import datetime
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ffnbench import files
from ffnbench.bench import records, store
from ffnbench.bench.cells.latency import LatencyConfig, ratio_text
from ffnbench.bench.gate.checks import Check
from ffnbench.bench.stats import holm, mann_whitney_greater
from ffnbench.bench.store import label
from ffnbench.bench.traffic import model_specs
from ffnbench.errors import UsageError

BASELINE_KIND, BASELINE_FORMAT = "ffnbench.baseline", 1
ALPHA = 0.05  # family-wise, over the latency findings of one gate that can fail it


def where(cell: dict) -> str:
    kind = cell["kind"]
    if kind == "latency":
        return f"latency:{cell['shape']['name']}"
    return cell["scenario"] if kind == "accuracy" else f"{kind}:{cell['scenario']}"


def load_run(run_dir: Path) -> tuple[dict, list[dict]]:
    return store.load_run(run_dir, "gate")


def write_baseline(run_dir: Path, path: Path) -> dict:
    """A baseline from a run: its stack, machine class, config and every cell's record."""
    manifest, cells = load_run(run_dir)
    baseline = {
        "kind": BASELINE_KIND, "format": BASELINE_FORMAT,
        "machine_class": (manifest.get("machine") or {}).get("machine_class"),
        "versions": manifest.get("versions"), "config": manifest.get("config"),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "source_run": {"git_revision": manifest.get("git_revision"), "started": manifest.get("started")},
        "cells": {c["key"]: {k: v for k, v in c.items() if k not in ("seconds", "runtime")} for c in cells},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_json(path, baseline)
    return baseline


def load_baseline(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--baseline: no file at {path}; write one with `ffnbench gate --update-baseline`")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"--baseline: {path} is not valid JSON ({e}); restore it or write a new one") from e
    if not isinstance(data, dict) or data.get("kind") != BASELINE_KIND or "cells" not in data:
        kind = data.get("kind") if isinstance(data, dict) else None
        raise UsageError(f"--baseline: {path} is not an ffnbench baseline (kind {kind!r}); "
                         "write one with `ffnbench gate --update-baseline`")
    if data.get("format") != BASELINE_FORMAT:
        raise UsageError(f"--baseline: {path} has format {data.get('format')}, this ffnbench reads "
                         f"{BASELINE_FORMAT}; re-create it with --update-baseline")
    data["cells"] = {key: records.upgrade_cell(cell, f"--baseline: {path}: cell {key}")
                     for key, cell in data["cells"].items()}
    if isinstance(data.get("config"), dict):  # a baseline of a run before study tables records a flat one
        data["config"] = records.upgrade_config(data["config"])
    return data


@dataclass
class Finding:
    cell: str
    metric: str
    baseline: float | None
    new: float | None
    allowed: float | None
    passed: bool
    note: str = ""
    advisory: bool = False  # reported, never failing: latency recorded in separate runs
    p: float | None = None  # latency: the cell's one-sided p-value of a slowdown, before adjustment
    beyond: bool = False  # latency: the slowdown exceeds its tolerance


@dataclass
class GateResult:
    findings: list[Finding] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the baseline, not in the run
    new: list[str] = field(default_factory=list)  # in the run, not in the baseline
    not_measured: list[tuple[str, str]] = field(default_factory=list)  # (cell, why) skipped/failed
    notes: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.findings if not f.passed and not f.advisory]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if not f.passed and f.advisory]

    @property
    def passed(self) -> bool:
        return not self.failures and not self.missing


def _index(cells, aliases: dict[str, str] | None = None):
    """(design, model, label, where) -> cell. An alias OLD -> NEW also files each NEW cell under
    OLD, so the baseline's OLD cells are judged against the run's NEW ones (NEW still meets NEW)."""
    index = {(c["design"], c["model"], label(c), where(c)): c for c in cells}
    for old, new in (aliases or {}).items():
        index.update({(d, m, old, w): c for (d, m, lab, w), c in list(index.items()) if lab == new})
    return index


def gate(baseline_path: Path, run_dir: Path, checks: dict[str, Check], allow_stack_change: bool = False,
         only: str = "all", aliases: dict[str, str] | None = None, remeasured: dict | None = None,
         strict_recorded_latency: bool = False) -> GateResult:
    """Judge run_dir against the baseline. aliases maps a baseline label to the run's (e.g.
    "ort-int8-dynamic" -> "ort-int4-rtn" asks whether swapping the recipe would pass)."""
    baseline = load_baseline(baseline_path)
    manifest, cells = load_run(run_dir)
    result = GateResult()
    _check_stack(baseline, manifest, allow_stack_change, result)
    # lm and whole-model cells are accuracy too: deterministic for a stack, judged by absolute change.
    keep = {"all": ("accuracy", "lm", "whole", "latency"), "accuracy": ("accuracy", "lm", "whole"),
            "latency": ("latency",)}[only]
    base_cells = [c for c in baseline["cells"].values() if c["kind"] in keep]
    base = _index(base_cells)
    run_cells = [c for c in cells if c["kind"] in keep]
    for old, new in (aliases or {}).items():
        if not any(label(c) == new for c in run_cells):
            raise UsageError(f"--as {old}={new}: the run has no cells of recipe '{new}'; check the name")
        if not any(label(c) == old for c in base_cells):
            raise UsageError(f"--as {old}={new}: the baseline has no cells of recipe '{old}'; check the name")
    run = _index(run_cells, aliases)
    matched = {id(run[k]) for k in base if k in run}
    result.new = sorted({c["key"] for c in run.values() if id(c) not in matched})
    for k, old in base.items():
        new = run.get(k)
        if new is None:
            result.missing.append(old["key"])
        elif old["status"] != "ok":
            why = old.get("reason") or old.get("error")
            result.not_measured.append((old["key"], f"not measured in the baseline: {why}"))
        elif new["status"] != "ok":
            why = f"was measured, now {new['status']}: {new.get('reason') or new.get('error')}"
            result.findings.append(Finding(new["key"], "status", None, None, None, False, why))
        else:
            before = len(result.findings)
            # A re-measured ratio compares an artifact with its own earlier build, so it applies
            # only where the baseline and run cells are the same cell.
            ratio = (remeasured or {}).get(new["key"]) if old["key"] == new["key"] else None
            _compare(old, new, checks, result, ratio, min_rounds(baseline))
            for finding in result.findings[before:]:
                recorded_only = old["kind"] == "latency" and not finding.note.startswith("re-measured")
                finding.advisory = recorded_only and not strict_recorded_latency
            if old["key"] != new["key"]:
                for finding in result.findings[before:]:
                    finding.note = f"vs baseline {old['key']}; {finding.note}".rstrip("; ")
    _judge_latency_as_a_family(result)
    return result


def min_rounds(baseline: dict) -> int:
    """The baseline run's min_iterations: no slowdown is significant on fewer rounds than that."""
    return ((baseline.get("config") or {}).get("latency") or {}).get("min_iterations", LatencyConfig().min_iterations)


def _judge_latency_as_a_family(result: GateResult) -> None:
    """Holm-Bonferroni over the latency findings that can fail the gate; each fails only if beyond its
    tolerance and significant after the adjustment. Advisory findings, which never fail, form a
    family of their own, so they cannot weaken the tests that count."""
    for advisory in (False, True):
        tested = [f for f in result.findings if f.p is not None and f.advisory == advisory]
        for finding, adjusted in zip(tested, holm([f.p for f in tested]), strict=True):
            finding.passed = not (finding.beyond and adjusted < ALPHA)
            kind = "advisory" if advisory else "gating"
            finding.note += f", Holm-adjusted p = {adjusted:.2g} over {len(tested)} {kind} latency findings"


def _check_stack(baseline: dict, manifest: dict, allow: bool, result: GateResult) -> None:
    old, new = baseline.get("versions") or {}, manifest.get("versions") or {}
    changed = [f"{k} {old.get(k)} -> {new.get(k)}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    old_class, new_class = baseline.get("machine_class"), (manifest.get("machine") or {}).get("machine_class")
    if old_class != new_class:
        changed.append(f"machine class {old_class} -> {new_class}")
    if changed and not allow:
        raise UsageError(f"gate: the run's stack differs from the baseline's ({'; '.join(changed)}); results compare "
                         "only on one stack: re-baseline, or pass --allow-stack-change")
    if changed:
        result.notes.append(f"Stack changed and allowed: {'; '.join(changed)}.")
    old_models = (baseline.get("config") or {}).get("user_models") or {}
    new_models = (manifest.get("config") or {}).get("user_models") or {}
    for name in sorted(old_models.keys() & new_models.keys()):
        if old_models[name].get("sha256") != new_models[name].get("sha256"):
            result.notes.append(f"Model {model_specs.source_line(name, new_models[name])} has other weights than the "
                                f"baseline's (sha256 {str(old_models[name].get('sha256'))[:12]}…).")


def _compare(old: dict, new: dict, checks: dict[str, Check], result: GateResult, remeasured: dict | None,
             rounds: int) -> None:
    is_latency = old["kind"] == "latency"
    for metric, check in checks.items():
        if check.latency != is_latency:
            continue
        b, n = old["metrics"].get(metric), new["metrics"].get(metric)
        if b is None and n is None:
            continue
        if n is None or b is None:
            result.findings.append(Finding(new["key"], metric, b, n, None, n is not None or b is None,
                                           "no value now" if n is None else "no baseline value"))
            continue
        if not is_latency:
            result.findings.append(Finding(new["key"], metric, b, n, check.allowed(b), check.passes(b, n)))
            continue
        result.findings.append(_latency_finding(old, new, metric, check, remeasured, rounds))


def _processes_text(remeasured: dict) -> str:
    """' in 3 processes a side (spread between them 4.1 %, within one 2.0 %)' for a re-measurement by workers."""
    if remeasured.get("processes", 1) == 1:
        return ""
    between = remeasured.get("between_process_pct")
    return (f" in {remeasured['processes']} processes a side (spread between them "
            f"{'–' if between is None else f'{between:.1f} %'}, within one {remeasured['within_process_pct']:.1f} %)")


def _latency_finding(old: dict, new: dict, metric: str, check: Check, remeasured: dict | None,
                     rounds: int) -> Finding:
    """A latency finding with its p-value (judged later, as one of a family), or a threshold-only
    one where there is nothing to test."""
    b, n = old["metrics"][metric], new["metrics"][metric]
    allowed = check.allowed(b)
    prefix = ""
    if remeasured is not None and metric == "p50_ms" and "not_remeasured" in remeasured:
        prefix = f"not re-measured ({remeasured['not_remeasured']}); judged as recorded: "
    elif remeasured is not None and metric == "p50_ms":
        ratio = remeasured["ratio"]
        beyond = ratio > 1 + check.limit if check.relative else ratio * b > allowed
        note = (f"re-measured side by side by {remeasured['code']} code: new/old "
                f"{ratio_text(remeasured, 3)} over {remeasured['iterations']} rounds{_processes_text(remeasured)}")
        if remeasured["iterations"] < rounds:
            return Finding(new["key"], metric, b, ratio * b, allowed, True, f"{note}; fewer than the minimum {rounds} "
                           "rounds: not judged significant")
        return Finding(new["key"], metric, b, ratio * b, allowed, not beyond, f"{note}; {remeasured['test']} p = "
                       f"{remeasured['p_slower']:.2g}", p=remeasured["p_slower"], beyond=beyond)
    beyond = not check.passes(b, n)
    samples_old, samples_new = old["metrics"].get("samples_ms"), new["metrics"].get("samples_ms")
    bounded = "bounded" in (old["metrics"].get("stopped_by"), new["metrics"].get("stopped_by"))
    if bounded:  # fewer rounds by design (too slow for its budget): no test, but a slowdown still fails
        return Finding(new["key"], metric, b, n, allowed, not beyond, f"{prefix}bounded rounds "
                       f"({len(samples_old or [])} and {len(samples_new or [])}): judged on the threshold alone")
    if metric.endswith("_ms") and samples_old and samples_new:
        if min(len(samples_old), len(samples_new)) < rounds:
            return Finding(new["key"], metric, b, n, allowed, True, f"{prefix}fewer than the minimum {rounds} rounds "
                           "recorded: not judged significant")
        p = mann_whitney_greater(np.asarray(samples_new), np.asarray(samples_old))
        return Finding(new["key"], metric, b, n, allowed, not beyond, f"{prefix}Mann-Whitney p = {p:.2g}", p=p,
                       beyond=beyond)
    return Finding(new["key"], metric, b, n, allowed, not beyond, f"{prefix}no samples: threshold only")
