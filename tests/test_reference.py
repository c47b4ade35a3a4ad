"""The reference blocks against independent float64 computations written here in NumPy.

The NumPy code below shares nothing with attn_kernels.reference: pooling, FCs, 1-D convs across
channels and CBAM's spatial conv are spelled out with explicit sums, so a bug in the reference cannot
be reproduced here by accident.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from attn_kernels import reference as R
from tests.helpers import assert_close, gradcheck

# --------------------------------------------------------------------------- NumPy float64 truth


def np_act(h, act):
    if act == "relu":
        return np.maximum(h, 0.0)
    if act == "silu":
        return h / (1.0 + np.exp(-h))
    if act == "gelu":  # exact (erf) GELU, torch's default
        return 0.5 * h * (1.0 + np.vectorize(math.erf)(h / math.sqrt(2.0)))
    if act == "hardswish":
        return h * np.clip(h + 3.0, 0.0, 6.0) / 6.0  # h * relu6(h + 3) / 6
    if act == "identity":
        return h
    raise AssertionError(act)


def np_gate(z, gate):
    if gate == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    return np.clip(z / 6.0 + 0.5, 0.0, 1.0)  # hardsigmoid = relu6(z + 3) / 6


def np_pool(x):
    n, c = x.shape[:2]
    return x.reshape(n, c, -1).mean(-1)


def np_scale(x, s):
    return x * s.reshape(s.shape + (1,) * (x.ndim - 2))


def np_se(x, w1, b1, w2, b2, act="relu", gate="sigmoid"):
    p = np_pool(x)
    if w1 is not None:
        h = np_act(p @ w1.T + (0 if b1 is None else b1), act)
    else:
        h = p
    return np_scale(x, np_gate(h @ w2.T + (0 if b2 is None else b2), gate))


def np_conv_channels(p, taps, circular):
    """z[n, c] = Σ_j taps[j] · p[n, c + j − k//2] (zero outside [0, C), or indices mod C)."""
    n, c = p.shape
    k = len(taps)
    z = np.zeros_like(p)
    for ch in range(c):
        for j in range(k):
            src = ch + j - k // 2
            if circular:
                z[:, ch] += taps[j] * p[:, src % c]
            elif 0 <= src < c:
                z[:, ch] += taps[j] * p[:, src]
    return z


def np_eca(x, taps, circular=False):
    return np_scale(x, np_gate(np_conv_channels(np_pool(x), taps, circular), "sigmoid"))


def np_conv2d_same(img, w):
    """img (N, 2, H, W), w (1, 2, k, k), zero padding k//2: cross-correlation like F.conv2d."""
    n, ci, h, wd = img.shape
    k = w.shape[-1]
    pad = k // 2
    padded = np.zeros((n, ci, h + 2 * pad, wd + 2 * pad))
    padded[:, :, pad:pad + h, pad:pad + wd] = img
    out = np.zeros((n, 1, h, wd))
    for c in range(ci):
        for i in range(k):
            for j in range(k):
                out[:, 0] += w[0, c, i, j] * padded[:, c, i:i + h, j:j + wd]
    return out


def np_cbam(x, w1, w2, sw):
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)

    def mlp(v):
        return np.maximum(v @ w1.T, 0) @ w2.T

    ca = np_gate(mlp(flat.mean(-1)) + mlp(flat.max(-1)), "sigmoid")
    x1 = np_scale(x, ca)
    desc = np.concatenate([x1.mean(1, keepdims=True), x1.max(1, keepdims=True)], axis=1)
    return x1 * np_gate(np_conv2d_same(desc, sw), "sigmoid")


def t64(t):
    return t.detach().to(torch.float64).numpy()


def opt64(t):
    return None if t is None else t64(t)


# --------------------------------------------------------------------------- shapes

SHAPES = [
    (2, 16, 5, 5),
    (1, 1, 1, 1),      # C = 1, HW = 1, N = 1
    (3, 13, 4, 3),     # C prime
    (2, 8, 7),         # 1-D spatial
    (2, 6, 3, 2, 2),   # 3-D spatial
    (4, 12, 1, 1),     # HW = 1
]


