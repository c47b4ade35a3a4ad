"""attn_kernels: fused channel-attention blocks (SE, eSE, ECA, CECA, CBAM, ...) for PyTorch.

    import attn_kernels as ak
    y = ak.functional.se(x, w1, b1, w2, b2, act="relu", gate="sigmoid")
    with ak.use_backend("triton"):
        ...
"""
from . import functional, reference
from ._backend import BACKENDS, BackendUnavailableError, get_backend, preload, set_backend, use_backend
from ._backend import info as _backend_info
from .modules import FusedAdaptiveSE, FusedCBAM, FusedECA, FusedEffectiveSE, FusedSE
from .modules import FusedBidirectionalECA, FusedDynamicMultiKernelECA
from .swap import SwapReport, swap, unswap  # noqa: E402  (the function shadows the submodule name)

__version__ = "0.1.0"

__all__ = [
    "functional", "reference", "BACKENDS", "BackendUnavailableError", "get_backend", "set_backend",
    "use_backend", "preload", "info", "FusedSE", "FusedEffectiveSE", "FusedAdaptiveSE", "FusedECA", "FusedCBAM",
    "FusedDynamicMultiKernelECA", "FusedBidirectionalECA",
    "swap", "unswap", "SwapReport",
]


def _cpu_kernels() -> str:
    """How the C++ CPU kernels were built: vector ISA and OpenMP, or why they are not there."""
    try:
        from .ops import ext
    except ImportError as exc:
        return f"not available ({exc})"
    threads = "OpenMP" if ext.has_openmp() else "single-threaded (built without OpenMP)"
    built = getattr(ext._C, "build_info", None)
    return f"{ext._C.cpu_isa()}, {threads}" + (f"; built with {built()}" if built else "")


def info() -> dict:
    """Versions; per backend and device type, "available" or why not; which measured table ``auto`` uses."""
    import torch

    out = {"attn_kernels": __version__, "torch": torch.__version__}
    try:
        import triton

        out["triton"] = triton.__version__
    except Exception as exc:
        out["triton"] = f"not importable ({exc})"
    out["cuda_device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    out["cpu_kernels"] = _cpu_kernels()
    out["backends"] = _backend_info()
    from . import _autotable

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    out["auto_table"] = {dev: _autotable.describe(torch.device(dev)) for dev in devices}
    return out
