"""The command line: the console script in a subprocess for each command's main path and its exit
codes; the many bad-input cases through the same `main()` in this process (a subprocess per case
would spend its time importing torch), each one line on stderr, exit code 2, nothing written."""

import json
import subprocess
from types import SimpleNamespace

import onnx
import pytest
import torch
from safetensors.torch import save_file

from ffnbench.bench.cli import main
from ffnbench.bench.machine.isa import int8_kernels
from ffnbench.quant.bnb_recipes import avx512_dequantization, import_bnb


def run(exe, *args):
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture
def cli(capsys):
    """cli(*args) runs `ffnbench ARGS` in this process: returncode, stdout and stderr, as run() gives."""
    def call(*args):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse's own errors exit from inside parse_args
            code = e.code
        captured = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err)
    return call


@pytest.mark.parametrize(("args", "needle"), [
    (["export", "--design", "C"], "design: unknown 'C'"),
    (["export", "--design", "A", "--d-model", "x"], "invalid int value"),
])
def test_the_console_script_exits_2_with_one_line(ffnbench_exe, tmp_path, args, needle):
    r = run(ffnbench_exe, *args, "--out", tmp_path / "out")
    assert r.returncode == 2 and needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "out").exists()


def test_doctor_json_reports_isa_and_int8_probe(cli):
    r = cli("doctor", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert set(report["cpu"]["isa"]) >= {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8"}
    # Measured by the probe, and what the flags say: x86 without VNNI (vpmaddubsw's int16 pair sums)
    # saturates; VNNI and AMX accumulate in int32; other architectures have no such kernel.
    isa = report["cpu"]["isa"]
    assert report["int8"]["u8s8_saturates"] is (isa["avx2"] and not (isa["avx512_vnni"] or isa["avx_vnni"]))
    assert report["int8"]["reduce_range"] is report["int8"]["u8s8_saturates"]
    assert "CPUExecutionProvider" in report["onnxruntime_providers"]
    assert report["machine_class"].startswith("cpu-")
    assert report["versions"]["onnxruntime"]
    # The kernels this class takes, from the same flags: what the report's "What ran" tables cite.
    assert report["int8"]["mlas_kernels"] == int8_kernels(report["cpu"]["isa"])
    bnb = import_bnb()
    assert report["bitsandbytes"]["cpu_4bit"] == {
        "kernel": "fused bf16 (AVX512-BF16)" if bnb.functional.has_avx512bf16() else "dequantize + GEMM",
        "whole_blocks_only": avx512_dequantization()}


def test_doctor_text_names_the_machine_class(cli):
    r = cli("doctor")
    assert r.returncode == 0, r.stderr
    assert "class cpu-" in r.stdout and "U8S8 saturates" in r.stdout


def test_export_writes_model_and_manifest(cli, tmp_path):
    r = cli("export", "--design", "B", "--preset", "tiny", "--out", tmp_path / "b")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert "RMSNormalization" in manifest["ops"] and manifest["parity"]["max_abs_err"] <= 1e-4
    onnx.checker.check_model(str(tmp_path / "b" / "model.onnx"))


def test_export_from_weights(cli, tmp_path):
    g = torch.Generator().manual_seed(0)
    p = "model.layers.0."
    # Trained scale: 1/sqrt(fan_in), so outputs are O(1) and the 1e-4 parity bound is meaningful.
    save_file({f"{p}post_attention_layernorm.weight": torch.ones(64),
               f"{p}mlp.gate_proj.weight": torch.randn(128, 64, generator=g) / 8,
               f"{p}mlp.up_proj.weight": torch.randn(128, 64, generator=g) / 8,
               f"{p}mlp.down_proj.weight": torch.randn(64, 128, generator=g) / 128**0.5},
              tmp_path / "w.safetensors")
    r = cli("export", "--design", "B", "--weights", tmp_path / "w.safetensors",
            "--prefix", p, "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["config"]["hidden"] == 128


@pytest.mark.parametrize(("args", "needle"), [
    (["gate", "--baseline", "b.json", "run", "--processes", "4"], "--processes counts the workers of each side; add "
                                                                   "--old-python"),
    (["compare", "old", "new", "--remeasure", "--old-python", "python", "--processes", "1"],
     "--processes: a test over worker processes needs at least 2 a side, got 1"),
])
def test_remeasure_processes_bad_input(cli, args, needle):
    r = cli(*args)
    assert r.returncode == 2 and needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(("args", "needle"), [
    (["--design", "C"], "design: unknown 'C'"),
    (["--design", "A", "--preset", "huge"], "preset: unknown 'huge'"),
    (["--design", "A", "--d-model", "0"], "d_model: must be a positive integer"),
    (["--design", "A", "--d-ff", "-3"], "d_ff: must be a positive integer"),
    (["--design", "B", "--weights", "missing.safetensors"], "no file at"),
    (["--design", "A", "--d-model", "x"], "invalid int value"),
])
def test_export_bad_input_is_one_line_exit_2_and_writes_nothing(cli, tmp_path, args, needle):
    r = cli("export", *args, "--out", tmp_path / "out")
    assert r.returncode == 2
    assert needle in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "out").exists()


def test_export_to_an_existing_file_is_refused(cli, tmp_path):
    (tmp_path / "file").write_text("keep me")
    r = cli("export", "--design", "A", "--preset", "tiny", "--out", tmp_path / "file")
    assert r.returncode == 2 and "is an existing file" in r.stderr
    assert (tmp_path / "file").read_text() == "keep me"


def test_weights_with_a_missing_tensor_name_it(cli, tmp_path):
    save_file({"mlp.gate_proj.weight": torch.zeros(128, 64)}, tmp_path / "w.safetensors")
    r = cli("export", "--design", "B", "--weights", tmp_path / "w.safetensors",
            "--out", tmp_path / "out")
    assert r.returncode == 2 and "'post_attention_layernorm.weight' is missing" in r.stderr
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def exported_b(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "b"
    assert main(["export", "--design", "B", "--preset", "tiny", "--out", str(out)]) == 0
    return out / "model.onnx"


def test_quantize_writes_an_artifact_with_its_manifest(cli, exported_b, tmp_path):
    r = cli("quantize", "--recipe", "ort-int8-qdq-percentile", "--calibration", "production",
            "--model", exported_b, "--out", tmp_path / "q")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "q" / "manifest.json").read_text())
    assert manifest["calibration"]["scenario"] == "production"
    assert manifest["recipe"] == "ort-int8-qdq-percentile"
    onnx.checker.check_model(str(tmp_path / "q" / "model.onnx"))


def test_quantize_a_bnb_recipe_rebuilds_the_module_from_the_export(cli, exported_b, tmp_path):
    r = cli("quantize", "--recipe", "bnb-nf4", "--model", exported_b, "--out", tmp_path / "q")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "q" / "manifest.json").read_text())
    assert manifest["runtime"] == "bnb" and (tmp_path / "q" / "model.pt").stat().st_size == manifest["bytes"]


