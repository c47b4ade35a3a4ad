"""Backend selection and dispatch.

Backends: ``reference`` (eager PyTorch, ``attn_kernels.reference``), ``triton`` (CUDA tensors; CPU
tensors under ``TRITON_INTERPRET=1``, which is how CI runs every Triton kernel), ``cuda`` and ``cpu``
(the C++/CUDA extension ``attn_kernels._C``), and ``auto`` (the best available for the tensor's device).

Implementations are named here as ``"module:function"`` and imported on first use, so ``import
attn_kernels`` stays cheap and a backend whose module fails to import reports why instead of breaking
the package. Every implementation of an op takes the same arguments as its ``functional`` entry point,
already validated.
"""
from __future__ import annotations

import contextlib
import importlib
import os
from typing import Callable, Dict, Optional, Tuple

from . import _autotable

BACKENDS = ("auto", "reference", "triton", "cuda", "cpu")

# op → backend → "module:function"
_IMPLS: Dict[str, Dict[str, str]] = {
    "se": {
        "reference": "attn_kernels.reference:se",
        "cpu": "attn_kernels.ops.ext:se",
        "cuda": "attn_kernels.ops.ext:se",
        "triton": "attn_kernels.ops.se:se",
    },
    "eca": {
        "reference": "attn_kernels.reference:eca",
        "triton": "attn_kernels.ops.eca:eca",
        "cpu": "attn_kernels.ops.ext:eca",
        "cuda": "attn_kernels.ops.ext:eca",
    },
    "se_residual": {
        "reference": "attn_kernels.reference:se_residual",
        "triton": "attn_kernels.ops.se:se_residual",
        "cpu": "attn_kernels.ops.ext:se_residual",
    },
    "eca_residual": {
        "reference": "attn_kernels.reference:eca_residual",
        "triton": "attn_kernels.ops.eca:eca_residual",
        "cpu": "attn_kernels.ops.ext:eca_residual",
    },
    "dmk_eca": {
        "reference": "attn_kernels.reference:dmk_eca",
        "triton": "attn_kernels.ops.dynamic_eca:dmk_eca",
    },
    "bi_eca": {
        "reference": "attn_kernels.reference:bi_eca",
        "triton": "attn_kernels.ops.dynamic_eca:bi_eca",
    },
    "cbam": {
        "reference": "attn_kernels.reference:cbam",
        "triton": "attn_kernels.ops.cbam:cbam",
    },
}

# What ``auto`` tries, in order, per device type, where the measured table (``_autotable``) has no row
# near the call. On CUDA, Triton first: its math is covered in CI under the interpreter, while the
# hand-written CUDA kernels are only compile-checked so far.
AUTO_ORDER = {
    "cuda": ("triton", "cuda", "reference"),
    "cpu": ("cpu", "reference"),
}

