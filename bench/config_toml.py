"""A run config from TOML: the run's own keys at the top level, one table per study ([latency],
[downstream], [dose], [whole]) owning its keys, and [model.NAME], [recipe.NAME], [scenario.NAME],
[per_model.NAME] tables. Every key's type is read off RunConfig's own field, not declared again.

A flat key of the files written before the study tables (`lm_recipes = [...]`) is still read, as
the table key it became, with a note naming the new place, so older configs keep working."""

import copy
import dataclasses
import tomllib
from pathlib import Path

from ffnbench.bench.config import PER_MODEL_KEYS, RunConfig, preset_config
from ffnbench.bench.traffic import model_specs
from ffnbench.bench.traffic.model_specs import ModelSpec, WholeSpec
from ffnbench.bench.traffic.scenarios import REPLAY_KEYS, Scenario, replay_from_table
from ffnbench.errors import UsageError

# study table -> {its key: the RunConfig field it sets}
STUDIES = {
    "latency": {"enabled": "latency", "warmup": "warmup", "min_iterations": "min_iterations",
                "min_seconds": "min_seconds", "max_iterations": "max_iterations", "max_seconds": "max_seconds",
                "max_runnable_seconds": "max_runnable_seconds", "decode": "decode", "prefill": "prefill",
                "memory": "memory", "diagnose": "diagnose", "ort_spinning": "ort_spinning",
                "remeasure_processes": "remeasure_processes"},
    "downstream": {"recipes": "lm_recipes", "scenarios": "lm_scenarios", "seeds": "lm_seeds", "pairs": "lm_models",
                   "windows": "lm_windows", "draws": "lm_draws", "inject": "lm_inject",
                   "healthy_delta_bpb": "healthy_delta_bpb"},
    "dose": {"scenarios": "dose_scenarios", "inject": "dose_inject", "pairs": "dose_models", "seeds": "dose_seeds",
             "windows": "dose_windows"},
    "whole": {"models": "whole_models", "windows": "whole_windows"},
}
TABLE_OF = {field: (table, key) for table, keys in STUDIES.items() for key, field in keys.items()}
# Fields no TOML key sets directly: the named tables fill them, or the run records them.
NOT_KEYS = {"user_scenarios", "user_models", "user_whole", "user_recipes", "per_model", "files_dir"}
TYPES = {f.name: f.type for f in dataclasses.fields(RunConfig) if f.name not in NOT_KEYS}
TOP_LEVEL = sorted(name for name in TYPES if name not in TABLE_OF)
SHAPES = ("decode", "prefill")  # [batch, seq]


def load_toml(path: Path, base: RunConfig | None = None) -> RunConfig:
    """The config alone (scripted use); read_toml also returns the notes on flat keys."""
    return read_toml(path, base)[0]