def test_quantize_a_mitigated_recipe_transforms_the_block_on_the_calibration_scenario(cli, exported_b, tmp_path):
    r = cli("quantize", "--recipe", "ort-int8-dynamic+shift+smooth", "--calibration", "massive", "--set", "alpha=0.8",
            "--model", exported_b, "--out", tmp_path / "q")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "q" / "manifest.json").read_text())
    mitigation = manifest["source"]["mitigation"]
    assert manifest["recipe"] == "ort-int8-dynamic+shift+smooth" and mitigation["mitigations"] == ["shift", "smooth"]
    assert mitigation["alpha"] == 0.8 and mitigation["calibration"]["scenario"] == "massive"
    assert mitigation["fp32_max_abs_err"] <= 1e-4 * max(1.0, mitigation["fp32_max_abs_output"])


@pytest.mark.parametrize(("args", "needle"), [
    (["--recipe", "int3"], "recipe: unknown 'int3'; choose one of"),
    (["--recipe", "ort-int8-dynamic+spin"], "unknown mitigation '+spin'"),
    (["--recipe", "ort-int8-dynamic+rotate", "--set", "alpha=0.5"], "alpha sets +smooth"),
    (["--recipe", "ort-int8-dynamic+smooth", "--set", "alpha=much"], "alpha must be a number"),
    (["--recipe", "ort-int4-rtn", "--set", "accuracy_level=9"], "accuracy_level must be one of"),
    (["--recipe", "ort-int4-rtn", "--set", "accuracy_level"], "--set: expected KEY=VALUE"),
    (["--recipe", "ort-int8-qdq-minmax", "--calibration", "tuesday"], "scenario: unknown 'tuesday'"),
])
def test_quantize_bad_input(cli, exported_b, tmp_path, args, needle):
    r = cli("quantize", *args, "--model", exported_b, "--out", tmp_path / "q")
    assert r.returncode == 2 and needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("damage", ["foreign", "truncated"])
