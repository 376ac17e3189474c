"""The report: built from a real run's records, with the decision table, verdict, plots and caveats."""

import json

import onnx
import pytest
from test_decide import all_records, recompute

from ffnbench.bench import RunConfig, run
from ffnbench.bench.cells import diagnosis
from ffnbench.bench.cells.latency import LatencyConfig
from ffnbench.bench.machine import kernel_paths
from ffnbench.bench.machine.isa import cpu_info, int8_kernels, machine_class
from ffnbench.bench.report import decision
from ffnbench.bench.report.report import write
from ffnbench.errors import UsageError
from ffnbench.files import sha256_file
from ffnbench.quant.bnb_recipes import import_bnb


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, seed_exports):
    """A tiny run with memory in child processes, and every 4-bit cell diagnosed at decode and every
    quantized one at prefill: at the tiny size the decode times of one width need not spread 3x, nor
    prefill times reach fp32's, so the thresholds are 1x and 0x here. Five rounds at least: each
    runnable leaves the round-robin at its minimums, and a paired interval needs five."""
    out = seed_exports(tmp_path_factory.mktemp("report") / "run")
    cfg = RunConfig(models=["tiny"], n_requests=2, seq_len=8, calibration_requests=2,
                    latency=LatencyConfig(warmup=0, min_iterations=5, min_seconds=0.001, prefill=(2, 4)),
                    recipes=["fp32", "ort-int8-dynamic", "ort-int4-rtn", "ort-int4-hqq", "bnb-nf4", "torch-fp16"],
                    scenarios=["clean", "shift-1", "shift-4", "production"])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(kernel_paths, "SPREAD", 1.0)
        patch.setattr(diagnosis, "PREFILL_NOT_FASTER", 0.0)
        run(cfg, out, progress=False)
    decision.write_for_run(out)  # as `ffnbench run` does after the run
    return out


