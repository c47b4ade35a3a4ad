"""Python glue for the C++/CUDA extension ``attn_kernels._C`` (csrc/): the ``cpu`` and ``cuda`` backends.

Importing this module loads the compiled extension, which registers the ops
``torch.ops.attn_kernels_ext.{se,eca}_{fwd,bwd}`` (CPU kernels, plus CUDA kernels when built with
nvcc) and ``{se,eca}_residual_{fwd,bwd}`` (CPU only); here they get their fake (meta) kernels and
autograd (backward as its own op), so they work under ``torch.compile`` and ``torch.library.opcheck``.

Loading: ``import attn_kernels._C`` (built by ``pip install --no-build-isolation .``). Only when the
user asks with ``ATTN_KERNELS_JIT=1`` and the import fails, the CPU part is JIT-compiled with
``torch.utils.cpp_extension.load`` (ninja; cached under ``TORCH_EXTENSIONS_DIR``). Without either,
importing this module raises the ImportError, which the backend table reports as the reason.

Entry points ``se(x, w1, b1, w2, b2, act, gate)``, ``eca(x, weight, circular)`` and the residual block
tails ``se_residual(x, shortcut, w1, b1, w2, b2, act, gate, out_act)`` / ``eca_residual(x, shortcut,
weight, circular, out_act)`` (``out_act(x · s + shortcut)`` in one pass): the same semantics as their
``reference`` functions (arguments validated by ``functional``). Compared
with the eager reference, which computes the excitation in x's dtype, the kernels keep the pooled
vector, the excitation and the gate in float32 (float64 for float64 x) and round once at the store.
"""
from __future__ import annotations

import glob
import importlib
import importlib.util
import mmap
import os
from typing import Optional

import torch

from .. import _isa
from . import _eager

__all__ = ["se", "eca", "se_residual", "eca_residual", "ACT_CODES", "GATE_CODES", "OUT_ACT_CODES", "load_error"]

ACT_CODES = {"relu": 0, "silu": 1, "gelu": 2, "hardswish": 4}  # csrc/ops.h Act
OUT_ACT_CODES = {"relu": 0, "silu": 1, "gelu": 2, "identity": 3}
GATE_CODES = {"sigmoid": 0, "hardsigmoid": 1}

_CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "csrc")


def _jit_build():
    """JIT-compile the CPU part of csrc/ (opt-in: ATTN_KERNELS_JIT=1). Returns the loaded module."""
    from torch.utils.cpp_extension import _get_build_directory, load

    sources = sorted(glob.glob(os.path.join(_CSRC, "*.cpp")) + glob.glob(os.path.join(_CSRC, "cpu", "*.cpp")))
    if not sources:
        raise ImportError(f"ATTN_KERNELS_JIT=1 but no C++ sources found under {_CSRC} (not a source checkout)")
    build_dir = _get_build_directory("attn_kernels_C", verbose=False)  # our own folder; the module is "_C"
    return load(name="_C", sources=sources, build_directory=build_dir,
                extra_cflags=["-O3", "-Wno-unknown-pragmas", "-fopenmp"] + _isa.isa_flags(),
                extra_ldflags=["-fopenmp"], is_python_module=True,
                verbose=os.environ.get("ATTN_KERNELS_JIT_VERBOSE", "0") == "1")


