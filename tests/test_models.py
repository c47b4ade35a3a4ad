"""Model builders: sizes, placement of the attention block, shapes."""
import pytest
import torch

import attn_kernels as ak
from attn_kernels import reference as R


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_se_resnet50_sizes():
    plain, se, eca = R.se_resnet50(attn=None), R.se_resnet50(attn="se"), R.se_resnet50(attn="eca")
    assert n_params(plain) == 25_557_032  # torchvision resnet50
    assert n_params(se) == 28_088_024     # SENet paper: 28.1 M
    n_blocks = 3 + 4 + 6 + 3
    assert n_params(eca) - n_params(plain) == sum(m.conv.weight.numel() for m in eca.modules() if isinstance(m, R.ECA))
    assert sum(isinstance(m, R.SEBlock) for m in se.modules()) == n_blocks
    assert sum(isinstance(m, R.ECA) for m in eca.modules()) == n_blocks


def test_se_resnet50_forward_small():
    m = R.se_resnet50(num_classes=7).eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, 64, 64)).shape == (1, 7)


def test_se_bottleneck_attention_sits_before_the_residual_add():
    blk = R.SEBottleneck(16, 4, attn="se").eval()
    seen = {}
    blk.attn.register_forward_hook(lambda mod, inp, out: seen.update(out=out))
    x = torch.randn(2, 16, 5, 5)
    with torch.no_grad():
        y = blk(x)
        torch.testing.assert_close(y, torch.relu(seen["out"] + x))


@pytest.mark.parametrize("cls", [R.CNN, R.CNN_SE])
def test_cnn_pair(cls):
    m = cls(in_channels=1)
    y = m(torch.randn(3, 1, 32, 32))
    assert y.shape == (3, 10)
    se_blocks = [mod for mod in m.modules() if isinstance(mod, R.SEBlock)]
    assert len(se_blocks) == (3 if cls is R.CNN_SE else 0)
    assert m.classifier[2].in_features == 2048 and m.classifier[2].out_features == 512
    assert sum(isinstance(mod, torch.nn.Dropout) and mod.p == 0.5 for mod in m.modules()) == 2
    if cls is R.CNN_SE:  # attention after the ReLU, before the max-pool
        block = m.features[0]
        assert isinstance(block[2], torch.nn.ReLU) and isinstance(block[3], R.SEBlock)
        assert isinstance(block[4], torch.nn.MaxPool2d)


def test_unknown_attention_kind():
    with pytest.raises(ValueError, match="unknown attention kind"):
        R.se_resnet50(attn="cbam")
