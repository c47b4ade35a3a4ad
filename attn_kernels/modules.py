"""Drop-in modules: the reference blocks with their forward routed through ``functional``.

Each ``Fused*`` subclasses its reference block, so constructor arguments, parameter names, shapes and
``state_dict`` keys are identical and checkpoints move across in both directions. ``backend`` pins
the backend for this module (default: the global one, see ``set_backend``).
"""
from __future__ import annotations

from typing import Optional

from . import functional
from ._backend import _check_name, preload
from .reference import (CBAM, ECA, AdaptiveSE, BidirectionalECA, DynamicMultiKernelECA, EffectiveSE, SEBlock,
                        _check_channels)

__all__ = ["FusedSE", "FusedEffectiveSE", "FusedAdaptiveSE", "FusedECA", "FusedCBAM", "FusedDynamicMultiKernelECA",
           "FusedBidirectionalECA"]


class _BackendMixin:
    backend: Optional[str] = None

    def set_backend(self, backend: Optional[str]):
        self.backend = None if backend is None else _check_name(backend)
        preload()  # resolve implementations now, so torch.compile never has to trace an import
        return self


class FusedSE(_BackendMixin, SEBlock):
    """``reference.SEBlock`` on the fused ``functional.se``."""

    def __init__(self, *args, backend: Optional[str] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.set_backend(backend)

    def forward(self, x):
        _check_channels(self, x)
        return functional.se(x, *self.se_params(), act=self.act, gate=self.gate, backend=self.backend)


class FusedEffectiveSE(_BackendMixin, EffectiveSE):
    """``reference.EffectiveSE`` (eSE) on the fused ``functional.se`` with ``w1=None``."""

    def __init__(self, *args, backend: Optional[str] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.set_backend(backend)

    def forward(self, x):
        _check_channels(self, x)
        return functional.se(x, *self.se_params(), gate=self.gate, backend=self.backend)


class FusedAdaptiveSE(_BackendMixin, AdaptiveSE):
    """``reference.AdaptiveSE`` on the SE kernel: the soft mask is folded into w2, so the mask
    logits get their gradient through the fused op's grad_w2."""

    def __init__(self, *args, backend: Optional[str] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.set_backend(backend)

    def forward(self, x):
        _check_channels(self, x)
        return functional.se(x, *self.se_params(), act=self.act, gate=self.gate, backend=self.backend)


class FusedECA(_BackendMixin, ECA):
    """``reference.ECA`` (and CECA with ``circular=True``) on the fused ``functional.eca``."""

    def __init__(self, *args, backend: Optional[str] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.set_backend(backend)

    def forward(self, x):
        _check_channels(self, x)
        return functional.eca(x, self.conv.weight, circular=self.circular, backend=self.backend)


class FusedCBAM(_BackendMixin, CBAM):
    """``reference.CBAM`` on ``functional.cbam``."""

    def __init__(self, *args, backend: Optional[str] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.set_backend(backend)

    def forward(self, x):
        _check_channels(self, x)
        if x.dim() - 2 != self.spatial_dims:
            raise ValueError(f"CBAM built for {self.spatial_dims}-D maps, got x of shape {tuple(x.shape)}")
        return functional.cbam(x, self.mlp[0].weight, self.mlp[2].weight, self.spatial.weight, backend=self.backend)


class FusedDynamicMultiKernelECA(_BackendMixin, DynamicMultiKernelECA):
    """``reference.DynamicMultiKernelECA`` on the fused ``functional.dmk_eca``."""

    def __init__(self, *args, backend: Optional[str] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.set_backend(backend)

    def forward(self, x):
        _check_channels(self, x)
        return functional.dmk_eca(x, *self.dmk_params(), backend=self.backend)


class FusedBidirectionalECA(_BackendMixin, BidirectionalECA):
    """``reference.BidirectionalECA`` on the fused ``functional.bi_eca``."""

    def __init__(self, *args, backend: Optional[str] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.set_backend(backend)

    def forward(self, x):
        _check_channels(self, x)
        return functional.bi_eca(x, *self.bi_params(), backend=self.backend)
