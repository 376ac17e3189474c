"""Versioned run records: the format every JSON a run writes carries, and the upgrade of records an
older revision wrote, so that each reader sees one shape whatever revision made the run.

Format history (`format` in each cell record, the manifest and downstream.json; a baseline has a
format of its own, and its cells upgrade as cells):

1. No `format` field (every revision before 2026-12-07). A record may lack `kind` (then an accuracy
   cell); an lm cell may lack `seed` (0: one committed model a design), `pair` (the model name, then
   "trained"), `inject` ("ffn-input") and `study` (a dose-response cell's name ends in `@inject`); a
   measured lm or whole-model cell may lack `draws` (1).
2. `format: 2`; every record carries `kind`, an lm cell its `pair`, `seed`, `inject` and `study`
   ("downstream" or "dose"), and a measured lm or whole-model cell its `draws`.

The run's config in a manifest or baseline was flat (`lm_seeds`, `warmup`, `latency: true`) in
either format until its studies became tables of their own (`downstream: {recipes}`, `latency:
{warmup, enabled}`); a flat config reads as the nested one (`upgrade_config`), told apart by its keys.
"""

from ffnbench.errors import UsageError

FORMAT = 2

# A flat key of the configs before study tables -> (its study table, its key there): what a flat key
# of an older TOML file, manifest or baseline reads as.
FLAT = {
    "latency": ("latency", "enabled"), "warmup": ("latency", "warmup"),
    "min_iterations": ("latency", "min_iterations"), "min_seconds": ("latency", "min_seconds"),
    "max_iterations": ("latency", "max_iterations"), "max_seconds": ("latency", "max_seconds"),
    "max_runnable_seconds": ("latency", "max_runnable_seconds"), "decode": ("latency", "decode"),
    "prefill": ("latency", "prefill"), "memory": ("latency", "memory"), "diagnose": ("latency", "diagnose"),
    "ort_spinning": ("latency", "ort_spinning"), "remeasure_processes": ("latency", "remeasure_processes"),
    "lm_recipes": ("downstream", "recipes"), "lm_scenarios": ("downstream", "scenarios"),
    "lm_seeds": ("downstream", "seeds"), "lm_models": ("downstream", "pairs"), "lm_windows": ("downstream", "windows"),
    "lm_draws": ("downstream", "draws"), "lm_inject": ("downstream", "inject"),
    "healthy_delta_bpb": ("downstream", "healthy_delta_bpb"),
    "dose_scenarios": ("dose", "scenarios"), "dose_inject": ("dose", "inject"), "dose_models": ("dose", "pairs"),
    "dose_seeds": ("dose", "seeds"), "dose_windows": ("dose", "windows"),
    "whole_models": ("whole", "models"), "whole_windows": ("whole", "windows"),
}


def stamped(record: dict) -> dict:
    """The record as this revision writes it: with its format."""
    return {**record, "format": FORMAT}


def upgrade_cell(cell: dict, where: str) -> dict:
    """A cell record of any known format, in this revision's shape; a newer format is refused."""
    if _version(cell, where) == FORMAT:
        return cell
    return {**_cell_from_1(cell), "format": FORMAT}


def upgrade_document(document: dict, where: str) -> dict:
    """A manifest, baseline or analysis file of any known format: stamped, its config nested, a newer
    one refused. (Their fields did not change between formats 1 and 2; a baseline's cells upgrade as
    cells.)"""
    _version(document, where)
    if isinstance(document.get("config"), dict):
        document = {**document, "config": upgrade_config(document["config"])}
    return {**document, "format": FORMAT}


def upgrade_config(config: dict) -> dict:
    """A run's recorded config with its study keys in their tables: a flat one moved there, a nested
    one as it is. (`latency` is the flat flag where it is not a table.)"""
    flat = {key: value for key, value in config.items() if key in FLAT and not isinstance(value, dict)}
    out = {key: value for key, value in config.items() if key not in flat}
    for key, value in flat.items():
        table, name = FLAT[key]
        out[table] = {**out.get(table, {}), name: value}
    return out


def _version(record: dict, where: str) -> int:
    version = record.get("format", 1)
    if not isinstance(version, int) or version > FORMAT:
        raise UsageError(f"{where}: written in record format {version}, newer than this ffnbench's {FORMAT}; "
                         "read it with the revision that wrote it or a newer one")
    return version


def _cell_from_1(cell: dict) -> dict:
    cell = {"kind": "accuracy", **cell}
    if cell["kind"] == "lm":  # the one place a name is read: format 1 kept identity in it
        name, _, dose_inject = cell["model"].partition("@")
        cell = {"seed": 0, "pair": name.rsplit("-s", 1)[0], "inject": dose_inject or "ffn-input",
                "study": "dose" if dose_inject else "downstream", **cell}
    if cell["kind"] in ("lm", "whole") and cell["status"] == "ok":
        cell = {"draws": 1, **cell}
    return cell
