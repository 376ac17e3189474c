"""`ffnbench merge RUN_DIR... --out DIR`: join shards or runs of one configuration on one stack."""

import datetime
import json
from pathlib import Path

from ffnbench import files
from ffnbench.bench import records
from ffnbench.bench.store import MANIFEST, RESULTS, load_run
from ffnbench.errors import UsageError

STUDY_TABLES = {table for table, _ in records.FLAT.values()}


def _comparable(config: dict) -> dict:
    """A run's (nested) config by setting, a study's keys as `table.key`, so a difference names its key.
    files_dir is where a run's checkpoint files are, relative to that run directory: shards at other
    depths differ in it and still ran the same configuration."""
    out = {}
    for key, value in config.items():
        if key in STUDY_TABLES and isinstance(value, dict):
            out |= {f"{key}.{name}": v for name, v in value.items()}
        elif key not in ("shard", "files_dir"):
            out[key] = value
    return out


def merge(run_dirs: list[Path], out: Path, allow_mismatch: bool = False) -> list[dict]:
    """Cells of all runs in one run directory. Runs must share stack and config (shards aside)
    unless allow_mismatch; a cell measured in two runs is an error, never silently chosen."""
    if not run_dirs:
        raise UsageError("merge: name at least one run directory")
    loaded = [(Path(d), *load_run(d, "merge")) for d in run_dirs]
    first_dir, first, _ = loaded[0]
    notes = []
    for run_dir, manifest, _ in loaded[1:]:
        classes = ({"machine_class": (first.get("machine") or {}).get("machine_class")},
                   {"machine_class": (manifest.get("machine") or {}).get("machine_class")})
        for part, a, b in (("stack", first.get("versions"), manifest.get("versions")),
                           ("machine", *classes),
                           ("config", _comparable(first.get("config", {})), _comparable(manifest.get("config", {})))):
            if a != b:
                diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                message = f"{run_dir} and {first_dir} differ in {part} ({', '.join(diff)})"
                if not allow_mismatch:
                    raise UsageError(f"merge: {message}; results are comparable only on one {part}: "
                                     "pass --allow-mismatch to merge anyway")
                notes.append(message)
    cells, owner = [], {}
    for run_dir, _, results in loaded:
        for cell in results:
            if cell["key"] in owner:
                raise UsageError(f"merge: cell {cell['key']} is in both {owner[cell['key']]} and {run_dir}; "
                                 "merge runs that split the matrix, such as --shard K/N")
            owner[cell["key"]] = run_dir
            cells.append(cell)
    out = Path(out)
    if (out / RESULTS).exists():
        raise UsageError(f"--out: {out} already holds a run; choose a new directory")
    manifest = {**first, "config": {**first.get("config", {}), "shard": None},
                "merged_from": [str(d) for d, _, _ in loaded], "merge_notes": notes,
                "merged": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    with files.staged_dir(out) as stage:
        files.write_text(stage / RESULTS, "".join(json.dumps(c, sort_keys=True) + "\n" for c in cells))
        files.write_json(stage / MANIFEST, manifest)
    return cells
