"""Swap the channel-attention blocks of an existing model for the fused ops, in place.

    report = attn_kernels.swap(model)            # every recognised block → fused, same Parameters
    print(report)                                # what was replaced, what was left alone and why
    attn_kernels.unswap(model)                   # the original module objects back

How a block is recognised: by structure (its children and their shapes), then confirmed by running
the original and the candidate replacement on a small probe tensor (eval mode, no grad, a private
RNG so the global one is untouched); a mismatch leaves the block alone with the reason "probe
mismatch". Forms:

- this package's ``SEBlock``, ``EffectiveSE``, ``ECA`` (and CECA), ``AdaptiveSE``, ``CBAM``,
  ``DynamicMultiKernelECA``, ``BidirectionalECA`` → the matching ``Fused*`` module;
- SE with two 1×1 FCs (``Linear`` or ``Conv2d`` 1×1, possibly inside one ``Sequential``), one
  activation (ReLU/SiLU/GELU/Hardswish) and one gate (sigmoid/hardsigmoid), any pooling/Identity children,
  any class name: the tutorial ``avg_pool`` + ``fc = Sequential(Linear, ReLU, Linear, Sigmoid)`` form,
  timm ``SEModule``, the EfficientNet/MobileNet/FBNetV3 ``SqueezeExcite`` (``conv_reduce``/``conv_expand``),
  timm's legacy SENet ``SEModule``, torchvision ``ops.SqueezeExcitation`` → ``SwappedSE``; also with one
  BatchNorm right after the first FC (timm ``SEModule(norm_layer=nn.BatchNorm2d)``, ReXNet): folded into
  that FC while the norm uses running statistics (eval mode), the original forward while it normalises by
  batch statistics (training mode couples the samples; no per-sample fused schedule can) — the probe then
  runs on copies with random norm statistics, so a norm elsewhere (after the activation) is told apart;
- effective SE: one C→C 1×1 FC with bias + gate (timm ``EffectiveSEModule``) → ``SwappedSE``;
- ECA: one bias-free ``Conv1d(1, 1, k)`` across channels + sigmoid (timm ``EcaModule``, the paper's
  code; ``CecaModule`` and ``padding_mode="circular"`` as circular) → ``SwappedECA``.

The replacements adopt the original's children, parameters and buffers (the same objects, under the
same names), so optimizers keep working and ``state_dict`` keys are unchanged. ``fuse_residual=True``
also rewires residual blocks whose swapped SE/ECA sits right before ``out += shortcut; act(out)``
(this package's ``SEBottleneck``, timm ResNet ``Bottleneck``/``BasicBlock``) to run that tail as one
``functional.se_residual`` / ``eca_residual`` call.

Limits: the replacement shares the original's children but has its own ``_parameters``/``_buffers``
dicts (no recognised block has direct buffers; ``unswap`` copies both back); forward hooks registered
on an original block are copied to its replacement, but removing such a hook's handle after the swap
removes it from the original only.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
from typing import Callable, Iterable, List, Optional, Tuple, Union

import torch
import torch.nn as nn

from . import functional
from ._backend import BackendUnavailableError, _check_name, preload, resolve
from .modules import (FusedAdaptiveSE, FusedBidirectionalECA, FusedCBAM, FusedDynamicMultiKernelECA, FusedECA,
                      FusedEffectiveSE, FusedSE)
from .reference import (CBAM, ECA, OUT_ACTS, AdaptiveSE, BidirectionalECA, DynamicMultiKernelECA, EffectiveSE,
                        SEBlock, fc_matrix)
from .models import SEBottleneck

__all__ = ["swap", "unswap", "SwapReport", "SwapEntry", "LeftAlone", "SwappedSE", "SwappedECA",
           "SwappedSEBottleneck", "SwappedTimmBottleneck", "SwappedTimmBasicBlock", "swap_check", "parity",
           "randomize_norms", "exact_fp32", "KINDS"]

KINDS = ("se", "effective_se", "adaptive_se", "eca", "ceca", "cbam", "dmk_eca", "bi_eca", "se_residual",
         "eca_residual")
_RECORDS = "_attn_kernels_swapped"  # on the root model: [(parent, name, original, replacement), ...]


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class SwapEntry:
    name: str  # qualified name in the model
    original: str  # original class, "module.Class"
    kind: str  # fused kind, one of KINDS
    backend: str  # the backend it was pinned to ("current" = whatever set_backend selects at call time)
    detail: str = ""


@dataclasses.dataclass
class LeftAlone:
    name: str
    original: str
    reason: str
    tail: bool = False  # a residual block tail fuse_residual left as it was (its attention may be fused)


@dataclasses.dataclass
class SwapReport:
    replaced: List[SwapEntry] = dataclasses.field(default_factory=list)
    left_alone: List[LeftAlone] = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"replaced {len(self.replaced)} block(s), left {len(self.left_alone)} alone"]
        for e in self.replaced:
            lines.append(f"  + {e.name or '<root>'}: {e.original} -> {e.kind} [{e.backend}]"
                         + (f" ({e.detail})" if e.detail else ""))
        for e in self.left_alone:
            lines.append(f"  - {e.name or '<root>'}: {e.original}: " + ("residual tail: " if e.tail else "") + e.reason)
        return "\n".join(lines)

    def kinds(self) -> dict:
        """{fused kind: count} of what was replaced."""
        out: dict = {}
        for e in self.replaced:
            out[e.kind] = out.get(e.kind, 0) + 1
        return out


def _cls(m: nn.Module) -> str:
    return f"{type(m).__module__}.{type(m).__qualname__}"


# ----------------------------------------------------------------------------------------------
# Replacement modules
# ----------------------------------------------------------------------------------------------
def _adopt(cls, original: nn.Module) -> nn.Module:
    """A ``cls`` instance with the original's attributes, children, parameters and buffers (same
    objects, same names; the containers themselves are copies, so the original stays intact)."""
    new = cls.__new__(cls)
    state = {}
    for k, v in original.__dict__.items():
        state[k] = type(v)(v) if isinstance(v, (dict, set)) else v
    new.__dict__.update(state)
    return new


class _Swapped(nn.Module):
    backend: Optional[str] = None
    fused_kind: str = ""

    def _layer(self, path: Tuple[str, ...]) -> nn.Module:
        m = self
        for n in path:
            m = getattr(m, n)
        return m


class SwappedSE(_Swapped):
    """An SE / effective-SE block of another library, forward on ``functional.se``.

    Keeps the original's children (``fc1``/``fc2``, ``conv_reduce``/``conv_expand``, ``fc``, …)
    under their names; ``_w1``/``_w2`` are the paths to the two FC layers (``_w1`` None for eSE).

    ``_norm``: the path to a BatchNorm between the first FC and the activation (timm ``SEModule(norm_layer=
    nn.BatchNorm2d)``, ReXNet), else None. With running statistics (the norm in eval mode) it is an affine
    map per hidden unit, folded into the first FC on every call (autograd reaches the FC and the norm's
    weight / bias through the fold); with batch statistics (the norm in training mode) it couples the
    samples of the batch, which no per-sample fused schedule can do: the original forward runs unfused.
    """

    _norm: Optional[Tuple[str, ...]] = None
    _original_type: Optional[type] = None  # whose forward runs while not fusable()

    def fusable(self) -> bool:
        """False while a norm between the FCs normalises by batch statistics (then forward runs unfused)."""
        if self._norm is None:
            return True
        bn = self._layer(self._norm)
        return not (bn.training or bn.running_mean is None or bn.running_var is None)

    def se_params(self):
        """(w1, b1, w2, b2) for ``functional.se``: the FC layers' own weights (a 1×1 conv's as it is: the
        kernels take it unflattened, no view in the autograd graph), the norm folded in where there is one."""
        l2 = self._layer(self._w2)
        w2 = l2.weight
        if self._w1 is None:
            return None, None, w2, l2.bias
        l1 = self._layer(self._w1)
        w1, b1 = l1.weight, l1.bias
        if self._norm is not None:  # y = (u - mean) * weight / sqrt(var + eps) + bias, u = W1 p + b1
            w1 = fc_matrix(w1)
            bn = self._layer(self._norm)
            scale = torch.rsqrt(bn.running_var + bn.eps)
            if bn.weight is not None:
                scale = scale * bn.weight
            shift = -bn.running_mean if b1 is None else b1 - bn.running_mean
            b1 = shift * scale if bn.bias is None else torch.addcmul(bn.bias, shift, scale)
            w1 = w1 * scale[:, None]
        return w1, b1, w2, l2.bias

    def forward(self, x):
        if not self.fusable():
            return self._original_type.forward(self, x)
        return functional.se(x, *self.se_params(), act=self.fused_act, gate=self.fused_gate, backend=self.backend)


class SwappedECA(_Swapped):
    """An ECA / CECA block of another library, forward on ``functional.eca``."""

    def eca_weight(self):
        return self._layer(self._conv).weight

    def forward(self, x):
        return functional.eca(x, self.eca_weight(), circular=self.fused_circular, backend=self.backend)


def _se_tail_args(attn: nn.Module):
    """(w1, b1, w2, b2, act, gate) of a swapped SE-family attention module, else None."""
    if isinstance(attn, SwappedSE):
        return (*attn.se_params(), attn.fused_act, attn.fused_gate)
    if isinstance(attn, (FusedSE, FusedAdaptiveSE)):
        return (*attn.se_params(), attn.act, attn.gate)
    if isinstance(attn, FusedEffectiveSE):
        return (*attn.se_params(), "relu", attn.gate)
    return None


def _eca_tail_args(attn: nn.Module):
    if isinstance(attn, SwappedECA):
        return attn.eca_weight(), attn.fused_circular
    if isinstance(attn, FusedECA):
        return attn.conv.weight, attn.circular
    return None


def _fused_tail(attn: nn.Module, x, shortcut, out_act: str, backend: Optional[str]):
    """out_act(attn(x) + shortcut) in one op."""
    se = _se_tail_args(attn)
    if se is not None:
        w1, b1, w2, b2, act, gate = se
        return functional.se_residual(x, shortcut, w1, b1, w2, b2, act=act, gate=gate, out_act=out_act,
                                      backend=backend)
    weight, circular = _eca_tail_args(attn)
    return functional.eca_residual(x, shortcut, weight, circular=circular, out_act=out_act, backend=backend)


class SwappedSEBottleneck(_Swapped):
    """``models.SEBottleneck`` with the attention + add + ReLU tail as one fused op."""

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return _fused_tail(self.attn, out, shortcut, self.fused_out_act, self.backend)


class SwappedTimmBottleneck(_Swapped):
    """timm ``resnet.Bottleneck`` (drop_path off) with ``act3(se(x) + shortcut)`` as one fused op."""

    def forward(self, x):
        shortcut = x
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.conv2(x)
        x = self.bn2(x)
        x = self.drop_block(x)
        x = self.act2(x)
        x = self.aa(x)
        x = self.bn3(self.conv3(x))
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        return _fused_tail(self.se, x, shortcut, self.fused_out_act, self.backend)


class SwappedTimmBasicBlock(_Swapped):
    """timm ``resnet.BasicBlock`` (drop_path off) with ``act2(se(x) + shortcut)`` as one fused op."""

    def forward(self, x):
        shortcut = x
        x = self.bn1(self.conv1(x))
        x = self.drop_block(x)
        x = self.act1(x)
        x = self.aa(x)
        x = self.bn2(self.conv2(x))
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        return _fused_tail(self.se, x, shortcut, self.fused_out_act, self.backend)


_SWAPPED = (_Swapped, FusedSE, FusedEffectiveSE, FusedAdaptiveSE, FusedECA, FusedCBAM, FusedDynamicMultiKernelECA,
            FusedBidirectionalECA)

# ----------------------------------------------------------------------------------------------
# Recognition
# ----------------------------------------------------------------------------------------------
_ACT_NAMES = {"ReLU": "relu", "SiLU": "silu", "Swish": "silu", "GELU": "gelu",
              # timm's own HardSwish / HardSwishMe: x * relu6(x + 3) / 6, the formula of nn.Hardswish
              "Hardswish": "hardswish", "HardSwish": "hardswish", "HardSwishMe": "hardswish"}
_GATE_NAMES = {"Sigmoid": "sigmoid", "Hardsigmoid": "hardsigmoid", "HardSigmoid": "hardsigmoid"}
_FOLDABLE_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm)  # exact types: y = affine(u) in eval
_PACKAGE_FORMS = {  # exact reference class → (fused class, kind, ops it calls)
    SEBlock: (FusedSE, "se", ("se",)),
    EffectiveSE: (FusedEffectiveSE, "effective_se", ("se",)),
    AdaptiveSE: (FusedAdaptiveSE, "adaptive_se", ("se",)),
    ECA: (FusedECA, "eca", ("eca",)),
    CBAM: (FusedCBAM, "cbam", ("cbam",)),
    DynamicMultiKernelECA: (FusedDynamicMultiKernelECA, "dmk_eca", ("dmk_eca",)),
    BidirectionalECA: (FusedBidirectionalECA, "bi_eca", ("bi_eca",)),
}


def _act_name(m: nn.Module) -> Optional[str]:
    """relu/silu/gelu/hardswish when the fused op computes exactly this activation, else None."""
    name = _ACT_NAMES.get(type(m).__name__)
    if name == "gelu" and getattr(m, "approximate", "none") != "none":
        return None  # tanh-approximate GELU
    return name


def _gate_name(m: nn.Module) -> Optional[str]:
    return _GATE_NAMES.get(type(m).__name__)


@dataclasses.dataclass
class _Candidate:
    kind: str
    build: Callable[[Optional[str]], nn.Module]  # backend → replacement
    ops: Tuple[str, ...]
    channels: int
    spatial: int = 2  # spatial dims of the probe
    detail: str = ""
    random_norms: bool = False  # probe copies with random norm statistics (default ones are near identity)


class _Refusal(str):
    """A recognised block left alone; the string is the reason. ``descend``: still look inside it (a
    generic structural match may be a larger block that holds attention blocks of its own)."""

    descend = True


def _final(reason: str) -> _Refusal:
    r = _Refusal(reason)
    r.descend = False
    return r


def _is_pool(m: nn.Module) -> bool:
    return isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool3d)) and \
        all(s == 1 for s in (m.output_size if isinstance(m.output_size, tuple) else (m.output_size,)))


def _fc_info(m: nn.Module) -> Optional[Tuple[int, int, bool, str]]:
    """(in, out, has_bias, problem) for a Linear / Conv2d usable as an FC on the pooled vector."""
    if isinstance(m, nn.Linear):
        return m.in_features, m.out_features, m.bias is not None, ""
    if isinstance(m, nn.Conv2d):
        problems = []
        if tuple(m.kernel_size) != (1, 1):
            problems.append(f"kernel {tuple(m.kernel_size)} is not 1x1")
        if m.groups != 1:
            problems.append(f"grouped conv (groups={m.groups})")
        if tuple(m.stride) != (1, 1) or tuple(m.dilation) != (1, 1):
            problems.append("strided/dilated conv")
        if m.padding not in ((0, 0), 0, "valid"):
            problems.append(f"padding {m.padding}")
        return m.in_channels, m.out_channels, m.bias is not None, "; ".join(problems)
    return None


def _flat_children(module: nn.Module) -> List[Tuple[Tuple[str, ...], nn.Module]]:
    """Direct children, descending one level into Sequential containers, with their paths."""
    out = []
    for name, child in module.named_children():
        if type(child) is nn.Sequential:
            out.extend(((name, n), c) for n, c in child.named_children())
        else:
            out.append(((name,), child))
    return out


def _recognise_se(module: nn.Module):
    """Generic SE / eSE: FC layers + one activation + one gate, any names, pooling and Identity ignored."""
    children = _flat_children(module)
    fcs, acts, gates, other = [], [], [], []
    for path, c in children:
        if isinstance(c, (nn.Linear, nn.Conv2d)):
            fcs.append((path, c))
        elif _is_pool(c) or isinstance(c, nn.Identity):
            continue
        elif path[-1] in ("gate", "scale_activation", "sigmoid") and not any(True for _ in c.parameters()):
            gates.append((path, c))  # a gate by name (any parameter-free type: refused below if unknown)
        elif "act" in path[-1].lower():  # by name first: a Hardsigmoid as the activation (timm act_layer=)
            acts.append((path, c))
        elif _gate_name(c) is not None:
            gates.append((path, c))
        elif isinstance(c, (nn.ReLU, nn.SiLU, nn.GELU, nn.ReLU6, nn.Hardswish, nn.PReLU, nn.LeakyReLU, nn.ELU,
                            nn.Tanh, nn.Mish)) or _act_name(c) is not None:
            acts.append((path, c))
        else:
            other.append((path, c))
    if len(fcs) not in (1, 2) or len(gates) != 1:
        return None
    if len(fcs) == 1 and acts:
        return None
    if module._parameters or module._buffers:
        return None
    infos = []
    for path, c in fcs:
        info = _fc_info(c)
        if info[3]:
            return _Refusal(f"{'.'.join(path)}: {info[3]}; the fused se needs plain 1x1 FCs")
        infos.append(info)
    norms = [(p, c) for p, c in other if isinstance(c, nn.modules.batchnorm._NormBase) or "norm" in
             type(c).__name__.lower() or p[-1] in ("bn", "norm")]
    norm_path = None
    if norms:
        p, c = norms[0]
        order = [path for path, _ in children]
        if (len(norms) == 1 and len(fcs) == 2 and type(c) in _FOLDABLE_NORMS
                and order.index(fcs[0][0]) < order.index(p) < order.index(fcs[1][0])
                and (not acts or order.index(p) < order.index(acts[0][0]))):
            norm_path = p  # FC -> BN -> act -> FC: folded into the first FC while it uses running stats
            other = [(q, m) for q, m in other if q != p]
        else:
            return _Refusal(f"norm layer {'.'.join(p)} ({type(c).__name__}) between the FCs; the fused se folds "
                            "only one BatchNorm right after the first FC")
    if other:
        p, c = other[0]
        return _Refusal(f"extra child {'.'.join(p)} ({type(c).__name__}); the fused se cannot reproduce it")
    if getattr(module, "add_maxpool", False):
        return _Refusal("add_maxpool=True squeezes with 0.5·(mean + max); the fused se pools by the mean only")
    gate = _gate_name(gates[0][1])
    if gate is None:
        return _Refusal(f"gate {type(gates[0][1]).__name__} is not supported by the fused se (sigmoid, hardsigmoid)")
    if len(fcs) == 1:  # effective SE: one C→C FC
        (path2, _), (cin, cout, _, _) = fcs[0], infos[0]
        if cin != cout:
            return None
        channels, w1_path, act, kind = cin, None, "relu", "effective_se"
    else:
        (path1, _), (path2, _) = fcs
        (c1, r1, bias1, _), (r2, c2, bias2, _) = infos
        if r1 != r2 or c1 != c2:
            return None
        if norm_path is not None and norms[0][1].num_features != r1:
            return _Refusal(f"norm layer {'.'.join(norm_path)} has {norms[0][1].num_features} features, "
                            f"the hidden layer {r1}")
        if norm_path is not None and not getattr(norms[0][1], "track_running_stats", True):
            return _Refusal(f"norm layer {'.'.join(norm_path)} keeps no running statistics: it always uses the "
                            "batch's, which couple the samples; nothing to fold")
        if len(acts) != 1:
            return _Refusal(f"{len(acts)} activations between the FCs; the fused se has exactly one")
        act = _act_name(acts[0][1])
        if act is None:
            return _Refusal(f"activation {type(acts[0][1]).__name__} is not supported by the fused se "
                            "(relu, silu, exact gelu, hardswish)")
        channels, w1_path, kind = c1, path1, "se"

    def build(backend):
        new = _adopt(SwappedSE, module)
        new._w1, new._w2, new._norm, new._original_type = w1_path, path2, norm_path, type(module)
        new.fused_act, new.fused_gate, new.fused_kind, new.backend = act, gate, kind, backend
        new.channels = channels
        return new

    detail = (f"C={channels}, gate={gate}" if w1_path is None
              else f"C={channels}, R={infos[0][1]}, act={act}, gate={gate}")
    if norm_path is not None:
        detail += f", {'.'.join(norm_path)} folded while in eval mode (training mode: unfused)"
    return _Candidate(kind, build, ("se",), channels, detail=detail, random_norms=norm_path is not None)


def _recognise_eca(module: nn.Module):
    """Generic ECA: one Conv1d(1, 1, k) across the pooled channels + a sigmoid gate."""
    children = _flat_children(module)
    convs = [(p, c) for p, c in children if isinstance(c, nn.Conv1d)]
    gates = [(p, c) for p, c in children if _gate_name(c) is not None]
    rest = [(p, c) for p, c in children if not isinstance(c, nn.Conv1d) and _gate_name(c) is None
            and not _is_pool(c) and not isinstance(c, nn.Identity)]
    if not convs or len(gates) > 1 or convs[0][1].in_channels != 1:
        return None
    if len(convs) > 1 or rest:
        return _Refusal("conv → act → conv gate (timm use_mlp); the fused eca has one conv")
    path, conv = convs[0]
    if len(gates) != 1:
        return None
    if _gate_name(gates[0][1]) != "sigmoid":
        return _Refusal(f"gate {type(gates[0][1]).__name__}; the fused eca uses a sigmoid")
    if conv.out_channels != 1 or conv.groups != 1 or conv.stride != (1,) or conv.dilation != (1,):
        return _Refusal("conv is not a plain Conv1d(1, 1, k)")
    if conv.bias is not None:
        return _Refusal("conv has a bias; the fused eca has none")
    k = conv.kernel_size[0]
    if k % 2 == 0:
        return _Refusal(f"even kernel size {k}; the fused eca needs a centred (odd) kernel")
    pad = conv.padding[0] if isinstance(conv.padding, tuple) else conv.padding
    if conv.padding_mode == "circular" and pad == (k - 1) // 2:
        circular = True
    elif pad == (k - 1) // 2 and conv.padding_mode == "zeros":
        circular = False
    elif pad == 0 and getattr(module, "padding", None) == (k - 1) // 2:
        circular = True  # timm CecaModule: manual circular F.pad
    else:
        return _Refusal(f"conv padding {conv.padding} ({conv.padding_mode}) is neither centred zero nor circular")
    kind = "ceca" if circular else "eca"

    def build(backend):
        new = _adopt(SwappedECA, module)
        new._conv, new.fused_circular, new.fused_kind, new.backend = path, circular, kind, backend
        return new

    return _Candidate(kind, build, ("eca",), channels=max(2 * k, 16), detail=f"k={k}")


def _recognise(module: nn.Module):
    """A _Candidate, a _Refusal (recognised, left alone: the reason) or None (not an attention block)."""
    if isinstance(module, _SWAPPED) or type(module) in (nn.Sequential, nn.ModuleList, nn.ModuleDict):
        return None
    form = _PACKAGE_FORMS.get(type(module))
    if form is not None:
        fused_cls, kind, ops = form
        if kind == "eca" and module.circular:
            kind = "ceca"

        def build(backend, _cls=fused_cls):
            new = _adopt(_cls, module)
            new.backend = backend
            return new

        spatial = getattr(module, "spatial_dims", 2)
        return _Candidate(kind, build, ops, module.channels, spatial)
    name = type(module).__name__
    if name in ("CbamModule", "LightCbamModule") or (
            hasattr(module, "channel") and hasattr(module, "spatial") and "cbam" in name.lower()):
        if name == "LightCbamModule":
            return _final("light CBAM (pools 0.5·(mean + max) then one MLP); no fused op computes it")
        conv = getattr(getattr(module, "spatial", None), "conv", None)
        bn = getattr(conv, "bn", None)
        if bn is not None and not isinstance(bn, nn.Identity):
            return _final(f"spatial branch is ConvNormAct with {type(bn).__name__} after its conv; "
                            "the fused cbam has a bias-free conv and no norm (folding BN is exact in eval only)")
        return _final("CBAM variant of unknown structure; the fused cbam cannot be checked against it")
    if name == "GlobalContext" and hasattr(module, "conv_attn"):
        return _final("global-context block (GCNet: softmax attention pooling, ConvMlp with a LayerNorm); "
                      "no fused op computes it")
    for recogniser in (_recognise_se, _recognise_eca):
        found = recogniser(module)
        if found is not None:
            return found
    return None


# ----------------------------------------------------------------------------------------------
# Probe
# ----------------------------------------------------------------------------------------------
_PROBE_TOL = {torch.float64: (1e-9, 1e-7), torch.float32: (1e-4, 1e-4), torch.float16: (2e-2, 2e-2),
              torch.bfloat16: (5e-2, 5e-2)}


@contextlib.contextmanager
def exact_fp32():
    """float32 matmuls and cuDNN convolutions in full fp32 (no TF32) inside the block, the caller's settings
    restored after. cuDNN convolutions default to TF32 on Ampere and later (``torch.backends.cudnn.conv
    .fp32_precision == "tf32"``), so on a GPU an original SE block (its FCs are 1×1 convolutions in timm and
    torchvision) rounds its inputs to 10 mantissa bits, ~1e-3 relative: enough to fail a 1e-4 probe
    against a fused kernel computing in fp32 -- the H200 profile of 2026-12-04 swapped 1 of SE-ResNet-50's
    16 SE blocks and 6 of EfficientNet-B0's 16 for that reason. The new per-backend API where torch has it
    (>= 2.9; reading the legacy ``allow_tf32`` after a user set the new one raises), else the legacy flags."""
    mm, conv = torch.backends.cuda.matmul, getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision") and hasattr(mm, "fp32_precision"):
        saved = (mm.fp32_precision, conv.fp32_precision)
        mm.fp32_precision, conv.fp32_precision = "ieee", "ieee"
        try:
            yield
        finally:
            mm.fp32_precision, conv.fp32_precision = saved
        return
    saved = (mm.allow_tf32, torch.backends.cudnn.allow_tf32)
    mm.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        mm.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _param_like(module: nn.Module):
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_floating_point():
            return t
    return None


def _probe(original: nn.Module, candidate: nn.Module, shape, random_norms: bool = False) -> Optional[str]:
    """None when both agree on a random probe (eval mode, no grad, fp32 without TF32: ``exact_fp32``), else
    why not. ``random_norms``: run on copies whose norm layers get random statistics and affine parameters
    (freshly built ones are close to the identity, which would hide where a folded norm really sits), in
    eval mode and then in training mode (the candidate's unfused path; the copies' running statistics
    absorb the update)."""
    modes = (False,)
    if random_norms:
        original, candidate = copy.deepcopy((original, candidate))  # one copy: the shared children stay shared
        randomize_norms(original, seed=1234)
        modes = (False, True)
    ref = _param_like(original)
    dtype = ref.dtype if ref is not None else torch.float32
    device = ref.device if ref is not None else torch.device("cpu")
    if device.type == "meta":
        return "probe skipped: meta tensors"  # cannot verify: refuse
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
    flags = [(m, m.training) for m in list(original.modules()) + list(candidate.modules())]
    for train in modes:
        mode = " in training mode" if train else ""
        try:
            original.train(train)
            candidate.train(train)
            with torch.no_grad(), exact_fp32():
                expected = original(x.clone())
                actual = candidate(x.clone())
        except Exception as exc:  # the original does not take (N, C, *spatial) or the candidate refuses it
            return f"probe mismatch{mode} ({type(exc).__name__}: {exc})"
        finally:
            for m, t in flags:
                m.training = t
        if not isinstance(expected, torch.Tensor) or expected.shape != actual.shape:
            return f"probe mismatch{mode} (output shape)"
        atol, rtol = _PROBE_TOL.get(dtype, (1e-4, 1e-4))
        if not torch.allclose(actual.float(), expected.float(), atol=atol, rtol=rtol):
            err = (actual.float() - expected.float()).abs().max().item()
            return f"probe mismatch{mode} (max abs err {err:.3g}): its forward computes something else"
    return None


def _probe_shape(channels: int, spatial: int):
    return (2, channels) + (5, 4, 3)[:spatial]


# ----------------------------------------------------------------------------------------------
# Residual blocks
# ----------------------------------------------------------------------------------------------
def _recognise_residual(module: nn.Module):
    """(wrapper class, attention attr, out-act module) for a residual block, a _Refusal, or None."""
    if type(module) is SEBottleneck:
        spec = (SwappedSEBottleneck, "attn", module.relu, module.conv1.in_channels)
    elif type(module).__module__ == "timm.models.resnet" and type(module).__name__ in ("Bottleneck", "BasicBlock"):
        bottleneck = type(module).__name__ == "Bottleneck"
        spec = (SwappedTimmBottleneck if bottleneck else SwappedTimmBasicBlock, "se",
                module.act3 if bottleneck else module.act2, module.conv1.in_channels)
        if module.drop_path is not None and not isinstance(module.drop_path, nn.Identity):
            return _Refusal(f"drop_path {type(module.drop_path).__name__} on the residual branch; "
                            "the fused residual tail has no drop path")
    else:
        return None
    cls, attr, out_act_mod, in_channels = spec
    attn = getattr(module, attr, None)
    if attn is None or isinstance(attn, nn.Identity):
        return None
    if isinstance(attn, SwappedSE) and attn._norm is not None:
        return _Refusal("its SE folds a BatchNorm only in eval mode; no fused residual tail")
    if _se_tail_args(attn) is None and _eca_tail_args(attn) is None:
        return _Refusal(f"its attention ({type(attn).__name__}) was not swapped to SE/ECA; no fused residual tail")
    out_act = _act_name(out_act_mod)
    if out_act not in OUT_ACTS:  # e.g. hardswish: an SE hidden activation, not a tail one
        return _Refusal(f"output activation {type(out_act_mod).__name__} not supported by the fused tail")
    kind = "se_residual" if _se_tail_args(attn) is not None else "eca_residual"
    return cls, kind, out_act, in_channels


# ----------------------------------------------------------------------------------------------
# swap / unswap
# ----------------------------------------------------------------------------------------------
def _included(include, qual: str, module: nn.Module, kind: str) -> bool:
    if include is None:
        return True
    if callable(include):
        return bool(include(qual, module))
    return kind in include


def _backend_problem(ops: Iterable[str], module: nn.Module, backend: Optional[str]) -> Optional[str]:
    if backend is None:
        return None  # the current backend at call time; ``auto`` always falls back to reference
    ref = _param_like(module)
    device_type = ref.device.type if ref is not None else "cpu"
    for op in ops:
        try:
            resolve(op, device_type, backend)
        except BackendUnavailableError as exc:
            return f"backend {backend!r} cannot run it: {exc}"
    return None


def swap(model: nn.Module, backend: Optional[str] = None,
         include: Union[None, Iterable[str], Callable[[str, nn.Module], bool]] = None,
         fuse_residual: bool = False) -> SwapReport:
    """Replace, in place, every recognised channel-attention block of ``model`` by a fused module.

    backend: pin the replacements to a backend (``None``: whatever ``set_backend`` selects at call
    time). A named backend that cannot run a block's op on its parameters' device leaves it alone.
    include: None (everything), an iterable of fused kinds (see ``KINDS``: "se", "effective_se",
    "eca", "ceca", "cbam", ...) or ``f(qualified_name, module) -> bool``.
    fuse_residual: also fuse ``act(attn(x) + shortcut)`` of recognised residual blocks.
    Returns a ``SwapReport``; ``unswap(model)`` undoes everything.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if backend is not None:
        _check_name(backend)
    if include is not None and not callable(include):
        include = set([include] if isinstance(include, str) else include)
        unknown = include - set(KINDS)
        if unknown:
            raise ValueError(f"unknown kind(s) in include: {sorted(unknown)}; expected some of {', '.join(KINDS)}")
    preload()
    records = model.__dict__.setdefault(_RECORDS, [])
    report = SwapReport()
    shown = "current" if backend is None else backend

    if not isinstance(model, _SWAPPED) and _recognise(model) is not None:
        report.left_alone.append(LeftAlone("", _cls(model), "the root module cannot be replaced in place; "
                                           "put it inside a container"))

    def walk(parent: nn.Module, prefix: str):
        for name, child in list(parent.named_children()):
            qual = f"{prefix}{name}"
            found = _recognise(child)
            if found is None:
                walk(child, qual + ".")
                continue
            if isinstance(found, _Refusal):
                report.left_alone.append(LeftAlone(qual, _cls(child), str(found)))
                if found.descend:
                    walk(child, qual + ".")
                continue
            if not _included(include, qual, child, found.kind):
                report.left_alone.append(LeftAlone(qual, _cls(child), f"{found.kind}: excluded by include"))
                continue
            problem = _backend_problem(found.ops, child, backend)
            if problem is None:
                candidate = found.build("reference")
                problem = _probe(child, candidate, _probe_shape(found.channels, found.spatial), found.random_norms)
            if problem is not None:
                report.left_alone.append(LeftAlone(qual, _cls(child), f"{found.kind}: {problem}"))
                walk(child, qual + ".")
                continue
            new = found.build(backend)
            setattr(parent, name, new)
            records.append((parent, name, child, new))
            report.replaced.append(SwapEntry(qual, _cls(child), found.kind, shown, found.detail))

    walk(model, "")
    if fuse_residual:
        _swap_residual(model, backend, include, records, report, shown)
    return report


