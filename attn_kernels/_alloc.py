"""Output allocation for every kernel launcher.

Kernels write into tensors allocated here. With ``ATTN_KERNELS_NAN_FILL=1`` (the test suite sets it)
they come pre-filled with NaN instead of uninitialised memory, so an element a kernel forgot to
write shows up as a NaN mismatch instead of passing by luck.
"""
from __future__ import annotations

import os

import torch

NAN_FILL = os.environ.get("ATTN_KERNELS_NAN_FILL", "0") == "1"


def empty(shape, *, dtype: torch.dtype, device, memory_format=torch.contiguous_format) -> torch.Tensor:
    out = torch.empty(shape, dtype=dtype, device=device, memory_format=memory_format)
    if NAN_FILL and out.is_floating_point():
        out.fill_(float("nan"))
    return out


def empty_like(t: torch.Tensor, *, dtype=None) -> torch.Tensor:
    """Same shape, device and strides (``preserve_format``: channels_last stays channels_last)."""
    out = torch.empty_like(t, dtype=dtype)
    if NAN_FILL and out.is_floating_point():
        out.fill_(float("nan"))
    return out
