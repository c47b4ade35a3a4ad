"""Triton ECA / CECA / eca_residual (attn_kernels/ops/eca.py) vs the reference.

Runs on the GPU when there is one, else on CPU tensors under TRITON_INTERPRET=1 (tiny shapes).
check_parity holds the output and every gradient (x, weight, shortcut) to 2 × eager's error against
float64, on NaN-prefilled outputs. Channel-tile cases force several tiles so halos cross tiles.
"""
import pytest
import torch

import attn_kernels as ak
from attn_kernels import functional, reference
from attn_kernels.modules import FusedECA
from attn_kernels.ops import eca as E
from tests.helpers import assert_close, check_parity, gradcheck

pytestmark = pytest.mark.triton

NAMES = {0: "x", 1: "weight"}
RES_NAMES = {0: "x", 1: "shortcut", 2: "weight"}


def fused(circular):
    return lambda x, w: functional.eca(x, w, circular, backend="triton")


def eager(circular):
    return lambda x, w: reference.eca(x, w, circular)


def inputs(shape, k, device, conv_layout=False):
    x = torch.randn(shape, device=device).requires_grad_()
    w = torch.randn((1, 1, k) if conv_layout else (k,), device=device).requires_grad_()
    return [x, w]


@pytest.mark.parametrize("circular", [False, True])
@pytest.mark.parametrize("k", [1, 3, 5, 9])
@pytest.mark.parametrize("shape", [(2, 13, 3, 4), (1, 3, 2, 2)], ids=str)  # C prime; k > C for C = 3
def test_parity_fp32(shape, k, circular, device):
    check_parity(fused(circular), eager(circular), inputs(shape, k, device), dtype=torch.float32, names=NAMES)


