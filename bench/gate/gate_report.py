"""The gate's outputs: gate.md for a reviewer (fits a CI step summary) and junit.xml for CI tools."""

from pathlib import Path
from xml.etree import ElementTree as ET

from ffnbench import files
from ffnbench.bench.gate.gate import ALPHA, GateResult


def _v(value) -> str:
    return "–" if value is None else f"{value:.4g}"


def markdown(result: GateResult, baseline: Path, run_dir: Path, checks: dict) -> str:
    verdict = "PASS" if result.passed else "FAIL"
    passed = sum(f.passed for f in result.findings)
    lines = [f"# ffnbench gate: {verdict}", "",
             f"Run `{run_dir}` against baseline `{baseline}`: {passed} checks passed, {len(result.failures)} failed, "
             f"{len(result.warnings)} advisory warnings, "
             f"{len(result.missing)} cells missing, {len(result.new)} new, {len(result.not_measured)} not measured "
             "in the baseline.", "",
             "Tolerances: " + ", ".join(f"`{c.spec}`" for c in checks.values()) + ". Latency fails only when beyond "
             "its tolerance and significant: a one-sided test per cell (Wilcoxon signed-rank on paired rounds "
             "re-measured in this process, Welch's t over process medians re-measured by workers, with the spread "
             "between processes beside the spread within one, Mann-Whitney U on recorded samples), Holm-adjusted "
             "over all latency cells, family-wise "
             f"alpha {ALPHA}.", ""]
    lines += [f"> {n}" for n in result.notes]
    if result.failures:
        lines += ["## Regressions", "", "| cell | metric | baseline | now | allowed | note |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {f.cell} | {f.metric} | {_v(f.baseline)} | {_v(f.new)} | {_v(f.allowed)} | {f.note} |"
                  for f in result.failures]
        lines.append("")
    timing = [f for f in result.findings if f.metric.endswith("_ms") and f.baseline]
    if timing:
        lines += ["## Latency checks", "", "| cell | metric | baseline | now | now/baseline | verdict | note |",
                  "|---|---|---|---|---|---|---|"]
        verdict = {(True, False): "pass", (False, False): "FAIL", (True, True): "pass (advisory)",
                   (False, True): "slower (advisory)"}
        lines += [f"| {f.cell} | {f.metric} | {_v(f.baseline)} | {_v(f.new)} | "
                  f"{_v(f.new / f.baseline if f.new is not None else None)} | {verdict[f.passed, f.advisory]} | "
                  f"{f.note} |" for f in timing]
        if any(f.advisory for f in timing):
            lines += ["", "Advisory latency above was recorded in two separate runs: `--remeasure BASELINE_RUN` "
                      "judges ONNX Runtime cells side by side, and adding `--old-python` (the baseline revision's "
                      "interpreter) every cell, each side by its own code."]
        lines.append("")
    if result.missing:
        lines += ["## Missing cells (in the baseline, not in this run): fail", "",
                  *[f"- {k}" for k in result.missing], ""]
    if result.new:
        lines += ["## New cells (not in the baseline, not judged)", "", *[f"- {k}" for k in result.new], ""]
    if result.not_measured:
        lines += ["## Not measured in the baseline (not judged)", "",
                  *[f"- {k}: {why}" for k, why in result.not_measured], ""]
    return "\n".join(lines) + "\n"


def junit(result: GateResult) -> str:
    suite = ET.Element("testsuite", name="ffnbench-gate",
                       tests=str(len(result.findings) + len(result.missing) + len(result.not_measured)),
                       failures=str(len(result.failures) + len(result.missing)), skipped=str(len(result.not_measured)))
    for f in result.findings:
        case = ET.SubElement(suite, "testcase", classname=f.cell, name=f.metric)
        if f.advisory and not f.passed:
            ET.SubElement(case, "system-out").text = f"advisory: {f.metric} {_v(f.baseline)} -> {_v(f.new)} {f.note}"
        elif not f.passed:
            ET.SubElement(case, "failure", message=f"{f.metric}: {_v(f.baseline)} -> {_v(f.new)} "
                                                   f"(allowed {_v(f.allowed)}) {f.note}".strip())
    for key in result.missing:
        case = ET.SubElement(suite, "testcase", classname=key, name="present")
        ET.SubElement(case, "failure", message="cell is in the baseline but not in this run")
    for key, why in result.not_measured:
        case = ET.SubElement(suite, "testcase", classname=key, name="baseline")
        ET.SubElement(case, "skipped", message=why)
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def write(result: GateResult, baseline: Path, run_dir: Path, checks: dict) -> tuple[Path, Path]:
    run_dir = Path(run_dir)
    md, xml = run_dir / "gate.md", run_dir / "junit.xml"
    files.write_text(md, markdown(result, baseline, run_dir, checks))
    files.write_text(xml, junit(result))
    return md, xml