_current = "auto"
# (op, backend, device type) → implementation, or the BackendUnavailableError saying why not
_resolved: Dict[Tuple[str, str, str], object] = {}
_preloaded = False


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run this op on this tensor; the message says why."""


def _check_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
    return name


def set_backend(name: str) -> None:
    """Select the backend for every op from now on (``auto`` picks per device)."""
    global _current
    _current = _check_name(name)


def get_backend() -> str:
    return _current


@contextlib.contextmanager
def use_backend(name: str):
    """``with use_backend("triton"): ...`` — the backend for the calls inside the block."""
    global _current
    previous = _current
    _current = _check_name(name)
    try:
        yield
    finally:
        _current = previous


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _import_error(module: str) -> Optional[str]:
    try:
        importlib.import_module(module)
    except Exception as exc:  # ImportError, or a broken install raising something else
        return f"{type(exc).__name__}: {exc}"
    return None


def unavailable_reason(backend: str, device_type: str) -> Optional[str]:
    """None when ``backend`` can run on tensors of ``device_type``; otherwise why not."""
    if backend == "reference":
        return None
    if backend == "triton":
        err = _import_error("triton")
        if err:
            return f"triton is not importable ({err})"
        if device_type == "cuda":
            return None
        if device_type == "cpu":
            if triton_interpret():
                return None
            return ("Triton kernels run on CUDA tensors; CPU tensors need TRITON_INTERPRET=1 "
                    "(the Triton interpreter, for testing: slow)")
        return f"Triton kernels do not run on {device_type} tensors"
    if backend in ("cpu", "cuda"):
        if device_type != backend:
            return f"the {backend} backend runs on {backend} tensors, got a {device_type} tensor"
        err = _import_error("attn_kernels.ops.ext")  # loads attn_kernels._C (or JIT-builds it if asked)
        if err:
            return (f"the C++/CUDA extension attn_kernels._C is not available ({err}); "
                    "reinstall with a C++ compiler (and nvcc for cuda), see README")
        from .ops import ext  # noqa: F401  (imported above)
        if backend == "cuda" and not ext.has_cuda():
            return "attn_kernels._C was built without CUDA kernels (no nvcc or torch without CUDA at build time)"
        return None
    raise ValueError(f"unknown backend {backend!r}")


def _load(op: str, backend: str) -> Callable:
    target = _IMPLS[op].get(backend)
    if target is None:
        have = ", ".join(sorted(_IMPLS[op]))
        raise BackendUnavailableError(f"op {op!r} has no {backend!r} implementation (implemented: {have})")
    module, fn = target.split(":")
    return getattr(importlib.import_module(module), fn)


def _resolve_uncached(op: str, backend: str, device_type: str):
    """The implementation, or the BackendUnavailableError to raise (cached as well)."""
    if backend == "auto":
        order = AUTO_ORDER.get(device_type, ("reference",))
        for candidate in order:
            if candidate in _IMPLS[op] and unavailable_reason(candidate, device_type) is None:
                try:
                    return _load(op, candidate)
                except Exception:  # a broken optional backend must not break auto: try the next
                    continue
        return _load(op, "reference")
    reason = unavailable_reason(backend, device_type)
    if reason is not None:
        return BackendUnavailableError(f"backend {backend!r} is unavailable for {op!r}: {reason}")
    try:
        return _load(op, backend)
    except BackendUnavailableError as exc:
        return exc
    except Exception as exc:
        return BackendUnavailableError(f"backend {backend!r} failed to load {op!r}: {type(exc).__name__}: {exc}")


def preload() -> None:
    """Resolve every (op, backend, device type) once, importing the implementation modules.

    ``torch.compile`` cannot trace an import; after this, ``resolve`` is a dict lookup it traces
    without a graph break. Runs on the first eager op call and when a Fused module is built; call it
    yourself before compiling code that uses ``functional`` ops that never ran eagerly.
    """
    global _preloaded
    if _preloaded:
        return
    _preloaded = True
    try:
        _autotable.load()
    except (OSError, ValueError) as exc:
        _warn_table(exc)
    for op in _IMPLS:
        for backend in BACKENDS:
            for device_type in ("cpu", "cuda"):
                key = (op, backend, device_type)
                if key not in _resolved:
                    _resolved[key] = _resolve_uncached(op, backend, device_type)


def resolve(op: str, device_type: str, backend: Optional[str] = None) -> Callable:
    """The implementation of ``op`` that ``backend`` (default: the current one) runs on ``device_type``."""
    backend = _current if backend is None else _check_name(backend)
    key = (op, backend, device_type)
    impl = _resolved.get(key)
    if impl is None:
        if op not in _IMPLS:
            raise ValueError(f"unknown op {op!r}")
        if _is_compiling():
            raise BackendUnavailableError(
                f"{op!r} on backend {backend!r} was not resolved before torch.compile traced it; "
                "call attn_kernels.preload() (or run the op once eagerly) before compiling")
        preload()
        impl = _resolved.get(key)
        if impl is None:
            impl = _resolved[key] = _resolve_uncached(op, backend, device_type)
    if isinstance(impl, BackendUnavailableError):
        raise impl
    return impl


def resolve_for(op: str, x, backend: Optional[str], *tensors, variant: Optional[str] = None) -> Callable:
    """``resolve`` for one call of ``op`` on ``x``: under ``auto``, the backend the measured table names
    for this device, dtype, layout, shape, form of the op (``variant``, the bench's op name) and mode
    (training when autograd records the call: grad mode on and ``x`` or one of ``tensors`` requires grad),
    if it is available; else ``auto``'s fixed order — always the fixed order while torch.compile traces
    (see ``_autotable``)."""
    name = _current if backend is None else _check_name(backend)
    device_type = x.device.type
    if name == "auto" and not _is_compiling():
        if not _preloaded:
            preload()  # what a later compiled call of this op resolves must be there already
        try:
            choice = None
            if _autotable.active(device_type):  # else no per-call work: the fixed order
                choice = _autotable.choose(op, x, _grad_recorded(x, tensors), variant, device_type)
        except Exception as exc:  # a broken table must not break auto: say so once, fixed order
            _warn_table(exc)
            choice = None
        # preload() resolved every (op, backend, cpu / cuda): a choice is a lookup (None: not a backend here)
        impl = _resolved.get((op, choice, device_type)) if choice is not None else None
        if impl is not None and not isinstance(impl, BackendUnavailableError):
            return impl
    return resolve(op, device_type, name)


def _grad_recorded(x, tensors) -> bool:
    import torch

    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x,) + tensors)


_table_warned = False


def _warn_table(exc: Exception) -> None:
    global _table_warned
    if not _table_warned:
        _table_warned = True
        import warnings

        warnings.warn(f"attn_kernels: the auto backend table is unusable ({exc}); using the fixed order "
                      f"{AUTO_ORDER}", RuntimeWarning, stacklevel=3)


def _is_compiling() -> bool:
    import torch

    return torch.compiler.is_compiling()


def info() -> Dict[str, Dict[str, str]]:
    """For each backend and device type: "available" or the reason it is not, plus its ops."""
    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    out: Dict[str, Dict[str, str]] = {}
    for backend in BACKENDS[1:]:
        row = {}
        for dev in devices:
            reason = unavailable_reason(backend, dev)
            row[dev] = "available" if reason is None else reason
            if reason is None and backend == "cpu" and dev == "cpu":
                from .ops import ext

                if not ext.has_openmp():
                    row[dev] = "available (single-threaded: attn_kernels._C was built without OpenMP)"
        row["ops"] = ", ".join(op for op in _IMPLS if backend in _IMPLS[op]) or "-"
        out[backend] = row
    return out
