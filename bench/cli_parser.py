"""The `ffnbench` command line's arguments: one subparser a command, and one-line errors."""

import argparse


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # One line, like every other bad-input error of this tool, instead of usage + message.
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    # Defaults are None so that FFNConfig's own defaults apply; they live in one place.
    p.add_argument("--design", required=True, help="A, B, ln-swiglu or rms-gelu")
    p.add_argument("--preset", help="tiny, small, default or llama-7b (sizes only)")
    p.add_argument("--d-model", type=int, dest="d_model")
    p.add_argument("--d-ff", type=int, dest="d_ff", help="GELU hidden width")
    p.add_argument("--swiglu-hidden", type=int, dest="swiglu_hidden",
                   help="SwiGLU hidden width (default: parameter-matched to --d-ff)")
    p.add_argument("--no-bias", action="store_false", dest="bias", default=None)
    p.add_argument("--no-residual", action="store_false", dest="residual", default=None)
    p.add_argument("--gelu", choices=("erf", "tanh"))
    p.add_argument("--eps", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--weights", help="a local .safetensors file to load the layer from (A or B)")
    p.add_argument("--prefix", default="", help="name prefix of the layer in --weights, e.g. model.layers.0.")


def _add_environment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--old-python", help="the old revision's interpreter (its .venv/bin/python): re-time every cell, "
                   "each side by its own code in a worker (without: ONNX Runtime cells only, in this process)")
    p.add_argument("--new-python", help="the new side's interpreter, if not this one")
    p.add_argument("--processes", type=int, help="worker processes a side with --old-python/--new-python "
                   "(default: the new run's [latency] remeasure_processes, 5); the test's unit is the process")
    p.add_argument("--weights-dir", help="where a run's [model.NAME] and replay files are, if not where its paths "
                   "point (a run directory copied to another machine); files are found by path, then by name")


