"""CPU ISA detection, machine classes, and the measured U8S8 saturation probe."""

import pytest

from ffnbench.bench.machine.isa import cpu_info, int8_kernels, machine_class, u8s8_saturates


@pytest.mark.parametrize(("flags", "expected"), [
    ({"avx2": True}, "cpu-avx2"),
    ({"avx2": True, "avx512bw": True}, "cpu-avx512"),
    ({"avx2": True, "avx_vnni": True}, "cpu-avx-vnni"),
    ({"avx2": True, "avx512bw": True, "avx512_vnni": True}, "cpu-avx512-vnni"),
    ({"avx512_vnni": True, "amx_int8": True}, "cpu-amx"),
])
def test_machine_class(flags, expected):
    assert machine_class(flags) == expected


@pytest.mark.parametrize(("flags", "u8s8", "nbits"), [
    ({"avx2": True}, "AVX2", "AVX2"),
    ({"avx2": True, "avx_vnni": True}, "AVX-VNNI", "AVX-VNNI"),
    ({"avx2": True, "avx512f": True, "avx512bw": True}, "AVX-512", "AVX-512"),
    ({"avx2": True, "avx512f": True, "avx512bw": True, "avx_vnni": True, "avx512_vnni": True},
     "AVX512-VNNI", "AVX512-VNNI"),
    ({"avx512f": True, "avx512bw": True, "avx512_vnni": True, "amx_tile": True, "amx_int8": True},
     "AMX", "AVX512-VNNI"),
    ({}, None, None),
])
def test_int8_kernels_follow_mlas_dispatch_order(flags, u8s8, nbits):
    """The three classes seen (AVX2; AVX-512 VNNI; AMX) and the others MLAS tells apart: AMX only
    ever replaces the U8S8 GEMM, never MatMulNBits' kernel."""
    assert int8_kernels(flags) == {"u8s8_gemm": u8s8, "matmulnbits": nbits}


def test_cpu_info_reports_every_flag_as_a_boolean():
    info = cpu_info()
    isa = info["isa"]
    if all(v is None for v in isa.values()):
        pytest.skip("no /proc/cpuinfo on this platform: flags are unknown")
    assert all(isinstance(v, bool) for v in isa.values())
    assert info["arch"]


def test_u8s8_probe_agrees_with_the_isa():
    """The probe is exact where int8 dot products accumulate in int32 (VNNI, AMX), and clips where
    x86 must pair products into int16 (AVX2 or AVX-512BW without VNNI)."""
    isa = cpu_info()["isa"]
    if isa.get("avx512_vnni") or isa.get("avx_vnni") or isa.get("amx_int8"):
        assert u8s8_saturates() is False
    elif isa.get("avx2"):
        assert u8s8_saturates() is True
    else:
        pytest.skip(f"no x86 int8 ISA to predict from (flags: {isa})")