def _swap_residual(model, backend, include, records, report, shown):
    def walk(parent: nn.Module, prefix: str):
        for name, child in list(parent.named_children()):
            qual = f"{prefix}{name}"
            found = _recognise_residual(child)
            if found is None:
                walk(child, qual + ".")
                continue
            if isinstance(found, _Refusal):
                report.left_alone.append(LeftAlone(qual, _cls(child), f"residual: {found}", tail=True))
                continue
            cls, kind, out_act, in_channels = found
            if not _included(include, qual, child, kind):
                report.left_alone.append(LeftAlone(qual, _cls(child), f"{kind}: excluded by include", tail=True))
                continue
            problem = _backend_problem((kind,), child, backend)
            if problem is None:
                candidate = _adopt(cls, child)
                candidate.fused_out_act, candidate.fused_kind, candidate.backend = out_act, kind, "reference"
                problem = _probe(child, candidate, (2, in_channels, 8, 8))
            if problem is not None:
                report.left_alone.append(LeftAlone(qual, _cls(child), f"{kind}: {problem}", tail=True))
                continue
            new = _adopt(cls, child)
            new.fused_out_act, new.fused_kind, new.backend = out_act, kind, backend
            setattr(parent, name, new)
            records.append((parent, name, child, new))
            report.replaced.append(SwapEntry(qual, _cls(child), kind, shown, f"out_act={out_act}"))

    walk(model, "")


