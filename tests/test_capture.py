"""`ffnbench capture` and a run over a real layer with its own captured traffic: on the trained pair
(always) and on tiny GPT-2, BERT and Llama checkpoints built here by transformers (the [hf] extra)."""

import json
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from ffnbench.bench import run
from ffnbench.bench.cli import main
from ffnbench.bench.config_toml import load_toml
from ffnbench.bench.gate.checks import checks
from ffnbench.bench.gate.gate import gate, write_baseline
from ffnbench.bench.traffic import tiny_hf
from ffnbench.bench.traffic.capture import capture
from ffnbench.bench.traffic.drift_stats import drift_stats, moments
from ffnbench.errors import UsageError
from ffnbench.models import load_safetensors
from ffnbench.models.pair import load_lm, trained_dir
from ffnbench.quant.bnb_recipes import cpu_limit

try:
    import transformers
except ImportError:
    transformers = None
needs_hf = pytest.mark.skipif(transformers is None, reason="transformers is not installed (pip install 'ffnbench[hf]')")


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    """Real text: the first 40 KB of the standard library's os.py."""
    path = tmp_path_factory.mktemp("text") / "requests.txt"
    path.write_bytes((Path(sysconfig.get_paths()["stdlib"]) / "os.py").read_bytes()[:40_000])
    return path


def run_own_layer(root, model_table: str, trace: str, layer: int):
    """A run of the default recipes' quick subset over one real layer with its captured traffic, then
    the gate: the run passes against a baseline made from it, and fails, on exactly that cell and
    metric, against one whose int8 cell on the shifted traffic was 3 dB better (an injected regression)."""
    (root / "run.toml").write_text(
        f'models = ["own"]\nrecipes = ["fp32", "ort-int8-dynamic", "ort-int8-qdq-minmax", "bnb-nf4"]\n'
        f'scenarios = ["traffic", "traffic-shifted"]\ncalibration = ["traffic"]\n'
        '[latency]\nenabled = false\n[downstream]\nrecipes = []\n'
        f'[model.own]\n{model_table}\n'
        f'[scenario.traffic]\nreplay = "{trace}"\ntensor = "layer.{layer}"\n'
        f'[scenario.traffic-shifted]\nreplay = "{trace}"\ntensor = "layer.{layer}"\nmean_shift = 4.0\n'
        'shift_fraction = 0.9\nmagnitude_sigma = 1.5\n')
    cells = run(load_toml(root / "run.toml").check(), root / "run", progress=False)
    baseline = write_baseline(root / "run", root / "baseline.json")
    regressed = next(k for k, c in baseline["cells"].items()
                     if (c["recipe"], c["scenario"]) == ("ort-int8-dynamic", "traffic-shifted"))
    baseline["cells"][regressed]["metrics"]["centered_sqnr_db"] += 3.0
    (root / "better-baseline.json").write_text(json.dumps(baseline))
    caught = gate(root / "better-baseline.json", root / "run", checks())
    assert [(f.cell, f.metric) for f in caught.failures] == [(regressed, "centered_sqnr_db")], caught.failures
    return cells, gate(root / "baseline.json", root / "run", checks())