def test_report_has_the_decision_table_verdict_and_plots(run_dir):
    report = write(run_dir).read_text()
    assert "## Sublayers (seeded weights): A vs B under `production` (model `tiny`)" in report
    assert "| ort-int8-dynamic |" in report and "A/B [95 % CI]" in report
    assert "median A − B =" in report and "quantized recipes" in report
    for plot in ("robustness_shift_tiny.png", "latency_decode_tiny.png", "latency_prefill_tiny.png", "memory_tiny.png"):
        assert f"plots/{plot}" in report
        assert (run_dir / "plots" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Caveats" in report and "## Machine" in report


def test_the_run_writes_its_decision_and_the_report_opens_with_its_headline(run_dir):
    """A real run's memo: sublayer evidence only (no trained pair here), every claim recomputed from
    the run's own records."""
    decision = json.loads((run_dir / "decision.json").read_text())
    report = write(run_dir).read_text()
    assert report.index("## The decision ([decision.md](decision.md))") < report.index("## Sublayers")
    assert decision["rows"] and {r["evidence_kind"] for r in decision["rows"]} <= {"sublayers", None}
    records = all_records([run_dir])
    assert decision["claims"]
    for claim in decision["claims"]:
        assert recompute(claim, records) == pytest.approx(claim["figure"], rel=1e-9), claim["text"]


def test_memory_per_recipe_is_measured_in_fresh_processes_and_reported(run_dir):
    cells = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    timing = {(c["design"], c["recipe"], c["shape"]["name"]): c["metrics"] for c in cells if c["kind"] == "latency"}
    # Measured for every runnable, ONNX Runtime's and bitsandbytes' (that they track the weights' size
    # is tested at the `small` size in test_memory: tiny's 0.13 MB of weights are within the noise).
    for key, m in timing.items():
        assert m["resident_mb"] is not None and m["peak_call_mb"] is not None, key
    # Forked, so the server had one thread after importing torch and bitsandbytes for the torch module.
    assert {c["memory_probe"] for c in cells if c["kind"] == "latency"} == {"forked"}
    assert timing["B", "torch-fp16", "prefill"]["peak_call_mb"] > 0  # a torch module's child, too
    report = write(run_dir).read_text()
    assert "### Memory per recipe" in report and "| resident (MB) |" in report


def test_diagnosed_decode_cells_say_what_ran_and_hqq_gets_its_uint8_alternative(run_dir):
    cells = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    diagnosed = {(c["design"], c["recipe"]): c["kernel_path"] for c in cells
                 if c.get("kernel_path") and c["shape"]["name"] == "decode"}
    assert set(diagnosed) == {(d, r) for d in ("A", "B") for r in ("ort-int4-rtn", "ort-int4-hqq", "bnb-nf4")}
    hqq = diagnosed["B", "ort-int4-hqq"]
    assert hqq["status"] == "ok" and hqq["bits"] == 4 and {a["zero_points"] for a in hqq["attributes"]} == {"float32"}
    alternative = hqq["alternative"]
    assert alternative["p50_ms"] > 0 and alternative["speedup"]["ci_low"] <= alternative["speedup"]["ratio"]
    # The variant is another artifact: uint8 zero points on every MatMulNBits, other bytes, other
    # weights (zero points rounded to 0..15, weights requantized), so another accuracy.
    variant = run_dir / alternative["path"]
    original = next(run_dir / c["artifact"]["dir"] / "model.onnx" for c in cells
                    if c.get("kind") == "latency" and (c["design"], c["recipe"]) == ("B", "ort-int4-hqq"))
    assert {a["zero_points"] for a in kernel_paths.attributes(onnx.load(str(variant)))} == {"uint8"}
    assert sha256_file(variant) != sha256_file(original)
    assert alternative["centered_sqnr_db"] != alternative["recipe_centered_sqnr_db"] > 0
    report = write(run_dir).read_text()
    simd = int8_kernels(cpu_info()["isa"])["matmulnbits"]
    assert "### What ran at decode" in report and "cannot prepack" in report
    assert (f"then MLAS's {simd} int8 kernel" if simd else "not an x86 CPU") in report
    assert "with uint8 zero points" in report


def test_quantized_prefill_cells_not_faster_than_fp32_say_what_ran_and_int4_gets_the_other_accuracy_level(run_dir):
    cells = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    diagnosed = {(c["design"], c["recipe"]): c["kernel_path"] for c in cells
                 if c.get("kernel_path") and c["shape"]["name"] == "prefill"}
    quantized = ("ort-int8-dynamic", "ort-int4-rtn", "ort-int4-hqq", "bnb-nf4", "torch-fp16")
    assert set(diagnosed) == {(d, r) for d in ("A", "B") for r in quantized}
    rtn, int8, fp16 = (diagnosed["A", r] for r in ("ort-int4-rtn", "ort-int8-dynamic", "torch-fp16"))
    assert (rtn["reference"], fp16["reference"]) == ("fp32_ort", "fp32_torch")
    assert rtn["vs_reference"]["ratio"] > 0 and rtn["shape"] == "prefill"
    assert rtn["machine_class"] == machine_class(cpu_info()["isa"]) and rtn["int8_kernels"] == int8_kernels(
        cpu_info()["isa"])
    alternative = rtn["alternative"]
    assert alternative["as_recipe"] == {"base": "ort-int4-rtn", "accuracy_level": 0}
    assert alternative["p50_ms"] > 0 and alternative["centered_sqnr_db"] > 0
    assert (run_dir / alternative["path"]).is_file()
    assert "alternative" not in int8 and "alternative" not in fp16
    # HQQ's float zero points: its alternative is uint8 zero points at prefill too.
    hqq = diagnosed["A", "ort-int4-hqq"]["alternative"]
    assert hqq["as_recipe"] == {"base": "ort-int4-hqq", "zero_points": "uint8"}
    report = write(run_dir).read_text()
    prefill = report[report.index("### What ran at prefill"):]
    assert f"Measured on machine class `{rtn['machine_class']}`" in prefill
    u8s8 = rtn["int8_kernels"]["u8s8_gemm"]
    assert (f"U8S8 int8 GEMM on MLAS's {u8s8} kernel" if u8s8 else "portable kernel") in prefill
    assert "with accuracy_level 0 (fp32 compute; the same 4-bit weights)" in prefill
    assert '`accuracy_level = 0`, `base = "ort-int4-rtn"`' in prefill


def test_the_caveats_say_which_kernel_bitsandbytes_4bit_ran_on_this_class(run_dir):
    fused = import_bnb().functional.has_avx512bf16()
    said = (f"bitsandbytes 4-bit on machine class `{machine_class(cpu_info()['isa'])}` (bnb-nf4): "
            + ("fused bf16 (AVX512-BF16), activations in bfloat16. On a CPU without AVX512-BF16" if fused
               else "dequantize + GEMM, activations in float32."))
    assert said in write(run_dir).read_text()


def test_verdict_numbers_come_from_the_records(run_dir):
    cells = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    get = {(c["design"], c["recipe"]): c["metrics"]["centered_sqnr_db"] for c in cells
           if c["kind"] == "accuracy" and c["scenario"] == "production"}
    delta = get["A", "ort-int8-dynamic"] - get["B", "ort-int8-dynamic"]
    assert f"{delta:.1f} dB" in write(run_dir).read_text()


def test_failed_cells_are_listed(run_dir):
    results = run_dir / "results.jsonl"
    original = results.read_text()
    try:
        with open(results, "a") as f:
            f.write(json.dumps({"key": "A/tiny/x/clean/cal=-", "status": "error", "error": "Boom: injected",
                                "design": "A", "model": "tiny", "recipe": "x", "scenario": "clean"}) + "\n")
        report = write(run_dir).read_text()
        assert "| A/tiny/x/clean/cal=- | error | Boom: injected |" in report
    finally:
        results.write_text(original)


def test_not_a_run_directory(tmp_path):
    with pytest.raises(UsageError, match="is not a run directory"):
        write(tmp_path)
