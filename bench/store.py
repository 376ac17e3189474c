"""The run directory: manifest.json, results.jsonl appended one cell per line, resumable."""

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

from ffnbench import files
from ffnbench.bench import records
from ffnbench.errors import UsageError
from ffnbench.versions import analysis_versions, stack_versions

RESULTS = "results.jsonl"
# Variables that change how threads wait or how many there are, and so every timing.
TIMING_ENV = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE")
MANIFEST = "manifest.json"


def label(cell: dict) -> str:
    """A cell's recipe as reports and the gate name it: recipe@calibration for calibrated ones."""
    return cell["recipe"] + (f"@{cell['calibration']}" if cell.get("calibration") else "")


def git_revision() -> str | None:
    """The ffnbench checkout's commit (with -dirty), or None outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("-dirty" if dirty else "")


def read_results(path: Path, tolerate_torn_tail: bool = False) -> list[dict]:
    """Every cell of a results.jsonl; a corrupt line is a UsageError naming its number.

    A run killed mid-write can leave a torn last line; with tolerate_torn_tail it is dropped.
    """
    path = Path(path)
    lines = path.read_text().splitlines() if path.exists() else []
    cells = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            cell = json.loads(line)
            if not isinstance(cell, dict) or "key" not in cell:
                raise ValueError("not a cell record")
        except ValueError as e:
            if tolerate_torn_tail and number == len(lines):
                break
            raise UsageError(f"{path}: line {number} is corrupt ({e}); remove that line or re-run the cell") from e
        cells.append(records.upgrade_cell(cell, f"{path}: line {number}"))
    return cells


def latest(cells: list[dict]) -> list[dict]:
    """One record per cell: a retried cell's latest line replaces its earlier error."""
    return list({c["key"]: c for c in cells}.values())


def load_run(run_dir: Path, command: str) -> tuple[dict, list[dict]]:
    """A run directory's manifest and one record per cell; anything unusable is a UsageError."""
    run_dir = Path(run_dir)
    for name in (MANIFEST, RESULTS):
        if not (run_dir / name).is_file():
            raise UsageError(f"{command}: {run_dir} is not a run directory: it has no {name}; "
                             "give the --out of `ffnbench run`")
    try:
        manifest = json.loads((run_dir / MANIFEST).read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"{command}: {run_dir / MANIFEST} is not valid JSON ({e}); re-run or restore it") from e
    manifest = records.upgrade_document(manifest, f"{command}: {run_dir / MANIFEST}")
    return manifest, latest(read_results(run_dir / RESULTS))


class RunStore:
    """Owns one run directory. Cells are appended and flushed as they finish."""

    def __init__(self, out: Path, config: dict, resume: bool, machine: dict):
        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise UsageError(f"--out: {self.out} is an existing file; give a directory")
        results = self.out / RESULTS
        if results.exists() and not resume:
            raise UsageError(f"--out: {self.out} already holds a run; pass --resume to finish it or choose a new --out")
        try:
            (self.out / "artifacts").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"--out: cannot write to {self.out} ({e.strerror}); choose a writable directory") from e
        if not os.access(self.out, os.W_OK):
            raise UsageError(f"--out: cannot write to {self.out}; choose a writable directory")
        manifest_path = self.out / MANIFEST
        if resume and manifest_path.exists():
            try:
                previous = json.loads(manifest_path.read_text())
            except json.JSONDecodeError as e:
                raise UsageError(f"--resume: {manifest_path} is not valid JSON ({e}); use a new --out") from e
            if records.upgrade_config(previous.get("config") or {}) != config:
                raise UsageError(f"--resume: the run in {self.out} used another configuration; use a new --out")
            if previous.get("versions") != stack_versions():
                raise UsageError(f"--resume: the run in {self.out} was made on another stack; results would mix "
                                 "two stacks: use a new --out")
            self._drop_torn_tail(results)
        else:
            files.write_json(manifest_path, {
                "kind": "ffnbench.run",
                "format": records.FORMAT,
                "config": config,
                "versions": stack_versions(),
                "analysis_versions": analysis_versions(),
                "machine": machine,
                "git_revision": git_revision(),
                "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "command": sys.argv,
                "environment": {k: os.environ.get(k) for k in TIMING_ENV},
            })
        results.touch()  # an empty shard is still a run, with no cells
        self.results_path = results

    @staticmethod
    def _drop_torn_tail(results: Path) -> None:
        if results.exists():
            cells = read_results(results, tolerate_torn_tail=True)
            files.write_text(results, "".join(json.dumps(c, sort_keys=True) + "\n" for c in cells))

    def finished(self) -> set[str]:
        """Keys of cells that need no re-run: measured or skipped. Errors are retried."""
        return {c["key"] for c in read_results(self.results_path) if c["status"] in ("ok", "skipped")}

    def append(self, cell: dict) -> None:
        line = json.dumps(records.stamped(cell), sort_keys=True, allow_nan=False) + "\n"
        with open(self.results_path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def results(self) -> list[dict]:
        return latest(read_results(self.results_path))
