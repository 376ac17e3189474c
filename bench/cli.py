"""The `ffnbench` console script: argument parsing only; each command calls one library function."""

import json
import os
import sys
from pathlib import Path

from ffnbench.bench.cli_parser import build_parser
from ffnbench.errors import UsageError


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
    args = build_parser(__doc__).parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UsageError as e:
        print(f"ffnbench {args.command}: error: {e}", file=sys.stderr)
        return 2