def read_toml(path: Path, base: RunConfig | None = None) -> tuple[RunConfig, list[str]]:
    """(the config, notes for flat keys read as their study table's). Starts from the file's preset,
    or `base` where the file names none (the command line's --preset)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"--config: no file at {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"--config: {path} is not valid TOML ({e})") from e
    cfg = preset_config(data.get("preset", base.preset if base else "quick")) if "preset" in data or not base \
        else copy.deepcopy(base)
    notes = []
    for key, value in data.items():
        if key in STUDIES and isinstance(value, dict):
            _study(path, cfg, key, value, data)
        elif key in TABLE_OF:  # `latency = false` too: the flag is [latency] enabled now
            table, new = TABLE_OF[key]
            notes.append(f"config {path}: '{key}' is now [{table}] {new}; read as that (move it there)")
            setattr(cfg, key, _value(path, key, value))
        elif key in TYPES:
            setattr(cfg, key, _value(path, key, value))
        else:
            _named_tables(path, cfg, key, value)
    return cfg, notes


def _study(path: Path, cfg: RunConfig, table: str, value: dict, data: dict) -> None:
    for key, v in value.items():
        if key not in STUDIES[table]:
            raise UsageError(f"config {path}: [{table}] unknown key '{key}'; known: {', '.join(STUDIES[table])}")
        field = STUDIES[table][key]
        if field in data and field != table:
            raise UsageError(f"config {path}: [{table}] {key} is set twice, also as the flat '{field}'; keep the "
                             f"[{table}] one")
        setattr(cfg, field, _value(path, field, v, f"[{table}] ", key))


def _named_tables(path: Path, cfg: RunConfig, key: str, value) -> None:
    if key == "scenario":
        cfg.user_scenarios = _scenarios(path, value)
        cfg.files_dir = str(path.parent.resolve())
    elif key == "model":
        specs = model_specs.parse(path, value)
        cfg.user_models = {k: v for k, v in specs.items() if isinstance(v, ModelSpec)}
        cfg.user_whole = {k: v for k, v in specs.items() if isinstance(v, WholeSpec)}
        cfg.files_dir = str(path.parent.resolve())
    elif key == "recipe":
        if not isinstance(value, dict) or not all(isinstance(t, dict) for t in value.values()):
            raise UsageError(f"config {path}: 'recipe' must hold tables, e.g. [recipe.mine] base = \"ort-int4-rtn\"")
        cfg.user_recipes = {name: dict(table) for name, table in value.items()}
    elif key == "per_model":
        if not isinstance(value, dict) or not all(isinstance(t, dict) for t in value.values()):
            raise UsageError(f"config {path}: 'per_model' must hold tables, e.g. [per_model.llama-7b] "
                             "prefill = [1, 128]")
        for name, table in value.items():
            unknown = sorted(set(table) - set(PER_MODEL_KEYS))
            if unknown:
                raise UsageError(f"config {path}: [per_model.{name}] unknown key '{unknown[0]}'; known: "
                                 f"{', '.join(PER_MODEL_KEYS)}")
        cfg.per_model = {name: {k: _value(path, k, v, f"[per_model.{name}] ") for k, v in table.items()}
                         for name, table in value.items()}
    else:
        known = ", ".join([*TOP_LEVEL, *(f"[{t}]" for t in STUDIES), "[scenario.NAME]", "[recipe.NAME]",
                           "[model.NAME]", "[per_model.NAME]"])
        raise UsageError(f"config {path}: unknown key '{key}'; known: {known}")


def _value(path: Path, field: str, value, where: str = "", key: str | None = None):
    """A value checked against its RunConfig field's type; `key` is its name in the file."""
    key, kind = key or field, TYPES[field]
    if field in SHAPES:
        if not (isinstance(value, list) and len(value) == 2 and all(type(v) is int for v in value)):
            raise UsageError(f"config {path}: {where}'{key}' must be [batch, seq], e.g. {key} = [8, 128]")
        return list(value)
    if kind == list[str]:
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise UsageError(f"config {path}: {where}'{key}' must be a list of strings, e.g. {key} = [\"A\", \"B\"]")
        return list(value)
    if kind == list[int]:
        if not (isinstance(value, list) and all(type(v) is int for v in value)):
            raise UsageError(f"config {path}: {where}'{key}' must be a list of integers, e.g. {key} = [0, 1, 2]")
        return list(value)
    if not model_specs.fits(value, kind):
        raise UsageError(f"config {path}: {where}'{key}' must be {kind.__name__}, got {type(value).__name__}")
    return kind(value)


def _scenarios(path: Path, tables) -> dict:
    if not isinstance(tables, dict):
        raise UsageError(f"config {path}: 'scenario' must hold tables, e.g. [scenario.mine] mean_shift = 2.0")
    out = {}
    fields = {f.name: f.type for f in dataclasses.fields(Scenario) if f.name != "name"}
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise UsageError(f"config {path}: [scenario.{name}] must be a table")
        replay = table.get("replay")
        for key, value in table.items():
            if replay is not None and key in REPLAY_KEYS:
                continue
            if key not in fields:
                known = ", ".join([*(REPLAY_KEYS if replay is not None else ()), *fields])
                raise UsageError(f"config {path}: [scenario.{name}] unknown key '{key}'; known: {known}")
            if replay is not None and key == "mixed_batch":
                raise UsageError(f"config {path}: [scenario.{name}] replays a file, as captured (one batch); "
                                 "drop mixed_batch")
            kind = fields[key]
            if not model_specs.fits(value, kind):
                raise UsageError(f"config {path}: [scenario.{name}] '{key}' must be {kind.__name__}, "
                                 f"got {type(value).__name__}")
        if replay is None:
            out[name] = Scenario(name, **table)
            continue
        share = table.get("calibration_share", 0.25)
        if isinstance(share, bool) or not isinstance(share, int | float):
            raise UsageError(f"config {path}: [scenario.{name}] 'calibration_share' must be a number, e.g. 0.25")
        out[name] = replay_from_table(name, Path(replay), {**table, "calibration_share": float(share)}, path.parent)
    return out
