"""The `ffnbench` console script: argument parsing only; each command calls one library function."""

import argparse
import json
import os
import sys
from pathlib import Path

from ffnbench.errors import UsageError


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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ffnbench", description=__doc__)
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


def cmd_doctor(args) -> int:
    from ffnbench.bench.machine import doctor

    if args.threads <= 0:
        raise UsageError(f"--threads: must be positive, got {args.threads}")
    _device(args.device)
    report = doctor.collect(threads=args.threads, remeasure=args.remeasure)
    print(json.dumps(report, indent=2) if args.json else doctor.format_text(report))
    return 0


def model_from_args(args):
    from ffnbench.models import FFNConfig, build_model, load_safetensors, preset

    overrides = {k: getattr(args, k) for k in
                 ("d_model", "d_ff", "swiglu_hidden", "bias", "residual", "gelu", "eps", "seed")
                 if getattr(args, k) is not None}
    if args.weights:
        given = ["--preset"] * bool(args.preset) + [f"--{k.replace('_', '-')}" for k in
                                                    ("d_model", "d_ff", "swiglu_hidden") if k in overrides]
        if "bias" in overrides:
            given.append("--no-bias")
        if given:
            raise UsageError(f"--weights: sizes come from the file; drop {', '.join(given)}")
        return load_safetensors(args.weights, args.design, args.prefix, **overrides)
    cfg = preset(args.preset, args.design, **overrides) if args.preset else \
        FFNConfig(design=args.design, **overrides)
    return build_model(cfg)


def cmd_export(args) -> int:
    from ffnbench.export import export_onnx

    block = model_from_args(args)
    exported = export_onnx(block, args.out, decomposed=args.decomposed, taps=args.taps)
    m = exported.manifest
    print(f"wrote {exported.path} (opset {m['opset']}, {m['bytes'] / 1e6:.2f} MB, "
          f"parity max abs err {m['parity']['max_abs_err']:.2e}, ops {', '.join(m['ops'])})")
    return 0


def _pairs(pairs: list[str], flag: str, example: str) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or (flag == "--as" and not value.strip()):
            raise UsageError(f"{flag}: expected KEY=VALUE, got '{pair}'; e.g. {flag} {example}")
        out[key.strip()] = value.strip()
    return out


def cmd_quantize(args) -> int:
    from ffnbench.bench.traffic.calibration import calibration_for
    from ffnbench.quant import Skipped, needs_calibration, quantize

    params = _pairs(args.params, "--set", "accuracy_level=0")
    calibration = calibration_for(args.model, args.calibration, args.calibration_requests, args.calibration_seq) \
        if needs_calibration(args.recipe, params) else None  # checks the recipe and its parameters first
    try:
        artifact = quantize(args.model, args.recipe, args.out, calibration=calibration, device=_device(args.device),
                            **params)
    except Skipped as e:
        print(f"ffnbench quantize: skipped {args.recipe}: {e}", file=sys.stderr)
        return 2
    m = artifact.manifest
    print(f"wrote {artifact.path} ({args.recipe}, {m['runtime']}, {m['bytes'] / 1e6:.2f} MB)")
    return 0


def run_config_from_args(args):
    from ffnbench.bench.config import preset_config
    from ffnbench.bench.config_toml import read_toml

    config = preset_config(args.preset or "quick")
    if args.config:
        config, notes = read_toml(args.config, base=config if args.preset else None)
        for note in notes:
            print(f"ffnbench: note: {note}", file=sys.stderr)
        if args.preset:
            config.preset = args.preset
    for axis in ("designs", "models", "recipes", "scenarios", "calibration"):
        value = getattr(args, axis)
        if value is not None:
            setattr(config, axis, [v.strip() for v in value.split(",") if v.strip()])
    if args.device:
        config.device = _device(args.device)
    return config.check()


