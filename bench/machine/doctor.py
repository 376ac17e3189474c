"""`ffnbench doctor`: the stack, the CPU's int8 capabilities, runtimes and devices, and warnings."""

import os

import onnxruntime as ort
import torch

from ffnbench.bench.machine.isa import cpu_info, int8_kernels, machine_class, u8s8_saturates
from ffnbench.versions import stack_versions


def bitsandbytes_info() -> dict:
    """Whether bitsandbytes imports (as the recipes import it), its native backend, its 4-bit CPU
    kernel, and the torch devices it can run on here."""
    from ffnbench.quant.bnb_recipes import BackendMissing, cpu_4bit_kernels, import_bnb

    try:
        bitsandbytes = import_bnb()
    except BackendMissing as e:
        return {"installed": False, "reason": str(e)}
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return {"installed": True, "version": bitsandbytes.__version__,
            "native_backend": getattr(bitsandbytes.cextension, "BNB_BACKEND", None), "devices": devices,
            "cpu_4bit": cpu_4bit_kernels()}


def cuda_info() -> dict:
    if not torch.cuda.is_available():
        return {"available": False, "torch_cuda": torch.version.cuda}
    return {
        "available": True,
        "torch_cuda": torch.version.cuda,
        "devices": [{"name": torch.cuda.get_device_name(i),
                     "capability": list(torch.cuda.get_device_capability(i))}
                    for i in range(torch.cuda.device_count())],
    }


def collect(threads: int = 2, remeasure: bool = False) -> dict:
    """Everything below, with the memory-bandwidth and GEMM peaks measured at `threads` (cached)."""
    from ffnbench.bench.machine.peaks import peaks

    cpu = cpu_info()
    saturates = u8s8_saturates()
    report = {
        "versions": stack_versions(),
        "cpu": {**cpu, "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                else os.cpu_count()},
        "machine_class": machine_class(cpu["isa"]),
        "int8": {
            "u8s8_saturates": saturates,
            # ort-int8-dynamic follows this: 7-bit weights avoid the int16 overflow.
            "reduce_range": saturates,
            "mlas_kernels": int8_kernels(cpu["isa"]),
        },
        "onnxruntime_providers": ort.get_available_providers(),
        "bitsandbytes": bitsandbytes_info(),
        "cuda": cuda_info(),
        "peaks": peaks(threads, remeasure=remeasure),
    }
    report["warnings"] = warnings_for(report)
    return report


def warnings_for(report: dict) -> list[str]:
    isa, out = report["cpu"]["isa"], []
    if report["int8"]["u8s8_saturates"]:
        out.append("ONNX Runtime's U8S8 int8 GEMM saturates on this CPU (no VNNI): ort-int8-dynamic "
                   "uses reduce_range; ort-int8-dynamic-fullrange shows the loss")
    elif not (isa.get("avx512_vnni") or isa.get("avx_vnni") or isa.get("amx_int8")):
        out.append("no VNNI flag, yet the U8S8 probe was exact: the int8 kernel ORT picked does not "
                   "saturate here")
    if not report["bitsandbytes"]["installed"]:
        out.append(f"bitsandbytes recipes will be skipped: {report['bitsandbytes']['reason']}")
    if "CUDAExecutionProvider" not in report["onnxruntime_providers"]:
        out.append("ONNX Runtime has no CUDAExecutionProvider: ORT cells run on CPU only")
    return out


def format_text(report: dict) -> str:
    cpu, isa = report["cpu"], report["cpu"]["isa"]
    on = [f for f, v in isa.items() if v]
    off = [f for f, v in isa.items() if v is False]
    bnb = report["bitsandbytes"]
    cuda = report["cuda"]
    mlas = report["int8"]["mlas_kernels"]
    four_bit = bnb.get("cpu_4bit") or {}
    peaks = report["peaks"]
    lines = [
        "stack     " + "  ".join(f"{k} {v}" for k, v in report["versions"].items() if v),
        f"cpu       {cpu['model']} ({cpu['arch']}, {cpu['cores']} cores), class {report['machine_class']}",
        f"isa       has: {' '.join(on) or '-'}",
        f"          lacks: {' '.join(off) or '-'}",
        f"int8      U8S8 saturates: {'yes' if report['int8']['u8s8_saturates'] else 'no'} (measured); "
        f"ort-int8-dynamic reduce_range: {report['int8']['reduce_range']}",
        f"          MLAS int8 kernels: U8S8 GEMM {mlas['u8s8_gemm'] or '-'}, MatMulNBits {mlas['matmulnbits'] or '-'}",
        f"ort       providers: {', '.join(report['onnxruntime_providers'])}",
        "bnb       " + (f"{bnb['version']}, native backend {bnb['native_backend']}, devices "
                        f"{', '.join(bnb['devices'])}; 4-bit on CPU: {four_bit.get('kernel')}"
                        + ("; in_features must be whole 64-weight blocks (AVX-512 dequantization)"
                           if four_bit.get("whole_blocks_only") else "") if bnb["installed"] else bnb["reason"]),
        f"peaks     {peaks['memory_gbps']} GB/s memory, {peaks['fp32_gemm_gflops']} GFLOP/s fp32 GEMM at "
        f"{peaks['threads']} threads ({'cached' if peaks['cached'] else 'measured now'})",
        "cuda      " + (", ".join(f"{d['name']} sm_{d['capability'][0]}{d['capability'][1]}"
                                  for d in cuda["devices"]) if cuda["available"] else "not available"),
    ]
    lines += [f"warning   {w}" for w in report["warnings"]]
    return "\n".join(lines)