def unswap(model: nn.Module) -> int:
    """Put back the original module objects ``swap`` replaced (latest first); returns their count.

    Parameters/buffers reassigned on a replacement after the swap (``.to()`` of buffers,
    ``load_state_dict(assign=True)``) and its train/eval flag are carried back to the original.
    """
    records = model.__dict__.pop(_RECORDS, [])
    restored = 0
    for parent, name, original, new in reversed(records):
        if parent._modules.get(name) is not new:
            continue  # the user replaced it since: leave their choice
        original._parameters.update(new._parameters)
        original._buffers.update(new._buffers)
        original.training = new.training
        setattr(parent, name, original)
        restored += 1
    return restored


# ----------------------------------------------------------------------------------------------
# swap-check (the CLI's ``attn-kernels swap-check MODEL``)
# ----------------------------------------------------------------------------------------------
# Probe inputs: batch 2, because train-mode BatchNorm over a batch of 1 at the last stage normalises over
# very few values. 128x128 for models that pool globally (any size fits; it keeps CPU runs short and the
# last stage of a stride-32 network at 4x4). This package's CNN/CNN_SE end in a Linear sized for 32x32
# (128·4·4 = 2048 features), so they need exactly 32x32.
DEFAULT_INPUT_SIZE = (2, 3, 128, 128)
_PACKAGE_MODELS = {"se_resnet50": (2, 3, 128, 128), "CNN_SE": (2, 3, 32, 32)}


