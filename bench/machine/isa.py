"""What the CPU can do for int8: ISA flags as the kernel reports them, and a measured U8S8 probe."""

import platform
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

# Flags that decide which int8/bf16 kernels ONNX Runtime's MLAS and bitsandbytes can use.
ISA_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
             "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def cpu_info() -> dict:
    """Model name and the ISA flags above (True/False), read from /proc/cpuinfo where there is one."""
    model, flags = platform.processor() or platform.machine(), None
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() in ("flags", "Features") and flags is None:
                flags = set(value.split())
    return {
        "model": model,
        "arch": platform.machine(),
        "isa": {f: (f in flags) if flags is not None else None for f in ISA_FLAGS},
    }


def machine_class(isa: dict) -> str:
    """A coarse label for baselines: machines in one class run the same int8 kernels."""
    if isa.get("amx_int8"):
        return "cpu-amx"
    if isa.get("avx512_vnni"):
        return "cpu-avx512-vnni"
    if isa.get("avx_vnni"):
        return "cpu-avx-vnni"
    if isa.get("avx512bw"):
        return "cpu-avx512"
    if isa.get("avx2"):
        return "cpu-avx2"
    return f"cpu-{platform.machine()}"


def int8_kernels(isa: dict) -> dict[str, str | None]:
    """The x86 kernels ONNX Runtime 1.31's MLAS dispatches int8 work to on a CPU with these flags
    (mlas/lib/platform.cpp, where each later match overrides the earlier): its U8S8 GEMM, behind
    MatMulInteger and DynamicQuantizeMatMul (`ort-int8-dynamic`), and MatMulNBits' int8 compute
    (accuracy_level 4), which has no AMX kernel. None: not an x86 CPU MLAS has int8 kernels for."""
    simd = next((name for flags, name in (
        (("avx512_vnni",), "AVX512-VNNI"), (("avx512f", "avx512bw"), "AVX-512"), (("avx_vnni",), "AVX-VNNI"),
        (("avx2",), "AVX2")) if all(isa.get(f) for f in flags)), None)
    amx = isa.get("amx_tile") and isa.get("amx_int8")
    return {"u8s8_gemm": "AMX" if amx else simd, "matmulnbits": simd}


def u8s8_saturates() -> bool:
    """Run ORT's U8S8 MatMulInteger on inputs whose exact result overflows an int16 pair sum.

    x86 without VNNI multiplies u8×s8 with vpmaddubsw, which adds adjacent products into a
    saturating int16: 255·127 + 255·127 = 64770 clips to 32767. VNNI (and AMX) accumulate in
    int32 and are exact. Measuring it, rather than inferring it from flags, also catches
    hypervisors that hide or fake flags.
    """
    k, n = 64, 8
    weights = numpy_helper.from_array(np.full((k, n), 127, np.int8), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "u8s8_probe",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [None, k])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [None, n])], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    # Enough rows that MLAS takes its packed GEMM kernel rather than a scalar edge path.
    y = session.run(None, {"a": np.full((16, k), 255, np.uint8)})[0]
    return bool(np.any(y != 255 * 127 * k))