def test_the_trained_pair_captures_the_states_entering_its_ffn_norms(text, tmp_path, capsys):
    assert main(["capture", "--checkpoint", str(trained_dir("B")), "--text", str(text), "--layers", "0,3",
                 "--out", str(tmp_path / "traces.safetensors"), "--max-windows", "8"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("layer 0: [8, 128, 192]") and printed[1].startswith("layer 3: [8, 128, 192]")
    states = load_file(str(tmp_path / "traces.safetensors"))
    record = json.loads((tmp_path / "traces.json").read_text())
    model, _ = load_lm(trained_dir("B"))
    tokens = torch.from_numpy(np.frombuffer(text.read_bytes()[:8 * 128], np.uint8).astype(np.int64).reshape(8, 128))
    taps: dict = {}
    with torch.no_grad():
        model(tokens, taps=taps)
    for layer in (0, 3):
        assert np.array_equal(states[f"layer.{layer}"], taps[f"ffn_in.{layer}"].numpy())
        stats = {k: v for k, v in record["layers"][str(layer)].items() if k not in ("shape", "tensor")}
        assert stats == drift_stats(states[f"layer.{layer}"])
    assert record["checkpoint"]["sha256"] == load_lm(trained_dir("B"))[1]["sha256"]


def test_a_reference_text_measures_the_domain_shift_of_the_captured_states(text, tmp_path):
    """Code against prose through the same model moves the FFN inputs' feature means beyond what other
    prose does (32 windows each: at 8 the two are within each other's noise)."""
    from ffnbench.models.corpus import prose

    reference, other = tmp_path / "prose.txt", tmp_path / "other-prose.txt"
    reference.write_bytes(prose().data[:32 * 128].tobytes())
    other.write_bytes(prose().data[100_000:100_000 + 32 * 128].tobytes())
    code = capture(trained_dir("B"), text, [1], tmp_path / "code.safetensors", max_windows=32,
                   reference_path=reference)
    more_prose = capture(trained_dir("B"), other, [1], tmp_path / "prose.safetensors", max_windows=32,
                         reference_path=reference)
    floor = more_prose["layers"]["1"]["domain_shift_std"]
    assert 0 < floor < code["layers"]["1"]["domain_shift_std"] / 1.4 and code["reference"]["file"] == "prose.txt"
    states = load_file(str(tmp_path / "code.safetensors"))["layer.1"]
    capture(trained_dir("B"), reference, [1], tmp_path / "ref.safetensors", max_windows=32)
    reference_states = load_file(str(tmp_path / "ref.safetensors"))["layer.1"]
    assert code["layers"]["1"] == {"tensor": "layer.1", "shape": [32, 128, 192],
                                   **drift_stats(states, moments(reference_states))}


def test_a_trained_layer_runs_and_gates_on_its_own_captured_traffic(text, tmp_path):
    capture(trained_dir("A"), text, [2], tmp_path / "traces.safetensors", max_windows=6)
    cells, result = run_own_layer(tmp_path, 'trained = "A"\nlayer = 2\ndesign = "A"', "traces.safetensors", 2)
    assert len(cells) == 4 * 2 and all(c["status"] == "ok" for c in cells), cells
    assert all(c["metrics"]["centered_sqnr_db"] is not None for c in cells)
    assert result.passed and not result.missing


@pytest.mark.parametrize(("args", "needle"), [
    (["--layers", "0,9"], "the model has layers 0-3, not 9"),
    (["--layers", "x"], "is not a comma-separated list"),
    (["--text", "absent.txt"], "--text: no file at"),
    (["--out", "traces.npy"], "must end in .safetensors"),
    (["--checkpoint", "."], "holds neither an ffnbench checkpoint"),
])
def test_bad_capture_input_is_one_line_and_exit_2(text, tmp_path, capsys, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    given = {"--checkpoint": str(trained_dir("B")), "--text": str(text), "--layers": "0",
             "--out": "traces.safetensors"} | dict(zip(args[::2], args[1::2], strict=True))
    assert main(["capture", *[x for kv in given.items() for x in kv]]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.glob("traces*"))


def test_short_text_and_an_existing_output_are_refused(tmp_path):
    (tmp_path / "short.txt").write_text("too short")
    with pytest.raises(UsageError, match="shorter than one context of 128 bytes"):
        capture(trained_dir("B"), tmp_path / "short.txt", [0], tmp_path / "t.safetensors")
    (tmp_path / "t.json").write_text("{}")
    with pytest.raises(UsageError, match="already exists"):
        capture(trained_dir("B"), tmp_path / "short.txt", [0], tmp_path / "t.safetensors")


def test_a_hugging_face_checkpoint_without_weights_or_the_extra_is_refused(text, tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    needle = "no weights (model.safetensors)" if transformers else "needs transformers; pip install 'ffnbench[hf]'"
    with pytest.raises(UsageError, match=needle.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        capture(tmp_path, text, [0], tmp_path / "t.safetensors")


# Per family: the layer's prefix and design, what its table adds, and the framework's own FFN.
FAMILIES = {
    "gpt2": dict(prefix="h.1.", design="A", table='gelu = "tanh"\neps = 1e-5',
                 own=lambda m, x: m.h[1].mlp(m.h[1].ln_2(x))),
    "bert": dict(prefix="encoder.layer.1.", design="A", table="eps = 1e-12",
                 own=lambda m, x: m.encoder.layer[1].output.dense(m.encoder.layer[1].intermediate(
                     m.encoder.layer[1].attention.output.LayerNorm(x)))),
    "llama": dict(prefix="layers.1.", design="B", table="eps = 1e-6",
                  own=lambda m, x: m.layers[1].mlp(m.layers[1].post_attention_layernorm(x))),
}


@needs_hf
@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_hugging_face_layer_loads_exactly_and_runs_on_its_captured_traffic(family, text, tmp_path):
    model, spec = tiny_hf.build(family, tmp_path / "ckpt", text.read_text()), FAMILIES[family]
    overrides = dict(line.split(" = ") for line in spec["table"].splitlines())
    block = load_safetensors(tmp_path / "ckpt" / "model.safetensors", spec["design"], spec["prefix"], residual=False,
                             **{k: (v.strip('"') if k == "gelu" else float(v)) for k, v in overrides.items()})
    x = torch.randn(2, 8, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.max(torch.abs(block(x) - spec["own"](model, x))) <= 1e-5
    record = capture(tmp_path / "ckpt", text, [0, 1], tmp_path / "traces.safetensors", max_windows=4)
    assert record["layers"]["1"]["shape"] == [4, 128, 32] and record["checkpoint"]["model_type"] == family
    table = f'weights = "ckpt/model.safetensors"\nprefix = "{spec["prefix"]}"\ndesign = "{spec["design"]}"\n' \
        + spec["table"]
    cells, result = run_own_layer(tmp_path, table, "traces.safetensors", 1)
    assert result.passed and len(cells) == 4 * 2
    assert all(c["status"] == "ok" for c in cells if c["recipe"] != "bnb-nf4"), cells
    # The layer's 32 inputs are half a bitsandbytes block a row, which its AVX-512 CPU kernels get wrong.
    limit = cpu_limit(32)
    nf4 = [(c["status"], c.get("reason", "")) for c in cells if c["recipe"] == "bnb-nf4"]
    assert nf4 == [("skipped", f"{limit}; mlp.{'gate' if spec['design'] == 'B' else 'fc1'} has 32")] * 2 if limit \
        else [s for s, _ in nf4] == ["ok"] * 2, nf4