def _build_model(model_name: str) -> Tuple[nn.Module, Tuple[int, int, int, int], str]:
    """(model, probe input size that fits it, where that size comes from) for ``name``, ``timm:name``,
    ``torchvision:name`` or this package's ``se_resnet50`` / ``CNN_SE`` (``attn_kernels:`` prefix optional)."""
    errors = []
    lib, _, bare = model_name.rpartition(":")
    if lib not in ("", "timm", "torchvision", "attn_kernels"):
        raise ValueError(f"unknown model library {lib!r} in {model_name!r}; expected timm:, torchvision:, "
                         "attn_kernels: or none")
    model_name = bare
    try:
        import timm

        if lib in ("", "timm") and model_name in timm.list_models():
            model = timm.create_model(model_name, pretrained=False)
            cfg = getattr(model, "pretrained_cfg", None) or {}
            chw = tuple(cfg.get("input_size") or (3,) + DEFAULT_INPUT_SIZE[2:])
            if cfg.get("fixed_input_size"):  # ViTs and the like: only the configured size fits
                return model, (2,) + chw, "timm pretrained_cfg input_size (fixed_input_size)"
            return model, (2, chw[0]) + DEFAULT_INPUT_SIZE[2:], (
                f"default; the model takes any size (timm pretrained_cfg input_size {chw}, not fixed)")
    except ImportError as exc:
        errors.append(f"timm: {exc}")
    try:
        import torchvision

        if lib in ("", "torchvision") and model_name in torchvision.models.list_models():
            model = torchvision.models.get_model(model_name, weights=None)
            side = getattr(model, "image_size", None)  # VisionTransformer: fixed size
            if isinstance(side, int):
                return model, (2, 3, side, side), "the model's image_size"
            return model, DEFAULT_INPUT_SIZE, "default; the model takes any size"
    except ImportError as exc:
        errors.append(f"torchvision: {exc}")
    if lib in ("", "attn_kernels") and model_name in _PACKAGE_MODELS:
        from . import models

        return (getattr(models, model_name)(), _PACKAGE_MODELS[model_name],
                f"the input size attn_kernels.models.{model_name} is built for")
    raise ValueError(f"unknown model {model_name!r}: not a timm or torchvision model name, nor se_resnet50/CNN_SE"
                     + (f" ({'; '.join(errors)})" if errors else ""))