def build_parser(description: str) -> argparse.ArgumentParser:
    """Every command's arguments; `description` heads `ffnbench --help`."""
    parser = _Parser(prog="ffnbench", description=description)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    doctor = sub.add_parser("doctor", help="versions, CPU ISA, runtimes, devices")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.add_argument("--threads", type=int, default=2, help="threads for the peak measurements (default 2)")
    doctor.add_argument("--remeasure", action="store_true", help="re-measure the cached bandwidth and GEMM peaks")
    doctor.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto",
                        help="cuda: fail (exit 2) unless a CUDA device is usable")

    export = sub.add_parser("export", help="export one FFN sublayer to ONNX with its manifest")
    _add_model_args(export)
    export.add_argument("--out", required=True, help="directory for model.onnx and manifest.json")
    export.add_argument("--decomposed", action="store_true",
                        help="opset 18 in primitive ops, for runtimes without opset 23")
    export.add_argument("--taps", action="store_true", help="also output norm_out, act_in, act_out")

    quantize = sub.add_parser("quantize", help="quantize an exported model with one recipe")
    quantize.add_argument("--recipe", required=True,
                          help="a recipe name, e.g. ort-int8-dynamic, with mitigations: ort-int8-dynamic+rotate")
    quantize.add_argument("--model", required=True, help="the fp32 model.onnx written by `ffnbench export`")
    quantize.add_argument("--out", required=True, help="directory for the artifact and its manifest.json")
    quantize.add_argument("--calibration", default="clean",
                          help="scenario whose hidden states calibrate static (QDQ) recipes and set a mitigated "
                               "recipe's transform (RECIPE+shift, ...) (default: clean)")
    quantize.add_argument("--calibration-requests", type=int, default=16, dest="calibration_requests")
    quantize.add_argument("--calibration-seq", type=int, default=64, dest="calibration_seq")
    quantize.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu",
                          help="where bitsandbytes and torch recipes place the module")
    quantize.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="params",
                          help="override a recipe parameter, e.g. --set accuracy_level=0, or a mitigation's: "
                               "alpha, spike_threshold, seed (repeatable)")

    run = sub.add_parser("run", help="run the benchmark matrix into a run directory")
    run.add_argument("--preset", help="quick (default), default or full")
    run.add_argument("--config", help="a TOML file of RunConfig keys and [scenario.NAME] tables")
    run.add_argument("--designs", help="comma-separated, e.g. A,B")
    run.add_argument("--models", help="model size presets, e.g. small,default")
    run.add_argument("--recipes", help="comma-separated recipe names")
    run.add_argument("--scenarios", help="comma-separated scenario names")
    run.add_argument("--calibration", help="calibration scenario(s) for QDQ recipes, e.g. clean,production")
    run.add_argument("--device", choices=("cpu", "cuda", "auto"), help="where torch and bitsandbytes run")
    run.add_argument("--out", required=True, help="run directory")
    run.add_argument("--resume", action="store_true", help="skip cells already in OUT/results.jsonl")
    run.add_argument("--no-report", action="store_true", help="skip report.md and the plots at the end")
    run.add_argument("--shard", help="K/N: run the K-th of N deterministic slices of the matrix")

    merge = sub.add_parser("merge", help="join run directories (shards of one matrix) into one")
    merge.add_argument("run_dirs", nargs="+")
    merge.add_argument("--out", required=True)
    merge.add_argument("--allow-mismatch", action="store_true",
                       help="merge runs from different stacks or configs (recorded in the manifest)")

    gate = sub.add_parser("gate", help="judge a run against a baseline: exit 0 pass, 1 regression, 2 bad input")
    gate.add_argument("run_dir")
    gate.add_argument("--baseline", required=True, help="baseline JSON (baselines/<machine class>.json)")
    gate.add_argument("--tolerance", action="append", default=[], metavar="METRIC:[+-]N[dB|pp|%%]",
                      help="override or add a check, e.g. p50_ms:+20%% (repeatable)")
    gate.add_argument("--tolerances", help="a TOML file with tolerances = [\"p50_ms:+20%%\", ...]")
    gate.add_argument("--only", choices=("all", "accuracy", "latency"), default="all")
    gate.add_argument("--as", action="append", default=[], dest="aliases", metavar="OLD=NEW",
                      help="judge the run's recipe NEW against the baseline's OLD (e.g. a recipe swap)")
    gate.add_argument("--remeasure", metavar="BASELINE_RUN",
                      help="re-time the baseline run's artifacts beside this run's and gate latency on that ratio")
    _add_environment_args(gate)
    gate.add_argument("--allow-stack-change", action="store_true")
    gate.add_argument("--strict-recorded-latency", action="store_true",
                      help="fail on latency recorded in separate runs too (noisy on shared machines)")
    gate.add_argument("--update-baseline", action="store_true", help="write the baseline from RUN_DIR instead")

    compare = sub.add_parser("compare", help="latency of two runs' artifacts, re-timed side by side")
    compare.add_argument("old_run")
    compare.add_argument("new_run")
    compare.add_argument("--remeasure", action="store_true", required=True,
                         help="re-time both runs' artifacts interleaved (the only mode)")
    _add_environment_args(compare)

    train = sub.add_parser("train", help="train a byte-level causal LM whose FFN sublayers are one design")
    train.add_argument("--design", required=True, help="A, B, ln-swiglu or rms-gelu")
    train.add_argument("--out", required=True, help="a new directory for model.safetensors and manifest.json")
    train.add_argument("--steps", type=int, help="optimiser steps (default: TrainConfig's); 0 with --init-from "
                       "stores that checkpoint again, e.g. in float16")
    train.add_argument("--batch", type=int, help="sequences a step (default: TrainConfig's)")
    train.add_argument("--seed", type=int, help="initialisation and data order (default 0)")
    train.add_argument("--lr", type=float, help="peak learning rate (default: TrainConfig's)")
    train.add_argument("--init-from", help="fine-tune: start from this checkpoint directory's weights")
    train.add_argument("--store-dtype", help="float32 (default) or float16: how model.safetensors stores the weights")
    train.add_argument("--corpus", help="prose (default: pydoc topics, what the committed models learned) or "
                       "library (18 MB split by document; `make corpus` fetches it)")
    train.add_argument("--drift", help="named scenarios a share of the requests carries while training, e.g. "
                       "production,massive (a model that lives with its drift)")
    train.add_argument("--drift-share", type=float, default=0.5, help="share of requests drifted (default 0.5)")
    train.add_argument("--inject", default="ffn-input", help="where the drift enters: ffn-input or residual")

    capture = sub.add_parser("capture", help="hidden states entering chosen FFN norms of a real model, over a text")
    capture.add_argument("--checkpoint", required=True,
                         help="a directory `ffnbench train` wrote, or a local Hugging Face checkpoint (needs [hf])")
    capture.add_argument("--text", required=True, help="a text file: the traffic to run through the model")
    capture.add_argument("--layers", required=True, help="comma-separated layer numbers, e.g. 0,6,11")
    capture.add_argument("--out", required=True, help="a new .safetensors file (a .json file beside it too)")
    capture.add_argument("--max-windows", type=int, default=64, help="windows of 128 tokens at most (default 64)")
    capture.add_argument("--reference", help="a text of the model's usual traffic (e.g. clean prose): each layer's "
                         "domain_shift_std measures the captured states against it")

    report = sub.add_parser("report", help="write report.md and plots/*.png for a run directory")
    report.add_argument("run_dir")

    decide = sub.add_parser("decide", help="decision.md and decision.json: A or B for a deployment, from runs")
    decide.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    decide.add_argument("--deployment", help="a TOML file with a [deployment] table: families = {int8-dynamic = 0.5, "
                        "fp16 = 0.5}, machine_class, scenarios, budget (default: every family, equal shares)")
    decide.add_argument("--budget", help="one metric and bound, e.g. same_top1>=0.99 (the default) or kld_mean<=1e-3")
    decide.add_argument("--traffic", help="a capture (`ffnbench capture`): placed on the runs' dose-response axes")
    decide.add_argument("--out", help="where decision.md and decision.json go (default: the first RUN_DIR)")
    return parser