@pytest.mark.parametrize("circular", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_parity_low_precision(dtype, circular, device):
    """x in fp16/bf16 with fp32 taps (a mixed-precision model) and with taps in x's dtype."""
    ins = inputs((2, 19, 3, 3), 5, device, conv_layout=True)
    check_parity(fused(circular), eager(circular), ins, dtype=dtype, param_dtype=torch.float32, names=NAMES)
    check_parity(fused(circular), eager(circular), ins, dtype=dtype, names=NAMES)


@pytest.mark.parametrize("shape", [
    (1, 1, 1, 1),  # C = 1, HW = 1
    (3, 7, 1, 1),  # HW = 1
    (1, 5, 6),  # 1-D spatial, N = 1
    (2, 4, 2, 3, 2),  # 3-D spatial
], ids=str)
@pytest.mark.parametrize("circular", [False, True])
def test_odd_shapes(shape, circular, device):
    check_parity(fused(circular), eager(circular), inputs(shape, 3, device), dtype=torch.float32, names=NAMES)


@pytest.mark.parametrize("channels", [15, 16, 17, 33, 50])
@pytest.mark.parametrize("circular", [False, True])
def test_channel_tiles(channels, circular, device):
    """C just below / at / above the channel tile (16 here: HW large enough to pick the minimum tile)
    and several tiles, so every halo crosses a tile boundary (and wraps, for CECA)."""
    hw = 4096 if device == "cuda" else 2048  # 2048·4 B → slab rule picks BLOCK_C = 16
    cfg = E.settings(channels, hw, 4, 5)
    assert cfg["BLOCK_C"] == min(16, triton_next_pow2(channels))
    assert cfg["RESIDENT"] == 0  # the two-read forward (pool, then scale) runs here
    x = torch.randn(1, channels, hw, device=device).requires_grad_()
    w = torch.randn(5, device=device).requires_grad_()
    check_parity(fused(circular), eager(circular), [x, w], dtype=torch.float32, names=NAMES)


def test_resident_path_chosen_for_small_maps():
    """Small maps keep the tile in registers (x read once in the forward): the shapes above run it."""
    assert E.settings(13, 12, 4, 3)["RESIDENT"] == 1
    assert E.settings(2048, 49, 2, 7)["RESIDENT"] == 1  # ECA-ResNet-50 stage 4
    assert E.settings(256, 56 * 56, 2, 5)["RESIDENT"] == 0


def triton_next_pow2(n):
    return 1 << (n - 1).bit_length()


def test_n_zero(device):
    x = torch.randn(0, 6, 3, 3, device=device, requires_grad=True)
    w = torch.randn(3, device=device, requires_grad=True)
    y = functional.eca(x, w, backend="triton")
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape and torch.equal(w.grad, torch.zeros_like(w))


@pytest.mark.parametrize("circular", [False, True])
def test_channels_last_and_views(circular, device):
    base = torch.randn(4, 12, 5, 6, device=device)
    w = torch.randn(3, device=device, requires_grad=True)
    views = {
        "channels_last": lambda t: t.contiguous(memory_format=torch.channels_last),
        "x[::2]": lambda t: t[::2],
        "crop_h": lambda t: t[:, :, 1:4],  # spatial dims still flatten to one stride
        "permuted_hw": lambda t: t.transpose(2, 3),  # does not flatten: copied to contiguous
        "channel_slice": lambda t: t[:, 1:12:2],
    }
    for name, make in views.items():
        leaf = base.clone().requires_grad_()
        view_in = make(base.clone()).requires_grad_() if name == "channels_last" else make(leaf)
        if name != "channels_last":
            view_in.retain_grad()
            assert not view_in.is_contiguous(), name
        ref_in = make(base).detach().clone().contiguous().requires_grad_()
        y = functional.eca(view_in, w, circular, backend="triton")
        if name == "channels_last":
            assert y.is_contiguous(memory_format=torch.channels_last)
        check_parity(fused(circular), eager(circular), [ref_in, w], dtype=torch.float32, names=NAMES,
                     fused_inputs=[view_in, w.detach().clone().requires_grad_()])


def test_expanded_grad(device):
    """grad_y with stride 0 (from .sum()) runs without a copy."""
    x = torch.randn(2, 6, 3, 3, device=device, requires_grad=True)
    w = torch.randn(3, device=device, requires_grad=True)
    functional.eca(x, w, backend="triton").sum().backward()
    xr, wr = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    reference.eca(xr, wr).sum().backward()
    assert_close(x.grad, xr.grad, name="grad x")
    assert_close(w.grad, wr.grad, atol=1e-4, name="grad w")


def test_inputs_not_modified(device):
    x = torch.randn(2, 6, 3, 3, device=device, requires_grad=True)
    sc = torch.randn_like(x, requires_grad=True)
    w = torch.randn(3, device=device, requires_grad=True)
    before = [t.detach().clone() for t in (x, sc, w)]
    y = functional.eca_residual(x, sc, w, True, "silu", backend="triton")
    y.backward(torch.randn_like(y))
    for t, b in zip((x, sc, w), before):
        assert torch.equal(t.detach(), b)


@pytest.mark.parametrize("out_act", ["relu", "silu", "gelu", "identity"])
@pytest.mark.parametrize("circular", [False, True])
def test_eca_residual_parity(out_act, circular, device):
    x = torch.randn(2, 11, 3, 3, device=device, requires_grad=True)
    sc = torch.randn_like(x, requires_grad=True)
    w = torch.randn(1, 1, 3, device=device, requires_grad=True)
    check_parity(lambda a, b, c: functional.eca_residual(a, b, c, circular, out_act, backend="triton"),
                 lambda a, b, c: reference.eca_residual(a, b, c, circular, out_act), [x, sc, w],
                 dtype=torch.float32, names=RES_NAMES)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_eca_residual_low_precision(dtype, device):
    x = torch.randn(2, 11, 3, 3, device=device, requires_grad=True)
    sc = torch.randn_like(x, requires_grad=True)
    w = torch.randn(3, device=device, requires_grad=True)
    check_parity(lambda a, b, c: functional.eca_residual(a, b, c, False, "relu", backend="triton"),
                 lambda a, b, c: reference.eca_residual(a, b, c, False, "relu"), [x, sc, w],
                 dtype=dtype, names=RES_NAMES)  # shortcut must match x's dtype: all in dtype


def test_eca_residual_channels_last(device):
    x = torch.randn(2, 20, 3, 4, device=device).contiguous(memory_format=torch.channels_last)
    sc = torch.randn(2, 20, 3, 4, device=device)  # different layout from x
    w = torch.randn(5, device=device)
    y = functional.eca_residual(x, sc, w, True, "gelu", backend="triton")
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert_close(y, reference.eca_residual(x, sc, w, True, "gelu"))


@pytest.mark.parametrize("circular", [False, True])
def test_gradcheck(circular, device):
    gradcheck(fused(circular), inputs((1, 3, 2, 1), 3, device), eps=1e-6, atol=1e-6)
    x = torch.randn(1, 3, 1, 2, device=device, requires_grad=True)
    gradcheck(lambda a, b, c: functional.eca_residual(a, b, c, circular, "silu", backend="triton"),
              [x, torch.randn_like(x, requires_grad=True), torch.randn(3, device=device, requires_grad=True)],
              eps=1e-6, atol=1e-6)


def test_opcheck(device):
    x = torch.randn(2, 7, 3, 3, device=device, requires_grad=True)
    sc = torch.randn_like(x, requires_grad=True)
    w = torch.randn(3, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.attn_kernels.eca_fwd.default, (x, None, w, True, "none"))
    torch.library.opcheck(torch.ops.attn_kernels.eca_fwd.default, (x, sc, w, False, "relu"))
    y, pooled, s = E.eca_forward(x.detach(), None, w.detach(), True)
    torch.library.opcheck(torch.ops.attn_kernels.eca_bwd.default,
                          (torch.randn_like(y), x.detach(), None, w.detach(), pooled, s, True, "none"),
                          test_utils=("test_schema", "test_faketensor"))


def test_fused_module_state_dict_and_compile(device):
    ref = reference.ECA(24, circular=True).to(device)
    mod = FusedECA(24, circular=True, backend="triton").to(device)
    mod.load_state_dict(ref.state_dict())
    ref.load_state_dict(mod.state_dict())
    assert set(mod.state_dict()) == set(ref.state_dict()) == {"conv.weight"}
    x = torch.randn(2, 24, 3, 3, device=device)
    assert_close(mod(x), ref(x))
    compiled = torch.compile(mod, fullgraph=True, backend="aot_eager" if device == "cpu" else "inductor")
    xg = x.clone().requires_grad_()
    y = compiled(xg)
    y.sum().backward()
    xr = x.clone().requires_grad_()
    ref(xr).sum().backward()
    assert_close(y, ref(x))
    assert_close(xg.grad, xr.grad)
    assert_close(mod.conv.weight.grad, ref.conv.weight.grad, atol=1e-4)


def test_autocast_keeps_x_dtype(device):
    x = torch.randn(2, 6, 3, 3, device=device)
    w = torch.randn(3, device=device)
    with torch.autocast(device, dtype=torch.bfloat16):
        y = functional.eca(x, w, backend="triton")
        yr = reference.eca(x, w)
    assert y.dtype == yr.dtype == torch.float32


def test_backend_dispatch(device):
    x = torch.randn(1, 4, 2, 2, device=device)
    w = torch.randn(3, device=device)
    with ak.use_backend("triton"):
        assert_close(functional.eca(x, w), reference.eca(x, w))
    with pytest.raises(ValueError, match="odd"):
        functional.eca(x, torch.randn(4, device=device), backend="triton")
    with pytest.raises(TypeError, match="dtype"):
        E.eca_forward(torch.zeros(1, 4, 2, 2, dtype=torch.int32, device=device), None, w, False)


class _Counter:
    def __init__(self, kernel):
        self.kernel, self.calls = kernel, 0

    def __getitem__(self, grid):
        self.calls += 1
        return self.kernel[grid]


def test_single_launch_each_way(device, monkeypatch):
    """Forward: 1 Triton launch over (sample, channel tile); backward: 1 (plus the taps' partial sum)."""
    fwd, bwd = _Counter(E._eca_fwd_kernel), _Counter(E._eca_bwd_kernel)
    monkeypatch.setattr(E, "_eca_fwd_kernel", fwd)
    monkeypatch.setattr(E, "_eca_bwd_kernel", bwd)
    x = torch.randn(2, 40, 3, 3, device=device, requires_grad=True)  # 40 channels: several tiles
    w = torch.randn(5, device=device, requires_grad=True)
    y = functional.eca(x, w, True, backend="triton")
    assert (fwd.calls, bwd.calls) == (1, 0)
    y.sum().backward()
    assert (fwd.calls, bwd.calls) == (1, 1)


@pytest.mark.parametrize("circular", [False, True])
def test_eca_residual_two_read_path(circular, device):
    """A map too big for the register-resident tile: the forward/backward re-read (L2) path, 2 tiles."""
    hw = 2048
    assert E.settings(20, hw, 4, 3)["RESIDENT"] == 0
    x = torch.randn(1, 20, hw, device=device, requires_grad=True)
    sc = torch.randn_like(x, requires_grad=True)
    w = torch.randn(3, device=device, requires_grad=True)
    check_parity(lambda a, b, c: functional.eca_residual(a, b, c, circular, "silu", backend="triton"),
                 lambda a, b, c: reference.eca_residual(a, b, c, circular, "silu"), [x, sc, w],
                 dtype=torch.float32, names=RES_NAMES)


def test_stream_plan():
    """NUM_STAGES / ROW_ALIGN of the streaming loops (_stream_plan): pipelined where the rows are aligned,
    NCHW rows told aligned to the largest power of two dividing HW and every stride (bf16 14x14: 4),
    channels_last by its 16-byte pitch; RESIDENT tiles (one iteration) not pipelined."""
    bf16, fp32 = 2, 4  # element sizes
    cfg = E.settings(1024, 196, 2, 5)
    assert cfg["RESIDENT"] == 0
    assert E._stream_plan(cfg, bf16, 196, [(1024 * 196, 196, 1)], 1) == dict(NUM_STAGES=3, ROW_ALIGN=4)
    assert E._stream_plan(cfg, bf16, 196, [(1024 * 196, 1, 1024)], 1) == dict(NUM_STAGES=3, ROW_ALIGN=1)  # CL
    assert E._stream_plan(cfg, bf16, 196, [(20 * 196, 1, 20)], 1)["NUM_STAGES"] == 1  # 40-byte CL rows
    assert E._stream_plan(cfg, bf16, 196, [(1024 * 196, 196, 1), (136, 17, 1)], 2) == dict(NUM_STAGES=1,
                                                                                           ROW_ALIGN=1)
    # fp32: 4-byte copies, two 32 KB stages
    assert E._stream_plan(cfg, fp32, 196, [(1024 * 196, 196, 1), (136, 17, 1)], 2)["NUM_STAGES"] == 2
    small = E.settings(2048, 49, 2, 7)
    assert small["RESIDENT"] == 1 and E._stream_plan(small, bf16, 49, [(2048 * 49, 1, 2048)], 1)["NUM_STAGES"] == 1
    # what a launch takes: tiles + pipelining from shape, element size, taps and strides, memoised per call signature
    shape, strides = torch.Size((8, 1024, 14, 14)), ((1024 * 196, 196, 1),)
    hw, tiles, width, meta = E._plan(shape, bf16, 5, strides, 1)
    assert (hw, tiles, width) == (196, 1024 // cfg["BLOCK_C"], cfg["BLOCK_C"] + 4)
    assert meta == dict(cfg, NUM_STAGES=3, ROW_ALIGN=4)
    assert E._plan(shape, bf16, 5, strides, 1)[3] is meta
    assert E._plan(shape, bf16, 5, ((1024 * 196, 1, 1024),), 1)[3]["ROW_ALIGN"] == 1  # strides are part of the key


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_row_alignment_parity(dtype, device):
    """The kernels read HW and the strides as multiples of ROW_ALIGN: x aligned but grad_y (row stride 17)
    or x (row stride 18) or eca_residual's shortcut (row stride 17) not, forward and every gradient."""
    x, w = inputs((2, 8, 4, 4), 3, device)
    gy = torch.randn(2 * 8 * 17 + 8, device=device, dtype=dtype).as_strided((2, 8, 4, 4), (136, 17, 4, 1))
    check_parity(fused(False), eager(False), [x, w], dtype=dtype, names=NAMES, grad_out=gy)
    xv = torch.randn(2 * 8 * 18, device=device, dtype=dtype).as_strided((2, 8, 4, 4), (144, 18, 4, 1))
    check_parity(fused(True), eager(True), [xv.detach().clone().requires_grad_(), w], dtype=dtype, names=NAMES,
                 fused_inputs=[xv.requires_grad_(), w.detach().to(dtype).requires_grad_()])
    scv = torch.randn(2 * 8 * 17 + 8, device=device, dtype=dtype).as_strided((2, 8, 4, 4), (136, 17, 4, 1))
    x2 = torch.randn(2, 8, 4, 4, device=device, requires_grad=True)
    check_parity(lambda a, b, c: functional.eca_residual(a, b, c, False, "relu", backend="triton"),
                 lambda a, b, c: reference.eca_residual(a, b, c, False, "relu"),
                 [x2, scv.detach().clone().requires_grad_(), w], dtype=dtype, names=RES_NAMES,
                 fused_inputs=[x2.detach().to(dtype).requires_grad_(), scv.requires_grad_(),
                               w.detach().to(dtype).requires_grad_()])
