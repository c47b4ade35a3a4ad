"""Layout and launch-arithmetic helpers shared by the Triton launchers.

Kernels address x as (n, c, hw) with one stride each, which covers NCHW, channels_last(_3d) and any
view whose spatial dims flatten to one stride (crops along the outer dims, x[::2], expanded grad_y):
those run without a copy. Only a view whose spatial dims do not flatten is copied.
"""
import contextlib
import functools
import inspect
import operator
import os
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from triton import knobs
from triton.compiler import CompiledKernel
from triton.runtime import driver
from triton.runtime.jit import JITFunction

from .. import _alloc


# Host-side integer helpers. triton.next_power_of_2 / triton.cdiv are constexpr functions in triton >= 3.5:
# ~2-4 us per host call (argument unwrapping), paid several times per launch; these are plain Python.
def next_pow2(n: int) -> int:
    """Smallest power of two >= n (0 for n = 0), as triton.next_power_of_2."""
    return 0 if n <= 0 else 1 << (n - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def flat_strides(t: torch.Tensor) -> Optional[Tuple[int, int, int]]:
    """(stride_n, stride_c, stride_hw) when t's spatial dims flatten to one stride, else None. Runs for
    every tensor of every launch, so NCHW and channels_last (W > 1) answer without the general walk."""
    if not t.numel():  # any strides count as contiguous then
        return _flat_strides_walk(t)
    if t.is_contiguous():  # the innermost spatial dim of size > 1 has stride 1
        return t.stride(0), t.stride(1), 1
    if t.dim() == 4 and t.shape[3] > 1 and t.is_contiguous(memory_format=torch.channels_last):
        return t.stride(0), t.stride(1), t.stride(3)  # W innermost of the spatial dims, H = W·stride_w
    return _flat_strides_walk(t)


def _flat_strides_walk(t: torch.Tensor) -> Optional[Tuple[int, int, int]]:
    """flat_strides by the definition: the spatial dims of size > 1 must nest (outer = inner · size)."""
    dims = [(size, stride) for size, stride in zip(t.shape[2:], t.stride()[2:]) if size != 1]
    for (_, outer), (size, inner) in zip(dims, dims[1:]):
        if outer != inner * size:
            return None
    return t.stride(0), t.stride(1), (dims[-1][1] if dims else 1)


def as_flat(t: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int, int]]:
    """t and its strides; the documented copy only for views whose spatial dims do not flatten."""
    strides = flat_strides(t)
    if strides is None:
        t = t.contiguous()
        strides = flat_strides(t)
    return t, strides


def out_like(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, Tuple[int, int, int]]:
    """(result with empty_like(x)'s layout, buffer the kernel writes, its strides)."""
    out = _alloc.empty_like(x)
    strides = flat_strides(out)
    if strides is not None:
        return out, out, strides
    buf = _alloc.empty(x.shape, dtype=x.dtype, device=x.device)
    return out, buf, flat_strides(buf)


def getenv(name: str, default: str) -> str:
    """``os.environ.get(name, default)``, read live (tests and sweeps set the knobs in-process) but without
    its cost for an unset name -- a KeyError raised and caught, ~1 us on the 2-core VM, several reads per
    fused call: a lookup in the dict os.environ keeps (every write through os.environ updates it, also
    monkeypatch.setenv and patch.dict; like os.environ, it misses an os.putenv, and it would miss an
    os.environ replaced by another object)."""
    if _ENV_DATA is None:
        return os.environ.get(name, default)
    value = _ENV_DATA.get(_ENV_KEY(name))
    return default if value is None else os.environ.decodevalue(value)


_ENV_DATA = getattr(os.environ, "_data", None)
_ENV_KEY = getattr(os.environ, "encodekey", None)


def device_of(t: torch.Tensor):
    """Context making t's GPU the current one: Triton launches on the current CUDA device, so without it
    a tensor on cuda:1 while cuda:0 is current (one process driving several GPUs) would fail to launch."""
    if t.is_cuda and t.device.index is not None and t.device.index != torch.cuda.current_device():
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------------------------
# Launching: Triton's launch path once per specialisation, then the kernel it compiled, directly
# ----------------------------------------------------------------------------------------------
DIRECT_LAUNCH = os.environ.get("ATTN_KERNELS_DIRECT_LAUNCH", "1") != "0"  # module attribute: tests switch it
# launchers repeat a call signature's recorded launch (``Replay``) with the new tensors; module attribute: tests
# and bench/host_overhead.py switch it
REPLAY = os.environ.get("ATTN_KERNELS_REPLAY", "1") != "0"
recorder = None  # a list to get (kernel, grid, args, kw) of every launch (bench/host_overhead.py's replay)
_COMPILED = {}  # (id(kernel), device, instrumentation, argument key, keywords) -> (kernel, CompiledKernel, tail)
_TAILS = {}  # kernel -> its parameters' (name, default) in order: the bound-argument list's tail
# Triton's AMD backend also specialises a tensor on whether its storage is under 2 GB (buffer ops), which
# the key below does not see: ROCm keeps Triton's path
_HIP = torch.version.hip is not None