@torch.no_grad()
def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every norm layer non-trivial random affine parameters and running stats (zero-init of the last
    BN, as timm and torchvision do, would make the residual branch — and the attention — invisible)."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase):
            if m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
            if m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) * 0.5 + 0.75)
    return model


def parity(original: nn.Module, swapped: nn.Module, x: torch.Tensor, *, train: bool, seed: int = 0):
    """(output max abs err, output max abs, gradient max abs err, gradient max abs): both models run in the
    same mode from the same RNG state on the same input, backward of a fixed random projection of the
    output; the gradient figures are over every parameter gradient. fp32 without TF32 (``exact_fp32``)."""
    outs, grads = [], []
    for m in (original, swapped):
        m.train(train)
        m.zero_grad(set_to_none=True)
        with torch.random.fork_rng(devices=[]), exact_fp32():
            torch.manual_seed(seed)
            out = m(x.clone())
            proj = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1)).to(out)
            (out * proj).sum().backward()
        outs.append(out.detach())
        grads.append({n: p.grad.detach().clone() for n, p in m.named_parameters() if p.grad is not None})
    missing = set(grads[0]) ^ set(grads[1])
    if missing:
        raise AssertionError(f"gradients differ in which parameters get one: {sorted(missing)[:5]}")
    grad_err = max([(grads[0][n] - grads[1][n]).abs().max().item() for n in grads[0]] or [0.0])
    grad_max = max([g.abs().max().item() for g in grads[0].values()] or [0.0])
    return (outs[0] - outs[1]).abs().max().item(), outs[0].abs().max().item(), grad_err, grad_max


