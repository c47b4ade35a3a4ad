"""Triton CBAM (attn_kernels/ops/cbam.py) vs reference.cbam: output and gradients of x, w1, w2 and
spatial_weight against float64 (check_parity), launch counts, ties of the max pools, layouts.

Runs on the GPU when there is one, else on CPU tensors under TRITON_INTERPRET=1 (tiny shapes).
"""
import pytest
import torch

from attn_kernels import functional, reference
from attn_kernels.modules import FusedCBAM
from attn_kernels.ops import cbam as CB
from tests.helpers import assert_close, check_parity, gradcheck

pytestmark = pytest.mark.triton

NAMES = {0: "x", 1: "w1", 2: "w2", 3: "spatial_weight"}


def fused(*args):
    return functional.cbam(*args, backend="triton")


def inputs(shape, k=3, rd=2, device="cpu"):
    c = shape[1]
    ks = (k,) * (len(shape) - 2)
    ins = [torch.randn(shape), torch.randn(rd, c) * 0.5, torch.randn(c, rd) * 0.5, torch.randn((1, 2) + ks) * 0.3]
    return [t.to(device).requires_grad_() for t in ins]


@pytest.mark.parametrize("shape,k,rd", [
    ((2, 8, 5, 6), 3, 2),
    ((1, 5, 4, 3), 7, 1),  # kernel wider than the map; C prime
    ((2, 6, 7), 3, 3),  # 1-D spatial (run as D = H = 1)
    ((2, 4, 3, 2, 4), 3, 2),  # 3-D spatial
    ((1, 2, 3, 3, 3), 7, 1),  # 3-D, 2·7³ = 686 taps: several tap chunks of 256
    ((1, 1, 1, 1), 3, 1),  # C = 1, HW = 1
    ((3, 4, 1, 1), 3, 2),  # HW = 1
], ids=str)
def test_parity_fp32(shape, k, rd, device):
    check_parity(fused, reference.cbam, inputs(shape, k, rd, device), dtype=torch.float32, names=NAMES)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_parity_low_precision(dtype, device):
    check_parity(fused, reference.cbam, inputs((2, 6, 4, 5), 3, 2, device), dtype=dtype,
                 param_dtype=torch.float32, names=NAMES)


def test_channels_last_and_views(device):
    base = torch.randn(4, 6, 4, 5, device=device)
    w1, w2, sw = inputs((1, 6, 4, 5), 3, 2, device)[1:]
    for name, view in {"channels_last": base.contiguous(memory_format=torch.channels_last),
                       "x[::2]": base[::2], "permuted_hw": base.transpose(2, 3)}.items():
        view = view.detach().clone() if name != "x[::2]" else base.detach().clone()[::2]
        if name == "channels_last":
            view = view.contiguous(memory_format=torch.channels_last)
        view.requires_grad_()
        dense = view.detach().contiguous().requires_grad_()
        if name == "channels_last":
            assert fused(view, w1, w2, sw).is_contiguous(memory_format=torch.channels_last)
        check_parity(fused, reference.cbam, [dense, w1, w2, sw], dtype=torch.float32, names=NAMES,
                     fused_inputs=[view] + [t.detach().clone().requires_grad_() for t in (w1, w2, sw)])


def test_max_pool_ties_split_evenly(device):
    """Constant channels / pixels: every element ties at both maxes; eager amax splits the gradient
    evenly among ties, and so does the kernel (ties decided on the same fp32 values here)."""
    x = torch.ones(2, 4, 3, 3, dtype=torch.float64, device=device)
    x[1, 2] = 3.0  # a constant channel above the rest: ties within it
    x.requires_grad_()
    w1, w2, sw = (t.detach().double().requires_grad_() for t in inputs((1, 4, 3, 3), 3, 2, device)[1:])
    g = torch.randn_like(x)
    out = fused(x, w1, w2, sw)
    got = torch.autograd.grad(out, [x, w1, w2, sw], g)
    ref = torch.autograd.grad(reference.cbam(x, w1, w2, sw), [x, w1, w2, sw], g)
    for name, a, b in zip(("x", "w1", "w2", "sw"), got, ref):
        assert_close(a, b, name=f"grad {name}")


class _Counter:
    def __init__(self, kernel):
        self.kernel, self.calls = kernel, 0

    def __getitem__(self, grid):
        self.calls += 1
        return self.kernel[grid]


def test_launch_count(device, monkeypatch):
    """1 Triton launch forward, 1 backward (the weight-grad reductions are small torch ops)."""
    fwd, bwd = _Counter(CB._cbam_fwd_kernel), _Counter(CB._cbam_bwd_kernel)
    monkeypatch.setattr(CB, "_cbam_fwd_kernel", fwd)
    monkeypatch.setattr(CB, "_cbam_bwd_kernel", bwd)
    x, w1, w2, sw = inputs((2, 6, 4, 4), 3, 2, device)
    y = fused(x, w1, w2, sw)
    assert (fwd.calls, bwd.calls) == (CB.LAUNCHES["forward"], 0) == (1, 0)
    y.sum().backward()
    assert (fwd.calls, bwd.calls) == (1, CB.LAUNCHES["backward"]) == (1, 1)


def test_gradcheck(device):
    gradcheck(fused, inputs((1, 2, 3), 3, 1, device), eps=1e-6, atol=1e-6)  # 1-D keeps it fast; 2-D in parity


def test_opcheck(device):
    x, w1, w2, sw = (t.detach().requires_grad_() for t in inputs((2, 5, 3, 4), 3, 2, device))
    torch.library.opcheck(torch.ops.attn_kernels.cbam_fwd.default, (x, w1, w2, sw))
    saved = CB.cbam_forward(x.detach(), w1.detach(), w2.detach(), sw.detach())[1:]
    torch.library.opcheck(torch.ops.attn_kernels.cbam_bwd.default,
                          (torch.randn_like(x), x.detach(), w1.detach(), w2.detach(), sw.detach(), *saved),
                          test_utils=("test_schema", "test_faketensor"))


def test_module_n0_and_inputs_unchanged(device):
    ref = reference.CBAM(16, reduction=4, spatial_kernel=5).to(device)
    mod = FusedCBAM(16, reduction=4, spatial_kernel=5, backend="triton").to(device)
    mod.load_state_dict(ref.state_dict())
    x = torch.randn(2, 16, 5, 5, device=device)
    before = x.clone()
    assert_close(mod(x), ref(x))
    assert torch.equal(x, before)
    empty = torch.randn(0, 16, 5, 5, device=device, requires_grad=True)
    out = mod(empty)
    assert out.shape == empty.shape
    out.sum().backward()
    with pytest.raises(ValueError, match="w2"):
        fused(x, mod.mlp[0].weight, mod.mlp[0].weight, mod.spatial.weight)


def test_compile_fullgraph(device):
    ref = reference.CBAM(8, reduction=4, spatial_kernel=3).to(device)
    mod = FusedCBAM(8, reduction=4, spatial_kernel=3, backend="triton").to(device)
    mod.load_state_dict(ref.state_dict())
    compiled = torch.compile(mod, fullgraph=True, backend="aot_eager" if device == "cpu" else "inductor")
    x = torch.randn(2, 8, 3, 4, device=device, requires_grad=True)
    xr = x.detach().clone().requires_grad_()
    y = compiled(x)
    y.sum().backward()
    yr = ref(xr)
    yr.sum().backward()
    assert_close(y, yr)
    assert_close(x.grad, xr.grad)
    assert_close(mod.spatial.weight.grad, ref.spatial.weight.grad, atol=1e-4)
