"""ops/_layout.py: the stride helpers every Triton launcher calls."""
import itertools

import pytest
import torch

from attn_kernels.ops import _layout


def _views():
    """Tensors of the layouts the launchers meet: NCHW, channels_last(_3d), size-1 and empty dims, 1-D
    spatial, views (slices, expanded, transposed)."""
    for shape in [(2, 3, 4, 5), (2, 3, 1, 5), (2, 3, 4, 1), (2, 3, 1, 1), (1, 1, 4, 5), (2, 1, 3, 3), (0, 3, 4, 5),
                  (2, 3, 0, 5)]:
        t = torch.randn(shape)
        yield t
        yield t.to(memory_format=torch.channels_last)
        if shape[0] > 1:
            yield t[::2]
    for shape in [(2, 3, 4, 5, 2), (2, 3, 1, 1, 2), (2, 3, 2, 1, 1)]:
        yield torch.randn(shape).to(memory_format=torch.channels_last_3d)
    yield torch.randn(2, 3, 7)
    yield torch.randn(2, 3, 7).transpose(1, 2).contiguous().transpose(1, 2)  # 1-D spatial, channels innermost
    yield torch.randn(2, 3, 4, 5).transpose(2, 3)  # spatial dims that do not nest: None
    yield torch.randn(2, 6, 4, 5).to(memory_format=torch.channels_last)[:, :, 1:3]
    yield torch.randn(1, 3, 1, 1).expand(4, 3, 5, 6)  # stride 0 (grad_y of a .sum())
    yield torch.randn(3, 4, 5).unsqueeze(0).expand(2, 3, 4, 5)


@pytest.mark.parametrize("i", range(len(list(_views()))))
def test_flat_strides_fast_paths_agree_with_the_definition(i):
    t = list(_views())[i]
    assert _layout.flat_strides(t) == _layout._flat_strides_walk(t), (t.shape, t.stride())


def test_flat_strides_values():
    x = torch.randn(2, 3, 4, 5)
    assert _layout.flat_strides(x) == (60, 20, 1)
    assert _layout.flat_strides(x.to(memory_format=torch.channels_last)) == (60, 1, 3)
    assert _layout.flat_strides(x.transpose(2, 3)) is None
    for a, b in itertools.combinations([x, x.to(memory_format=torch.channels_last)], 2):
        assert _layout.flat_strides(a) != _layout.flat_strides(b)
