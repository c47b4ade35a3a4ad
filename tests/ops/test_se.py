"""Triton fused SE / eSE / se_residual (attn_kernels/ops/se.py) vs the reference.

Runs on the GPU when there is one, else on CPU tensors under TRITON_INTERPRET=1 (tiny shapes; the
interpreter only ever runs the one-program-per-sample schedule). Parity tests check the output and
the gradient of x and of every parameter against float64 (tests.helpers.check_parity) on
NaN-prefilled outputs. Multi-program schedule and CUDA-graph tests are GPU-only (marker ``gpu``).
"""
import os

import pytest
import torch
import triton

import attn_kernels as ak
from attn_kernels import functional, reference
from attn_kernels.ops import _layout, _split
from attn_kernels.ops import se as S
from tests.helpers import assert_close, check_parity, gradcheck, se_hardswish_inputs, short_spin_split, tolerances

pytestmark = pytest.mark.triton

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
NAMES = {0: "x", 1: "w1", 2: "b1", 3: "w2", 4: "b2"}
RES_NAMES = {0: "x", 1: "shortcut", 2: "w1", 3: "b1", 4: "w2", 5: "b2"}


def fused_se(act, gate):
    return lambda x, w1, b1, w2, b2: functional.se(x, w1, b1, w2, b2, act, gate, backend="triton")


def ref_se(act, gate):
    return lambda x, w1, b1, w2, b2: reference.se(x, w1, b1, w2, b2, act, gate)


def se_inputs(shape, rd, bias=True, ese=False, device="cpu"):
    c = shape[1]
    x = torch.randn(shape)
    if ese:
        ins = [x, None, None, torch.randn(c, c) / c ** 0.5, torch.randn(c) if bias else None]
    else:
        ins = [x, torch.randn(rd, c) / c ** 0.5, (torch.rand(rd) + 0.2) if bias else None,
               torch.randn(c, rd) / rd ** 0.5, torch.randn(c) if bias else None]
    return [None if t is None else t.to(device).requires_grad_() for t in ins]


def _run_parity(shape, rd, dtype, act="relu", gate="sigmoid", bias=True, ese=False, param_dtype=None,
                device="cpu", view=None):
    ins = se_inputs(shape, rd, bias, ese, device)
    fused_inputs = None
    if view is not None:  # the fused op sees a strided view of the same values
        base = view[0](ins[0].detach().to(dtype))
        xv = view[1](base).requires_grad_()
        ins[0] = xv.detach().clone().requires_grad_()
        params = [None if t is None else t.detach().to(param_dtype or dtype).requires_grad_() for t in ins[1:]]
        fused_inputs = [xv] + params
    check_parity(fused_se(act, gate), ref_se(act, gate), ins, dtype=dtype, param_dtype=param_dtype,
                 names=NAMES, fused_inputs=fused_inputs)


