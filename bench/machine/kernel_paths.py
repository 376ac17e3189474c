"""What ran: the kernels behind a timed recipe, where its time calls for an explanation.

A 4-bit recipe 80× slower than another 4-bit recipe at decode is not "slow 4-bit"; it is a different
code path, and so is a 4-bit recipe no faster than fp32 at prefill. For such a recipe this module
profiles a few calls at the cell's shape (ONNX Runtime's own profiler: op type, provider and time
per node, and whether the node's weight was prepacked; torch's profiler for bitsandbytes and torch
modules: time per operator), reads the artifact's attributes that pick ONNX Runtime's kernel
(zero-point dtype, accuracy_level, block size, quant type) and the CPU's int8 kernels. `explain`
turns the measured facts into the sentence a report gives; the kernel behaviour it names is ONNX
Runtime 1.31's and bitsandbytes 0.50's CPU code (matmul_nbits.cc and MLAS's qnbitgemm.cpp and
platform.cpp, matmul_bnb4.cc; backends/cpu/ops.py and csrc/cpu_ops.cpp). bench/cells/diagnosis.py picks
the cells.
"""

import glob
import json
import os
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx

SPREAD = 3.0  # decode p50 ratio within one weight width that calls for a diagnosis
PROFILE_CALLS = 3
TOP_OPS = 6
# What MatMulNBits computes in, by accuracy_level (matmul_nbits.cc: 4 is int8 where MLAS has the
# kernel; every other level computes in fp32 on CPU).
ACCURACY_LEVELS = {0: "fp32 compute", 4: "int8 compute"}


class Unusable(Exception):
    """A profile that cannot be read: the diagnosis is skipped with this reason, the run goes on."""


def not_shown_faster(ratio: dict, threshold: float = 1.0) -> bool:
    """Whether a time ratio to fp32 ({ratio, ci_low, ci_high}) is not shown below `threshold`: its
    interval's upper end (the ratio itself where too few rounds gave none) reaches it."""
    high = ratio["ci_high"] if ratio.get("ci_high") is not None else ratio["ratio"]
    return high >= threshold


def spread_groups(decode: dict[str, dict]) -> list[list[str]]:
    """decode: key -> {design, bits, p50_ms}. The keys of each (design, bits) group whose slowest
    p50 is more than SPREAD× its fastest."""
    groups = defaultdict(list)
    for key, d in decode.items():
        groups[(d["design"], d["bits"])].append(key)
    out = []
    for keys in groups.values():
        p50 = [decode[k]["p50_ms"] for k in keys]
        if len(keys) > 1 and max(p50) > SPREAD * min(p50):
            out.append(keys)
    return out


def profile_ort(runnable, x: np.ndarray, model: onnx.ModelProto, calls: int = PROFILE_CALLS) -> dict:
    """ONNX Runtime's profile of `calls` runs after one warm-up, in a session set up as the timed
    `runnable`'s (threads, spinning, optimisation level): per node the median kernel time, per op
    type the total and its share, and whether each weight-bearing node's weight was prepacked (a
    prepacked initializer is released, so it is missing from the node's profiled inputs). `model`:
    the runnable's graph (weights' shapes; their data need not be loaded)."""
    with tempfile.TemporaryDirectory(prefix="ffnbench-profile-") as tmp:
        profiled = runnable.profiling(str(Path(tmp) / "profile"))
        call = profiled.timed_call(x)
        for _ in range(calls + 1):
            call()
        written = profiled.session.end_profiling()
        profile = Path(written) if written else next(iter(glob.glob(os.path.join(tmp, "profile*.json"))), None)
        try:
            events = json.loads(Path(profile).read_text())
        except (TypeError, OSError, json.JSONDecodeError) as e:
            raise Unusable(f"ONNX Runtime wrote no readable profile ({type(e).__name__}: {e})") from e
    return {**summarize_ort(events, model), "calls": calls}