def _specialisation_key(args) -> tuple:
    """What Triton specialises the arguments on, or finer: a tensor's dtype and whether its data pointer is
    16-byte aligned (Triton's only tensor attribute on NVIDIA GPUs: ``tests/ops/test_launch.py`` checks that
    against the installed Triton), any other argument's type and exact value (bool 1 and int 1 differ). One
    comprehension, no call per argument: it runs on every launch."""
    return tuple([(a.dtype, a.data_ptr() % 16 == 0) if isinstance(a, torch.Tensor) else (a.__class__, a)
                  for a in args])


def run_kernel(kernel, grid: int, args: tuple, kw: dict, compiled: Optional[dict] = None, tensors: int = 0):
    """``kernel[(grid,)](*args, **kw)``, cheaper from the second call of a specialisation on.

    Why: Triton's launch path (``JITFunction.run``) binds and specialises every argument in Python on every
    call -- 30 arguments for the SE kernels: 34-38 us per launch on the 2-core VM, a third of a fused SE
    forward's host time (bench/host_overhead.py --stand-in), and SE layers are small and many. The first
    call of each specialisation goes through it and returns the ``CompiledKernel`` it launched; later calls
    whose arguments specialise alike (``_specialisation_key``: the same dtypes, 16-byte alignments, integers and
    meta-parameters, on the same device) launch that kernel through its own launcher,
    ``compiled[grid](*bound arguments)`` -- what ``JITFunction.run`` ends with, launch hooks (profilers)
    included. Triton's path is taken every time under the interpreter, on ROCm, and for anything that is
    not a plain ``JITFunction`` (compile_triton's stand-ins), while ``TRITON_DEBUG`` or a pre-run / pipeline
    hook is set, with ``ATTN_KERNELS_DIRECT_LAUNCH=0``, and for unhashable arguments. Tensors belong in
    ``args``: one in ``kw`` would be keyed by identity (never a hit, kept alive by the cache). Not checked
    again on the direct path: that the kernel's global constants did not change since it was compiled
    (Triton's check; ours are module constants).

    ``compiled`` (``replay``'s): a cache owned by the caller, for launches whose ``args[tensors:]``, ``kw``
    and tensor dtypes are always the same; its key is only the device, the instrumentation mode and the
    16-byte alignment of ``args[:tensors]`` (Triton's specialisation key less what the caller fixes)."""
    if recorder is not None:
        recorder.append((kernel, grid, args, kw))
    if (not DIRECT_LAUNCH or _HIP or type(kernel) is not JITFunction or kernel.pre_run_hooks or knobs.runtime.debug
            or getattr(knobs.runtime, "add_stages_inspection_hook", None) is not None):
        kernel[(grid,)](*args, **kw)
        return
    device = driver.active.get_current_device()
    instrumentation = getattr(knobs.compilation, "instrumentation_mode", None)
    try:
        if compiled is None:
            compiled = _COMPILED
            key = full = _full_key(kernel, device, instrumentation, args, kw)
            hit = compiled.get(key)
        else:
            key = (device, instrumentation, _alignment(args[:tensors]))
            hit = compiled.get(key)
            if hit is None:  # a replay's first launch at this alignment: did a full-path launch compile it?
                full = _full_key(kernel, device, instrumentation, args, kw)
                hit = _COMPILED.get(full)
                if hit is not None and hit[0] is kernel:
                    remember(compiled, key, hit)
    except TypeError:  # an unhashable argument (none of ours): Triton's path, every time
        kernel[(grid,)](*args, **kw)
        return
    if hit is None or hit[0] is not kernel:
        launched = kernel[(grid,)](*args, **kw)  # JITFunction.run returns the kernel it compiled and launched
        if isinstance(launched, CompiledKernel):
            hit = (kernel, launched, _bound_tail(kernel, len(args), kw))
            remember(compiled, key, hit)
            if compiled is not _COMPILED:  # (full paths of this specialisation find it too)
                remember(_COMPILED, full, hit)
        return
    _, launched, tail = hit
    launched[(grid, 1, 1)](*args, *tail)


def _full_key(kernel, device, instrumentation, args: tuple, kw: dict) -> tuple:
    # id(kernel): a JITFunction's own hash recomputes its cache key (~2 us); an entry holds its kernel, and a
    # hit must be that very kernel (an id is reused only after its object is gone)
    return id(kernel), device, instrumentation, _specialisation_key(args), tuple(kw.items())


_DATA_PTR = torch.Tensor.data_ptr


def _alignment(tensors: tuple):
    """True when every tensor's data pointer is 16-byte aligned (the usual case: one OR over them, no Python
    loop), else each one's alignment: what Triton specialises tensors on (see ``_specialisation_key``)."""
    ptrs = tuple(map(_DATA_PTR, tensors))
    if not functools.reduce(operator.or_, ptrs, 0) & 15:
        return True
    return tuple(p % 16 == 0 for p in ptrs)


