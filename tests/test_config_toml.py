"""Run configs in TOML: one table per study, every example read without a note, a flat key of an
older file read as its table key with a note, and bad tables refused in one line."""

import json
import re
from pathlib import Path

import pytest

from ffnbench.bench.config import RunConfig
from ffnbench.bench.config_toml import read_toml
from ffnbench.bench.records import FLAT
from ffnbench.bench.studies import STUDIES
from ffnbench.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))
FLAT_KEY = {place: flat for flat, place in FLAT.items()}  # (table, key) -> the flat key older files used


def flattened(text: str) -> str:
    """The same config as the files before study tables wrote it: each study table's statements at
    the top level under their flat names (the examples put study tables before named ones)."""
    out, table = [], None
    for line in text.splitlines():
        header = re.match(r"^\[([^\]]+)\]", line)
        if header:
            table = header.group(1) if header.group(1) in STUDIES else None
            if table:
                continue
        key = re.match(r"^([a-z_]+)(\s*=.*)$", line)
        out.append(f"{FLAT_KEY[table, key.group(1)]}{key.group(2)}" if table and key else line)
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_reads_without_a_note_and_as_its_flat_form_did(example, tmp_path):
    nested, notes = read_toml(example)
    assert notes == []
    flat_file = tmp_path / example.name
    flat_file.write_text(flattened(example.read_text()))
    flat, flat_notes = read_toml(flat_file)
    assert json.dumps(flat.to_dict(), sort_keys=True, default=str) == \
        json.dumps(nested.to_dict(), sort_keys=True, default=str)
    moved = [k for k in re.findall(r"^([a-z_]+)\s*=", flat_file.read_text(), re.M) if k in FLAT]
    assert len(flat_notes) == len(moved) and all("is now [" in n for n in flat_notes)


def test_a_flat_key_is_read_with_a_note_naming_its_table(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('lm_scenarios = ["clean"]\nlatency = false\nwarmup = 0\n[dose]\nscenarios = ["shift-1"]\n')
    cfg, notes = read_toml(path)
    assert cfg.downstream.scenarios == ["clean"] and cfg.dose.scenarios == ["shift-1"]
    assert cfg.latency.enabled is False and cfg.latency.warmup == 0
    assert notes == [f"config {path}: 'lm_scenarios' is now [downstream] scenarios; read as that (move it there)",
                     f"config {path}: 'latency' is now [latency] enabled; read as that (move it there)",
                     f"config {path}: 'warmup' is now [latency] warmup; read as that (move it there)"]


@pytest.mark.parametrize(("text", "needle"), [
    ('[downstream]\nrecipe = ["fp32"]\n', "[downstream] unknown key 'recipe'; known: recipes, scenarios"),
    ('[dose]\nseeds = ["0"]\n', "[dose] 'seeds' must be a list of integers"),
    ('[latency]\nprefill = [8]\n', "[latency] 'prefill' must be [batch, seq]"),
    ('lm_draws = 8\n[downstream]\ndraws = 16\n',
     "[downstream] draws is set twice, also as the flat 'lm_draws'"),
    ('[latency]\nenabled = "no"\n', "[latency] 'enabled' must be bool, got str"),
    ('[whole]\nwindows = 1.5\n', "[whole] 'windows' must be int, got float"),
    ('lm_recipe = []\n', "unknown key 'lm_recipe'; known: "),
])
def test_bad_tables_are_refused_in_one_line(tmp_path, text, needle):
    (tmp_path / "run.toml").write_text(text)
    with pytest.raises(UsageError) as e:
        read_toml(tmp_path / "run.toml")
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("run", sorted((ROOT / "tests" / "data" / "runs").iterdir()), ids=lambda p: p.name)
def test_a_config_an_older_run_recorded_still_reads(run):
    """What a run's manifest records is RunConfig's own fields (to_dict), not the TOML: the format-1
    run's flat config reads back and checks."""
    recorded = json.loads((run / "manifest.json").read_text())["config"]
    config = RunConfig.from_dict(recorded).check()
    assert config.preset == recorded["preset"] and config.downstream.recipes == ["fp32", "ort-int8-dynamic", "bnb-nf4"]


def test_a_deployment_table_is_kept_for_the_runs_memo_and_checked(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[deployment]\nfamilies = {int8-dynamic = 0.5, fp16 = 0.5}\nbudget = "kld_mean<=1e-3"\n')
    config, notes = read_toml(path)
    assert config.deployment["families"] == {"int8-dynamic": 0.5, "fp16": 0.5} and not notes
    assert RunConfig.from_dict(config.to_dict()).deployment == config.deployment
    path.write_text('[deployment]\nfamilies = {int9 = 1.0}\n')
    with pytest.raises(UsageError, match="unknown family 'int9'"):
        read_toml(path)