def summarize_ort(events: list, model: onnx.ModelProto) -> dict:
    nodes = {n.name: n for n in model.graph.node}
    weights = {i.name: tuple(i.dims) for i in model.graph.initializer}
    kernel = [e for e in events if isinstance(e, dict) and e.get("cat") == "Node"
              and str(e.get("name", "")).endswith("_kernel_time") and "dur" in e]
    if not kernel:
        raise Unusable("the profile has no node kernel events (a build without profiling, or an empty graph)")
    per_node = defaultdict(list)
    for e in kernel:
        per_node[e["name"].removesuffix("_kernel_time")].append(e)
    rows = []
    for name, evs in per_node.items():
        args = evs[-1].get("args", {})
        node = nodes.get(name)
        row = {"node": name, "op": args.get("op_name", node.op_type if node else "?"),
               "provider": args.get("provider"), "us": statistics.median(e["dur"] for e in evs[1:] or evs)}
        gemm = node is not None and len(node.input) > 1 and ("MatMul" in row["op"] or row["op"] == "Gemm")
        weight = weights.get(node.input[1]) if gemm else None
        profiled = args.get("input_type_shape")
        if weight is not None and isinstance(profiled, list):
            # Graph fusions add inputs (a bias), so the weight is looked for by its shape (ORT names
            # types its own way: "float", not numpy's "float32").
            row["weights_prepacked"] = weight not in [tuple(v) for i in profiled for v in i.values()]
        rows.append(row)
    total = sum(r["us"] for r in rows) or 1.0
    ops = defaultdict(lambda: {"us": 0.0, "nodes": 0})
    for r in rows:
        ops[r["op"]]["us"] += r["us"]
        ops[r["op"]]["nodes"] += 1
    by_op = sorted(({"op": op, **v, "share": v["us"] / total} for op, v in ops.items()), key=lambda o: -o["us"])
    return {"tool": "onnxruntime profiler", "ops": by_op[:TOP_OPS],
            "nodes": sorted(rows, key=lambda r: -r["us"])[:TOP_OPS]}