class Replay:
    """One launch as a launcher's full path made it -- kernel, grid, the arguments after its tensors,
    meta-parameters -- to be made again with another call's tensors (``replay``). Launchers keep one per
    call signature (everything their plan depends on: shapes, strides, dtypes, flags, tuning knobs), so
    that a repeated call allocates its outputs and launches, skipping the planning, the argument packing
    and the specialisation key (SE and ECA layers are small and many: host time per call counts).
    ``compiled``: ``run_kernel``'s cache for this launch."""
    __slots__ = ("kernel", "grid", "scalars", "kw", "tensors", "compiled")

    def __init__(self, launch: tuple, tensors: int):
        self.kernel, self.grid, args, self.kw = launch
        if not all(isinstance(a, torch.Tensor) for a in args[:tensors]) or any(
                isinstance(a, torch.Tensor) for a in args[tensors:]):
            raise ValueError(f"{getattr(self.kernel, '__name__', self.kernel)}: the first {tensors} arguments "
                             "must be its tensors, and only those")
        self.scalars = tuple(args[tensors:])
        self.tensors = tensors
        self.compiled = {}


def replay_key(*signature):
    """A launcher's key for its recorded launches: ``signature`` -- everything its plan and its kernel's
    specialisation depend on but tensor alignment (keyed at the launch): every tensor's shape, strides and
    dtype (``meta``), the device, the flags, the knobs -- or None while replays are off."""
    return signature if REPLAY else None


def meta(t: Optional[torch.Tensor]):
    """An optional tensor's part of a replay key."""
    return None if t is None else (t.shape, t.stride(), t.dtype)


def remember(replays: dict, key, entry) -> None:
    """``replays[key] = entry``, the memo bounded like the launch-plan memos."""
    if len(replays) >= 4096:
        replays.clear()
    replays[key] = entry


def replay(launch: Replay, tensors: tuple) -> None:
    """``launch`` again, on ``tensors`` (in the order of the recorded launch's)."""
    if len(tensors) != launch.tensors:
        raise ValueError(f"replay of {launch.kernel.__name__}: {len(tensors)} tensors for {launch.tensors}")
    run_kernel(launch.kernel, launch.grid, tensors + launch.scalars, launch.kw, launch.compiled, launch.tensors)


def _bound_tail(kernel, positional: int, kw: dict) -> tuple:
    """The parameters after the positional ones as Triton binds them (keyword or default), in order: with
    the positional arguments, the values JITFunction.run hands the kernel's launcher (constexprs too)."""
    params = _TAILS.get(kernel)
    if params is None:
        params = _TAILS[kernel] = tuple((p.name, p.default) for p in inspect.signature(kernel.fn).parameters.values())
    return tuple(kw[name] if name in kw else default for name, default in params[positional:])


# Streaming-loop alignment (SE and ECA kernels): what Triton needs to vectorise a tile's loads and to
# pipeline them as cp.async copies (tl.range(num_stages=...)): each thread's contiguous piece ≥ 4 bytes and
# known to be aligned. Triton learns alignment only from integer arguments divisible by 16.
def stream_alignment(elem: int, hw: int, strides, block_c: int) -> Tuple[bool, int]:
    """(pipelinable, ROW_ALIGN) for tiles of tensors with the (N, C, HW) ``strides`` (x first, then every
    other tensor the kernel streams). Channels_last tiles (x's channel stride 1; rows along C): pipelinable
    when x's row pitch and sample stride are multiples of 16 bytes; ROW_ALIGN 1. NCHW tiles (rows along HW,
    every unit stride 1): ROW_ALIGN = the largest power of two A ≤ 16 bytes / ``elem`` dividing HW and every
    row and sample stride -- the kernels rewrite those as multiples of A (``multiple``), so Triton copies A
    elements at a time -- pipelinable when A·elem ≥ 4 bytes (bf16 at 14×14: A = 4; at 7×7: 1, 2 bytes)."""
    sx = strides[0]
    if sx[1] == 1 and block_c > 1:
        return (sx[2] * elem) % 16 == 0 and (sx[0] * elem) % 16 == 0, 1
    row_align = 1
    if all(st[2] == 1 for st in strides):
        row_align = max(1, 16 // elem)
        while row_align > 1 and any(v % row_align for v in [hw] + [st[i] for st in strides for i in (0, 1)]):
            row_align //= 2
    return row_align * elem >= 4, row_align


@triton.jit
def multiple(v, A: tl.constexpr):
    """``v`` rewritten as (v // A)·A: the same value (launchers pass ROW_ALIGN = A only when A divides it,
    ``stream_alignment``), written so that Triton's alignment analysis knows it. An NCHW tile row of bf16
    at 14×14 is 392 bytes: Triton, which specialises integer arguments only on divisibility by 16, cannot
    vectorise its loads nor pipeline them as cp.async (≥ 4 bytes per copy); with HW and the strides known
    to be multiples of 4 it does both, 8 bytes at a time (checked in the sm_90 PTX)."""
    if A > 1:
        v = v // A * A
    return v


@triton.jit
def multiple_rows(sn, sc, A: tl.constexpr):
    """A tensor's sample and row strides (stride_n, stride_c), each as ``multiple`` of A."""
    return multiple(sn, A), multiple(sc, A)