def check_cpu_isa(path: str) -> None:
    """ImportError when the binary at ``path`` was built for an ISA this CPU lacks (a wheel or a shared
    install built on an AVX512 machine, run on one without): refused here instead of a crash on the
    first illegal instruction. The ISA is read from a marker string in the file (csrc/ops.cpp)."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as image:
        at = image.find(b"attn_kernels_cpu_isa=")  # mapped, not read: the .so is ~25 MB (1 ms, not 20)
        if at < 0:
            return
        isa = image[at + len(b"attn_kernels_cpu_isa="):image.find(b";", at)].decode()
    missing = _isa.missing_cpu_flags(isa)
    if missing:
        raise ImportError(f"attn_kernels._C was built for {isa}, but this CPU lacks {', '.join(missing)}; rebuild it "
                          "here (pip install --no-build-isolation .) or with ATTN_KERNELS_CPU_ISA=avx2|default")


def _load_extension():
    try:
        spec = importlib.util.find_spec("attn_kernels._C")
        if spec is not None and spec.origin and os.path.isfile(spec.origin):
            check_cpu_isa(spec.origin)
        return importlib.import_module("attn_kernels._C")
    except ImportError as exc:
        if os.environ.get("ATTN_KERNELS_JIT", "0") != "1":
            raise ImportError(f"attn_kernels._C is not available ({exc}); set ATTN_KERNELS_JIT=1 to JIT-compile "
                              "its CPU part with ninja") from exc
        try:
            return _jit_build()
        except Exception as jit_exc:
            raise ImportError(f"attn_kernels._C is not built ({exc}) and the JIT build failed: {jit_exc}") from jit_exc


_C = _load_extension()
_ops = torch.ops.attn_kernels_ext


def load_error() -> Optional[str]:
    return None


def has_cuda() -> bool:
    return bool(getattr(_C, "has_cuda", lambda: False)())


def has_openmp() -> bool:
    """True when the CPU kernels were compiled with OpenMP (else at::parallel_for runs them on one thread)."""
    return bool(getattr(_C, "has_openmp", lambda: False)())


# ----------------------------------------------------------------------------------------------
# Fake kernels: shapes, dtypes and strides of the real ones
# ----------------------------------------------------------------------------------------------
def _acc(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _fake_fwd(x):
    n, c = x.shape[:2]
    return torch.empty_like(x), x.new_empty((n, c), dtype=_acc(x)), x.new_empty((n, c), dtype=_acc(x))


def _grad_like(t: Optional[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(t, memory_format=torch.contiguous_format) if t is not None \
        else x.new_empty((0,), dtype=_acc(x))


@torch.library.register_fake("attn_kernels_ext::se_fwd")
def _(x, w1, b1, w2, b2, act, gate):
    return _fake_fwd(x)


@torch.library.register_fake("attn_kernels_ext::se_bwd")
def _(grad_y, x, w1, b1, w2, b2, pooled, s, act, gate):
    return (torch.empty_like(x), _grad_like(w1, x), _grad_like(b1, x), _grad_like(w2, x), _grad_like(b2, x))


@torch.library.register_fake("attn_kernels_ext::eca_fwd")
def _(x, weight, circular):
    return _fake_fwd(x)


@torch.library.register_fake("attn_kernels_ext::eca_bwd")
def _(grad_y, x, weight, pooled, s, circular):
    return torch.empty_like(x), _grad_like(weight, x)


@torch.library.register_fake("attn_kernels_ext::se_residual_fwd")
def _(x, shortcut, w1, b1, w2, b2, act, gate, out_act):
    return _fake_fwd(x)


@torch.library.register_fake("attn_kernels_ext::se_residual_bwd")
def _(grad_y, x, shortcut, w1, b1, w2, b2, pooled, s, act, gate, out_act):
    return (torch.empty_like(x), torch.empty_like(x), _grad_like(w1, x), _grad_like(b1, x), _grad_like(w2, x),
            _grad_like(b2, x))


@torch.library.register_fake("attn_kernels_ext::eca_residual_fwd")
def _(x, shortcut, weight, circular, out_act):
    return _fake_fwd(x)


@torch.library.register_fake("attn_kernels_ext::eca_residual_bwd")
def _(grad_y, x, shortcut, weight, pooled, s, circular, out_act):
    return torch.empty_like(x), torch.empty_like(x), _grad_like(weight, x)


# ----------------------------------------------------------------------------------------------
# Autograd: the backward is its own op
# ----------------------------------------------------------------------------------------------
# Forward inputs are (maps..., params..., codes...): x (and shortcut for the residual ops) first, the int /
# bool codes last. The backward op takes (grad_y, maps..., params..., pooled, s, codes...) and returns a
# gradient per map and per param; that of an absent (None) param is dropped here.
def _saving_setup(n_maps: int, n_codes: int):
    def setup(ctx, inputs, output):
        _, pooled, s = output
        tensors = inputs[:len(inputs) - n_codes]
        ctx.codes = inputs[len(inputs) - n_codes:]
        ctx.present = [t is not None for t in tensors[n_maps:]]
        ctx.save_for_backward(*tensors, pooled, s)
    return setup


def _backward_with(bwd_op, n_maps: int):
    def backward(ctx, grad_y, *_, bwd=None):
        grads = (bwd or bwd_op)(grad_y, *ctx.saved_tensors, *ctx.codes)
        params = [g if present else None for g, present in zip(grads[n_maps:], ctx.present)]
        return (*grads[:n_maps], *params, *(None for _ in ctx.codes))
    return backward


def _below_autograd(op):
    """``op`` dispatched straight to its CPU / CUDA kernel, past the autograd kernel registered here (what
    the eager path's own autograd.Function replaces)."""
    def run(*args):
        with torch._C._AutoDispatchBelowAutograd():
            return op(*args)
    return run


_SPECS = {}
for _name, _n_maps, _n_codes in (("se", 1, 2), ("eca", 1, 1), ("se_residual", 2, 3), ("eca_residual", 2, 2)):
    _fwd, _bwd = getattr(_ops, f"{_name}_fwd"), getattr(_ops, f"{_name}_bwd")
    _setup, _backward = _saving_setup(_n_maps, _n_codes), _backward_with(_bwd, _n_maps)
    torch.library.register_autograd(f"attn_kernels_ext::{_name}_fwd", _backward, setup_context=_setup)
    # Eager calls skip the Python autograd kernel's dispatch (``_eager``): same kernels, same formula.
    _SPECS[_name] = _eager.OpSpec(_fwd, _below_autograd(_fwd), _setup, _backward, _bwd)


# ----------------------------------------------------------------------------------------------
# Entry points: the ``cpu`` / ``cuda`` backends of functional.se / functional.eca
# ----------------------------------------------------------------------------------------------
def se(x, w1, b1, w2, b2, act: str = "relu", gate: str = "sigmoid") -> torch.Tensor:
    """Fused SE on the extension; arguments as ``reference.se`` (validated by ``functional.se``)."""
    w1, w2 = _fc(w1), _fc(w2)  # the C++ ops take (out, in) matrices
    return _eager.call(_SPECS["se"], x, w1, b1, w2, b2, ACT_CODES[act], GATE_CODES[gate])[0]


def _fc(w):
    """A 1×1 convolution's weight as the FC matrix (a view; None stays None)."""
    return w if w is None or w.dim() == 2 else w.flatten(1)


def eca(x, weight, circular: bool = False) -> torch.Tensor:
    """Fused ECA / CECA on the extension; arguments as ``reference.eca`` (validated by ``functional.eca``)."""
    return _eager.call(_SPECS["eca"], x, weight, bool(circular))[0]


def se_residual(x, shortcut, w1, b1, w2, b2, act: str = "relu", gate: str = "sigmoid",
                out_act: str = "relu") -> torch.Tensor:
    """Fused out_act(se(x) + shortcut) (CPU); arguments as ``reference.se_residual`` (validated by ``functional``)."""
    w1, w2 = _fc(w1), _fc(w2)
    return _eager.call(_SPECS["se_residual"], x, shortcut, w1, b1, w2, b2, ACT_CODES[act], GATE_CODES[gate],
                       OUT_ACT_CODES[out_act])[0]


def eca_residual(x, shortcut, weight, circular: bool = False, out_act: str = "relu") -> torch.Tensor:
    """Fused out_act(eca(x) + shortcut) (CPU); arguments as ``reference.eca_residual`` (validated by ``functional``)."""
    return _eager.call(_SPECS["eca_residual"], x, shortcut, weight, bool(circular), OUT_ACT_CODES[out_act])[0]
