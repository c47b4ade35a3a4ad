"""The x86 vector ISA the C++ CPU kernels (csrc/cpu/) are compiled for; shared by setup.py and the JIT
build (ops/ext.py), so both make the same choice. Imports nothing from the package (setup.py loads this
file by path, before the package is installed).

ATen's at::vec picks its Vectorized<T> implementation from the CPU_CAPABILITY_* macro of the translation
unit, so the whole extension is built for one ISA:

    ATTN_KERNELS_CPU_ISA=auto (default)  the ISA torch itself runs its CPU kernels with on the build
                                         machine (torch.backends.cpu.get_cpu_capability(): AVX512 or
                                         AVX2; ATEN_CPU_CAPABILITY overrides it), when the CPU has the
                                         flags below; else the portable baseline
                        =avx512 | avx2   force one (the binary then needs that ISA where it runs)
                        =default         the portable baseline (slower)

Measured (2-core Zen 4 VM, 2 threads, forward, best of 3 medians, two interleaved runs, AVX2 -> AVX512
build): bf16 SE 1x256x56x56 156-174 -> 88-93 us, 16x512x28x28 1360 -> 840-871 us (the bf16 <-> fp32
conversions bound it); fp32 within the run-to-run noise.
"""
import os
from typing import List, Optional

ISA_FLAGS = {
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
               "-DCPU_CAPABILITY_AVX512", "-DCPU_CAPABILITY=AVX512"],
    "avx2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"],
    "default": [],
}
_CPU_FLAGS_NEEDED = {"avx512": ("avx512f", "avx512bw", "avx512vl", "avx512dq", "fma", "f16c"),
                     "avx2": ("avx2", "fma", "f16c")}


def cpu_flags() -> List[str]:
    """The build machine's CPU flags (/proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []


def _torch_capability() -> str:
    try:
        import torch

        return str(torch.backends.cpu.get_cpu_capability()).lower()
    except Exception:  # no torch, or a torch without the query
        return ""


def choose_isa(request: str = "") -> str:
    """"avx512", "avx2" or "default" for ATTN_KERNELS_CPU_ISA (or ``request``)."""
    isa = (request or os.environ.get("ATTN_KERNELS_CPU_ISA", "auto")).strip().lower()
    if isa in ISA_FLAGS:
        return isa
    if isa != "auto":
        raise ValueError(f"ATTN_KERNELS_CPU_ISA={isa!r}: expected auto, avx512, avx2 or default")
    have = set(cpu_flags())
    if _torch_capability().startswith("avx512") and all(f in have for f in _CPU_FLAGS_NEEDED["avx512"]):
        return "avx512"
    if all(f in have for f in _CPU_FLAGS_NEEDED["avx2"]):
        return "avx2"
    return "default"


def missing_cpu_flags(isa: str, have: Optional[List[str]] = None) -> List[str]:
    """CPU flags a binary built for ``isa`` needs and this CPU lacks ([] when that cannot be told)."""
    have = cpu_flags() if have is None else have
    if not have:  # no /proc/cpuinfo (not Linux): cannot tell
        return []
    return [f for f in _CPU_FLAGS_NEEDED.get(isa, ()) if f not in have]


def isa_flags(request: str = "") -> List[str]:
    """Compiler flags for choose_isa(request)."""
    return list(ISA_FLAGS[choose_isa(request)])
