"""Fused modules are drop-ins for the reference blocks: same constructor, parameters, state_dict."""
import pytest
import torch

import attn_kernels as ak
from attn_kernels import reference as R
from tests.helpers import assert_close

PAIRS = [
    (ak.FusedSE, R.SEBlock, dict(channels=16, reduction=4), (2, 16, 3, 3)),
    (ak.FusedSE, R.SEBlock, dict(channels=16, reduction=4, bias=False, act="silu", gate="hardsigmoid"), (2, 16, 5)),
    (ak.FusedEffectiveSE, R.EffectiveSE, dict(channels=8), (2, 8, 3, 3)),
    (ak.FusedAdaptiveSE, R.AdaptiveSE, dict(channels=16, r_min=2), (2, 16, 3, 3)),
    (ak.FusedECA, R.ECA, dict(channels=16), (2, 16, 3, 3)),
    (ak.FusedECA, R.ECA, dict(channels=5, k_size=7, circular=True), (2, 5, 3)),
    (ak.FusedCBAM, R.CBAM, dict(channels=8, reduction=2, spatial_kernel=3), (2, 8, 4, 4)),
]


@pytest.mark.parametrize("fused_cls,ref_cls,kwargs,shape", PAIRS)
def test_fused_module_is_a_drop_in(fused_cls, ref_cls, kwargs, shape):
    ref, fused = ref_cls(**kwargs), fused_cls(**kwargs, backend="reference")
    assert isinstance(fused, ref_cls)
    assert list(fused.state_dict()) == list(ref.state_dict())
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(shape)
    assert_close(fused(x), ref(x), name=fused_cls.__name__)
    ref.load_state_dict(fused_cls(**kwargs).state_dict())  # and back


def test_fused_module_backend_is_validated():
    with pytest.raises(ValueError, match="unknown backend"):
        ak.FusedSE(8, backend="nope")
    m = ak.FusedSE(8, reduction=2).set_backend("reference")
    assert m.backend == "reference"


def test_fused_modules_compile_without_graph_breaks():
    """Dispatch is a dict lookup after preload(): torch.compile(fullgraph=True) traces through it."""
    model = torch.nn.Sequential(ak.FusedSE(8, reduction=2), ak.FusedECA(8, k_size=3))
    x = torch.randn(2, 8, 4, 4)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    assert_close(compiled(x), model(x), name="compiled Fused modules")
