"""Plain-PyTorch channel-attention blocks: the ground truth every fused kernel is held against.

Every function and module here is written with ordinary eager ops, in the dtype of ``x`` (parameters
are cast to it, as a module converted with ``.to(dtype)`` would be). Shapes are ``(N, C, *spatial)``
with any number of spatial dims (1-D signals, images, video), NCHW or channels_last.

Functional forms (``se``, ``eca``, ``se_residual``, ``eca_residual``, ``cbam``) take the raw
parameters, exactly like ``attn_kernels.functional``; the ``reference`` backend of the dispatcher
routes to them. The modules keep the parameter names of the published / widely copied code so
checkpoints load both ways.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._checks import (
    ACTS,
    GATES,
    check_choice,
    check_bi_eca_args,
    check_dmk_eca_args,
    check_eca_args,
    check_feature_map,
    check_same_shape,
    check_se_args,
)

__all__ = [
    "se", "eca", "se_residual", "eca_residual", "cbam", "dmk_eca", "bi_eca", "apply_act", "apply_gate",
    "SEBlock", "EffectiveSE", "ECA", "AdaptiveSE", "DynamicMultiKernelECA", "BidirectionalECA", "CBAM",
    "eca_kernel_size", "SEBottleneck", "se_resnet50", "CNN", "CNN_SE",
]

OUT_ACTS = ("relu", "silu", "gelu", "identity")


# ----------------------------------------------------------------------------------------------
# Functional ground truth
# ----------------------------------------------------------------------------------------------
def apply_act(h: torch.Tensor, act: str) -> torch.Tensor:
    if act == "relu":
        return F.relu(h)
    if act == "silu":
        return F.silu(h)
    if act == "gelu":
        return F.gelu(h)
    if act == "hardswish":
        return F.hardswish(h)
    if act == "identity":
        return h
    raise ValueError(f"unknown act {act!r}; expected one of {', '.join(dict.fromkeys(ACTS + OUT_ACTS))}")


def apply_gate(z: torch.Tensor, gate: str) -> torch.Tensor:
    if gate == "sigmoid":
        return torch.sigmoid(z)
    if gate == "hardsigmoid":
        return F.hardsigmoid(z)
    raise ValueError(f"unknown gate {gate!r}; expected one of {', '.join(GATES)}")


def _spatial_dims(x: torch.Tensor):
    return tuple(range(2, x.dim()))


def _broadcast_gate(s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(N, C) gate → (N, C, 1, ..., 1) so it scales every spatial position of its channel."""
    return s.reshape(s.shape + (1,) * (x.dim() - 2))


