"""Whole-model cells of users' models (bench/cells/whole_cells.py) and their report section
(bench/report/whole_models.py): one run over a tiny GGUF (design B) and a tiny GPT-2 checkpoint
(design A), from a TOML config as a user writes it, checked against transformers' own forward."""

import json
import math
import subprocess
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from ffnbench.bench import runner
from ffnbench.bench.cells.lm_cells import windows
from ffnbench.bench.config_toml import load_toml
from ffnbench.bench.gate import gate
from ffnbench.bench.gate.checks import checks
from ffnbench.bench.report.report import write
from ffnbench.bench.traffic import tiny_hf
from ffnbench.errors import UsageError
from ffnbench.models import corpus

transformers = pytest.importorskip("transformers", reason="whole Hugging Face models need the [hf] extra")
pytest.importorskip("gguf", reason="GGUF files need the [hf] extra's gguf")

TEXT = (Path(sysconfig.get_paths()["stdlib"]) / "os.py").read_text()
RECIPES = ["fp32", "ort-int8-dynamic", "bnb-int8"]
SCENARIOS = ["clean", "production", "domain-code"]
# One whole model `m`, fp32 alone, as the failing-input tests write it.
NESTED = ('models = []\nrecipes = ["fp32"]\n[latency]\nenabled = false\n[downstream]\nrecipes = ["fp32"]\n'
          'pairs = []\n[whole]\nmodels = ["m"]\n')
CONFIG = f"""
models = []
recipes = {json.dumps(RECIPES)}

[latency]
enabled = false

[downstream]
recipes = {json.dumps(RECIPES)}
scenarios = {json.dumps(SCENARIOS)}
pairs = []
draws = 2

[whole]
models = ["tiny-gguf", "tiny-gpt2"]
windows = 4

[model.tiny-gguf]
gguf = "tiny.gguf"
text = "prose.txt"
context = 16

[model.tiny-gpt2]
checkpoint = "gpt2"
text = "prose.txt"
context = 16
"""


@pytest.fixture(scope="session")
def whole_run(tmp_path_factory):
    """(config folder, run directory, the transformers models by table name) of one whole-model run."""
    root = tmp_path_factory.mktemp("whole")
    llama = tiny_hf.build_causal("llama", root / "llama", TEXT)
    tiny_hf.write_gguf(llama, tiny_hf.bpe_tokenizer(TEXT), root / "tiny.gguf")
    gpt2 = tiny_hf.build_causal("gpt2", root / "gpt2", TEXT)
    (root / "prose.txt").write_text(TEXT)
    (root / "run.toml").write_text(CONFIG)
    runner.run(load_toml(root / "run.toml"), root / "out", progress=False)
    return root, root / "out", {"tiny-gguf": (llama, root / "llama"), "tiny-gpt2": (gpt2, root / "gpt2")}


def _cells(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]


def test_every_model_recipe_and_scenario_is_a_measured_cell_of_its_design(whole_run):
    _, run_dir, _ = whole_run
    cells = _cells(run_dir)
    assert {(c["model"], c["recipe"], c["scenario"]) for c in cells} == \
        {(m, r, s) for m in ("tiny-gguf", "tiny-gpt2") for r in RECIPES for s in SCENARIOS}
    assert all(c["status"] == "ok" and c["kind"] == "whole" for c in cells), [c.get("error") for c in cells]
    assert {c["model"]: c["design"] for c in cells} == {"tiny-gguf": "B", "tiny-gpt2": "A"}


def test_fp32_bits_per_byte_are_transformers_own_on_the_same_windows(whole_run):
    """Recomputed outside ffnbench's model: the held-out tenth of the text, tokenized, four windows of
    17 tokens, the transformers model's log-probabilities, divided by the UTF-8 bytes each window's
    targets cover (from the tokenizer's character offsets)."""
    _, run_dir, models = whole_run
    cells = {(c["model"], c["recipe"], c["scenario"]): c for c in _cells(run_dir)}
    data = TEXT.encode()
    held_out = data[int(len(data) * (1 - corpus.HELD_OUT)):].decode("utf-8", errors="ignore")
    for name, (model, path) in models.items():
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        got = tokenizer(held_out, add_special_tokens=False, return_offsets_mapping=True)
        ends = np.array([len(held_out[:end].encode()) for _, end in got["offset_mapping"]])
        starts = windows(np.arange(len(ends)), 4, 16, "held out")[:, 0]
        tokens = torch.tensor(windows(np.asarray(got["input_ids"]), 4, 16, "held out"))
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=tokens[:, :-1]).logits.double(), -1)
        bits = -logp.gather(-1, tokens[:, 1:, None])[..., 0].sum(-1).numpy() / math.log(2)
        covered = ends[starts + 16] - ends[starts]
        cell = cells[name, "fp32", "clean"]
        assert cell["metrics"]["bits_per_byte"] == pytest.approx(np.mean(bits / covered), rel=1e-4)
        assert cell["reference"]["order0_bits_per_byte"] > 0


