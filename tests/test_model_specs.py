"""[model.NAME] tables: real FFN layers (a checkpoint file, or a layer of the trained pair) through the
same matrix as the size presets, with replayed and drifted real traffic."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ffnbench.bench import RunConfig, run
from ffnbench.bench.config_toml import load_toml
from ffnbench.bench.gate.checks import checks
from ffnbench.bench.gate.gate import gate, write_baseline
from ffnbench.bench.report import report
from ffnbench.bench.traffic.scenarios import NAMED
from ffnbench.errors import UsageError
from ffnbench.models.pair import load_lm, trained_dir
from ffnbench.quant import Calibration

PREFIX = "model.layers.3."


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    """A Llama-named layer file, hidden states captured 'from it' (seeded), and a config using both."""
    root = tmp_path_factory.mktemp("own")
    g = torch.Generator().manual_seed(0)
    save_file({f"{PREFIX}post_attention_layernorm.weight": 1 + 0.1 * torch.randn(64, generator=g),
               f"{PREFIX}mlp.gate_proj.weight": torch.randn(128, 64, generator=g) / 8,
               f"{PREFIX}mlp.up_proj.weight": torch.randn(128, 64, generator=g) / 8,
               f"{PREFIX}mlp.down_proj.weight": torch.randn(64, 128, generator=g) / 128**0.5},
              root / "layer.safetensors")
    traffic = NAMED["clean"].generate(8, 16, 64, seed=5) + 0.5
    np.save(root / "traffic.npy", traffic)
    (root / "run.toml").write_text(
        'models = ["mine"]\nrecipes = ["fp32", "ort-int8-qdq-minmax", "bnb-nf4"]\n'
        'scenarios = ["clean", "traffic", "traffic-shifted"]\ncalibration = ["traffic"]\n[latency]\n'
        'enabled = false\n[downstream]\nrecipes = []\n'
        f'[model.mine]\nweights = "layer.safetensors"\nprefix = "{PREFIX}"\ndesign = "B"\neps = 1e-6\n'
        '[model.pair-b1]\ntrained = "B"\nlayer = 1\ndesign = "B"\n'
        '[scenario.traffic]\nreplay = "traffic.npy"\n'
        '[scenario.traffic-shifted]\nreplay = "traffic.npy"\nmean_shift = 4.0\nshift_fraction = 0.9\n')
    return root


@pytest.fixture(scope="module")
def own_run(own, tmp_path_factory):
    config = load_toml(own / "run.toml").check()
    out = tmp_path_factory.mktemp("own-run") / "run"
    return config, out, run(config, out, progress=False)


def test_real_layers_run_through_the_matrix_with_every_metric(own_run):
    _, out, cells = own_run
    assert len(cells) == 3 * 3 and all(c["status"] == "ok" for c in cells), cells
    assert {c["model"] for c in cells} == {"mine"} and {c["design"] for c in cells} == {"B"}
    assert all(c["metrics"]["centered_sqnr_db"] is not None for c in cells)
    # The drift on top of a replay has an unshifted twin: the design's own drift sensitivity is measured.
    drifted = next(c for c in cells if c["recipe"] == "fp32" and c["scenario"] == "traffic-shifted")
    assert drifted["metrics"]["fp32_drift_db"] is not None
    manifest = json.loads((out / "manifest.json").read_text())
    mine = manifest["config"]["user_models"]["mine"]
    assert mine["weights"] == "layer.safetensors" and len(mine["sha256"]) == 64 and mine["prefix"] == PREFIX
    assert str(out.parent.parent) not in json.dumps(manifest["config"]["user_models"])  # no machine path


def test_calibration_on_replayed_traffic_is_recorded_by_hash(own_run):
    config, out, cells = own_run
    cell = next(c for c in cells if c["recipe"] == "ort-int8-qdq-minmax" and c["model"] == "mine")
    recorded = json.loads((out / cell["artifact"]["dir"] / "manifest.json").read_text())["calibration"]
    data = config.scenario("traffic").calibration_data(0, 0, 64)
    assert recorded == Calibration("traffic", data).describe() and recorded["shape"] == [2, 16, 64]


def test_synthetic_drift_on_top_of_a_replay(own):
    config = load_toml(own / "run.toml")
    assert config.latency_scenario() == "clean"  # timing inputs never come from a capture's own shapes
    config.scenarios = ["traffic", "traffic-shifted"]
    assert config.latency_scenario() == "clean"
    plain, shifted = config.scenario("traffic"), config.scenario("traffic-shifted")
    base, moved = plain.generate(0, 0, 64), shifted.generate(0, 0, 64)
    std = np.load(own / "traffic.npy").reshape(-1, 64).std(axis=0)
    offset = (moved - base)[0, 0]  # one offset a feature, the same for every token and request
    assert np.allclose(moved - base, offset, atol=1e-5)
    biased = offset > 0
    assert 0.8 < biased.mean() <= 1.0
    assert np.allclose((offset / std)[biased].mean(), 4.0, atol=0.4)  # in units of the capture's feature std


def test_a_trained_layer_equals_the_pairs_own_ffn(own_run):
    config, _, _ = own_run
    block = config.build_block("pair-b1", "B")
    model, _ = load_lm(trained_dir("B"))
    h = torch.randn(2, 8, 192, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(block(h), model.blocks[1].ffn.branch(h), atol=1e-6)


@pytest.mark.parametrize(("table", "needle"), [
    ('weights = "layer.safetensors"\nprefix = "h.0."\ndesign = "B"', "check --prefix"),
    ('weights = "layer.safetensors"\nprefix = "model.layers.3."\ndesign = "A"', "a design-B layer, not design A"),
    ('weights = "absent.safetensors"\ndesign = "B"', "weights: no file at"),
    ('weights = "layer.safetensors"\ntrained = "B"\nlayer = 0\ndesign = "B"', "not both"),
    ('trained = "B"\nlayer = 9\ndesign = "B"', "layers 0-3, got 9"),
    ('weights = "layer.safetensors"\ndesign = "B"\nstride = 2', "unknown key 'stride'"),
    ('weights = "layer.safetensors"', "needs design"),
])
def test_a_bad_model_table_is_one_line_naming_the_fix(own, tmp_path, table, needle):
    (own / "bad.toml").write_text(f'models = ["x"]\ndesigns = ["A", "B"]\n[model.x]\n{table}\n')
    with pytest.raises(UsageError, match=needle) as e:
        run(load_toml(own / "bad.toml").check(), tmp_path / "run", progress=False)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()


def test_traffic_of_another_width_is_refused(own, tmp_path):
    np.save(own / "wide.npy", np.zeros((2, 4, 96), np.float32))
    (own / "wide.toml").write_text(f'models = ["x"]\nscenarios = ["wide"]\n[model.x]\nweights = "layer.safetensors"\n'
                                   f'prefix = "{PREFIX}"\ndesign = "B"\n[scenario.wide]\nreplay = "wide.npy"\n')
    with pytest.raises(UsageError, match="has width 96, the model's d_model is 64"):
        run(load_toml(own / "wide.toml").check(), tmp_path / "run", progress=False)


def test_report_and_gate_name_the_layer_by_file_hash_and_prefix(own_run, tmp_path):
    _, out, _ = own_run
    sha = json.loads((out / "manifest.json").read_text())["config"]["user_models"]["mine"]["sha256"]
    text = report.write(out).read_text()
    assert f"- Model `mine`: layer.safetensors (sha256 {sha[:12]}…), prefix `{PREFIX}`, design B" in text
    assert "## Accuracy of model `mine` (design B)" in text
    baseline = write_baseline(out, tmp_path / "baseline.json")
    baseline["config"]["user_models"]["mine"]["sha256"] = "0" * 64
    (tmp_path / "baseline.json").write_text(json.dumps(baseline))
    result = gate(tmp_path / "baseline.json", out, checks())
    assert result.passed and any("has other weights than the baseline's (sha256 000000000000" in n
                                 for n in result.notes)


def test_a_copied_run_directory_gates_elsewhere_and_finds_its_files_by_hash(own, own_run, tmp_path):
    _, out, _ = own_run
    write_baseline(out, tmp_path / "baseline.json")
    copied = tmp_path / "elsewhere" / "run"
    shutil.copytree(out, copied)
    assert gate(tmp_path / "baseline.json", copied, checks()).passed  # records alone: no file needed
    recorded = json.loads((copied / "manifest.json").read_text())["config"]
    files = tmp_path / "files"  # the layer and traffic files, flat, as --weights-dir gives them
    files.mkdir()
    for name in ("layer.safetensors", "traffic.npy"):
        shutil.copyfile(own / name, files / name)
    assert recorded["files_dir"] == os.path.relpath(own, out)  # so a re-timing finds them from the run
    config = RunConfig.from_dict(recorded, files)
    assert config.build_block("mine", "B").cfg.d_model == 64
    assert config.scenario("traffic").generate(0, 0, 64).shape == (6, 16, 64)
    (files / "traffic.npy").unlink()
    want = recorded["user_scenarios"]["traffic"]["sha256"]
    with pytest.raises(UsageError, match=f"no file at .*traffic.npy \\(the run used sha256 {want}"):
        RunConfig.from_dict(recorded, files).scenario("traffic").generate(0, 0, 64)
    (files / "layer.safetensors").write_bytes((own / "layer.safetensors").read_bytes() + b" ")
    with pytest.raises(UsageError, match="is not the file the run used \\(sha256 [0-9a-f]{64}\\)"):
        RunConfig.from_dict(recorded, files).build_block("mine", "B")