def _x(shape, channels_last=False, dtype=torch.float32):
    x = torch.randn(shape, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("act", ["relu", "silu", "gelu", "hardswish"])
@pytest.mark.parametrize("gate", ["sigmoid", "hardsigmoid"])
@pytest.mark.parametrize("bias", [True, False])
def test_se_block_matches_numpy(shape, act, gate, bias):
    c = shape[1]
    m = R.SEBlock(c, reduction=4, bias=bias, act=act, gate=gate).double()
    with torch.no_grad():  # push pre-activations through the interesting range of every act/gate
        for p in m.parameters():
            p.mul_(3.0)
    x = torch.randn(shape, dtype=torch.float64)
    w1, b1, w2, b2 = m.se_params()
    expected = np_se(t64(x), t64(w1), opt64(b1), t64(w2), opt64(b2), act, gate)
    assert_close(m(x), torch.from_numpy(expected), name="SEBlock")


def test_se_functional_rd_one_and_effective_se():
    x = torch.randn(2, 5, 3, 3, dtype=torch.float64)
    w1, b1 = torch.randn(1, 5, dtype=torch.float64), torch.randn(1, dtype=torch.float64)
    w2, b2 = torch.randn(5, 1, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    assert_close(R.se(x, w1, b1, w2, b2), torch.from_numpy(np_se(*map(t64, (x, w1, b1, w2, b2)))), name="C/r=1")
    m = R.EffectiveSE(5).double()
    expected = np_se(t64(x), None, None, t64(m.fc.weight), t64(m.fc.bias), gate="hardsigmoid")
    assert_close(m(x), torch.from_numpy(expected), name="EffectiveSE")


@pytest.mark.parametrize("channels_last", [False, True])
def test_se_memory_formats_and_views(channels_last):
    m = R.SEBlock(16, reduction=4).double()
    x = _x((4, 16, 6, 5), channels_last, torch.float64)
    ref = np_se(t64(x), *[opt64(p) for p in m.se_params()])
    y = m(x)
    assert_close(y, torch.from_numpy(ref), name="SEBlock channels_last" if channels_last else "SEBlock")
    view = x[::2]  # non-contiguous view
    assert_close(m(view), torch.from_numpy(ref[::2].copy()), name="SEBlock strided view")


def test_se_low_precision_runs_in_input_dtype():
    m = R.SEBlock(32, reduction=8)  # float32 parameters
    x = torch.randn(2, 32, 4, 4, dtype=torch.bfloat16)
    y = m(x)
    assert y.dtype == torch.bfloat16
    truth = np_se(t64(x), *[opt64(p) for p in m.se_params()])
    assert_close(y, torch.from_numpy(truth), name="bf16 SEBlock")


def test_se_state_dict_matches_tutorial_layout():
    class TutorialSE(nn.Module):  # the form most codebases copy
        def __init__(self, channel, reduction=16):
            super().__init__()
            self.avg_pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Sequential(nn.Linear(channel, channel // reduction), nn.ReLU(inplace=True),
                                    nn.Linear(channel // reduction, channel), nn.Sigmoid())

        def forward(self, x):
            b, c, _, _ = x.size()
            y = self.avg_pool(x).view(b, c)
            y = self.fc(y).view(b, c, 1, 1)
            return x * y.expand_as(x)

    tut, ours = TutorialSE(64), R.SEBlock(64)
    ours.load_state_dict(tut.state_dict())
    x = torch.randn(2, 64, 7, 7)
    assert_close(ours(x), tut(x), name="SEBlock vs tutorial SE")
    tut.load_state_dict(R.SEBlock(64).state_dict())  # and back


@pytest.mark.parametrize("channels,reduction,bias", [(64, 16, True), (64, 16, False), (256, 4, True), (3, 16, True)])
def test_se_parameter_count(channels, reduction, bias):
    rd = max(1, channels // reduction)
    m = R.SEBlock(channels, reduction=reduction, bias=bias)
    expected = 2 * channels * rd + ((rd + channels) if bias else 0)
    assert sum(p.numel() for p in m.parameters()) == expected
    assert m.rd_channels == rd
    assert sum(p.numel() for p in R.EffectiveSE(channels).parameters()) == channels * channels + channels
    assert R.SEBlock(channels, rd_channels=5).rd_channels == 5


# ECA-Net's values (gamma=2, b=1): t = int(|log2 C + 1| / 2), even t → t + 1.
@pytest.mark.parametrize("channels,k", [(1, 1), (2, 1), (8, 3), (64, 3), (100, 3), (256, 5), (512, 5), (2048, 7)])
def test_eca_kernel_size_formula(channels, k):
    assert R.eca_kernel_size(channels) == k
    assert R.ECA(channels).conv.weight.shape == (1, 1, k)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k", [1, 3, 5, 15])  # 15 > C for most shapes
@pytest.mark.parametrize("circular", [False, True])
def test_eca_matches_numpy(shape, k, circular):
    m = R.ECA(shape[1], k_size=k, circular=circular).double()
    x = torch.randn(shape, dtype=torch.float64)
    expected = np_eca(t64(x), t64(m.conv.weight).reshape(-1), circular)
    assert_close(m(x), torch.from_numpy(expected), name=f"ECA k={k} circular={circular}")


def test_eca_functional_takes_flat_taps():
    x = torch.randn(2, 9, 4, dtype=torch.float64)
    taps = torch.randn(3, dtype=torch.float64)
    assert_close(R.eca(x, taps), R.eca(x, taps.view(1, 1, 3)), name="taps (k,) vs (1,1,k)")


@pytest.mark.parametrize("out_act", ["relu", "identity", "silu"])
def test_residual_tails(out_act):
    x, sc = torch.randn(2, 8, 3, 3, dtype=torch.float64), torch.randn(2, 8, 3, 3, dtype=torch.float64)
    m = R.SEBlock(8, reduction=4).double()
    expected = np_act(np_se(t64(x), *[opt64(p) for p in m.se_params()]) + t64(sc), out_act)
    assert_close(R.se_residual(x, sc, *m.se_params(), out_act=out_act), torch.from_numpy(expected), name="se_residual")
    taps = torch.randn(3, dtype=torch.float64)
    expected = np_act(np_eca(t64(x), t64(taps), True) + t64(sc), out_act)
    assert_close(R.eca_residual(x, sc, taps, True, out_act), torch.from_numpy(expected), name="eca_residual")


@pytest.mark.parametrize("shape", [(2, 16, 6, 5), (1, 1, 1, 1), (2, 7, 3, 4)])
def test_cbam_matches_numpy(shape):
    m = R.CBAM(shape[1], reduction=4, spatial_kernel=3).double()
    x = torch.randn(shape, dtype=torch.float64)
    expected = np_cbam(t64(x), t64(m.mlp[0].weight), t64(m.mlp[2].weight), t64(m.spatial.weight))
    assert_close(m(x), torch.from_numpy(expected), name="CBAM")
    cl = x.contiguous(memory_format=torch.channels_last)
    assert_close(m(cl), torch.from_numpy(expected), name="CBAM channels_last")


def test_cbam_other_spatial_ranks():
    for dims, shape in ((1, (2, 8, 9)), (3, (1, 8, 3, 4, 5))):
        m = R.CBAM(8, reduction=2, spatial_kernel=3, spatial_dims=dims)
        y = m(torch.randn(shape))
        assert y.shape == shape and torch.isfinite(y).all()
        with pytest.raises(ValueError, match="built for"):
            m(torch.randn(2, 8, 4, 4) if dims != 2 else torch.randn(2, 8, 4))


def test_dynamic_multi_kernel_eca_matches_numpy():
    c = 11
    m = R.DynamicMultiKernelECA(c).double()
    x = torch.randn(3, c, 4, 4, dtype=torch.float64)
    p = np_pool(t64(x))
    logits = p @ t64(m.fc.weight).T + t64(m.fc.bias)
    blend = np.exp(logits - logits.max(-1, keepdims=True))
    blend /= blend.sum(-1, keepdims=True)
    z = sum(blend[:, i:i + 1] * np_conv_channels(p, t64(conv.weight).reshape(-1), False)
            for i, conv in enumerate(m.convs))
    assert_close(m(x), torch.from_numpy(np_scale(t64(x), np_gate(z, "sigmoid"))), name="DynamicMultiKernelECA")


def test_dynamic_multi_kernel_eca_crosses_channels_unlike_the_copied_version():
    """The widely copied Conv1d(c, c, k, groups=c) on a length-1 sequence only uses the centre tap;
    ours mixes neighbouring channels: changing an off-centre tap changes the output."""
    c = 8
    copied = nn.Conv1d(c, c, 3, padding=1, groups=c, bias=False).double()
    p = torch.randn(2, c, dtype=torch.float64)
    before = copied(p.unsqueeze(-1))
    with torch.no_grad():
        copied.weight[:, :, 0] += 5.0  # off-centre taps
        copied.weight[:, :, 2] -= 3.0
    assert torch.equal(copied(p.unsqueeze(-1)), before), "copied version: off-centre taps never act"

    m = R.DynamicMultiKernelECA(c).double()
    x = torch.randn(2, c, 3, 3, dtype=torch.float64)
    y0 = m(x)
    with torch.no_grad():
        m.convs[0].weight[0, 0, 0] += 5.0
    assert not torch.allclose(m(x), y0), "ours: an off-centre tap must change the output"
    # and the gate of channel 0 depends on channel 1's content (cross-channel)
    x2 = x.clone()
    x2[:, 1] += 1.0
    assert not torch.allclose(m(x2)[:, 0], m(x)[:, 0])


def test_bidirectional_eca_matches_numpy():
    c = 20
    m = R.BidirectionalECA(c, k_size=3).double()
    x = torch.randn(2, c, 3, 5, dtype=torch.float64)
    p = np_pool(t64(x))
    f = np_gate(np_conv_channels(p, t64(m.conv_fwd.weight).reshape(-1), False), "sigmoid")
    rev = np_conv_channels(p[:, ::-1], t64(m.conv_bwd.weight).reshape(-1), False)[:, ::-1]
    b = np_gate(rev, "sigmoid")
    h = np.maximum(p @ t64(m.gate_mlp[0].weight).T + t64(m.gate_mlp[0].bias), 0)
    logits = h @ t64(m.gate_mlp[2].weight).T + t64(m.gate_mlp[2].bias)
    a = np.exp(logits - logits.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    s = np_gate(a[:, :1] * f + a[:, 1:] * b, "sigmoid")
    assert_close(m(x), torch.from_numpy(np_scale(t64(x), s)), name="BidirectionalECA")
    assert m.gate_mlp[0].out_features == max(1, c // 16)


def test_adaptive_se_matches_numpy_and_prunes():
    c = 16
    m = R.AdaptiveSE(c, r_min=2).double()
    with torch.no_grad():
        m.mask_logits.copy_(torch.tensor([4.0, -40.0, 2.0, -40.0, 0.5, 3.0, -40.0, 1.0], dtype=torch.float64))
    x = torch.randn(3, c, 4, 4, dtype=torch.float64)
    mask = 1 / (1 + np.exp(-t64(m.mask_logits)))
    p = np_pool(t64(x))
    h = np_act(p @ t64(m.fc[0].weight).T + t64(m.fc[0].bias), "relu") * mask
    z = h @ t64(m.fc[2].weight).T + t64(m.fc[2].bias)
    expected = np_scale(t64(x), np_gate(z, "sigmoid"))
    assert_close(m(x), torch.from_numpy(expected), name="AdaptiveSE")
    assert m.effective_ratio() == c / 5
    pruned = m.prune()
    assert isinstance(pruned, R.SEBlock) and pruned.rd_channels == 5
    # the dropped units have mask ~ 4e-18: pruning is exact to float64 rounding
    assert_close(pruned(x), m(x), name="pruned AdaptiveSE")


def test_adaptive_se_ratio_is_differentiable_and_trainable():
    torch.manual_seed(1)
    m = R.AdaptiveSE(32, r_min=2)
    x = torch.randn(4, 32, 3, 3)
    (m(x).square().mean() + 0.0 * m.mask_penalty()).backward()
    assert m.mask_logits.grad is not None and m.mask_logits.grad.abs().sum() > 0
    opt = torch.optim.SGD([m.mask_logits], lr=50.0)
    before = m.effective_ratio()
    for _ in range(30):
        opt.zero_grad()
        m.mask_penalty().backward()
        opt.step()
    assert m.effective_ratio() > before, "the sparsity penalty must raise the effective ratio"


@pytest.mark.parametrize("make,shape", [
    (lambda: R.SEBlock(6, reduction=2, act="gelu"), (2, 6, 3, 2)),
    (lambda: R.SEBlock(5, reduction=5, gate="hardsigmoid", act="silu"), (2, 5, 4)),
    (lambda: R.EffectiveSE(4), (2, 4, 2, 2)),
    (lambda: R.ECA(7, k_size=3), (2, 7, 3, 2)),
    (lambda: R.ECA(5, k_size=7, circular=True), (2, 5, 3)),
    (lambda: R.AdaptiveSE(8, r_min=2), (2, 8, 2, 2)),
    (lambda: R.DynamicMultiKernelECA(6), (2, 6, 2, 2)),
    (lambda: R.BidirectionalECA(6, k_size=3), (2, 6, 2, 2)),
    (lambda: R.CBAM(6, reduction=2, spatial_kernel=3), (1, 6, 3, 3)),
])
def test_gradcheck_float64(make, shape):
    m = make().double()
    params = [p for p in m.parameters()]
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    if isinstance(m, R.CBAM):
        x = (x + torch.arange(x.numel(), dtype=torch.float64).view(shape) * 0.05).detach().requires_grad_()  # no max ties

    def f(x, *ps):
        with torch.no_grad():
            for p, q in zip(params, ps):
                p.copy_(q)
        return torch.func.functional_call(m, {n: q for (n, _), q in zip(m.named_parameters(), ps)}, (x,))

    gradcheck(f, [x] + [p.detach().clone().requires_grad_() for p in params])


# --------------------------------------------------------------------------- input validation


def test_bad_inputs_raise_clear_errors():
    m = R.SEBlock(8, reduction=2)
    w1, b1, w2, b2 = m.se_params()
    with pytest.raises(ValueError, match="at least one spatial dim"):
        m(torch.randn(2, 8))
    with pytest.raises(ValueError, match="built for 8 channels"):
        m(torch.randn(2, 9, 3, 3))
    with pytest.raises(TypeError, match="floating-point"):
        m(torch.ones(2, 8, 3, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="unknown act"):
        R.SEBlock(8, act="tanh")
    with pytest.raises(ValueError, match="unknown gate"):
        R.SEBlock(8, gate="softmax")
    with pytest.raises(ValueError, match="unknown act"):
        R.se(torch.randn(2, 8, 3), w1, b1, w2, b2, act="swish")
    with pytest.raises(ValueError, match="w2 has shape"):
        R.se(torch.randn(2, 8, 3), w1, b1, w2[:, :1], b2)
    with pytest.raises(ValueError, match="w1 has shape"):
        R.se(torch.randn(2, 7, 3), w1, b1, w2, b2)
    with pytest.raises(ValueError, match="empty spatial dim"):
        m(torch.randn(2, 8, 0, 3))
    with pytest.raises(ValueError, match="must be odd"):
        R.ECA(8, k_size=4)
    with pytest.raises(ValueError, match="must be odd"):
        R.eca(torch.randn(2, 8, 3), torch.randn(4))
    with pytest.raises(ValueError, match="ECA weight must have shape"):
        R.eca(torch.randn(2, 8, 3), torch.randn(2, 3))
    with pytest.raises(TypeError, match="floating-point"):
        R.eca(torch.ones(2, 8, 3, dtype=torch.int32), torch.randn(3))
    with pytest.raises(ValueError, match="shortcut has shape"):
        R.se_residual(torch.randn(2, 8, 3), torch.randn(2, 8, 4), w1, b1, w2, b2)
    with pytest.raises(ValueError, match="unknown out_act"):
        R.se_residual(torch.randn(2, 8, 3), torch.randn(2, 8, 3), w1, b1, w2, b2, out_act="tanh")
    with pytest.raises(ValueError, match="b1 given without w1"):
        R.se(torch.randn(2, 8, 3), None, b1, torch.randn(8, 8), b2)
    with pytest.raises(ValueError, match="spatial kernel must be odd"):
        R.CBAM(8, spatial_kernel=4)


def test_reference_does_not_modify_inputs():
    m = R.SEBlock(8, reduction=2)
    x = torch.randn(2, 8, 3, 3)
    before = x.clone()
    m(x)
    R.ECA(8)(x)
    R.CBAM(8, reduction=2)(x)
    assert torch.equal(x, before)
