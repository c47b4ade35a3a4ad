"""Functional API: each op validates its arguments once, then runs on the selected backend.

``backend=None`` uses the current one (``set_backend`` / ``use_backend``, default ``auto``); naming a
backend here pins it for this call. Under ``auto`` the backend is chosen per call from the measured table
(``_autotable``: device, dtype, layout, shape, and training vs inference), else a fixed order per device.
Ops return a new tensor and never modify their inputs.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import _checks
from ._backend import resolve_for
from .reference import OUT_ACTS

__all__ = ["se", "eca", "se_residual", "eca_residual", "cbam", "dmk_eca", "bi_eca"]


def se(x: torch.Tensor, w1: Optional[torch.Tensor], b1: Optional[torch.Tensor], w2: torch.Tensor,
       b2: Optional[torch.Tensor], act: str = "relu", gate: str = "sigmoid", *,
       backend: Optional[str] = None) -> torch.Tensor:
    """Squeeze-and-excitation: ``x · gate(w2 · act(w1 · mean_spatial(x) + b1) + b2)``.

    x (N, C, *spatial); w1 (R, C), b1 (R,) or None, w2 (C, R), b2 (C,) or None. ``w1=None`` (and
    ``b1=None``) is effective SE: ``x · gate(w2 · mean(x) + b2)`` with w2 (C, C). The FC weights may be
    1×1 convolution weights, (R, C, 1, 1) / (C, R, 1, 1) (timm's SE modules hold conv layers): the Triton
    kernels take them as they are -- no flatten view, one autograd node fewer each way per call -- and the
    gradients come back in their shape.
    act ∈ relu/silu/gelu/hardswish (the bottleneck), gate ∈ sigmoid/hardsigmoid.
    """
    _checks.check_se_args(x, w1, b1, w2, b2, act, gate)
    variant = _se_variant(w1, act, gate)
    return resolve_for("se", x, backend, w1, b1, w2, b2, variant=variant)(x, w1, b1, w2, b2, act, gate)


def _se_variant(w1, act: str, gate: str) -> str:
    """The bench's name for this form of SE (``auto``'s table rows are per form)."""
    if w1 is None:
        return "ese"
    if gate == "hardsigmoid":
        return "se_hsig"
    return "se_silu" if act == "silu" else "se"


def eca(x: torch.Tensor, weight: torch.Tensor, circular: bool = False, *,
        backend: Optional[str] = None) -> torch.Tensor:
    """Efficient channel attention: ``x · sigmoid(conv1d_k(mean_spatial(x)))`` across channels.

    weight: the (k,) taps or the Conv1d weight (1, 1, k), k odd. ``circular=True`` is CECA.
    """
    _checks.check_eca_args(x, weight)
    return resolve_for("eca", x, backend, weight, variant="ceca" if circular else "eca")(x, weight, circular)


def se_residual(x: torch.Tensor, shortcut: torch.Tensor, w1, b1, w2, b2, act: str = "relu",
                gate: str = "sigmoid", out_act: str = "relu", *, backend: Optional[str] = None) -> torch.Tensor:
    """SE-ResNet block tail in one op: ``out_act(se(x) + shortcut)``."""
    _checks.check_se_args(x, w1, b1, w2, b2, act, gate)
    _checks.check_same_shape(x, shortcut, "shortcut")
    _checks.check_choice(out_act, OUT_ACTS, "out_act")
    return resolve_for("se_residual", x, backend, shortcut, w1, b1, w2, b2)(
        x, shortcut, w1, b1, w2, b2, act, gate, out_act)


def eca_residual(x: torch.Tensor, shortcut: torch.Tensor, weight: torch.Tensor, circular: bool = False,
                 out_act: str = "relu", *, backend: Optional[str] = None) -> torch.Tensor:
    """ECA-ResNet block tail in one op: ``out_act(eca(x) + shortcut)``."""
    _checks.check_eca_args(x, weight)
    _checks.check_same_shape(x, shortcut, "shortcut")
    _checks.check_choice(out_act, OUT_ACTS, "out_act")
    return resolve_for("eca_residual", x, backend, shortcut, weight)(x, shortcut, weight, circular, out_act)


def dmk_eca(x: torch.Tensor, fc_weight: torch.Tensor, fc_bias: Optional[torch.Tensor], taps3: torch.Tensor,
            taps5: torch.Tensor, taps7: torch.Tensor, *, backend: Optional[str] = None) -> torch.Tensor:
    """Dynamic multi-kernel ECA: ``x · sigmoid(Σ_i blend_i · conv_i(p))``, ``blend = softmax(fc(p))``.

    p = mean_spatial(x); fc_weight (3, C), fc_bias (3,) or None; taps3/taps5/taps7 the three
    zero-padded convs across channels, each (k,) or the Conv1d weight (1, 1, k), k odd.
    """
    _checks.check_dmk_eca_args(x, fc_weight, fc_bias, taps3, taps5, taps7)
    return resolve_for("dmk_eca", x, backend, fc_weight, fc_bias, taps3, taps5, taps7)(
        x, fc_weight, fc_bias, taps3, taps5, taps7)


def bi_eca(x: torch.Tensor, w_fwd: torch.Tensor, w_bwd: torch.Tensor, w1: torch.Tensor,
           b1: Optional[torch.Tensor], w2: torch.Tensor, b2: Optional[torch.Tensor], *,
           backend: Optional[str] = None) -> torch.Tensor:
    """Bidirectional ECA: ``x · sigmoid(a_0 f + a_1 b)``, f = sigmoid(conv_fwd(p)),
    b = sigmoid(flip(conv_bwd(flip(p)))), a = softmax(w2 · relu(w1 · p + b1) + b2).

    w_fwd, w_bwd: (k,) or (1, 1, k), k odd; w1 (R, C), b1 (R,) or None, w2 (2, R), b2 (2,) or None.
    """
    _checks.check_bi_eca_args(x, w_fwd, w_bwd, w1, b1, w2, b2)
    return resolve_for("bi_eca", x, backend, w_fwd, w_bwd, w1, b1, w2, b2)(x, w_fwd, w_bwd, w1, b1, w2, b2)


def cbam(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, spatial_weight: torch.Tensor, *,
         backend: Optional[str] = None) -> torch.Tensor:
    """CBAM: channel attention (avg+max pool, shared bias-free MLP w1 (R, C), w2 (C, R)), then
    spatial attention (k×…×k conv ``spatial_weight`` (1, 2, k, …) over [mean_c, max_c])."""
    _checks.check_feature_map(x)
    return resolve_for("cbam", x, backend, w1, w2, spatial_weight)(x, w1, w2, spatial_weight)