# ---------------------------------------------------------------------------------------------
# Parity: dtypes × param dtypes × act × gate × bias
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("gate", ["sigmoid", "hardsigmoid"])
@pytest.mark.parametrize("act", ["relu", "silu", "gelu"])
@pytest.mark.parametrize("params_fp32", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_se_parity(dtype, params_fp32, act, gate, bias, device):
    _run_parity((2, 13, 3, 4), 3, dtype, act, gate, bias, param_dtype=torch.float32 if params_fp32 else None,
                device=device)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("gate", ["sigmoid", "hardsigmoid"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_effective_se_parity(dtype, gate, bias, device):
    _run_parity((2, 7, 3, 3), None, dtype, gate=gate, bias=bias, ese=True, device=device)


SHAPES = [
    ((1, 1, 1, 1), 1),  # everything 1
    ((2, 7, 4, 5), 1),  # C prime, R = 1
    ((3, 20, 1, 1), 2),  # HW = 1
    ((1, 6, 5, 3), 2),  # N = 1
    ((2, 8, 3, 3), 8),  # C / r = 1 (R = C)
    ((2, 6, 9), 3),  # 1-D spatial
    ((2, 5, 2, 3, 2), 2),  # 3-D spatial
]


@pytest.mark.parametrize("shape,rd", SHAPES, ids=[str(s) for s, _ in SHAPES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_se_shapes(shape, rd, dtype, device):
    _run_parity(shape, rd, dtype, act="silu", device=device)


def test_se_blocks_tiled(device, on_gpu):
    """More channels / spatial positions than one tile (several C tiles, HW loop, K loop)."""
    shape, rd = ((4, 300, 20, 20), 19) if on_gpu else ((1, 37, 33, 40), 19)
    _run_parity(shape, rd, torch.float32, act="gelu", device=device)
    _run_parity((1, 520, 3, 3), 130, torch.float32, device=device)  # BLOCK_C < C, BLOCK_K < R


# ---------------------------------------------------------------------------------------------
# Layouts: no hidden copy for channels_last / sliced views; a copy only for non-flattenable views
# ---------------------------------------------------------------------------------------------
LAYOUTS = {
    "channels_last": (lambda t: t, lambda t: t.to(memory_format=torch.channels_last)),
    "batch_slice": (lambda t: torch.cat([t, t]), lambda t: t[::2]),
    "channel_slice": (lambda t: torch.cat([t, t], 1), lambda t: t[:, ::2]),
    "transposed_hw": (lambda t: t.transpose(2, 3).contiguous(), lambda t: t.transpose(2, 3)),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_se_layouts(layout, dtype, device):
    _run_parity((2, 9, 3, 4), 3, dtype, view=LAYOUTS[layout], device=device)


def test_channels_last_3d_and_no_copy(device):
    x = torch.randn(2, 6, 3, 4, 2, device=device).to(memory_format=torch.channels_last_3d)
    assert S._flat_strides(x) is not None
    _, w1, b1, w2, b2 = se_inputs(x.shape, 2, device=device)
    y = functional.se(x, w1, b1, w2, b2, backend="triton")
    assert y.stride() == x.stride()
    assert_close(y, reference.se(x, w1, b1, w2, b2))
    for v in (x[::2], torch.randn(2, 6, 4, 5, device=device).to(memory_format=torch.channels_last)[:, :, 1:3]):
        assert S._flat_strides(v) is not None  # these views run in place, no .contiguous()
    assert S._flat_strides(torch.randn(2, 6, 4, 5).transpose(2, 3)) is None  # the documented copy


def test_expanded_grad_y(device):
    """grad_y from .sum() is an expanded (stride 0) tensor: read in place."""
    x, w1, b1, w2, b2 = se_inputs((2, 5, 3, 3), 2, device=device)
    functional.se(x, w1, b1, w2, b2, backend="triton").sum().backward()
    g = [t.grad.clone() for t in (x, w1, b1, w2, b2)]
    for t in (x, w1, b1, w2, b2):
        t.grad = None
    reference.se(x, w1, b1, w2, b2).sum().backward()
    for a, t in zip(g, (x, w1, b1, w2, b2)):
        assert_close(a, t.grad)


def test_empty_batch(device):
    x, w1, b1, w2, b2 = se_inputs((0, 6, 3, 3), 2, device=device)
    y = functional.se(x, w1, b1, w2, b2, backend="triton")
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape and torch.equal(w1.grad, torch.zeros_like(w1))
    assert torch.equal(b2.grad, torch.zeros_like(b2))


# ---------------------------------------------------------------------------------------------
# se_residual
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("out_act", ["relu", "silu", "gelu", "identity"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_se_residual_parity(dtype, out_act, device):
    x, w1, b1, w2, b2 = se_inputs((2, 7, 3, 4), 2, device=device)
    sc = torch.randn(x.shape, device=device).requires_grad_()
    check_parity(lambda *a: functional.se_residual(*a, "silu", "hardsigmoid", out_act, backend="triton"),
                 lambda *a: reference.se_residual(*a, "silu", "hardsigmoid", out_act),
                 [x, sc, w1, b1, w2, b2], dtype=dtype, names=RES_NAMES)


def test_se_residual_channels_last_and_ese(device):
    x = torch.randn(2, 6, 3, 3, device=device).to(memory_format=torch.channels_last).requires_grad_()
    sc = torch.randn(2, 6, 3, 3, device=device).requires_grad_()  # mixed layouts: NCHW shortcut
    w2, b2 = torch.randn(6, 6, device=device).requires_grad_(), torch.randn(6, device=device).requires_grad_()
    check_parity(lambda *a: functional.se_residual(a[0], a[1], None, None, a[2], a[3], backend="triton"),
                 lambda *a: reference.se_residual(a[0], a[1], None, None, a[2], a[3]),
                 [x, sc, w2, b2], dtype=torch.float32,
                 fused_inputs=[x.detach().clone().requires_grad_(), sc.detach().clone().requires_grad_(),
                               w2.detach().clone().requires_grad_(), b2.detach().clone().requires_grad_()])


# ---------------------------------------------------------------------------------------------
# hardswish bottleneck (timm's FBNetV3 SE): pre-activations in all three pieces
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gate", ["sigmoid", "hardsigmoid"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_se_hardswish_every_piece(dtype, gate, device):
    ins = se_hardswish_inputs((3, 24, 3, 5), 8, device)
    check_parity(fused_se("hardswish", gate), ref_se("hardswish", gate), ins, dtype=dtype, names=NAMES)


def test_se_hardswish_channels_last_and_residual(device):
    x, *params = se_hardswish_inputs((2, 16, 4, 3), 6, device)
    x_cl = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    check_parity(fused_se("hardswish", "sigmoid"), ref_se("hardswish", "sigmoid"), [x_cl, *params],
                 dtype=torch.float32, names=NAMES)
    sc = torch.randn(x.shape, device=device).requires_grad_()
    check_parity(lambda *a: functional.se_residual(*a, "hardswish", "sigmoid", "relu", backend="triton"),
                 lambda *a: reference.se_residual(*a, "hardswish", "sigmoid", "relu"), [x, sc, *params],
                 dtype=torch.bfloat16, names=RES_NAMES)


# ---------------------------------------------------------------------------------------------
# torch.library: opcheck, gradcheck, compile, autocast
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("ese", [False, True])
def test_opcheck(ese, channels_last, device):
    x, w1, b1, w2, b2 = se_inputs((2, 6, 3, 3), 2, ese=ese, device=device)
    if channels_last:
        x = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    torch.library.opcheck(torch.ops.attn_kernels.se_fwd, (x, w1, b1, w2, b2, "silu", "sigmoid"))
    _, pooled, u, z = torch.ops.attn_kernels.se_fwd(x, w1, b1, w2, b2, "silu", "sigmoid")
    # the backward ops have no autograd formula (no double backward): check them on detached inputs
    x, w1, w2, pooled, u, z = [None if t is None else t.detach() for t in (x, w1, w2, pooled, u, z)]
    gy = torch.randn_like(x)
    torch.library.opcheck(torch.ops.attn_kernels.se_bwd, (gy, x, w1, w2, pooled, u, z, "silu", "sigmoid"))
    sc = torch.randn_like(x)
    torch.library.opcheck(torch.ops.attn_kernels.se_residual_fwd, (x, sc, w1, b1, w2, b2, "relu", "sigmoid", "relu"))
    torch.library.opcheck(torch.ops.attn_kernels.se_residual_bwd,
                          (gy, x, sc, w1, w2, pooled, u, z, "relu", "sigmoid", "relu"))
    # transposed-view weights: the fake kernel's weight grads are contiguous, as the real ones
    wt1, wt2 = [None if w is None else w.t().contiguous().t() for w in (w1, w2)]
    torch.library.opcheck(torch.ops.attn_kernels.se_bwd, (gy, x, wt1, wt2, pooled, u, z, "silu", "sigmoid"))
    # 1x1 conv weights in channels_last strides: the fake kernel's weight grads take their strides, as the real
    wc1, wc2 = [None if w is None else w.reshape(*w.shape, 1, 1).to(memory_format=torch.channels_last)
                for w in (w1, w2)]
    torch.library.opcheck(torch.ops.attn_kernels.se_bwd, (gy, x, wc1, wc2, pooled, u, z, "silu", "sigmoid"))


def _as_conv(w, channels_last=False):
    """An FC weight as a 1×1 Conv2d's (out, in, 1, 1): the same values, optionally in channels_last strides
    (what model.to(memory_format=torch.channels_last) gives a conv weight)."""
    w = w.detach().reshape(*w.shape, 1, 1)
    return (w.to(memory_format=torch.channels_last) if channels_last else w.clone()).requires_grad_()


@pytest.mark.parametrize("ese,channels_last,residual", [(False, False, False), (False, True, False),
                                                         (True, True, False), (False, True, True)])
def test_conv_weights_taken_as_they_are(ese, channels_last, residual, device):
    """1×1 conv weights (timm's SE modules): the Triton op takes them unflattened -- no view node between the
    parameter and the op in the autograd graph -- and is right against float64 (the reference flattens);
    every weight's gradient comes back in the weight's shape and strides (channels_last ones too), and
    equals the 2-D weights' gradient."""
    torch.manual_seed(0)
    x, w1, b1, w2, b2 = se_inputs((2, 12, 3, 3), None if ese else 4, ese=ese, device=device)
    cw1, cw2 = (None if w1 is None else _as_conv(w1, channels_last)), _as_conv(w2, channels_last)
    sc = torch.randn_like(x).requires_grad_() if residual else None
    if residual:
        fused = lambda x, s, *p: functional.se_residual(x, s, *p, backend="triton")  # noqa: E731
        check_parity(fused, reference.se_residual, [x, sc, cw1, b1, cw2, b2], dtype=torch.float32, names=RES_NAMES)
    else:
        check_parity(fused_se("relu", "sigmoid"), ref_se("relu", "sigmoid"), [x, cw1, b1, cw2, b2],
                     dtype=torch.float32, names=NAMES)
    ins = [x] + ([sc] if residual else []) + [cw1, b1, cw2, b2]
    y = (functional.se_residual if residual else functional.se)(*ins, backend="triton")
    nodes = {type(f).__name__ for f, _ in y.grad_fn.next_functions if f is not None}
    assert not any("View" in name or "Reshape" in name for name in nodes), nodes
    gy = torch.randn_like(y)
    weights = [w for w in (cw1, cw2) if w is not None]
    grads = torch.autograd.grad(y, weights, gy)
    flat = [w.detach().flatten(1).requires_grad_() for w in weights]
    ins2 = [x] + ([sc] if residual else []) + ([flat[0], b1, flat[1], b2] if not ese else [None, None, flat[0], b2])
    grads2 = torch.autograd.grad((functional.se_residual if residual else functional.se)(*ins2, backend="triton"),
                                 flat, gy)
    for w, g, g2 in zip(weights, grads, grads2):
        assert g.shape == w.shape and g.stride() == w.stride() and g.dtype == w.dtype
        assert torch.equal(g.flatten(1), g2)


def test_conv_weight_shapes_checked():
    """A weight with trailing dims that are not all 1 is not a 1×1 conv weight: a clear error."""
    x, w1, b1, w2, b2 = se_inputs((2, 12, 3, 3), 4)
    with pytest.raises(ValueError, match=r"w1 has shape \(4, 12, 3, 1\), expected \(4, 12\)"):
        functional.se(x, w1.detach().reshape(4, 12, 1, 1).expand(4, 12, 3, 1), b1, w2, b2, backend="triton")
    with pytest.raises(ValueError, match=r"w2 has shape \(12, 5, 1, 1\), expected \(12, 4, 1, 1\)"):
        functional.se(x, w1, b1, torch.randn(12, 5, 1, 1), b2, backend="triton")


@pytest.mark.parametrize("case", ["se_gelu", "se_hardswish", "ese", "residual_silu"])
def test_gradcheck_float64(case, device):
    if case == "ese":
        x, w1, b1, w2, b2 = se_inputs((2, 3, 2, 1), None, ese=True, device=device)
        gradcheck(lambda x, w2, b2: functional.se(x, None, None, w2, b2, gate="sigmoid", backend="triton"),
                  [x, w2, b2])
    elif case == "se_gelu":
        gradcheck(lambda *a: functional.se(*a, "gelu", "sigmoid", backend="triton"),
                  se_inputs((2, 3, 2, 1), 2, device=device))
    elif case == "se_hardswish":
        gradcheck(lambda *a: functional.se(*a, "hardswish", "hardsigmoid", backend="triton"),
                  se_hardswish_inputs((2, 5, 2, 1), 4, device))
    else:
        x, w1, b1, w2, b2 = se_inputs((2, 3, 2, 1), 2, device=device)
        sc = torch.randn(x.shape, device=device).requires_grad_()
        gradcheck(lambda *a: functional.se_residual(*a, "silu", "sigmoid", "silu", backend="triton"),
                  [x, sc, w1, b1, w2, b2])


def test_torch_compile_fullgraph(device):
    """Traces without a graph break (fullgraph=True) through the fake kernels; aot_eager keeps it fast
    (the custom ops run eagerly inside the compiled graph, forward and backward)."""
    torch._dynamo.reset()
    m = ak.FusedSE(8, reduction=4, act="silu", backend="triton").to(device)
    x = torch.randn(2, 8, 3, 3, device=device)
    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    ye = m(xe)
    yc = torch.compile(m, fullgraph=True, backend="aot_eager")(xc)
    assert_close(yc, ye, name="compiled output")
    g = torch.randn_like(ye)
    ye.backward(g)
    yc.backward(g)
    assert_close(xc.grad, xe.grad, name="compiled grad x")


def test_autocast_runs_in_input_dtypes(device):
    """Autocast falls through: bf16 x with fp32 params stays bf16 out, params get fp32 grads."""
    x, w1, b1, w2, b2 = se_inputs((2, 6, 3, 3), 2, device=device)
    xb = x.detach().to(torch.bfloat16).requires_grad_()
    with torch.autocast(device, dtype=torch.bfloat16):
        y = functional.se(xb, w1, b1, w2, b2, backend="triton")
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert w1.grad.dtype == torch.float32 and xb.grad.dtype == torch.bfloat16
    assert_close(y, reference.se(xb.detach(), w1, b1, w2, b2).detach())


# ---------------------------------------------------------------------------------------------
# Modules, dispatch, invariants
# ---------------------------------------------------------------------------------------------
def test_fused_se_state_dict_both_ways(device):
    ref = reference.SEBlock(16, reduction=4, act="silu").to(device)
    fused = ak.FusedSE(16, reduction=4, act="silu", backend="triton").to(device)
    fused.load_state_dict(ref.state_dict())
    ref2 = reference.SEBlock(16, reduction=4, act="silu").to(device)
    ref2.load_state_dict(fused.state_dict())
    for a, b in zip(ref.state_dict().values(), ref2.state_dict().values()):
        assert torch.equal(a, b)
    x = torch.randn(2, 16, 3, 3, device=device)
    assert_close(fused(x), ref(x), name="FusedSE output")
    ese_ref = reference.EffectiveSE(16).to(device)
    ese = ak.FusedEffectiveSE(16, backend="triton").to(device)
    ese.load_state_dict(ese_ref.state_dict())
    assert_close(ese(x), ese_ref(x), name="FusedEffectiveSE output")


def test_inputs_not_modified(device):
    ins = se_inputs((2, 7, 3, 3), 2, device=device)
    sc = torch.randn(2, 7, 3, 3, device=device)
    before = [t.detach().clone() for t in ins] + [sc.clone()]
    functional.se(*ins, backend="triton").backward(torch.randn(2, 7, 3, 3, device=device))
    functional.se_residual(ins[0], sc, *ins[1:], backend="triton").sum().backward()
    for a, b in zip(ins + [sc], before):
        assert torch.equal(a.detach(), b)


def _forced_group(monkeypatch, group):
    """Make the launchers group ``group`` samples per program (the FC tile shrunk to stay ≤ 4096 elements)."""
    launch_config = S.launch_config

    def cfg(*a, **k):
        base = launch_config(*a, **k)
        return dict(base, GROUP=group, FC_C=max(1, min(base["BLOCK_C"], 4096 // (group * base["FC_R"]))))
    monkeypatch.setattr(S, "launch_config", cfg)


@pytest.mark.parametrize("group", [2, 4, 8])
@pytest.mark.parametrize("layout,ese,residual", [("nchw", False, False), ("channels_last", False, True),
                                                 ("nchw", True, True), ("channels_last", True, False)])
def test_sample_groups(group, layout, ese, residual, device, monkeypatch):
    """Programs serving GROUP samples (the FC weights read once per group): 5 samples, so the last group
    is ragged (and for GROUP = 8 the only group), against the float64 reference, output and every grad."""
    _forced_group(monkeypatch, group)
    view = LAYOUTS["channels_last"] if layout == "channels_last" else None
    if residual:
        x, w1, b1, w2, b2 = se_inputs((5, 12, 3, 3), 3, ese=ese, device=device)
        sc = torch.randn(5, 12, 3, 3, device=device)
        if view is not None:
            x = x.detach().to(memory_format=torch.channels_last).requires_grad_()
        ins = [x, sc.requires_grad_(), w1, b1, w2, b2]
        check_parity(lambda *a: functional.se_residual(*a, act="silu", out_act="relu", backend="triton"),
                     lambda *a: reference.se_residual(*a, act="silu", out_act="relu"),
                     ins, dtype=torch.float32, names=RES_NAMES)
    else:
        _run_parity((5, 12, 3, 3), 3, torch.float32, act="gelu", ese=ese, device=device, view=view)


def test_group_choice():
    """GROUP from the byte counts: weight-heavy late stages group, early stages do not; on a GPU the grid
    still fills the SMs (a GROUP within _split.FILL of the fullest grid, the fewest L2 bytes besides x)
    and schedule (b) splits the few groups, within half of what the GPU holds at once."""
    bf16, fp32 = 2, 4
    def sizes(c, hw, r):
        return dict(x_bytes=c * hw * bf16, w_bytes=2 * r * c * fp32)

    def programs(cfg, n):
        return -(-n // cfg["GROUP"]) * cfg["P"]
    # SE-ResNet-50 stage 4 (N = 64, 2048 x 7 x 7, R = 128): 2 MB of weights against 200 KB of x per sample
    cpu = S._launch_config(64, 2048, 128, 49, False, "auto", 0, **sizes(2048, 49, 128))
    assert cpu["GROUP"] == 16 and cpu["P"] == 1 and cpu["MULTI"] == 0
    # on 132 SMs every GROUP from 16 down gives 64 programs (half the SMs: the co-residency budget at
    # one program per SM); the fewest L2 bytes besides x (weights once per group, P published rows per
    # program): 4 groups of 16 x 16 programs
    # (and at N = 8, 1024 x 14 x 14: 4 groups of 2 x 16 programs, not 1 group of 8 x 64)
    gpu = S._launch_config(64, 2048, 128, 49, False, "auto", 132, **sizes(2048, 49, 128))
    assert gpu["GROUP"] == 16 and gpu["MULTI"] == 1 and gpu["P"] == 16 and programs(gpu, 64) == 64
    assert gpu["GROUP"] * gpu["FC_C"] * gpu["FC_R"] <= 4096
    small = S._launch_config(8, 1024, 64, 196, False, "auto", 132, **sizes(1024, 196, 64))
    assert (small["GROUP"], small["P"]) == (2, 16)
    # a kernel that fits two programs per SM doubles the budget: 128 programs
    two = S._launch_config(64, 2048, 128, 49, False, "auto", 132, **sizes(2048, 49, 128), occupancy=2)
    assert two["MULTI"] == 1 and programs(two, 64) == 128
    # large batches run schedule (a), one program per group: about one program per SM, not 64 programs
    # of 16 samples at N = 1024
    for n, group in ((256, 2), (1024, 8), (4096, 16)):
        big = S._launch_config(n, 2048, 128, 49, False, "auto", 132, **sizes(2048, 49, 128))
        assert big["GROUP"] == group and big["MULTI"] == 0 and -(-n // group) >= 128
    for occ in (1, 2):
        for n in range(2, 2100):
            cfg = S._launch_config(n, 2048, 128, 49, False, "auto", 132, **sizes(2048, 49, 128), occupancy=occ)
            assert programs(cfg, n) >= 0.45 * occ * min(n, 132), (n, occ)
            assert not cfg["MULTI"] or programs(cfg, n) <= 132 * occ // 2, (n, occ)
    # stage 1 (256 x 56 x 56, R = 16): weights are 2 % of a sample's x: no grouping
    assert S._launch_config(64, 256, 16, 3136, False, "auto", 132, **sizes(256, 3136, 16))["GROUP"] == 1
    # channels_last stage 1: one 256-channel tile per sample; with room for schedule (b) (two programs per
    # SM), 64-channel tiles give it four to split: 128 programs instead of 64
    cl = S._launch_config(64, 256, 16, 3136, True, "auto", 132, **sizes(256, 3136, 16))
    assert cl["BLOCK_C"] == 256 and programs(cl, 64) == 64  # nothing fills better at one program per SM
    cl2 = S._launch_config(64, 256, 16, 3136, True, "auto", 132, **sizes(256, 3136, 16), occupancy=2)
    assert cl2["BLOCK_C"] == 64 and cl2["BLOCK_HW"] == 64 and cl2["MULTI"] == 1 and programs(cl2, 64) == 128
    assert S._launch_config(256, 256, 16, 3136, True, "auto", 132, **sizes(256, 3136, 16))["BLOCK_C"] == 256
    # schedule (b) asks for at most half of what the GPU holds at once
    for n in range(1, 80):
        for mode in ("auto", "multi"):
            for occ in (1, 2, 3):
                multi, p, per = _split.split_plan(n, 2048, 64, 132, mode, occ)
                assert (not multi or n * p <= 132 * occ // 2) and (multi == 0) == (p == 1) and per % 64 == 0
    # no byte counts (or one sample): no grouping
    assert S._launch_config(64, 2048, 128, 49, False, "auto", 132, 0, 0)["GROUP"] == 1
    assert S._launch_config(1, 2048, 128, 49, False, "auto", 0, **sizes(2048, 49, 128))["GROUP"] == 1


def test_co_resident_per_sm():
    """The occupancy behind schedule (b)'s budget, by registers, shared memory and threads (H100 limits)."""
    class H100:
        regs_per_multiprocessor, shared_memory_per_multiprocessor, max_threads_per_multi_processor = 65536, 233472, 2048
    assert _split.co_resident_per_sm(128, 28672, 8, H100) == 2  # 128 regs x 256 threads = half the file
    assert _split.co_resident_per_sm(122, 28672, 8, H100) == 2  # allocated in units of 8 registers
    assert _split.co_resident_per_sm(129, 1024, 8, H100) == 1
    assert _split.co_resident_per_sm(64, 120000, 4, H100) == 1  # shared memory bound
    assert _split.co_resident_per_sm(32, 0, 8, H100) == 8  # threads bound (2048 / 256)
    assert _split.co_resident_per_sm(255, 0, 8, H100) == 1

    class Older:  # a torch whose device properties lack the per-SM fields
        shared_memory_per_block_optin = 232448
    assert _split.co_resident_per_sm(128, 28672, 8, Older) == 2


def test_fit_occupancy(monkeypatch):
    """fit_occupancy re-plans for what the compiled kernel fits per SM, keeps the new plan only if its own
    kernel fits as many, remembers the choice per call (the planner's inputs are part of the key: two
    shapes with the same first plan are fitted apart), and changes nothing off the GPU, under a forced
    schedule or P, or when measuring fails."""
    x = torch.zeros(4)
    args = lambda sync, p, per, spin: (x, sync, p, per)  # noqa: E731
    base = dict(GROUP=1, MULTI=0, P=1, chan_per_prog=8, BLOCK_C=8)
    wide = dict(base, MULTI=1, P=4, chan_per_prog=2)

    def prepared(cfg):
        return 4, args, dict(ACC=0)
    occ = {"base": 2, "wide": 2}
    monkeypatch.setattr(_split, "_occupancy", lambda k, like, cfg, prep: occ["wide" if cfg["MULTI"] else "base"])
    monkeypatch.setattr(_split, "_FITTED", {})
    replans = []

    def replan(o):
        replans.append(o)
        return wide

    def fit(key="shape A"):
        return _split.fit_occupancy(S._se_fwd_kernel, x, base, replan, prepared, key)
    assert fit() is base  # CPU tensor: no SMs
    monkeypatch.setattr(_split, "device_sms", lambda device: 132)
    assert fit() == wide and replans == [2]
    assert fit() == wide and replans == [2]  # remembered
    assert fit("shape B") == wide and replans == [2, 2]  # another call signature: fitted on its own
    monkeypatch.setattr(_split, "_FITTED", {})
    occ["wide"] = 1  # the re-planned kernel holds fewer per SM than the budget assumed: keep the safe plan
    assert fit() is base
    monkeypatch.setattr(_split, "_FITTED", {})
    occ["base"] = 1  # one per SM: nothing to re-plan
    assert fit() is base and replans == [2, 2, 2]

    def broken(*a):
        raise RuntimeError("no driver")
    monkeypatch.setattr(_split, "_FITTED", {})
    monkeypatch.setattr(_split, "_occupancy", broken)
    assert fit() is base
    # forced schedule or P: never measured nor re-planned (a fresh memo, an occupancy that would re-plan)
    monkeypatch.setattr(_split, "_occupancy", lambda *a: 2)
    for env, value in (("ATTN_KERNELS_SE_SCHEDULE", "single"), ("ATTN_KERNELS_SE_TUNE", "P=2")):
        monkeypatch.setattr(_split, "_FITTED", {})
        monkeypatch.setenv(env, value)
        assert fit() is base and not _split._FITTED
        monkeypatch.delenv(env)
    monkeypatch.setattr(_split, "_FITTED", {})
    assert fit() == wide  # and without them it would have


def test_tune_overrides(monkeypatch):
    """ATTN_KERNELS_SE_TUNE (tuning sweeps) forces launch parameters, still within the co-residency budget,
    and bad text is a clear error."""
    bf16, fp32 = 2, 4
    sizes = dict(x_bytes=2048 * 49 * bf16, w_bytes=2 * 128 * 2048 * fp32)
    monkeypatch.setenv("ATTN_KERNELS_SE_TUNE", "GROUP=4, P=8, num_warps=4")
    cfg = S.launch_config(64, 2048, 128, 49, 49, torch.device("cpu"), **sizes)
    assert cfg["GROUP"] == 4 and cfg["num_warps"] == 4 and cfg["MULTI"] == 0  # no SMs: no schedule (b)
    gpu = S._launch_config(64, 2048, 128, 49, False, "auto", 132, **sizes, tune_text=_split.tune_text())
    assert gpu["GROUP"] == 4 and gpu["MULTI"] == 1 and gpu["P"] == 4  # 16 groups x 8 > 66: capped to 4
    monkeypatch.setenv("ATTN_KERNELS_SE_TUNE", "BLOCK_C=32,BLOCK_HW=32,NUM_STAGES=2")
    cfg = S.launch_config(2, 64, 4, 49, 49, torch.device("cpu"))
    assert (cfg["BLOCK_C"], cfg["BLOCK_HW"], cfg["num_warps"]) == (32, 32, 4)
    x = torch.zeros(2, 64, 8, 8)  # rows of 256 bytes: pipelined, NUM_STAGES forced
    assert S._pipeline(cfg, x, 64, [(64 * 64, 64, 1)], 1) == dict(NUM_STAGES=2, PREFETCH=0, ROW_ALIGN=4)
    monkeypatch.setenv("ATTN_KERNELS_SE_TUNE", "PREFETCH=1")
    assert S._pipeline(cfg, x, 64, [(64 * 64, 64, 1)], 1) == dict(NUM_STAGES=1, PREFETCH=1, ROW_ALIGN=4)
    monkeypatch.setenv("ATTN_KERNELS_SE_TUNE", "maxnreg=128")
    assert S.launch_config(2, 64, 4, 49, 49, torch.device("cpu"))["maxnreg"] == 128
    for bad in ("GROUP=3", "GROUP=32", "P=0", "FOO=1", "P=x", "PREFETCH=2", "BLOCK_C", "maxnreg=8"):
        monkeypatch.setenv("ATTN_KERNELS_SE_TUNE", bad)
        with pytest.raises(ValueError, match="ATTN_KERNELS_SE_TUNE"):
            S.launch_config(2, 64, 4, 49, 49, torch.device("cpu"))
    # parity under a forced configuration (interpreter: schedule (a), GROUP 2, narrow tiles)
    monkeypatch.setenv("ATTN_KERNELS_SE_TUNE", "GROUP=2,BLOCK_C=4,BLOCK_HW=8,num_warps=2")
    _run_parity((3, 12, 3, 3), 3, torch.float32, act="relu", device="cpu")


def test_row_alignment():
    """ROW_ALIGN (_pipeline): the largest power of two ≤ 16 bytes that divides HW and every row / sample
    stride of every streamed NCHW tensor; pipelined (cp.async) when that is ≥ 4 bytes, else the register
    prefetch. Channels_last rows: 16-byte pitch and sample stride."""
    cfg = dict(BLOCK_C=16, BLOCK_HW=256)
    bf16, fp32 = torch.zeros(1, dtype=torch.bfloat16), torch.zeros(1)

    def plan(x, hw, *strides):
        p = S._pipeline(cfg, x, hw, list(strides), 1)
        return p["ROW_ALIGN"], p["PREFETCH"], p["NUM_STAGES"] > 1
    nchw = lambda c, hw: (c * hw, hw, 1)  # noqa: E731
    assert plan(bf16, 196, nchw(1024, 196)) == (4, 0, True)  # 14x14: 8-byte copies, pipelined
    assert plan(bf16, 784, nchw(512, 784)) == (8, 0, True)  # 28x28: 16 bytes
    assert plan(bf16, 49, nchw(2048, 49)) == (1, 1, False)  # 7x7: 2 bytes, hand prefetch
    assert plan(fp32, 49, nchw(2048, 49)) == (1, 0, True)  # 7x7 fp32: 4-byte copies, pipelined
    assert plan(fp32, 196, nchw(1024, 196)) == (4, 0, True)
    # one misaligned stream (grad_y with a row stride of 17) lowers the alignment of all of them
    assert plan(fp32, 16, nchw(8, 16), (136, 17, 1)) == (1, 0, True)
    assert plan(bf16, 16, nchw(8, 16), (136, 17, 1)) == (1, 1, False)
    assert plan(bf16, 16, nchw(8, 16), (0, 0, 0))[:2] == (1, 1)  # an expanded grad_y: no unit stride
    cl = dict(BLOCK_C=256, BLOCK_HW=16)
    assert S._pipeline(cl, bf16, 49, [(49 * 1024, 1, 1024)], 1)["NUM_STAGES"] > 1
    assert S._pipeline(cl, bf16, 49, [(49 * 20, 1, 20)], 1)["PREFETCH"] == 1  # 40-byte rows


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_alignment_parity(dtype, device):
    """The kernels read HW and the strides as multiples of ROW_ALIGN: x aligned but grad_y (row stride 17)
    or x (row stride 18: 2 divides, 4 does not) or se_residual's shortcut (row stride 17) not, forward
    and every gradient against float64."""
    ins = se_inputs((2, 8, 4, 4), 3, device=device)
    big = torch.randn(2 * 8 * 17 + 8, device=device, dtype=dtype)
    gy = big.as_strided((2, 8, 4, 4), (136, 17, 4, 1))
    check_parity(fused_se("relu", "sigmoid"), ref_se("relu", "sigmoid"), ins, dtype=dtype, names=NAMES, grad_out=gy)
    xbig = torch.randn(2 * 8 * 18, device=device, dtype=dtype)
    xv = xbig.as_strided((2, 8, 4, 4), (144, 18, 4, 1))
    x0 = xv.detach().clone().requires_grad_()
    params = [t.detach().to(dtype).requires_grad_() for t in ins[1:]]
    check_parity(fused_se("relu", "sigmoid"), ref_se("relu", "sigmoid"), [x0] + ins[1:], dtype=dtype, names=NAMES,
                 fused_inputs=[xv.requires_grad_()] + params)
    # se_residual: x aligned, the shortcut not (its rows are 17 apart); its gradient is the grad_shortcut
    x, w1, b1, w2, b2 = se_inputs((2, 8, 4, 4), 3, device=device)
    scbig = torch.randn(2 * 8 * 17 + 8, device=device, dtype=dtype)
    scv = scbig.as_strided((2, 8, 4, 4), (136, 17, 4, 1))
    sc0 = scv.detach().clone().requires_grad_()
    params = [t.detach().to(dtype).requires_grad_() for t in (w1, b1, w2, b2)]
    check_parity(lambda *a: functional.se_residual(*a, out_act="relu", backend="triton"),
                 lambda *a: reference.se_residual(*a, out_act="relu"), [x, sc0, w1, b1, w2, b2], dtype=dtype,
                 names=RES_NAMES,
                 fused_inputs=[x.detach().to(dtype).requires_grad_(), scv.requires_grad_()] + params)


def test_dispatch_and_schedule_choice(device):
    ins = se_inputs((1, 4, 2, 2), 1, device=device)
    y = functional.se(*ins, backend="triton")
    assert y.grad_fn.name() == "_EagerBackward"  # the fused launchers without the op's dispatch (ops/_eager.py)
    with torch.no_grad():  # the registered op itself
        assert_close(torch.ops.attn_kernels.se_fwd(*ins, "relu", "sigmoid")[0], y.detach(), name="op")
    cfg = S.launch_config(1, 2048, 128, 49, 49, torch.device("cpu"))
    assert cfg["MULTI"] == 0 and cfg["P"] == 1  # never the cross-program schedule off the GPU
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        assert S.launch_config(1, 2048, 128, 49, 49, torch.device("cuda", 0))["MULTI"] == 0
    assert "se" in ak.info()["backends"]["triton"]["ops"].split(", ")


# ---------------------------------------------------------------------------------------------
# GPU only: multi-program schedule, CUDA graphs, larger shapes
# ---------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("schedule", ["single", "multi"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape,rd", [((1, 256, 56, 56), 16), ((4, 2048, 7, 7), 128), ((2, 517, 9, 9), 33)])
def test_gpu_schedules(schedule, channels_last, shape, rd, monkeypatch):
    monkeypatch.setenv("ATTN_KERNELS_SE_SCHEDULE", schedule)
    monkeypatch.setenv("ATTN_KERNELS_SE_CHECK", "1")
    cfg = S.launch_config(shape[0], shape[1], rd, shape[2] * shape[3], 1 if channels_last else shape[2] * shape[3],
                          torch.device("cuda"))
    # "multi" needs >= 2 channel tiles: channels_last C = 256 is one BLOCK_C = 256 tile, so it stays single
    tiles = triton.cdiv(shape[1], cfg["BLOCK_C"])
    assert cfg["MULTI"] == (schedule == "multi" and tiles >= 2)
    if schedule == "multi" and cfg["MULTI"]:
        assert cfg["P"] >= 2 and shape[0] * cfg["P"] <= torch.cuda.get_device_properties(0).multi_processor_count
    view = LAYOUTS["channels_last"] if channels_last else None
    for dtype in (torch.float32, torch.bfloat16):
        _run_parity(shape, rd, dtype, act="silu", device="cuda", view=view)
    x, w1, b1, w2, b2 = se_inputs(shape, rd, device="cuda")
    sc = torch.randn(shape, device="cuda").requires_grad_()
    check_parity(lambda *a: functional.se_residual(*a, backend="triton"), reference.se_residual,
                 [x, sc, w1, b1, w2, b2], dtype=torch.bfloat16, names=RES_NAMES)


@pytest.mark.gpu
@pytest.mark.parametrize("n", [64, 256])
def test_gpu_natural_groups(n, monkeypatch):
    """SE-ResNet-50's 7×7 stage at training batches with the launcher's own choice: samples grouped
    (GROUP > 1; on a 132-SM GPU schedule (b) with GROUP 8 at N = 64, (a) with GROUP 2 at 256), bf16 x
    with fp32 weights against float64, the split schedule's error flag checked."""
    monkeypatch.setenv("ATTN_KERNELS_SE_CHECK", "1")
    shape, rd = (n, 2048, 7, 7), 128
    ins = se_inputs(shape, rd, device="cuda")
    cfg = S.launch_config(n, 2048, rd, 49, 49, torch.device("cuda"),
                          **S._sizes(ins[0].to(torch.bfloat16), ins[1], ins[3]))
    assert cfg["GROUP"] > 1
    check_parity(fused_se("relu", "sigmoid"), ref_se("relu", "sigmoid"), ins, dtype=torch.bfloat16,
                 param_dtype=torch.float32, names=NAMES)


@pytest.mark.gpu
@pytest.mark.parametrize("shape,rd,channels_last", [((64, 256, 56, 56), 16, True), ((8, 1024, 14, 14), 64, False),
                                                    ((128, 1024, 14, 14), 64, False), ((64, 2048, 7, 7), 128, True)])
def test_gpu_fitted_plans(shape, rd, channels_last, monkeypatch):
    """The launch plans a GPU run takes at SE-ResNet-50's stage shapes: fitted to the compiled kernels'
    occupancy (_split.fit_occupancy: measured without error; the register-capped bf16 forward fits two
    programs per SM), NCHW rows told aligned (ROW_ALIGN 4 at bf16 14×14), bf16 x and fp32 weights against
    float64, the split schedule's error flag checked, the grid within half of what the GPU holds."""
    monkeypatch.setenv("ATTN_KERNELS_SE_CHECK", "1")
    monkeypatch.setattr(_split, "_FITTED", {})  # measure here, whatever ran before
    fits, occupancies, errors, launches = [], [], [], []
    fit, occupancy, launch = _split.fit_occupancy, _split._occupancy, S._launch

    def measured(kernel, like, cfg, prepared):
        try:
            occupancies.append((kernel.__name__, occupancy(kernel, like, cfg, prepared)))
        except Exception as exc:  # fit_occupancy would swallow it: record it for the assertion below
            errors.append(repr(exc))
            raise
        return occupancies[-1][1]
    monkeypatch.setattr(_split, "_occupancy", measured)
    monkeypatch.setattr(S, "_fit_occupancy", lambda *a: fits.append(fit(*a)) or fits[-1])
    monkeypatch.setattr(S, "_launch", lambda kernel, *a: launches.append((kernel.__name__, a[5])) or launch(kernel, *a))
    view = LAYOUTS["channels_last"] if channels_last else None
    _run_parity(shape, rd, torch.bfloat16, act="relu", param_dtype=torch.float32, device="cuda", view=view)
    assert not errors and fits and occupancies
    fwd_occ = [o for name, o in occupancies if name == "_se_fwd_kernel"]
    assert fwd_occ and fwd_occ[0] >= 2, occupancies  # 128 registers x 256 threads: two per SM
    fwd_meta = [meta for name, meta in launches if name == "_se_fwd_kernel"]
    assert fwd_meta and fwd_meta[0].get("maxnreg") == 128
    if not channels_last and shape[2:] == (14, 14):
        assert all(meta["ROW_ALIGN"] == 4 and meta["PREFETCH"] == 0 for _, meta in launches)
    props = torch.cuda.get_device_properties(0)
    for cfg in fits:
        programs = -(-shape[0] // cfg["GROUP"]) * cfg["P"]
        most = props.multi_processor_count * max(o for _, o in occupancies) // 2
        assert not cfg["MULTI"] or programs <= most, (cfg, occupancies)


@pytest.mark.gpu
@pytest.mark.parametrize("schedule", ["single", "multi"])
def test_gpu_cuda_graph_capture(schedule, monkeypatch):
    monkeypatch.setenv("ATTN_KERNELS_SE_SCHEDULE", schedule)
    x, w1, b1, w2, b2 = [t.detach() for t in se_inputs((2, 512, 14, 14), 32, device="cuda")]
    static_x = x.clone()
    functional.se(static_x, w1, b1, w2, b2, backend="triton")  # compile outside capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = functional.se(static_x, w1, b1, w2, b2, backend="triton")
    for _ in range(3):  # replays reuse the counters: they must come back clean each time
        static_x.copy_(torch.randn_like(static_x))
        graph.replay()
        torch.cuda.synchronize()
        assert_close(y, reference.se(static_x, w1, b1, w2, b2))


@pytest.mark.parametrize("ese,layout,residual", [(False, "nchw", False), (False, "channels_last", True),
                                                 (False, "nchw", True), (True, "channels_last", False)])
def test_split_partition_emulated(ese, layout, residual, device, monkeypatch):
    """Schedule (b)'s per-sample channel partition under the interpreter (program (n, j) on a channel
    slice: its part of W1 p / W2ᵀ dz published as a row, the rows summed by every program, the
    logits and scaling of its slice): P = 3 programs per sample, launched twice on the same scratch
    instead of the GPU-only counter meeting (ops/_split.launch)."""
    torch.manual_seed(1)
    c = 520  # 3 BLOCK_C tiles (256, 256, 8) per sample in either layout at HW = 9
    x = torch.randn(3, c, 3, 3, device=device)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    _, w1, b1, w2, b2 = [None if t is None else t.detach() for t in se_inputs(x.shape, 5, ese=ese, device=device)]
    sc = torch.randn(x.shape, device=device) if residual else None
    cfg = S.launch_config(3, c, c if ese else 5, 9, x.stride(1), x.device)
    assert triton.cdiv(c, cfg["BLOCK_C"]) >= 3 and _split.emulate_split(cfg, c, 3)["P"] == 3
    kw = dict(shortcut=sc, out_act="silu" if residual else "identity")
    if residual:  # also with programs serving 2 samples (3 samples: a ragged last group)
        _forced_group(monkeypatch, 2)
    y1, p1, u1, z1 = S.se_forward(x, w1, b1, w2, b2, "gelu", "sigmoid", **kw)
    y3, p3, u3, z3 = S.se_forward(x, w1, b1, w2, b2, "gelu", "sigmoid", _split=3, **kw)
    for a, b, name in ((y3, y1, "y"), (p3, p1, "pooled"), (u3, u1, "u"), (z3, z1, "z")):
        assert_close(a, b, name=name)
    gy = torch.randn_like(x)
    g1 = S.se_backward(gy, x, w1, w2, p1, u1, z1, "gelu", "sigmoid", **kw)
    g3 = S.se_backward(gy, x, w1, w2, p1, u1, z1, "gelu", "sigmoid", _split=3, **kw)
    for a, b, name in zip(g3, g1, ("grad_x", "grad_shortcut", "grad_w1", "grad_b1", "grad_w2", "grad_b2")):
        assert_close(a, b, name=name)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") != "1", reason="interpreter only: programs run in order")
def test_multi_schedule_timeout_is_loud(monkeypatch):
    """Schedule (b)'s MULTI=1 code (counter, bounded wait, error flag, NaN poison) under the interpreter.
    Programs run one after another here, so with a 3-iteration wait programs 0 .. P-2 of each sample
    time out (their peers have not arrived) and program P-1 finds all arrivals: the early slices must
    come back NaN, the last slice exact, the flag set, and ATTN_KERNELS_SE_CHECK=1 must raise."""
    x = torch.randn(2, 520, 3, 3)
    w1, b1, w2, b2 = torch.randn(5, 520) / 20, torch.rand(5), torch.randn(520, 5) / 2, torch.randn(520)
    gy = torch.randn_like(x)
    y1, p1, u1, z1 = S.se_forward(x, w1, b1, w2, b2, "relu", "sigmoid")  # schedule (a): the expected values
    gx1 = S.se_backward(gy, x, w1, w2, p1, u1, z1, "relu", "sigmoid")[0]
    cfg = dict(_split.emulate_split(S.launch_config(2, 520, 5, 9, 9, x.device), 520, 3), MULTI=1)
    assert cfg["P"] == 3
    monkeypatch.setattr(S, "launch_config", lambda *a, **k: dict(cfg))
    syncs = short_spin_split(monkeypatch)
    last = (cfg["P"] - 1) * cfg["chan_per_prog"]  # first channel of program P-1
    y, _, _, z = S.se_forward(x, w1, b1, w2, b2, "relu", "sigmoid")
    assert syncs[-1].tolist() == [3, 3, 1]  # every program arrived; the error flag is set
    assert torch.isnan(y[:, :last]).all() and torch.isnan(z[:, :last]).all()
    assert_close(y[:, last:], y1[:, last:], name="y of the last program")
    gx = S.se_backward(gy, x, w1, w2, p1, u1, z1, "relu", "sigmoid")[0]
    assert syncs[-1].tolist() == [3, 3, 1]
    assert torch.isnan(gx[:, :last]).all()
    assert_close(gx[:, last:], gx1[:, last:], name="grad_x of the last program")
    monkeypatch.setenv("ATTN_KERNELS_SE_CHECK", "1")
    with pytest.raises(RuntimeError, match="timed out"):
        S.se_forward(x, w1, b1, w2, b2, "relu", "sigmoid")


# ---------------------------------------------------------------------------------------------
# RESIDENT plans (opt-in: ATTN_KERNELS_SE_TUNE=RESIDENT=1): a tile held in registers, every input read once
# ---------------------------------------------------------------------------------------------
def test_resident_plan(monkeypatch):
    """_resident_plan on a 132-SM GPU and off it: the whole map in BLOCK_HW, 8192-element tiles, P ≤ 32
    programs per sample meeting (MULTI on the GPU), GROUP 1; None (the streaming plan) where a tile cannot
    hold the map, P would pass 32, or the schedule is forced single; never for a caller without resident=True."""
    monkeypatch.setenv("ATTN_KERNELS_SE_TUNE", "RESIDENT=1")
    sizes = dict(x_bytes=1024 * 196 * 2, w_bytes=2 * 64 * 1024 * 4)

    def plan(n, c, k, hw, sms=132, mode="auto", resident=True, tune="RESIDENT=1"):
        return S._launch_config(n, c, k, hw, True, mode, sms, **sizes, tune_text=tune, resident=resident)
    keys = ("BLOCK_C", "BLOCK_HW", "P", "chan_per_prog", "MULTI", "GROUP", "num_warps")
    assert [plan(128, 1024, 64, 196)[k] for k in keys] == [32, 256, 32, 32, 1, 1, 8]
    assert [plan(64, 2048, 128, 49)[k] for k in keys] == [128, 64, 16, 128, 1, 1, 8]
    assert [plan(64, 2048, 128, 49, sms=0)[k] for k in keys] == [128, 64, 16, 128, 0, 1, 8]  # emulated off GPU
    assert [plan(8, 60, 4, 9)[k] for k in keys] == [64, 16, 1, 64, 0, 1, 4]  # one program per sample
    assert plan(2, 5, 4, 9000).get("RESIDENT") is None  # next_pow2(HW) > 8192: streaming
    assert plan(64, 512, 32, 784).get("RESIDENT") is None  # P = 64 > RESIDENT_MAX_P
    assert plan(64, 1024, 64, 196, tune="RESIDENT=1,BLOCK_C=64")["P"] == 16  # twice the tile: allowed
    assert plan(64, 256, 16, 3136, tune="RESIDENT=1,BLOCK_C=64").get("RESIDENT") is None  # 64×4096: spills
    assert plan(4, 0, 1, 9).get("RESIDENT") is None  # C = 0: no programs
    forced = plan(64, 512, 32, 784, tune="RESIDENT=1,BLOCK_C=16")
    assert forced["RESIDENT"] == 1 and forced["P"] == 32 and forced["BLOCK_HW"] == 1024
    assert plan(64, 2048, 128, 49, mode="single").get("RESIDENT") is None
    assert plan(64, 2048, 128, 49, resident=False).get("RESIDENT") is None
    assert plan(64, 2048, 128, 49, tune="RESIDENT=0").get("RESIDENT") is None
    for bad in ("RESIDENT=2", "RESIDENT=x"):
        with pytest.raises(ValueError, match="ATTN_KERNELS_SE_TUNE"):
            _split._parse_tune(bad)


def _record_launches(monkeypatch):
    """[(kernel name, cfg, meta)] of every launch the full path makes (replays off: each call plans)."""
    monkeypatch.setattr(_layout, "REPLAY", False)
    launches = []
    launch = S._launch
    monkeypatch.setattr(S, "_launch", lambda kernel, *a: launches.append((kernel.__name__, a[3], a[5])) or
                        launch(kernel, *a))
    return launches


@pytest.mark.parametrize("case", ["nchw", "channels_last", "split", "split_cl_residual", "ese_hardsigmoid",
                                  "3d", "1d", "bf16"])
def test_resident_parity(case, device, monkeypatch):
    """The RESIDENT forward and backward against float64: output and every gradient, NaN-prefilled.
    "split": BLOCK_C forced small, so a sample takes P ≥ 2 programs (their meeting emulated off the GPU,
    MULTI on it); the launches are checked to be resident."""
    tune = "RESIDENT=1,BLOCK_C=4" if case.startswith("split") else "RESIDENT=1"
    monkeypatch.setenv("ATTN_KERNELS_SE_TUNE", tune)
    launches = _record_launches(monkeypatch)
    torch.manual_seed(3)
    if case == "split_cl_residual":
        x, w1, b1, w2, b2 = se_inputs((3, 13, 3, 5), 3, device=device)
        x = x.detach().to(memory_format=torch.channels_last).requires_grad_()
        sc = torch.randn(3, 13, 3, 5, device=device).requires_grad_()
        check_parity(lambda *a: functional.se_residual(*a, act="silu", out_act="relu", backend="triton"),
                     lambda *a: reference.se_residual(*a, act="silu", out_act="relu"),
                     [x, sc, w1, b1, w2, b2], dtype=torch.float32, names=RES_NAMES)
    elif case == "ese_hardsigmoid":
        _run_parity((2, 11, 4, 4), 3, torch.float32, gate="hardsigmoid", ese=True, device=device)
    else:
        shape = {"3d": (2, 7, 3, 2, 3), "1d": (3, 10, 17)}.get(case, (2, 13, 3, 5))
        view = LAYOUTS["channels_last"] if case == "channels_last" else None
        dtype = torch.bfloat16 if case == "bf16" else torch.float32
        _run_parity(shape, 3, dtype, act="gelu", device=device, view=view)
    for kernel in ("_se_fwd_kernel", "_se_bwd_kernel"):
        ran = [(cfg, meta) for name, cfg, meta in launches if name == kernel]
        assert ran and all(meta["RESIDENT"] == 1 and cfg["GROUP"] == 1 for cfg, meta in ran), kernel
        assert all(cfg["P"] >= 3 for cfg, _ in ran) == case.startswith("split")  # 13 channels in tiles of 4


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") != "1", reason="interpreter only: programs run in order")
def test_resident_multi_tickets(monkeypatch):
    """The RESIDENT kernels' MULTI=1 code (tickets, meeting, poison) under the interpreter, where programs
    start in order: each takes the next ticket (the counter after the error flag ends at N·P), and with a
    3-iteration wait the programs before the last of each sample time out: their slices NaN, the last
    slice exact, the flag set -- forward and backward."""
    monkeypatch.setenv("ATTN_KERNELS_SE_TUNE", "RESIDENT=1,BLOCK_C=4")
    x = torch.randn(2, 11, 3, 3)
    w1, b1, w2, b2 = torch.randn(3, 11) / 4, torch.rand(3), torch.randn(11, 3) / 2, torch.randn(11)
    gy = torch.randn_like(x)
    y1, p1, u1, z1 = S.se_forward(x, w1, b1, w2, b2, "relu", "sigmoid")  # emulated meeting: the expected values
    gx1 = S.se_backward(gy, x, w1, w2, p1, u1, z1, "relu", "sigmoid")[0]
    cfg = dict(S.launch_config(2, 11, 3, 9, 9, x.device, resident=True), MULTI=1)
    assert cfg["RESIDENT"] == 1 and cfg["P"] == 3 and cfg["chan_per_prog"] == 4
    monkeypatch.setattr(S, "launch_config", lambda *a, **k: dict(cfg))
    syncs = short_spin_split(monkeypatch)
    y = S.se_forward(x, w1, b1, w2, b2, "relu", "sigmoid")[0]
    assert syncs[-1].tolist() == [3, 3, 1, 6]  # arrivals per sample, the error flag, tickets taken
    assert torch.isnan(y[:, :8]).all()
    assert_close(y[:, 8:], y1[:, 8:], name="y of the last program")
    gx = S.se_backward(gy, x, w1, w2, p1, u1, z1, "relu", "sigmoid")[0]
    assert syncs[-1].tolist() == [3, 3, 1, 6]
    assert torch.isnan(gx[:, :8]).all()
    assert_close(gx[:, 8:], gx1[:, 8:], name="grad_x of the last program")


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") != "1", reason="interpreter only: programs run in order")
def test_replayed_multi_launch_checks_its_error_flag(monkeypatch):
    """Schedule (b) with sample groups (GROUP=2, MULTI=1, a 3-iteration wait: the meeting times out): the
    error flag sits after the groups' counters; with ATTN_KERNELS_SE_CHECK=1 the full path and the replayed
    call both raise, forward and backward (a replay once sized and read the buffer by samples: no error)."""
    monkeypatch.setenv("ATTN_KERNELS_SE_TUNE", "GROUP=2,BLOCK_C=4")
    S.clear_plans()
    syncs = short_spin_split(monkeypatch, S, split=2, cfg_name="launch_config")
    torch.manual_seed(0)
    x = torch.randn(4, 16, 3, 3)
    w1, b1, w2, b2 = torch.randn(4, 16), torch.randn(4), torch.randn(16, 4), torch.randn(16)
    aux = S.se_forward(x, w1, b1, w2, b2, "relu", "sigmoid")[1:]  # records (the check off)
    S.se_backward(torch.randn_like(x), x, w1, w2, *aux, "relu", "sigmoid")
    assert syncs[-1].tolist()[:3] == [2, 2, 1]  # 2 groups of 2 samples: arrivals per group, the error flag
    monkeypatch.setenv("ATTN_KERNELS_SE_CHECK", "1")
    count = [0]
    replay = S._replay
    monkeypatch.setattr(S, "_replay", lambda *a: count.__setitem__(0, count[0] + 1) or replay(*a))
    with pytest.raises(RuntimeError, match="multi-program wait timed out"):
        S.se_forward(x, w1, b1, w2, b2, "relu", "sigmoid")
    with pytest.raises(RuntimeError, match="multi-program wait timed out"):
        S.se_backward(torch.randn_like(x), x, w1, w2, *aux, "relu", "sigmoid")
    assert count[0] == 2 and syncs[-1].numel() == 3  # replayed, on a (groups + 1) buffer


@pytest.mark.gpu
@pytest.mark.parametrize("shape,rd,channels_last", [((128, 1024, 14, 14), 64, True), ((64, 2048, 7, 7), 128, False),
                                                    ((3, 517, 9, 9), 33, True), ((2, 40, 5, 5), 4, False)])
def test_gpu_resident(shape, rd, channels_last, monkeypatch):
    """RESIDENT=1 on the GPU, forward and backward: tickets and the meeting with grids far past what the GPU
    holds at once (128 × 32 programs), bf16 x with fp32 weights against float64, the error flag checked."""
    monkeypatch.setenv("ATTN_KERNELS_SE_TUNE", "RESIDENT=1")
    monkeypatch.setenv("ATTN_KERNELS_SE_CHECK", "1")
    launches = _record_launches(monkeypatch)
    view = LAYOUTS["channels_last"] if channels_last else None
    _run_parity(shape, rd, torch.bfloat16, act="relu", param_dtype=torch.float32, device="cuda", view=view)
    ran = [(name, cfg) for name, cfg, _ in launches if name in ("_se_fwd_kernel", "_se_bwd_kernel")]
    assert {name for name, _ in ran} == {"_se_fwd_kernel", "_se_bwd_kernel"}
    assert all(cfg["RESIDENT"] == 1 and cfg["MULTI"] == (cfg["P"] > 1) for _, cfg in ran)


def test_strided_params_and_mixed_param_dtypes(device):
    """Parameter views (strided bias, transposed weight) and weights of different float dtypes:
    every gradient comes back in its parameter's dtype."""
    x = torch.randn(2, 6, 3, 3, device=device)
    w1 = torch.randn(6, 2, device=device).t().to(torch.float16).requires_grad_()  # (2, 6) transposed view
    b1 = torch.randn(4, device=device, dtype=torch.float64)[::2].requires_grad_()
    w2 = torch.randn(6, 2, device=device).requires_grad_()
    b2 = torch.randn(12, device=device, dtype=torch.bfloat16)[::2].requires_grad_()
    y = functional.se(x, w1, b1, w2, b2, "silu", backend="triton")
    ps = [w1, b1, w2, b2]
    g = torch.randn_like(y)
    fused_g = torch.autograd.grad(y, ps, g)
    ref_ps = [t.detach().double().requires_grad_() for t in ps]
    y_ref = reference.se(x.double(), *ref_ps, "silu")
    ref_g = torch.autograd.grad(y_ref, ref_ps, g.double())
    assert_close(y, y_ref.float(), atol=1e-5, rtol=1e-5)
    for a, b, p in zip(fused_g, ref_g, ps):
        assert a.dtype == p.dtype and a.shape == p.shape
        atol, rtol = tolerances(torch.float32 if p.dtype == torch.float64 else p.dtype)  # x is fp32
        assert_close(a, b, atol=atol, rtol=rtol, name=f"grad in {p.dtype}")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_tensors_on_a_non_current_gpu():
    """Triton launches on the current device: the launchers switch to x's device (ops/_layout.device_of)."""
    x = torch.randn(2, 24, 5, 5, device="cuda:1", requires_grad=True)
    params = [p.to("cuda:1").requires_grad_() for p in (torch.randn(4, 24), torch.randn(4), torch.randn(24, 4),
                                                          torch.randn(24))]
    with torch.cuda.device(0):
        y = S.se(x, *params)
        y.backward(torch.randn_like(y))
    expected = reference.se(x.detach().double(), *(p.detach().double() for p in params))
    assert_close(y.double(), expected, atol=1e-4, rtol=1e-4)
    assert x.grad is not None and x.grad.device == x.device


def test_launch_plans_memoised_per_call_signature(monkeypatch):
    """se_forward / se_backward plan once per call signature (host time per call); anything the plan or
    the compiled kernel depends on is in the key: a different shortcut dtype, stride or flag plans anew,
    and replacing launch_config re-plans."""
    monkeypatch.setattr(S, "_launch", lambda *a, **k: None)  # planning only
    monkeypatch.setattr(_layout, "REPLAY", False)  # (a replay would skip the plan: test_replays)
    S.clear_plans()
    x = torch.randn(2, 8, 3, 3, dtype=torch.bfloat16)
    w1, b1, w2, b2 = torch.randn(2, 8), torch.randn(2), torch.randn(8, 2), torch.randn(8)
    for sc in (x, x, x.float(), x.to(memory_format=torch.channels_last)):
        S.se_forward(x, w1, b1, w2, b2, "relu", "sigmoid", shortcut=sc, out_act="relu")
    assert len(S._PLANS) == 3  # the repeat was a hit; dtype and strides are part of the key
    S.se_forward(x, w1, None, w2, b2, "relu", "sigmoid")
    S.se_forward(x, w1, None, w2, b2, "relu", "hardsigmoid")
    assert len(S._PLANS) == 5
    _forced_group(monkeypatch, 2)  # a replaced planner: planned again, and its plan is the one used
    groups = []
    monkeypatch.setattr(S, "_hidden_parts", lambda g, *a: groups.append(g) or torch.empty(1, 2))
    S.se_forward(x, w1, None, w2, b2, "relu", "sigmoid")
    assert len(S._PLANS) == 6 and groups == [1]  # 2 samples in one group of 2
    S.clear_plans()
    assert not S._PLANS



@pytest.mark.parametrize("n,c,r,act,w_dtype", [
    (19, 37, 33, "gelu", torch.float32),  # N past BLOCK_N, C and R past a 32-wide tile, none a multiple
    (3, 5, 1, "silu", torch.bfloat16),  # C/r = 1 hidden unit
    (9, 40, 0, "relu", torch.float16),  # eSE: grad_w2 = dzᵀ p (C, C)
    (0, 7, 2, "hardswish", torch.float32),  # N = 0: every gradient zero
    (4, 33, 2, "identity", torch.float64),  # fp64 accumulation
])
def test_param_grads_kernel_against_float64(device, n, c, r, act, w_dtype):
    """_se_param_grads_kernel (the backward's batch reduction) against the float64 formulas, outputs
    NaN-prefilled (the suite's ATTN_KERNELS_NAN_FILL): weight grads in the weights' dtype, bias grads in
    the accumulation dtype; bit-identical when run twice (fixed reduction order)."""
    acc = torch.float64 if w_dtype == torch.float64 else torch.float32
    dz, pooled = torch.randn(n, c, dtype=acc, device=device), torch.randn(n, c, dtype=acc, device=device)
    du, u = torch.randn(n, max(r, 1), dtype=acc, device=device), torch.randn(n, max(r, 1), dtype=acc, device=device)
    w1 = torch.randn(r, c, device=device).to(w_dtype) if r else None
    w2 = torch.randn(c, r if r else c, device=device).to(w_dtype)
    (gw1, gb1, gw2, gb2), _ = S._param_grads(w1, w2, act, pooled, u, dz, du)
    d = lambda t: t.double()  # noqa: E731
    h = reference.apply_act(d(u), act) if r else d(pooled)
    tol = dict(atol=1e-5 * max(n, 1), rtol=1e-5) if w_dtype in (torch.float32, torch.float64) else {}
    assert gw2.dtype == w_dtype and gb2.dtype == acc and gw2.shape == w2.shape
    assert_close(gw2, (d(dz).t() @ h).to(w_dtype).double() if w_dtype != acc else d(dz).t() @ h, name="grad_w2", **tol)
    assert_close(gb2, d(dz).sum(0), name="grad_b2", **tol)
    if r:
        assert gw1.dtype == w_dtype and gb1.dtype == acc and gw1.shape == w1.shape
        assert_close(gw1, d(du).t() @ d(pooled), name="grad_w1", **tol)
        assert_close(gb1, d(du).sum(0), name="grad_b1", **tol)
    else:
        assert gw1.numel() == 0 and gb1.numel() == 0
    again, _ = S._param_grads(w1, w2, act, pooled, u, dz, du)
    for a, b in zip((gw1, gb1, gw2, gb2), again):
        assert torch.equal(a, b) or (a.numel() == 0 and b.numel() == 0)


def test_backward_launches(monkeypatch, device):
    """A backward is two launches: the grad_x kernel and the weight-gradient reduction (no torch GEMMs,
    sums or casts after it -- what the benchmark's launches-per-call column counts on a GPU)."""
    launched = []

    class Counting:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            launched.append(self.kernel.fn.__name__)
            return self.kernel[grid]

        def __getattr__(self, name):  # warmup etc. (the occupancy fit on a GPU): the kernel's own
            return getattr(self.kernel, name)

    for name in ("_se_bwd_kernel", "_se_param_grads_kernel"):
        monkeypatch.setattr(S, name, Counting(getattr(S, name)))
    x, w1, b1, w2, b2 = se_inputs((2, 6, 3, 3), 2, device=device)
    y = functional.se(x, w1, b1, w2, b2, backend="triton")
    with torch.profiler.profile() as prof:
        y.backward(torch.randn_like(y))
    assert launched == ["_se_bwd_kernel", "_se_param_grads_kernel"]
    ops = {e.name for e in prof.events()}
    assert not ops & {"aten::mm", "aten::sum", "aten::relu", "aten::_to_copy"}, ops
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (x, w1, b1, w2, b2))