def _cast(t: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    return None if t is None else t.to(dtype)


def se_excitation(pooled, w1, b1, w2, b2, act: str = "relu", gate: str = "sigmoid"):
    """pooled (N, C) → gate (N, C): FC → act → FC → gate, or gate(FC) for effective SE (w1=None)."""
    dt = pooled.dtype
    hidden = pooled
    if w1 is not None:
        hidden = apply_act(F.linear(pooled, fc_matrix(w1).to(dt), _cast(b1, dt)), act)
    return apply_gate(F.linear(hidden, fc_matrix(w2).to(dt), _cast(b2, dt)), gate)


def fc_matrix(w: torch.Tensor) -> torch.Tensor:
    """An FC weight as the (out, in) matrix: itself, or a 1×1 convolution's weight (out, in, 1, …) flattened."""
    return w if w.dim() == 2 else w.flatten(1)


def se(x, w1, b1, w2, b2, act: str = "relu", gate: str = "sigmoid") -> torch.Tensor:
    """Squeeze-and-excitation: y = x · gate(W2 · act(W1 · mean_spatial(x) + b1) + b2).

    w1 (R, C), b1 (R,) or None, w2 (C, R), b2 (C,) or None; the FC weights may also be 1×1 convolution
    weights, (R, C, 1, 1) and (C, R, 1, 1). ``w1=None`` is effective SE (eSE, VoVNetV2): one C→C FC,
    y = x · gate(W2 · mean(x) + b2).
    """
    check_se_args(x, w1, b1, w2, b2, act, gate)
    s = se_excitation(x.mean(_spatial_dims(x)), w1, b1, w2, b2, act, gate)
    return x * _broadcast_gate(s, x)


def eca_gate(pooled: torch.Tensor, taps: torch.Tensor, circular: bool = False) -> torch.Tensor:
    """pooled (N, C) → sigmoid(1-D conv of the pooled vector across channels), same length C.

    Zero padding (ECA) or circular padding (CECA); the circular form indexes modulo C, so it is
    defined for any k, also k > C where ``F.pad(mode="circular")`` would refuse.
    """
    k = taps.shape[0]
    half = k // 2
    taps = taps.to(pooled.dtype)
    if circular:
        channels = pooled.shape[1]
        idx = (torch.arange(channels, device=pooled.device)[:, None]
               + torch.arange(k, device=pooled.device)[None, :] - half) % channels
        z = (pooled[:, idx] * taps).sum(-1)
    else:
        z = F.conv1d(pooled.unsqueeze(1), taps.view(1, 1, k), padding=half).squeeze(1)
    return torch.sigmoid(z)


def eca(x, weight, circular: bool = False) -> torch.Tensor:
    """Efficient channel attention: y = x · sigmoid(conv1d_k(mean_spatial(x)) across channels).

    ``weight`` is the (k,) taps or the Conv1d weight (1, 1, k); k odd. ``circular=True`` is CECA.
    """
    taps = check_eca_args(x, weight)
    s = eca_gate(x.mean(_spatial_dims(x)), taps, circular)
    return x * _broadcast_gate(s, x)


def se_residual(x, shortcut, w1, b1, w2, b2, act: str = "relu", gate: str = "sigmoid",
                out_act: str = "relu") -> torch.Tensor:
    """The SE-ResNet block tail: out_act(se(x) + shortcut)."""
    check_same_shape(x, shortcut, "shortcut")
    check_choice(out_act, OUT_ACTS, "out_act")
    return apply_act(se(x, w1, b1, w2, b2, act, gate) + shortcut, out_act)


def eca_residual(x, shortcut, weight, circular: bool = False, out_act: str = "relu") -> torch.Tensor:
    """The ECA-ResNet block tail: out_act(eca(x) + shortcut)."""
    check_same_shape(x, shortcut, "shortcut")
    check_choice(out_act, OUT_ACTS, "out_act")
    return apply_act(eca(x, weight, circular) + shortcut, out_act)


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def cbam(x, w1, w2, spatial_weight) -> torch.Tensor:
    """CBAM: channel attention, then spatial attention.

    Channel: sigmoid(MLP(avg_pool(x)) + MLP(max_pool(x))) with one shared bias-free MLP
    w1 (R, C) → ReLU → w2 (C, R). Spatial: [mean_c, max_c] of the channel-scaled map → k×…×k conv
    (``spatial_weight`` (1, 2, k, …, k), zero padding k//2, no bias) → sigmoid → scale.
    """
    check_feature_map(x)
    channels = x.shape[1]
    spatial_rank = x.dim() - 2
    if spatial_rank not in _CONV:
        raise ValueError(f"CBAM supports 1-, 2- or 3-D spatial maps, got {spatial_rank}-D")
    for name, t, shape in (("w1", w1, (w1.shape[0], channels)), ("w2", w2, (channels, w1.shape[0]))):
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {shape}")
    k_shape = tuple(spatial_weight.shape[2:])
    if tuple(spatial_weight.shape[:2]) != (1, 2) or len(k_shape) != spatial_rank:
        raise ValueError(f"spatial_weight must be (1, 2{', k' * spatial_rank}), got {tuple(spatial_weight.shape)}")
    if any(k % 2 == 0 for k in k_shape):
        raise ValueError(f"CBAM spatial kernel must be odd, got {k_shape}")
    dt = x.dtype
    dims = _spatial_dims(x)

    def mlp(v):
        return F.linear(F.relu(F.linear(v, w1.to(dt))), w2.to(dt))

    ca = torch.sigmoid(mlp(x.mean(dims)) + mlp(x.amax(dims)))
    x1 = x * _broadcast_gate(ca, x)
    desc = torch.cat([x1.mean(1, keepdim=True), x1.amax(1, keepdim=True)], dim=1)
    sa = torch.sigmoid(_CONV[spatial_rank](desc, spatial_weight.to(dt), padding=[k // 2 for k in k_shape]))
    return x1 * sa


def _conv_channels(p: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Zero-padded 1-D cross-correlation of p (N, C) across channels with odd taps (k,) or (1, 1, k)."""
    k = weight.shape[-1]
    return F.conv1d(p.unsqueeze(1), weight.reshape(1, 1, k).to(p.dtype), padding=k // 2).squeeze(1)


def dmk_eca(x, fc_weight, fc_bias, taps3, taps5, taps7) -> torch.Tensor:
    """Dynamic multi-kernel ECA: y = x · sigmoid(Σ_i blend_i · conv_i(p)), blend = softmax(fc(p)).

    p = mean_spatial(x) (N, C); fc_weight (3, C), fc_bias (3,) or None; conv_i a zero-padded 1-D conv
    across channels with taps3/taps5/taps7 ((k,) or (1, 1, k), any odd k).
    """
    check_dmk_eca_args(x, fc_weight, fc_bias, taps3, taps5, taps7)
    dt = x.dtype
    p = x.mean(_spatial_dims(x))
    blend = torch.softmax(F.linear(p, fc_weight.to(dt), _cast(fc_bias, dt)), dim=-1)  # (N, 3)
    branches = torch.stack([_conv_channels(p, t) for t in (taps3, taps5, taps7)], dim=-1)  # (N, C, 3)
    s = torch.sigmoid((branches * blend.unsqueeze(1)).sum(-1))
    return x * _broadcast_gate(s, x)


def bi_eca(x, w_fwd, w_bwd, w1, b1, w2, b2) -> torch.Tensor:
    """Bidirectional ECA: y = x · sigmoid(a_0 f + a_1 b).

    f = sigmoid(conv_fwd(p)), b = sigmoid(flip(conv_bwd(flip(p)))) (zero-padded convs across channels,
    taps (k,) or (1, 1, k), k odd), a = softmax(w2 · relu(w1 · p + b1) + b2) with w1 (R, C), w2 (2, R).
    """
    check_bi_eca_args(x, w_fwd, w_bwd, w1, b1, w2, b2)
    dt = x.dtype
    p = x.mean(_spatial_dims(x))
    f = torch.sigmoid(_conv_channels(p, w_fwd))
    b = torch.sigmoid(_conv_channels(p.flip(-1), w_bwd).flip(-1))
    a = torch.softmax(F.linear(F.relu(F.linear(p, w1.to(dt), _cast(b1, dt))), w2.to(dt), _cast(b2, dt)), dim=-1)
    s = torch.sigmoid(a[:, :1] * f + a[:, 1:] * b)
    return x * _broadcast_gate(s, x)


# ----------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------
def _act_module(act: str) -> nn.Module:
    check_choice(act, ACTS, "act")
    return {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU, "hardswish": nn.Hardswish}[act](
        **({"inplace": True} if act == "relu" else {}))


def _gate_module(gate: str) -> nn.Module:
    check_choice(gate, GATES, "gate")
    return nn.Sigmoid() if gate == "sigmoid" else nn.Hardsigmoid()


def _check_channels(module: nn.Module, x: torch.Tensor) -> None:
    check_feature_map(x)
    if x.shape[1] != module.channels:
        raise ValueError(
            f"{type(module).__name__} was built for {module.channels} channels, got x with {x.shape[1]} "
            f"(shape {tuple(x.shape)}; expected (N, C, *spatial))"
        )


class SEBlock(nn.Module):
    """Squeeze-and-excitation (Hu et al., SENet), with the EfficientNet (SiLU) and MobileNetV3
    (hardsigmoid) forms selected by ``act`` / ``gate``.

    Parameters live in ``fc = Sequential(Linear, act, Linear, gate)``, the layout most tutorials and
    codebases copy (``fc.0.weight``, ``fc.0.bias``, ``fc.2.weight``, ``fc.2.bias``), so their
    state dicts load directly. Hidden width ``rd_channels`` defaults to ``max(1, channels // reduction)``.
    """

    def __init__(self, channels: int, reduction: int = 16, bias: bool = True, act: str = "relu",
                 gate: str = "sigmoid", rd_channels: Optional[int] = None):
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        if rd_channels is None:
            if reduction < 1:
                raise ValueError(f"reduction must be >= 1, got {reduction}")
            rd_channels = max(1, channels // reduction)
        if rd_channels < 1:
            raise ValueError(f"rd_channels must be >= 1, got {rd_channels}")
        self.channels, self.rd_channels, self.act, self.gate = channels, rd_channels, act, gate
        self.fc = nn.Sequential(
            nn.Linear(channels, rd_channels, bias=bias),
            _act_module(act),
            nn.Linear(rd_channels, channels, bias=bias),
            _gate_module(gate),
        )

    def se_params(self):
        """(w1, b1, w2, b2) in the layout of ``functional.se``."""
        return self.fc[0].weight, self.fc[0].bias, self.fc[2].weight, self.fc[2].bias

    def forward(self, x):
        _check_channels(self, x)
        return se(x, *self.se_params(), act=self.act, gate=self.gate)

    def extra_repr(self):
        return f"channels={self.channels}, rd_channels={self.rd_channels}, act={self.act}, gate={self.gate}"


class EffectiveSE(nn.Module):
    """Effective SE (eSE, VoVNetV2 / CenterMask): one C→C FC with bias and a hardsigmoid gate."""

    def __init__(self, channels: int, gate: str = "hardsigmoid"):
        super().__init__()
        check_choice(gate, GATES, "gate")
        self.channels, self.gate = channels, gate
        self.fc = nn.Linear(channels, channels, bias=True)

    def se_params(self):
        return None, None, self.fc.weight, self.fc.bias

    def forward(self, x):
        _check_channels(self, x)
        return se(x, *self.se_params(), gate=self.gate)


def eca_kernel_size(channels: int, gamma: float = 2, b: float = 1) -> int:
    """ECA-Net's adaptive kernel size: t = int(|log2 C + b| / gamma), made odd (t even → t + 1)."""
    t = int(abs(math.log2(channels) + b) / gamma)
    return t if t % 2 else t + 1


class ECA(nn.Module):
    """Efficient channel attention (Wang et al., ECA-Net); ``circular=True`` is CECA.

    Weight ``conv.weight`` of shape (1, 1, k) as in the original code and timm's EcaModule.
    """

    def __init__(self, channels: int, k_size: Optional[int] = None, gamma: float = 2, b: float = 1,
                 circular: bool = False):
        super().__init__()
        if k_size is None:
            k_size = eca_kernel_size(channels, gamma, b)
        if k_size < 1 or k_size % 2 == 0:
            raise ValueError(f"ECA kernel size must be odd and positive, got k_size={k_size}")
        self.channels, self.k_size, self.circular = channels, k_size, circular
        self.conv = nn.Conv1d(1, 1, k_size, padding=(k_size - 1) // 2, bias=False)

    def forward(self, x):
        _check_channels(self, x)
        return eca(x, self.conv.weight, circular=self.circular)

    def extra_repr(self):
        return f"channels={self.channels}, k_size={self.k_size}, circular={self.circular}"


class AdaptiveSE(nn.Module):
    """SE whose reduction ratio is learned, differentiably.

    How it works: the bottleneck is built at its widest, ``rd_max = channels // r_min``, and every
    hidden unit j carries a learnable gate ``mask_j = sigmoid(mask_logits_j / temperature)``
    multiplying its activation: z = W2 · (mask ⊙ act(W1 · p + b1)) + b2. Because the mask sits
    between the activation and the second FC it folds exactly into the weights,
    ``W2_eff = W2 · diag(mask)``, so the block runs on the ordinary SE kernel and the mask logits get
    gradients through W2_eff. ``mask_penalty()`` (mean mask) added to the loss pushes units off;
    ``effective_ratio()`` reports C / (units with mask > threshold); ``prune()`` returns a plain
    ``SEBlock`` keeping only those units with the mask folded into its W2 — exact up to the dropped
    units' contribution, which is at most Σ_dropped mask_j · |W2[:, j]| · |act_j|.

    (The usual recipe, ``ratio = int(1 / theta.item())``, cuts the graph at ``.item()``: theta never
    receives a gradient.)
    """

    def __init__(self, channels: int, r_min: int = 4, bias: bool = True, act: str = "relu",
                 gate: str = "sigmoid", temperature: float = 1.0, init_logit: float = 3.0):
        super().__init__()
        self.channels, self.act, self.gate, self.temperature = channels, act, gate, temperature
        self.rd_max = max(1, channels // r_min)
        self.fc = nn.Sequential(
            nn.Linear(channels, self.rd_max, bias=bias), _act_module(act),
            nn.Linear(self.rd_max, channels, bias=bias), _gate_module(gate),
        )
        self.mask_logits = nn.Parameter(torch.full((self.rd_max,), float(init_logit)))

    def mask(self) -> torch.Tensor:
        return torch.sigmoid(self.mask_logits / self.temperature)

    def se_params(self):
        """(w1, b1, w2_eff, b2) with the soft mask folded into the expand weight."""
        w2_eff = self.fc[2].weight * self.mask().to(self.fc[2].weight.dtype)[None, :]
        return self.fc[0].weight, self.fc[0].bias, w2_eff, self.fc[2].bias

    def forward(self, x):
        _check_channels(self, x)
        return se(x, *self.se_params(), act=self.act, gate=self.gate)

    def mask_penalty(self) -> torch.Tensor:
        """Mean of the soft mask: add ``λ · mask_penalty()`` to the loss to favour larger ratios."""
        return self.mask().mean()

    @torch.no_grad()
    def kept_units(self, threshold: float = 0.5) -> torch.Tensor:
        m = self.mask()
        keep = torch.nonzero(m > threshold).flatten()
        if keep.numel() == 0:  # SE needs at least one hidden unit: keep the strongest
            keep = m.argmax().reshape(1)
        return keep

    def effective_ratio(self, threshold: float = 0.5) -> float:
        return self.channels / self.kept_units(threshold).numel()

    @torch.no_grad()
    def prune(self, threshold: float = 0.5) -> SEBlock:
        keep = self.kept_units(threshold)
        w1, b1, w2_eff, b2 = self.se_params()
        out = SEBlock(self.channels, rd_channels=keep.numel(), bias=b1 is not None, act=self.act, gate=self.gate)
        out = out.to(device=w1.device, dtype=w1.dtype)
        out.fc[0].weight.copy_(w1[keep])
        out.fc[2].weight.copy_(w2_eff[:, keep])
        if b1 is not None:
            out.fc[0].bias.copy_(b1[keep])
            out.fc[2].bias.copy_(b2)
        return out


class DynamicMultiKernelECA(nn.Module):
    """ECA with 3-, 5- and 7-tap convs across channels, blended per sample.

    w = softmax(fc(p)) with fc = Linear(C, 3) on the pooled vector p; z = Σ_i w_i · conv_i(p) (each
    conv a 1-D conv *across the channel axis*, zero padding); y = x · sigmoid(z).

    The widely copied version applies ``Conv1d(c, c, k, groups=c, padding=k//2)`` to p viewed as a
    length-1 sequence: every non-centre tap only ever sees padding, so each branch is a per-channel
    scale and no information crosses channels. This is the intended cross-channel form.
    """

    kernel_sizes = (3, 5, 7)

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.convs = nn.ModuleList(nn.Conv1d(1, 1, k, padding=k // 2, bias=False) for k in self.kernel_sizes)
        self.fc = nn.Linear(channels, len(self.kernel_sizes))

    def forward(self, x):
        _check_channels(self, x)
        return dmk_eca(x, *self.dmk_params())

    def dmk_params(self):
        """(fc_weight, fc_bias, taps3, taps5, taps7) in the layout of ``dmk_eca``."""
        return (self.fc.weight, self.fc.bias) + tuple(c.weight for c in self.convs)


class BidirectionalECA(nn.Module):
    """Two ECA branches, one along the channel order and one along the reversed order.

    f = sigmoid(conv_fwd(p)), b = sigmoid(flip(conv_bwd(flip(p)))), blend a = softmax(MLP(p)) with
    MLP = Linear(C, C/16) → ReLU → Linear(C/16, 2); y = x · sigmoid(a_0 f + a_1 b).
    k is ECA's adaptive kernel size unless given.
    """

    def __init__(self, channels: int, k_size: Optional[int] = None, reduction: int = 16):
        super().__init__()
        k_size = eca_kernel_size(channels) if k_size is None else k_size
        if k_size < 1 or k_size % 2 == 0:
            raise ValueError(f"ECA kernel size must be odd and positive, got k_size={k_size}")
        self.channels, self.k_size = channels, k_size
        rd = max(1, channels // reduction)
        self.conv_fwd = nn.Conv1d(1, 1, k_size, padding=k_size // 2, bias=False)
        self.conv_bwd = nn.Conv1d(1, 1, k_size, padding=k_size // 2, bias=False)
        self.gate_mlp = nn.Sequential(nn.Linear(channels, rd), nn.ReLU(inplace=True), nn.Linear(rd, 2))

    def forward(self, x):
        _check_channels(self, x)
        return bi_eca(x, *self.bi_params())

    def bi_params(self):
        """(w_fwd, w_bwd, w1, b1, w2, b2) in the layout of ``bi_eca``."""
        l1, l2 = self.gate_mlp[0], self.gate_mlp[2]
        return self.conv_fwd.weight, self.conv_bwd.weight, l1.weight, l1.bias, l2.weight, l2.bias


class CBAM(nn.Module):
    """Convolutional block attention module (Woo et al.): channel attention, then spatial attention.

    ``mlp = Sequential(Linear(C, C/r, bias=False), ReLU, Linear(C/r, C, bias=False))`` shared by the
    avg- and max-pooled vectors; ``spatial`` a bias-free ConvNd(2 → 1, k) over [mean_c, max_c].
    ``spatial_dims`` (default 2) picks Conv1d/2d/3d for signals, images or video.
    """

    def __init__(self, channels: int, reduction: int = 16, spatial_kernel: int = 7, spatial_dims: int = 2):
        super().__init__()
        if spatial_kernel % 2 == 0:
            raise ValueError(f"CBAM spatial kernel must be odd, got {spatial_kernel}")
        if spatial_dims not in _CONV:
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}")
        self.channels, self.spatial_dims = channels, spatial_dims
        rd = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Linear(channels, rd, bias=False), nn.ReLU(inplace=True),
                                 nn.Linear(rd, channels, bias=False))
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]
        self.spatial = conv(2, 1, spatial_kernel, padding=spatial_kernel // 2, bias=False)

    def forward(self, x):
        _check_channels(self, x)
        if x.dim() - 2 != self.spatial_dims:
            raise ValueError(f"CBAM built for {self.spatial_dims}-D maps, got x of shape {tuple(x.shape)}")
        return cbam(x, self.mlp[0].weight, self.mlp[2].weight, self.spatial.weight)


from .models import CNN, CNN_SE, SEBottleneck, se_resnet50  # noqa: E402  (models build on the blocks above)