def test_quantize_rejects_a_damaged_model(cli, exported_b, tmp_path, damage):
    bad = tmp_path / "model.onnx"
    data = exported_b.read_bytes()
    bad.write_bytes(b"PK\x03\x04 a zip, not a model" if damage == "foreign" else data[: len(data) // 3])
    r = cli("quantize", "--recipe", "ort-int8-dynamic", "--model", bad, "--out", tmp_path / "q")
    assert r.returncode == 2 and "is not a valid ONNX model" in r.stderr, r.stderr
    assert not (tmp_path / "q").exists()


LATENCY_METRICS = {"p50_ms", "p90_ms", "p99_ms", "mean_ms", "p50_ci_low_ms", "p50_ci_high_ms", "tokens_per_s",
                   "iterations", "model_bytes", "resident_mb", "peak_call_mb", "threads", "achieved_gbps",
                   "achieved_gflops", "roofline_fraction"}


def test_run_records_every_metric_per_cell(ffnbench_exe, tmp_path, seed_exports):
    from ffnbench.bench.cells.metrics import ALL_METRICS

    # Short timing settings: the test checks what is recorded, not how fast anything is.
    # Memory in child processes and kernel diagnoses are tested in test_memory, test_kernel_paths and
    # by the report's run; 5 rounds, the fewest a paired interval is given on.
    (tmp_path / "fast.toml").write_text("[latency]\nwarmup = 0\nmin_iterations = 5\nmin_seconds = 0.001\n"
                                        "prefill = [2, 8]\nmemory = false\ndiagnose = false\n"
                                        "[downstream]\nrecipes = []\n")
    r = run(ffnbench_exe, "run", "--config", tmp_path / "fast.toml", "--models", "tiny", "--designs", "A,B",
            "--scenarios", "clean,production", "--out", seed_exports(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    cells = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    accuracy = [c for c in cells if c["kind"] == "accuracy"]
    timing = [c for c in cells if c["kind"] == "latency"]
    assert len(accuracy) == 2 * 5 * 2 and len(timing) == 2 * 5 * 2
    for cell in cells:
        assert cell["status"] == "ok", cell
    for cell in accuracy:
        assert set(cell["metrics"]) == set(ALL_METRICS)
    for cell in timing:
        assert set(cell["metrics"]) >= LATENCY_METRICS and cell["metrics"]["iterations"] >= 5
        assert "kernel_path" not in cell
        assert cell["metrics"]["resident_mb"] is None
        assert cell["memory_unavailable"] == "memory = false in the run's config"
        assert cell["metrics"]["vs_fp32_ort"]["ci_low"] <= cell["metrics"]["vs_fp32_ort"]["ratio"]
    assert "40 cells measured" in r.stdout


@pytest.mark.parametrize(("args", "needle"), [
    (["--scenarios", "clean,tuesday"], "scenarios: unknown 'tuesday'"),
    (["--preset", "huge"], "--preset: unknown 'huge'"),
    (["--recipes", "int3"], "recipes: unknown 'int3'"),
    (["--config", "absent.toml"], "--config: no file at absent.toml"),
    (["--shard", "3/2"], "--shard: '3/2' is not K/N with 1 <= K <= N"),
    (["--shard", "two"], "--shard: 'two' is not K/N"),
])
def test_run_bad_input(cli, tmp_path, args, needle):
    r = cli("run", "--models", "tiny", *args, "--out", tmp_path / "run")
    assert r.returncode == 2 and needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_a_shape_that_cannot_fit_in_memory_is_refused_before_anything_runs(cli, tmp_path):
    (tmp_path / "huge.toml").write_text("[latency]\nprefill = [65536, 4096]\n[downstream]\nrecipes = []\n")
    r = cli("run", "--config", tmp_path / "huge.toml", "--models", "tiny", "--out", tmp_path / "run")
    assert r.returncode == 2 and "memory: model 'tiny' needs about" in r.stderr, r.stderr
    assert "prefill 65536x4096" in r.stderr and "GB is available" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_run_into_an_existing_run_needs_resume(cli, tmp_path, seed_exports):
    (tmp_path / "acc.toml").write_text("latency = false\n[downstream]\nrecipes = []\n")
    args = ["run", "--config", tmp_path / "acc.toml", "--models", "tiny", "--designs", "A", "--recipes", "fp32",
            "--scenarios", "clean", "--no-report", "--out", seed_exports(tmp_path / "run")]
    first = cli(*args)  # a config with a flat key older files use: read, with a note
    assert first.returncode == 0 and "note: config" in first.stderr
    assert "'latency' is now [latency] enabled" in first.stderr
    memo = tmp_path / "run" / "decision.md"  # written with --no-report too, and its headline printed
    assert (tmp_path / "run" / "decision.json").exists() and not (tmp_path / "run" / "report.md").exists()
    assert memo.read_text().splitlines()[2] in first.stdout
    again = cli(*args)
    assert again.returncode == 2 and "pass --resume" in again.stderr
    assert cli(*args, "--resume").returncode == 0
    assert len((tmp_path / "run" / "results.jsonl").read_text().splitlines()) == 1


def test_shards_merge_and_report_from_the_command_line(cli, tmp_path, seed_exports):
    (tmp_path / "acc.toml").write_text("[latency]\nenabled = false\n[downstream]\nrecipes = []\n")
    common = ["run", "--config", tmp_path / "acc.toml", "--models", "tiny", "--recipes", "fp32,ort-int8-dynamic",
              "--scenarios", "clean,production", "--no-report"]
    for k in (1, 2):
        r = cli(*common, "--shard", f"{k}/2", "--out", seed_exports(tmp_path / f"s{k}"))
        assert r.returncode == 0, r.stderr
    r = cli("merge", tmp_path / "s1", tmp_path / "s2", "--out", tmp_path / "merged")
    assert r.returncode == 0, r.stderr
    assert "8 cells from 2 runs" in r.stdout and (tmp_path / "merged" / "report.md").exists()
    (tmp_path / "s2" / "results.jsonl").write_text("{not json\n")
    r = cli("merge", tmp_path / "s1", tmp_path / "s2", "--out", tmp_path / "again")
    assert r.returncode == 2 and "line 1 is corrupt" in r.stderr and not (tmp_path / "again").exists()


@pytest.mark.parametrize("spec", ["p50_ms:+15pp", "p50_ms:+2dB"])
def test_gate_refuses_a_tolerance_unit_that_does_not_fit_its_metric(cli, tmp_path, spec):
    r = cli("gate", "--baseline", tmp_path / "b.json", tmp_path / "run", "--tolerance", spec)
    assert r.returncode == 2 and "does not fit p50_ms" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(("args", "needle"), [
    (["--design", "C"], "design: unknown 'C'"),
    (["--design", "A", "--steps", "0"], "0 steps only with --init-from"),
    (["--design", "A", "--steps", "0", "--init-from", "x", "--drift", "production"], "with --steps 0 nothing trains"),
    (["--design", "A", "--lr", "0"], "lr must be positive"),
])
def test_train_bad_input_is_one_line_exit_2_and_writes_nothing(cli, tmp_path, args, needle):
    r = cli("train", *args, "--out", tmp_path / "lm")
    assert r.returncode == 2 and needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "lm").exists()


def test_train_refuses_an_existing_output(cli, tmp_path):
    (tmp_path / "lm").mkdir()
    r = cli("train", "--design", "B", "--steps", "1", "--out", tmp_path / "lm")
    assert r.returncode == 2 and "already exists; choose a new directory" in r.stderr
