"""Layout and launch-arithmetic helpers shared by the Triton launchers.

Kernels address x as (n, c, hw) with one stride each, which covers NCHW, channels_last(_3d) and any
view whose spatial dims flatten to one stride (crops along the outer dims, x[::2], expanded grad_y):
those run without a copy. Only a view whose spatial dims do not flatten is copied.
"""
import contextlib
from typing import Optional, Tuple

import torch

from .. import _alloc


# Host-side integer helpers. triton.next_power_of_2 / triton.cdiv are constexpr functions in triton >= 3.5:
# ~2-4 us per host call (argument unwrapping), paid several times per launch; these are plain Python.
def next_pow2(n: int) -> int:
    """Smallest power of two >= n (0 for n = 0), as triton.next_power_of_2."""
    return 0 if n <= 0 else 1 << (n - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def flat_strides(t: torch.Tensor) -> Optional[Tuple[int, int, int]]:
    """(stride_n, stride_c, stride_hw) when t's spatial dims flatten to one stride, else None."""
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


def device_of(t: torch.Tensor):
    """Context making t's GPU the current one: Triton launches on the current CUDA device, so without it
    a tensor on cuda:1 while cuda:0 is current (one process driving several GPUs) would fail to launch."""
    if t.is_cuda and t.device.index is not None and t.device.index != torch.cuda.current_device():
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()