def profile_torch(call, calls: int = PROFILE_CALLS) -> dict:
    """torch's profiler over `calls` calls after one warm-up: the operators by self CPU time."""
    os.environ.setdefault("KINETO_LOG_LEVEL", "99")  # else torch's profiler prints a line per start and stop
    import torch
    from torch.profiler import ProfilerActivity, profile

    call()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            call()
    rows = [{"op": e.key, "us": e.self_cpu_time_total / calls, "count": e.count // calls}
            for e in prof.key_averages() if e.self_cpu_time_total > 0]
    if not rows:
        raise Unusable("torch's profiler recorded no operator")
    total = sum(r["us"] for r in rows)
    rows = sorted(rows, key=lambda r: -r["us"])[:TOP_OPS]
    return {"tool": "torch.profiler", "calls": calls, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "ops": [{**r, "share": r["us"] / total} for r in rows]}


def attributes(model: onnx.ModelProto) -> list[dict]:
    """Per weight-bearing node of an ONNX artifact, what chooses its kernel."""
    inits = {i.name: i for i in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type not in ("MatMulNBits", "MatMulBnb4", "MatMulInteger"):
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        row = {"node": node.name, "op": node.op_type}
        row |= {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()
                if k in ("bits", "block_size", "accuracy_level", "quant_type")}
        if node.op_type == "MatMulNBits":
            zp = inits.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
            row["zero_points"] = onnx.helper.tensor_dtype_to_np_dtype(zp.data_type).name if zp else "none (symmetric)"
        if node.op_type == "MatMulBnb4":
            row["quant_type"] = {0: "fp4", 1: "nf4"}.get(row.get("quant_type"), row.get("quant_type"))
        if node.op_type == "MatMulInteger" and node.input[1] in inits:
            row["weight_dtype"] = onnx.helper.tensor_dtype_to_np_dtype(inits[node.input[1]].data_type).name
        out.append(row)
    return out


def explain(diagnosis: dict) -> str:
    """One sentence from a diagnosis's measured facts: which path ran, and why it costs what it does."""
    if diagnosis.get("status") != "ok":
        return f"not diagnosed: {diagnosis.get('reason')}"
    profile = diagnosis["profile"]
    top = profile["ops"][0]
    said = f"{top['share']:.0%} of its time in {top['op']}"
    attrs = diagnosis.get("attributes") or []
    if profile["tool"] == "torch.profiler":
        names = {o["op"] for o in profile["ops"]}
        if "bitsandbytes::gemv_4bit" in names:
            why = ("bitsandbytes' fused CPU gemv_4bit ran (bf16, no dequantized copy of the weight; this CPU's "
                   f"torch capability is {profile['cpu_capability']})")
            if diagnosis.get("shape") == "prefill":
                why += ("; it works in 32×32 tiles with AVX512-BF16 dot products and decodes a strip's 4-bit codes "
                        "again for every 32 rows of input (its AMX path is not enabled in bitsandbytes 0.50)")
        elif "bitsandbytes::dequantize_4bit" in names:
            why = ("bitsandbytes dequantizes the 4-bit weight every call and multiplies in floating point: its fused "
                   f"CPU gemv_4bit needs AVX512-BF16, and this CPU's torch capability is {profile['cpu_capability']}")
        elif names & {"aten::_to_copy", "aten::copy_"} and any("int8" in n for n in names):
            why = ("bitsandbytes converts the int8 weight to fp32 every call (torch._int_mm is used only with "
                   f"AVX-512; this CPU's torch capability is {profile['cpu_capability']})")
        else:
            why = "the torch operators above ran"
        return f"{said}; {why}."
    nbits = [a for a in attrs if a["op"] == "MatMulNBits"]
    prepacked = [n.get("weights_prepacked") for n in profile["nodes"] if "weights_prepacked" in n]
    kernels = diagnosis.get("int8_kernels") or {}
    if nbits and nbits[0].get("zero_points") == "float32":
        why = ("its zero points are float32, which ONNX Runtime's MatMulNBits cannot prepack: every call dequantizes "
               "the whole weight to fp32 and runs an fp32 GEMM, whatever its accuracy_level")
    elif any(a["op"] == "MatMulBnb4" for a in attrs):
        why = "MatMulBnb4 has no prepacked CPU kernel: every call dequantizes the whole weight to fp32, then a GEMM"
    elif nbits:
        why = _matmulnbits(nbits[0], diagnosis.get("shape"), kernels)
    elif any(a["op"] == "MatMulInteger" for a in attrs):
        why = f"U8S8 int8 GEMM on MLAS's {kernels.get('u8s8_gemm') or 'portable'} kernel"
    else:
        why = f"ops as profiled ({', '.join(o['op'] for o in profile['ops'][:3])})"
    if prepacked:
        why += f"; weights prepacked: {'yes' if all(prepacked) else 'no'} (from the profile's node inputs)"
    return f"{said}; {why}."


def _matmulnbits(node: dict, shape: str | None, kernels: dict) -> str:
    level = node.get("accuracy_level")
    said = (f"MatMulNBits (zero points: {node.get('zero_points')}, block {node.get('block_size')}, "
            f"accuracy_level {level})")
    if level == 4 and not kernels.get("matmulnbits"):
        return f"{said}: int8 compute on MLAS's kernel for this CPU (not an x86 CPU, whose kernels are named here)"
    if level == 4:
        return (f"{said}: activations quantized to int8 a block at a time, then MLAS's {kernels['matmulnbits']} "
                f"int8 kernel, a scale per {node.get('block_size')}-weight block, and a block-sum correction by fp32 "
                "GEMM (MatMulNBits has no AMX kernel; the U8S8 GEMM behind ort-int8-dynamic runs on "
                f"{kernels.get('u8s8_gemm')} here)")
    if shape == "prefill":
        return (f"{said}: fp32 compute, each strip of the 4-bit weight dequantized to fp32 for every 128-row tile, "
                "then MLAS's fp32 GEMM: the GEMM's arithmetic plus the dequantization")
    return f"{said}: fp32 compute, the prepacked MLAS kernel"


def diagnose(runnable, x: np.ndarray) -> dict:
    """Profile and attributes of one timed runnable at the input `x`, and the CPU's int8 kernels; a
    profile that cannot be had is a skipped diagnosis with its reason."""
    from ffnbench.bench.machine.isa import cpu_info, int8_kernels, machine_class

    isa = cpu_info()["isa"]
    cpu = {"machine_class": machine_class(isa), "int8_kernels": int8_kernels(isa)}
    try:
        if hasattr(runnable, "path"):
            model = onnx.load(str(runnable.path), load_external_data=False)
            return {"status": "ok", "profile": profile_ort(runnable, x, model), "attributes": attributes(model), **cpu}
        return {"status": "ok", "profile": profile_torch(runnable.timed_call(x)), **cpu}
    except Unusable as e:
        return {"status": "skipped", "reason": str(e), **cpu}
    except Exception as e:  # a profiler failing must not fail the cells it would explain
        return {"status": "skipped", "reason": f"profiling failed: {type(e).__name__}: {e}", **cpu}


def accuracy_level(diagnosis: dict) -> int | None:
    """The accuracy_level of a diagnosed artifact's MatMulNBits nodes (None without any)."""
    return next((a.get("accuracy_level") for a in diagnosis.get("attributes") or [] if a["op"] == "MatMulNBits"), None)


def accuracy_level_variant(path: Path, out: Path, level: int) -> Path:
    """The artifact at `path` with every MatMulNBits node's accuracy_level set to `level`, at out: the
    same weights, scales and zero points, another compute type."""
    model = onnx.load(str(path))
    nodes = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    if not nodes:
        raise ValueError(f"{path} has no MatMulNBits node")
    for node in nodes:
        kept = [a for a in node.attribute if a.name != "accuracy_level"]
        del node.attribute[:]
        node.attribute.extend([*kept, onnx.helper.make_attribute("accuracy_level", level)])
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    return out


def float_zero_points(diagnosis: dict) -> bool:
    return any(a["op"] == "MatMulNBits" and a.get("zero_points") == "float32"
               for a in diagnosis.get("attributes") or [])


def uint8_variant(path: Path, export_path: Path, out: Path) -> Path:
    """The artifact at `path` with uint8 zero points (weights requantized from the fp32 export), at out."""
    from ffnbench.quant.ort_recipes import uint8_zero_points

    model = onnx.load(str(path))
    if not uint8_zero_points(model, {i.name: i for i in onnx.load(str(export_path)).graph.initializer}):
        raise ValueError(f"{path} has no MatMulNBits node with float zero points whose weight is in {export_path}")
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    return out
