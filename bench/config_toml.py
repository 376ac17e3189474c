"""A run config from TOML: the run's own keys at the top level, one table per study ([latency],
[downstream], [dose], [whole]) read straight into its dataclass, and [model.NAME], [recipe.NAME],
[scenario.NAME], [per_model.NAME] tables. Every key's type is read off its dataclass field, not
declared again.

A flat key of the files written before the study tables (`lm_seeds = [...]`) is still read, as
the table key it became (records.FLAT), with a note naming the new place, so older configs keep
working; the same key set both ways is refused."""

import copy
import dataclasses
import tomllib
from pathlib import Path

from ffnbench.bench.analysis.deployment import deployment_from_table
from ffnbench.bench.config import LATENCY_KEYS, RunConfig, preset_config
from ffnbench.bench.config_check import PER_MODEL_KEYS
from ffnbench.bench.records import FLAT
from ffnbench.bench.studies import STUDIES
from ffnbench.bench.traffic import model_specs
from ffnbench.bench.traffic.model_specs import ModelSpec, WholeSpec
from ffnbench.bench.traffic.scenarios import REPLAY_KEYS, Scenario, replay_from_table
from ffnbench.errors import UsageError

# Fields no top-level key sets: the study tables and the named tables fill them, or the run records them.
NOT_KEYS = {*STUDIES, "user_scenarios", "user_models", "user_whole", "user_recipes", "per_model", "files_dir",
            "deployment"}
TYPES = {f.name: f.type for f in dataclasses.fields(RunConfig) if f.name not in NOT_KEYS}
TOP_LEVEL = sorted(TYPES)
# study table -> {its key: the key's type}
STUDY_TYPES = {table: {f.name: f.type for f in dataclasses.fields(study)} for table, study in STUDIES.items()}
# [per_model.NAME] keys: the run's own, and the latency study's timing keys
PER_MODEL_TYPES = {key: STUDY_TYPES["latency"][key] if key in LATENCY_KEYS else TYPES[key] for key in PER_MODEL_KEYS}


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
    notes, tables = [], {table: {} for table in STUDIES}
    for key, value in data.items():
        if key in STUDIES and isinstance(value, dict):
            tables[key] |= _study(path, key, value, data)
        elif key in FLAT:  # `latency = false` too: the flag is [latency] enabled now
            table, new = FLAT[key]
            notes.append(f"config {path}: '{key}' is now [{table}] {new}; read as that (move it there)")
            tables[table][new] = _value(path, STUDY_TYPES[table][new], value, key=key)
        elif key in TYPES:
            setattr(cfg, key, _value(path, TYPES[key], value, key=key))
        else:
            _named_tables(path, cfg, key, value)
    for table, values in tables.items():
        setattr(cfg, table, dataclasses.replace(getattr(cfg, table), **values))
    return cfg, notes


def _study(path: Path, table: str, value: dict, data: dict) -> dict:
    """A study table's values by key, each checked against its field's type."""
    types = STUDY_TYPES[table]
    for key in value:
        if key not in types:
            raise UsageError(f"config {path}: [{table}] unknown key '{key}'; known: {', '.join(types)}")
        flat = next((old for old, place in FLAT.items() if place == (table, key)), None)
        if flat in data and flat != table:
            raise UsageError(f"config {path}: [{table}] {key} is set twice, also as the flat '{flat}'; keep the "
                             f"[{table}] one")
    return {key: _value(path, types[key], v, f"[{table}] ", key) for key, v in value.items()}


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
        cfg.per_model = {name: {k: _value(path, PER_MODEL_TYPES[k], v, f"[per_model.{name}] ", k)
                                for k, v in table.items()}
                         for name, table in value.items()}
    elif key == "deployment":
        if not isinstance(value, dict):
            raise UsageError(f"config {path}: 'deployment' must be a table, e.g. [deployment] families = "
                             "{int8-dynamic = 0.5, fp16 = 0.5}")
        deployment_from_table(value, f"config {path}")
        cfg.deployment = dict(value)
    else:
        known = ", ".join([*TOP_LEVEL, *(f"[{t}]" for t in STUDIES), "[scenario.NAME]", "[recipe.NAME]",
                           "[model.NAME]", "[per_model.NAME]", "[deployment]"])
        raise UsageError(f"config {path}: unknown key '{key}'; known: {known}")


def _value(path: Path, kind, value, where: str = "", key: str = ""):
    """A value checked against the type of the field it sets; `key` is its name in the file."""
    if kind == tuple[int, int]:  # a latency shape, [batch, seq]
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