def _device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device here (torch.cuda.is_available() is False); "
                         "use --device cpu or auto")
    return requested


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    if spec is None:
        return None
    k, sep, n = spec.partition("/")
    if not (sep and k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
        raise UsageError(f"--shard: '{spec}' is not K/N with 1 <= K <= N; e.g. --shard 1/2")
    return int(k), int(n)


def cmd_run(args) -> int:
    from ffnbench.bench.report import decision, summary
    from ffnbench.bench.runner import run

    config = run_config_from_args(args)
    results = run(config, args.out, resume=args.resume, shard_spec=parse_shard(args.shard))
    decision.write_for_run(Path(args.out))  # the memo that argues A or B, with or without a report
    _say([summary.count_line(args.out, results), *summary.drift_lines(results)])
    if not args.no_report:
        from ffnbench.bench.report.report import write

        print(f"wrote {write(args.out)}")
    _say(summary.downstream_lines(Path(args.out)))
    _say(summary.decision_lines(Path(args.out)))
    return 0


def _say(lines: list[str]) -> None:
    for line in lines:
        print(line)


def cmd_merge(args) -> int:
    from ffnbench.bench.analysis import downstream
    from ffnbench.bench.merge import merge
    from ffnbench.bench.report import decision
    from ffnbench.bench.report.report import write

    cells = merge(args.run_dirs, args.out, allow_mismatch=args.allow_mismatch)
    downstream.write(args.out)
    decision.write_for_run(Path(args.out))
    print(f"{args.out}: {len(cells)} cells from {len(args.run_dirs)} runs; wrote {write(args.out)}")
    return 0


def cmd_gate(args) -> int:
    from ffnbench.bench.gate import gate, gate_report
    from ffnbench.bench.gate.checks import checks, load_tolerances

    if args.update_baseline:
        baseline = gate.write_baseline(args.run_dir, args.baseline)
        print(f"wrote {args.baseline}: {len(baseline['cells'])} cells, machine class {baseline['machine_class']}")
        return 0
    active = checks(load_tolerances(args.tolerances) + args.tolerance)
    aliases = _pairs(args.aliases, "--as", "ort-int8-dynamic=ort-int4-rtn") or None
    processes = _processes(args)
    gate.load_baseline(args.baseline)  # an unusable baseline fails before minutes of re-timing
    gate.load_run(args.run_dir)
    if (args.old_python or args.new_python) and not args.remeasure:
        raise UsageError("--old-python/--new-python choose the environments of a re-measurement; add "
                         "--remeasure BASELINE_RUN")
    remeasured = None
    if args.remeasure:
        from ffnbench.bench.gate.compare import remeasure

        remeasured = remeasure(args.remeasure, args.run_dir, args.old_python, args.new_python, args.weights_dir,
                               processes)
    result = gate.gate(args.baseline, args.run_dir, active, args.allow_stack_change, args.only, aliases, remeasured,
                       args.strict_recorded_latency)
    md, xml = gate_report.write(result, args.baseline, args.run_dir, active)
    print(f"{'PASS' if result.passed else 'FAIL'}: {len(result.failures)} regressions, {len(result.missing)} missing "
          f"cells; wrote {md} and {xml}")
    return 0 if result.passed else 1


def _processes(args) -> int | None:
    if args.processes is not None and not (args.old_python or args.new_python):
        raise UsageError("--processes counts the workers of each side; add --old-python (the baseline revision's "
                         "interpreter), without which ONNX Runtime cells are re-measured in this one process")
    if args.processes is not None and args.processes < 2:
        raise UsageError(f"--processes: a test over worker processes needs at least 2 a side, got {args.processes}")
    return args.processes


def cmd_compare(args) -> int:
    from ffnbench.bench.gate.compare import remeasure, write

    processes = _processes(args)
    path = write(remeasure(args.old_run, args.new_run, args.old_python, args.new_python, args.weights_dir, processes),
                 args.new_run)
    print(f"wrote {path}")
    return 0


def cmd_report(args) -> int:
    from ffnbench.bench.analysis import downstream
    from ffnbench.bench.report import decision, summary
    from ffnbench.bench.report.report import write

    downstream.write(args.run_dir)  # the analysis again, by this revision, then its rendering
    decision.write_for_run(Path(args.run_dir))
    print(f"wrote {write(args.run_dir)}")
    _say(summary.downstream_lines(Path(args.run_dir)))
    return 0


def cmd_decide(args) -> int:
    from ffnbench.bench.analysis.deployment import load_deployment, parse_budget
    from ffnbench.bench.report import decision

    profile, budget = load_deployment(Path(args.deployment)) if args.deployment else (None, None)
    if args.budget is not None:
        budget = parse_budget(args.budget)
    if args.out is None and len(args.run_dirs) > 1:
        raise UsageError("decide: several runs make one decision of their own; give --out DIR (a run's own memo "
                         "stays beside it)")
    out = Path(args.out or args.run_dirs[0])
    json_path, md_path = decision.write(args.run_dirs, out, profile, budget,
                                        Path(args.traffic) if args.traffic else None)
    _say(decision.headline(json.loads(json_path.read_text())))
    print(f"wrote {md_path} and {json_path.name}")
    return 0


def cmd_train(args) -> int:
    from ffnbench.bench.traffic.drift_training import training_sampler
    from ffnbench.models.lm import LMConfig
    from ffnbench.models.train import TrainConfig, train

    if args.drift and args.steps == 0:
        raise UsageError("--drift: with --steps 0 nothing trains (the checkpoint is only stored again); "
                         "drop --drift or give --steps")
    seed = {} if args.seed is None else {"seed": args.seed}
    lm_cfg = LMConfig(design=args.design, **seed)
    cfg = TrainConfig(**{k: getattr(args, k) for k in ("steps", "batch", "lr", "init_from", "store_dtype", "corpus")
                         if getattr(args, k) is not None}, **seed)
    drift = training_sampler(args.drift.split(","), args.drift_share, args.inject, lm_cfg.context, cfg.seed,
                             cfg.corpus) \
        if args.drift else None
    m = train(lm_cfg, cfg, args.out, drift=drift)
    print(f"wrote {args.out}: design {args.design}, {m['parameters']:,} parameters, {m['steps']} steps, "
          f"final loss {m['losses'][-1]:.3f} nats, validation {m['validation_bits_per_byte']:.3f} and held-out "
          f"{m['held_out_bits_per_byte']:.3f} bits per byte "
          f"({m['corpus']['source']}, sha256 {m['corpus']['sha256'][:12]})")
    return 0


def cmd_capture(args) -> int:
    from ffnbench.bench.traffic.capture import capture, parse_layers, summary_lines

    record = capture(Path(args.checkpoint), Path(args.text), parse_layers(args.layers), Path(args.out),
                     max_windows=args.max_windows, reference_path=args.reference and Path(args.reference))
    for line in summary_lines(record):
        print(line)
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.json').name} ({record['checkpoint']['name']}, "
          f"{record['text']['bytes']:,} bytes of text)")
    return 0


COMMANDS = {"doctor": cmd_doctor, "export": cmd_export, "quantize": cmd_quantize, "run": cmd_run,
            "report": cmd_report, "decide": cmd_decide, "merge": cmd_merge, "gate": cmd_gate, "compare": cmd_compare,
            "train": cmd_train, "capture": cmd_capture}


def main(argv: list[str] | None = None) -> int:
    # OpenMP threads that spin after each torch call steal the cores from the ONNX Runtime call
    # timed next to them: interleaved decode timings showed 5-12 ms stalls against a 0.2 ms median.
    # Passive waiting removes them; it must be set before torch loads, and runs record it.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UsageError as e:
        print(f"ffnbench {args.command}: error: {e}", file=sys.stderr)
        return 2