def test_quantized_cells_carry_llama_cpp_figures_against_fp32(whole_run):
    _, run_dir, _ = whole_run
    for cell in _cells(run_dir):
        m, windows_of = cell["metrics"], cell["windows"]
        if cell["recipe"] == "fp32":
            assert m["kld_max"] < 1e-6 and m["same_top1"] == 1.0
            continue
        assert 0 < m["kld_mean"] <= m["kld_p99"] <= m["kld_p999"] <= m["kld_max"]
        assert m["kld_mean"] == pytest.approx(np.mean(windows_of["kl_to_fp32"]), rel=1e-5)
        assert m["same_top1"] == pytest.approx(np.mean(windows_of["same_top1"]), abs=1e-6)
        assert len(windows_of["bits_per_byte"]) == 4
        assert cell["draws"] == (1 if cell["scenario"] == "domain-code" else 2)


def test_fp32_cells_hold_the_models_drift_and_massive_activations_per_layer(whole_run):
    _, run_dir, _ = whole_run
    fp32 = [c for c in _cells(run_dir) if c["recipe"] == "fp32"]
    for cell in fp32:
        assert len(cell["drift_stats"]) == len(cell["massive"]) == 2  # the tiny models' layers
        found = cell["massive"][1]
        assert len(found["channels"]) == 3 and found["max_abs"] == sorted(found["max_abs"], reverse=True)
        assert found["max_abs"][0] >= found["median_abs"] > 0 and 0 <= sum(found["token_share"]) <= 1
    production = {c["model"]: c["drift_stats"][0] for c in fp32 if c["scenario"] == "production"}
    clean = {c["model"]: c["drift_stats"][0] for c in fp32 if c["scenario"] == "clean"}
    for model, stats in production.items():  # the injected shift biases 90 % of the features positive
        assert stats["positive_mean_fraction"] > clean[model]["positive_mean_fraction"] + 0.2


def test_the_report_has_each_models_section_and_the_gate_judges_its_cells(whole_run, tmp_path):
    root, run_dir, _ = whole_run
    text = write(run_dir).read_text()
    fp32 = {c["model"]: c["reference"] for c in _cells(run_dir) if c["recipe"] == "fp32" and c["scenario"] == "clean"}
    for model, reference in fp32.items():
        # Untrained, a tiny model does no better than its text's token frequencies: its rows say so.
        assert reference["bits_per_byte"] >= reference["order0_bits_per_byte"]
        assert f"## Whole model `{model}`" in text
    assert text.count("| clean (fp32 broken) | ort-int8-dynamic | int8-dynamic |") == 2
    assert "tiny.gguf (sha256" in text and "Massive activations on `clean` text" in text
    baseline = tmp_path / "baseline.json"
    gate.write_baseline(run_dir, baseline)
    result = gate.gate(baseline, run_dir, checks(["kld_mean:+10%"]))
    judged = {f.cell for f in result.findings}
    assert result.passed and any(key.startswith("B/tiny-gguf/ort-int8-dynamic/whole:clean") for key in judged)


def test_a_bad_whole_model_is_refused_before_a_run_writes_anything(whole_run, tmp_path):
    root, _, _ = whole_run
    (root / "short.txt").write_text("too short for a window")
    for table, match in (('gguf = "tiny.gguf"\ntext = "short.txt"',
                          "in m's tokens: .* tokens is shorter than one context of 129 tokens"),
                         ('gguf = "missing.gguf"', "no checkpoint directory or .gguf file"),
                         ('gguf = "x.gguf"\npackage = "no-such-distribution"',
                          "'no-such-distribution' is not installed"),
                         ('gguf = "tiny.gguf"\nsha256 = "' + "ab" * 32 + '"', "not the abababababab")):
        config = root / "bad.toml"
        config.write_text(f'{NESTED}[model.m]\n{table}\n')
        with pytest.raises(UsageError, match=match):
            runner.run(load_toml(config), tmp_path / "out", progress=False)
        assert not (tmp_path / "out").exists()


def test_every_ort_artifact_quantizes_exactly_the_ffn_matmuls_its_export_found(whole_run):
    """Read from the graphs: the MatMuls an ORT artifact no longer runs in fp32 are the export's FFN
    MatMuls (found by module path: three a layer in B, two in A), attention and head untouched."""
    _, run_dir, _ = whole_run
    exports = {m["source"]["sha256"]: m for m in
               (json.loads(p.read_text()) for p in (run_dir / "artifacts").glob("lm-export-*/manifest.json"))}
    checked = 0
    for cell in _cells(run_dir):
        if cell["recipe"] != "ort-int8-dynamic" or cell["scenario"] != "clean":
            continue
        export = exports[cell["checkpoint"]["sha256"]]
        artifact = json.loads((run_dir / cell["artifact"]["dir"] / "manifest.json").read_text())
        assert sorted(artifact["quantized_nodes"]) == sorted(export["ffn_matmuls"])
        assert len(export["ffn_matmuls"]) == 2 * (3 if cell["design"] == "B" else 2)
        assert export["parity"]["max_abs_err"] <= export["parity"]["tolerance"] and export["parity"]["relative"]
        checked += 1
    assert checked == 2


def test_the_command_line_refuses_a_changed_model_file_in_one_line_with_exit_2(whole_run, ffnbench_exe, tmp_path):
    root, _, _ = whole_run
    config = root / "pinned.toml"
    config.write_text(f'{NESTED}[model.m]\ngguf = "tiny.gguf"\nsha256 = "' + "ab" * 32 + '"\n')
    got = subprocess.run([ffnbench_exe, "run", "--config", str(config), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=120)
    assert got.returncode == 2 and len(got.stderr.strip().splitlines()) == 1
    assert "[model.m]" in got.stderr and "not the abababababab" in got.stderr and not (tmp_path / "out").exists()
