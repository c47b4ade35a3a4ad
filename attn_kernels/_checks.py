"""Input validation shared by every backend.

Each public entry point checks its arguments here once, before dispatch, so a bad call fails with
the same clear Python exception whatever backend would have run it — never inside a kernel, where
it would be a crash, an illegal memory access or a silently wrong answer.
"""
from __future__ import annotations

from typing import Optional

import torch

ACTS = ("relu", "silu", "gelu", "hardswish")  # the SE bottleneck activation
GATES = ("sigmoid", "hardsigmoid")


def check_feature_map(x, name: str = "x") -> None:
    """x must be a floating tensor laid out as (N, C, *spatial) with at least one spatial dim."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 3:
        raise ValueError(
            f"{name} must have shape (N, C, *spatial) with at least one spatial dim, "
            f"got {x.dim()}-D shape {tuple(x.shape)}"
        )
    if any(d == 0 for d in x.shape[2:]):
        raise ValueError(f"{name} has an empty spatial dim (shape {tuple(x.shape)}): global pooling is undefined")


def check_choice(value: str, choices, what: str) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(choices)}")


def _check_param(t, name: str, shape, x: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    if t.device != x.device:
        raise ValueError(f"{name} is on {t.device} but x is on {x.device}")


def _check_fc(t, name: str, shape, x: torch.Tensor) -> None:
    """An FC weight of ``shape`` (out, in), or the weight of a 1×1 convolution doing that FC (out, in, 1, …):
    the same values in the same memory order, so fused kernels take it as it is (no flatten view per call,
    which would add an autograd node to every forward and backward)."""
    if isinstance(t, torch.Tensor) and t.dim() > 2 and all(d == 1 for d in t.shape[2:]):
        _check_param(t, name, tuple(shape) + (1,) * (t.dim() - 2), x)
        return
    _check_param(t, name, shape, x)


def check_se_args(x, w1, b1, w2, b2, act: str, gate: str) -> None:
    """Shapes for SE: w1 (R, C), b1 (R,) or None, w2 (C, R), b2 (C,) or None. The FC weights may also be
    1×1 convolution weights, (R, C, 1, 1) and (C, R, 1, 1) (any number of trailing 1s).

    ``w1 is None`` selects effective SE (eSE): one C→C FC, so w2 is (C, C) and b1 must be None.
    """
    check_feature_map(x)
    check_choice(act, ACTS, "act")
    check_choice(gate, GATES, "gate")
    channels = x.shape[1]
    if w2 is None:
        raise ValueError("w2 (the expand FC weight, shape (C, R)) is required")
    if w1 is None:
        if b1 is not None:
            raise ValueError("b1 given without w1: effective SE (w1=None) has a single FC (w2, b2)")
        _check_fc(w2, "w2", (channels, channels), x)
    else:
        if not isinstance(w1, torch.Tensor) or w1.dim() < 2:
            raise ValueError(f"w1 must be a 2-D (R, C) tensor (or a 1x1 conv weight), got {getattr(w1, 'shape', w1)}")
        rd = w1.shape[0]
        if rd < 1:
            raise ValueError("w1 has zero rows: the SE bottleneck needs at least one hidden unit")
        _check_fc(w1, "w1", (rd, channels), x)
        if b1 is not None:
            _check_param(b1, "b1", (rd,), x)
        _check_fc(w2, "w2", (channels, rd), x)
    if b2 is not None:
        _check_param(b2, "b2", (channels,), x)


def check_taps(weight, name: str, x: torch.Tensor) -> torch.Tensor:
    """A 1-D conv across channels: (k,) or the Conv1d weight (1, 1, k), k odd; returns the (k,) view."""
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(weight).__name__}")
    taps = weight.reshape(-1) if weight.dim() == 3 and weight.shape[:2] == (1, 1) else weight
    if taps.dim() != 1:
        raise ValueError(f"{name} must have shape (k,) or (1, 1, k), got {tuple(weight.shape)}")
    if not taps.is_floating_point():
        raise TypeError(f"{name} must be floating point, got dtype {taps.dtype}")
    if taps.shape[0] < 1 or taps.shape[0] % 2 == 0:
        raise ValueError(f"{name} has k={taps.shape[0]} taps: the kernel size must be odd and positive (centred conv)")
    if taps.device != x.device:
        raise ValueError(f"{name} is on {taps.device} but x is on {x.device}")
    return taps


def check_dmk_eca_args(x, fc_weight, fc_bias, taps3, taps5, taps7) -> None:
    """fc_weight (3, C), fc_bias (3,) or None; three odd-length tap vectors, each (k,) or (1, 1, k)."""
    check_feature_map(x)
    _check_param(fc_weight, "fc_weight", (3, x.shape[1]), x)
    if fc_bias is not None:
        _check_param(fc_bias, "fc_bias", (3,), x)
    for name, t in (("taps3", taps3), ("taps5", taps5), ("taps7", taps7)):
        check_taps(t, name, x)


def check_bi_eca_args(x, w_fwd, w_bwd, w1, b1, w2, b2) -> None:
    """w_fwd, w_bwd odd-length taps; gate MLP w1 (R, C), b1 (R,) or None, w2 (2, R), b2 (2,) or None."""
    check_feature_map(x)
    check_taps(w_fwd, "w_fwd", x)
    check_taps(w_bwd, "w_bwd", x)
    if not isinstance(w1, torch.Tensor) or w1.dim() != 2 or w1.shape[0] < 1:
        raise ValueError(f"w1 must be a 2-D (R, C) tensor with R >= 1, got {getattr(w1, 'shape', w1)}")
    rd = w1.shape[0]
    _check_param(w1, "w1", (rd, x.shape[1]), x)
    if b1 is not None:
        _check_param(b1, "b1", (rd,), x)
    _check_param(w2, "w2", (2, rd), x)
    if b2 is not None:
        _check_param(b2, "b2", (2,), x)


def check_eca_args(x, weight) -> torch.Tensor:
    """x a feature map, weight the ECA taps; returns them as a (k,) view."""
    check_feature_map(x)
    return check_taps(weight, "ECA weight", x)


def check_same_shape(a: torch.Tensor, b: Optional[torch.Tensor], name: str) -> None:
    if b is None:
        return
    if not isinstance(b, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(b).__name__}")
    if b.shape != a.shape:
        raise ValueError(f"{name} has shape {tuple(b.shape)}, expected {tuple(a.shape)} (same as x)")
    if b.device != a.device:
        raise ValueError(f"{name} is on {b.device} but x is on {a.device}")
    if b.dtype != a.dtype:
        raise TypeError(f"{name} has dtype {b.dtype} but x has {a.dtype}")