def swap_check(model_name: str, *, input_size: Optional[Tuple[int, ...]] = None, backend: Optional[str] = None,
               fuse_residual: bool = True, seed: int = 0, float64: bool = True) -> str:
    """Build ``model_name`` (``[timm:|torchvision:]name``, random weights: nothing is downloaded), swap
    its attention blocks, and return the report plus the parity of the swapped model against the
    original on a random input, in eval and train mode (float32), and with ``float64`` also in train
    mode in float64, where the rounding of float32 is out of the way and any real difference shows.

    ``input_size`` (N, C, H, W) defaults to one that fits the model: 32x32 for this package's
    ``CNN_SE``, timm's ``pretrained_cfg["input_size"]`` for timm models with a fixed input size (ViTs),
    else 2x3x128x128. Train-mode BatchNorm over very few values (a small input reaching 1x1 or 2x2 maps
    with a batch of 1-2) amplifies rounding differences enormously; keep the default input or larger."""
    torch.manual_seed(seed)
    model, default_size, size_from = _build_model(model_name)
    if input_size is None:
        input_size = default_size
    else:
        size_from = "given"
    original = randomize_norms(model, seed)
    swapped = copy.deepcopy(original)
    report = swap(swapped, backend=backend, fuse_residual=fuse_residual)
    keys_equal = list(original.state_dict()) == list(swapped.state_dict())
    x = torch.randn(input_size, generator=torch.Generator().manual_seed(seed))
    lines = [f"swap-check {model_name} (input {tuple(input_size)} [{size_from}], backend {backend or 'current'}, "
             f"fuse_residual={fuse_residual})", str(report),
             f"state_dict keys unchanged: {keys_equal}"]
    for train in (False, True):
        out_err, out_max, grad_err, grad_max = parity(original, swapped, x, train=train, seed=seed)
        lines.append(f"{'train' if train else 'eval '}: max abs err output {out_err:.3g} (|out| max {out_max:.3g}), "
                     f"parameter grads {grad_err:.3g} (|grad| max {grad_max:.3g})")
    if float64:
        out_err, out_max, grad_err, grad_max = parity(original.double(), swapped.double(), x.double(), train=True,
                                                      seed=seed)
        lines.append(f"train float64: max abs err output {out_err:.3g} (|out| max {out_max:.3g}), "
                     f"parameter grads {grad_err:.3g} (|grad| max {grad_max:.3g})")
    return "\n".join(lines)

