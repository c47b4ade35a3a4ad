"""Triton DynamicMultiKernelECA and BidirectionalECA (attn_kernels/ops/dynamic_eca.py) vs the reference.

Runs on the GPU when there is one, else on CPU tensors under TRITON_INTERPRET=1 (tiny shapes).
Every test checks the output and the gradient of x and of every parameter against float64
(tests.helpers.check_parity), on NaN-prefilled outputs.
"""
import os

import pytest
import torch

import attn_kernels as ak
from attn_kernels import functional, reference
from attn_kernels.ops import _split
from attn_kernels.ops import dynamic_eca as D
from tests.helpers import assert_close, check_parity, gradcheck, short_spin_split

pytestmark = pytest.mark.triton

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DMK_NAMES = {0: "x", 1: "fc_weight", 2: "fc_bias", 3: "taps3", 4: "taps5", 5: "taps7"}
BI_NAMES = {0: "x", 1: "w_fwd", 2: "w_bwd", 3: "w1", 4: "b1", 5: "w2", 6: "b2"}


def dmk_fused(*args):
    return functional.dmk_eca(*args, backend="triton")


def bi_fused(*args):
    return functional.bi_eca(*args, backend="triton")


def _p(*shape, scale=0.5):
    return (torch.randn(*shape) * scale).requires_grad_()


def dmk_inputs(shape, ks=(3, 5, 7), device="cpu"):
    c = shape[1]
    ins = [torch.randn(shape).requires_grad_(), _p(3, c, scale=1.0), _p(3)] + [_p(1, 1, k) for k in ks]
    return [t.detach().to(device).requires_grad_() for t in ins]


def bi_inputs(shape, kf=3, kb=3, rd=None, device="cpu"):
    c = shape[1]
    rd = max(1, c // 16) if rd is None else rd
    ins = [torch.randn(shape), _p(1, 1, kf), _p(1, 1, kb), torch.randn(rd, c), torch.rand(rd) + 0.5,
           torch.randn(2, rd), torch.randn(2)]  # b1 > 0 keeps some hidden units alive (ReLU)
    return [t.detach().to(device).requires_grad_() for t in ins]


OPS = {
    "dmk": (dmk_fused, reference.dmk_eca, dmk_inputs, DMK_NAMES),
    "bi": (bi_fused, reference.bi_eca, bi_inputs, BI_NAMES),
}
SHAPES = [
    (2, 13, 3, 4),  # C prime
    (1, 1, 1, 1),
    (3, 20, 1, 1),  # HW = 1; BiECA hidden width 20 // 16 = 1
    (1, 6, 5),  # 1-D spatial, N = 1
    (2, 5, 2, 3, 2),  # 3-D spatial
]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_parity_fp32(op, shape, device):
    fused, eager, make, names = OPS[op]
    check_parity(fused, eager, make(shape, device=device), dtype=torch.float32, names=names)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", DTYPES[1:], ids=str)
@pytest.mark.parametrize("shape", [(2, 13, 3, 4), (1, 6, 5)], ids=str)
def test_parity_low_precision(op, dtype, shape, device):
    """x in bf16/fp16, parameters fp32 (an autocast-style mixed model); grads in each input's dtype."""
    fused, eager, make, names = OPS[op]
    check_parity(fused, eager, make(shape, device=device), dtype=dtype, param_dtype=torch.float32, names=names)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("param_dtype", [torch.bfloat16, torch.float16], ids=str)
def test_low_precision_params(op, param_dtype, device):
    """fp32 x with half-precision parameters: params read and upcast in the kernel, grads in their dtype."""
    fused, eager, make, names = OPS[op]
    check_parity(fused, eager, make((2, 9, 2, 3), device=device), dtype=torch.float32, param_dtype=param_dtype,
                 names=names)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(2, 7, 3, 2), (1, 5, 2, 2, 3)], ids=str)
def test_channels_last(op, dtype, shape, device):
    fused, eager, make, names = OPS[op]
    ins = make(shape, device=device)
    fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
    ins[0] = ins[0].detach().to(memory_format=fmt).requires_grad_()
    assert D._flat_strides(ins[0])[1] == 1  # read in place, channels contiguous
    check_parity(fused, eager, ins, dtype=dtype, param_dtype=torch.float32, names=names)
    y = fused(ins[0].detach().to(dtype), *ins[1:])
    assert y.is_contiguous(memory_format=fmt) and y.dtype == dtype


@pytest.mark.parametrize("op", OPS)
def test_broadcast_grad_output(op, device):
    """y.sum().backward() hands the backward an expanded grad_y (all strides 0): read in place."""
    fused, eager, make, _ = OPS[op]
    ins = make((2, 6, 3, 2), device=device)
    grads = torch.autograd.grad(fused(*ins).sum(), ins)
    expected = torch.autograd.grad(eager(*ins).sum(), ins)
    for i, (g, e) in enumerate(zip(grads, expected)):
        assert_close(g, e, name=f"grad input[{i}]", atol=1e-5)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("view", ["batch_step", "spatial_crop", "spatial_transpose"])
def test_non_contiguous_views(op, view, device):
    """Strided views: x[::2] and a crop of the last spatial dim are read in place (they flatten to one
    HW stride); a spatial transpose does not flatten and takes the documented contiguous-copy path."""
    fused, eager, make, names = OPS[op]
    base = make((4, 6, 5, 4), device=device)
    big = base[0].detach()
    take = {"batch_step": lambda t: t[::2], "spatial_crop": lambda t: t[:, :, 1:4, :],
            "spatial_transpose": lambda t: t.transpose(2, 3)}[view]
    x = take(big)
    assert not x.is_contiguous()
    # batch step, and an H crop with W whole, still flatten to one HW stride: no copy
    assert (D._flat_strides(x) is None) == (view == "spatial_transpose")
    params = [t.detach() for t in base[1:]]
    fused_x = big.clone().requires_grad_()
    fused_view = take(fused_x)
    fused_params = [p.clone().requires_grad_() for p in params]
    check_parity(fused, eager, [x.contiguous().requires_grad_()] + [p.clone().requires_grad_() for p in params],
                 dtype=torch.float32, names=names, fused_inputs=[fused_view] + fused_params)
    y = fused(fused_view, *fused_params)
    assert y.shape == fused_view.shape


@pytest.mark.parametrize("op", OPS)
def test_empty_batch(op, device):
    """N = 0: no launch, empty output, zero gradients of every parameter."""
    fused, eager, make, _ = OPS[op]
    ins = make((0, 6, 3, 3), device=device)
    y = fused(*ins)
    assert y.shape == (0, 6, 3, 3)
    grads = torch.autograd.grad(y.sum(), ins, allow_unused=True)
    for g, t in zip(grads, ins):
        assert g is not None and g.shape == t.shape and g.dtype == t.dtype
        assert not g.any()


def test_tile_loops_multi_tile_and_odd_sizes(device, monkeypatch):
    """Shrink the tile budget so every loop (channel tiles, HW tiles, MLP row chunks) runs several
    iterations with ragged tails; also unequal tap lengths (DMK 1/3/9, BiECA 5/3) and a wide hidden."""
    monkeypatch.setattr(D, "_TILE", 64)
    monkeypatch.setattr(D, "_TILE_K", 32)
    monkeypatch.setattr(D, "_MAX_BLOCK_HW", 4)
    assert D._settings(37, 15, 15, 8)["BLOCK_C"] == 4 and D._settings(37, 15, 15, 8)["BLOCK_HW"] == 4
    check_parity(dmk_fused, reference.dmk_eca, dmk_inputs((2, 37, 3, 5), ks=(1, 3, 9), device=device),
                 dtype=torch.float32, names=DMK_NAMES)
    check_parity(bi_fused, reference.bi_eca, bi_inputs((2, 37, 3, 5), kf=5, kb=3, rd=11, device=device),
                 dtype=torch.float32, names=BI_NAMES)
    x = torch.randn(2, 37, 3, 5, device=device).to(memory_format=torch.channels_last).requires_grad_()
    check_parity(bi_fused, reference.bi_eca, [x] + bi_inputs((2, 37, 1), kf=3, kb=7, rd=3, device=device)[1:],
                 dtype=torch.float32, names=BI_NAMES)


def test_optional_biases(device):
    x, w, _, t3, t5, t7 = dmk_inputs((2, 9, 2, 3), device=device)
    check_parity(dmk_fused, reference.dmk_eca, [x, w, None, t3, t5, t7], dtype=torch.float32)
    x, wf, wb, w1, _, w2, _ = bi_inputs((2, 9, 2, 3), rd=2, device=device)
    check_parity(bi_fused, reference.bi_eca, [x, wf, wb, w1, None, w2, None], dtype=torch.float32)


def test_strided_biases(device):
    """Bias views with a non-unit stride (the kernels read biases at unit stride: made contiguous)."""
    x, w, _, t3, t5, t7 = [t.detach() for t in dmk_inputs((2, 9, 2, 3), device=device)]
    fc_b = torch.randn(6, device=device)[::2]
    assert_close(dmk_fused(x, w, fc_b, t3, t5, t7), reference.dmk_eca(x, w, fc_b, t3, t5, t7), name="dmk")
    x, wf, wb, w1, _, w2, _ = [t.detach() for t in bi_inputs((2, 9, 2, 3), rd=2, device=device)]
    b1, b2 = torch.rand(4, device=device)[::2] + 0.5, torch.randn(4, device=device)[::2]
    assert_close(bi_fused(x, wf, wb, w1, b1, w2, b2), reference.bi_eca(x, wf, wb, w1, b1, w2, b2), name="bi")


def _force_bi_group(monkeypatch, group):
    """BiECA's launcher serves ``group`` samples per program, its MLP in FC_R = 2 hidden units per chunk."""
    bi_launch_cfg = D._bi_launch_cfg

    def forced(*a, **k):
        cfg = bi_launch_cfg(*a, **k)
        return dict(cfg, GROUP=group, FC_R=2, FC_C=max(1, min(cfg["BLOCK_C"], 4096 // (group * 2))))
    monkeypatch.setattr(D, "_bi_launch_cfg", forced)


@pytest.mark.parametrize("group", [2, 4, 8])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_bi_sample_groups(group, layout, device, monkeypatch):
    """BiECA programs serving GROUP samples (W1 read once per group, forward and backward): 5 samples, so
    the last group is ragged (for GROUP = 8 the only group), a hidden width of 3 over FC_R = 2 chunks,
    against the float64 reference, output and every grad; also without biases."""
    _force_bi_group(monkeypatch, group)
    seen = []
    launch = D._launch
    monkeypatch.setattr(D, "_launch", lambda kernel, like, n, c, cfg, *a, **k: seen.append((n, cfg["GROUP"]))
                        or launch(kernel, like, n, c, cfg, *a, **k))
    ins = bi_inputs((5, 12, 3, 3), kf=3, kb=5, rd=3, device=device)
    if layout == "channels_last":
        ins[0] = ins[0].detach().to(memory_format=torch.channels_last).requires_grad_()
    check_parity(bi_fused, reference.bi_eca, ins, dtype=torch.float32, names=BI_NAMES)
    assert seen and all(s == (-(-5 // group), group) for s in seen)  # grid over the groups
    ins[4] = ins[6] = None
    check_parity(bi_fused, reference.bi_eca, ins, dtype=torch.float32)


def test_bi_sample_groups_low_precision_and_gradcheck(device, monkeypatch):
    """Two samples per program (3 samples: a ragged group) with bf16 / fp16 x against float64, and the
    float64 kernels (the fp64 accumulation path of the group tiles) through gradcheck."""
    _force_bi_group(monkeypatch, 2)
    ins = bi_inputs((3, 12, 2, 3), kf=3, kb=5, rd=3, device=device)
    for dtype in (torch.bfloat16, torch.float16):
        check_parity(bi_fused, reference.bi_eca, ins, dtype=dtype, param_dtype=torch.float32, names=BI_NAMES)
    gradcheck(bi_fused, bi_inputs((3, 6, 2, 2), rd=3, device=device))


def test_bi_group_choice():
    """GROUP from the byte counts (_split.sample_group): weight-heavy late stages group, early stages do
    not; on a GPU the grid still fills the SMs (_split.group_plan)."""
    def cfg(n, c, hw, sms, dtype=torch.bfloat16):
        x, w1 = torch.empty(1, c, hw, dtype=dtype), torch.empty(c // 16, c)
        monkey = D._device_sms
        try:
            D._device_sms = lambda device: sms
            return D._bi_launch_cfg(n, c, hw, c // 16, hw, 8, x.device, **D._bi_sizes(x, w1))
        finally:
            D._device_sms = monkey
    # 7x7 stage: W1 (1 MB fp32) against 200 KB of bf16 x per sample -> 16 samples per program (CPU)
    assert cfg(64, 2048, 49, 0)["GROUP"] == 16
    # 132 SMs: every GROUP gives 64 programs (half the SMs); the fewest L2 bytes besides x: W1 (1 MB) once
    # per group + each program's P published rows -- 8 groups x 8 programs (GROUP 16 x P 16 reads more rows)
    big = cfg(64, 2048, 49, 132)
    assert big["GROUP"] == 8 and big["P"] == 8 and big["GROUP"] * big["FC_C"] * big["FC_R"] <= D._TILE_K
    assert cfg(1024, 2048, 49, 132)["GROUP"] == 8  # large batch: about one program per SM (schedule (a))
    assert cfg(64, 256, 3136, 132)["GROUP"] == 1  # 56x56 stage: W1 is 1 % of a sample
    assert cfg(1, 2048, 49, 0)["GROUP"] == 1  # one sample: nothing to share


# ---------------------------------------------------------------------------------------------
# The split-sample schedule (ops/_split.py): emulated partition and the MULTI=1 code under the
# interpreter; the real cross-program schedule on a GPU
# ---------------------------------------------------------------------------------------------
def _launchers(op):
    """(forward, backward(grad_y, x, params, saved)) of the op's launchers, over make()'s input list."""
    if op == "dmk":
        return (lambda ins, **kw: D.dmk_eca_forward(*ins, **kw),
                lambda gy, ins, saved, **kw: D.dmk_eca_backward(gy, ins[0], ins[1], *ins[3:], *saved, **kw))
    return (lambda ins, **kw: D.bi_eca_forward(*ins, **kw),
            lambda gy, ins, saved, **kw: D.bi_eca_backward(gy, ins[0], ins[1], ins[2], ins[3], ins[5], *saved, **kw))


_BLOCK_K = {"dmk": 16, "bi": 8}  # the conv windows of _split_inputs: 9 taps (DMK), 5 (BiECA)


def _split_inputs(op, layout, device):
    """37 channels in tiles of BLOCK_C = 2 (DMK: 9-wide window) or 4 (BiECA) with test_tile_loops' shrunken
    tile budget, so a 3-way split gives slices of 14/14/9 or 16/16/5 channels; the slice of 5 is
    narrower than the windows' reach into it from both sides."""
    torch.manual_seed(3)
    fwd_make = {"dmk": lambda: dmk_inputs((3, 37, 3, 5), ks=(1, 3, 9), device=device),
                "bi": lambda: bi_inputs((3, 37, 3, 5), kf=5, kb=3, rd=11, device=device)}[op]
    ins = [t.detach() if t is not None else None for t in fwd_make()]
    if layout == "channels_last":
        ins[0] = ins[0].to(memory_format=torch.channels_last)
    return ins


@pytest.mark.filterwarnings("ignore:overflow encountered")  # the emulation's first launch reads unset scratch
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_split_partition_emulated(op, layout, device, monkeypatch):
    """Schedule (b)'s partition (program (n, j) on a channel slice; blend / MLP recomputed by every
    program from the whole pooled vector; the conv halo read from the peers' slices; the tap and
    blend gradients summed over the P published rows) vs schedule (a), every output and gradient."""
    monkeypatch.setattr(D, "_TILE", 64)
    monkeypatch.setattr(D, "_TILE_K", 32)
    monkeypatch.setattr(D, "_MAX_BLOCK_HW", 4)
    monkeypatch.setenv("ATTN_KERNELS_SE_SCHEDULE", "single")  # on a GPU, auto would pick schedule (b) itself
    ins = _split_inputs(op, layout, device)
    x = ins[0]
    cfg = D._launch_cfg(3, 37, 15, x.stride(1), _BLOCK_K[op], x.device)
    assert cfg["MULTI"] == 0 and cfg["P"] == 1 and _split.emulate_split(cfg, 37, 3)["P"] == 3
    forward, backward = _launchers(op)
    out1 = forward(ins)
    out3 = forward(ins, _split=3)
    for i, (a, b) in enumerate(zip(out3, out1)):
        assert_close(a, b, name=f"forward output {i}")
    gy = torch.randn_like(x)
    g1 = backward(gy, ins, out1[1:])
    g3 = backward(gy, ins, out1[1:], _split=3)
    names = ["grad_x"] + [n for i, n in sorted({**(DMK_NAMES if op == "dmk" else BI_NAMES)}.items()) if i][:len(g1) - 1]
    for a, b, name in zip(g3, g1, names):
        assert_close(a, b, name=name)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") != "1", reason="interpreter only: programs run in order")
@pytest.mark.parametrize("op", OPS)
def test_multi_schedule_timeout_is_loud(op, monkeypatch):
    """The MULTI=1 code (counter, bounded wait, error flag, NaN poison) under the interpreter: programs
    run one after another, so with a 3-iteration wait programs 0 .. P-2 of each sample time out and
    program P-1 finds every arrival. The early slices (and the per-sample outputs program 0 stores)
    must come back NaN, the last slice exact, the flag set; ATTN_KERNELS_SE_CHECK=1 must raise."""
    monkeypatch.setattr(D, "_TILE", 64)
    monkeypatch.setattr(D, "_TILE_K", 32)
    monkeypatch.setattr(D, "_MAX_BLOCK_HW", 4)
    ins = _split_inputs(op, "nchw", "cpu")[:]
    ins[0] = ins[0][:2]
    forward, backward = _launchers(op)
    out1 = forward(ins)  # schedule (a): the expected values
    gy = torch.randn_like(ins[0])
    g1 = backward(gy, ins, out1[1:])
    cfg_name = "_launch_cfg" if op == "dmk" else "_bi_launch_cfg"
    syncs = short_spin_split(monkeypatch, D, cfg_name=cfg_name)
    if op == "dmk":
        cfg = D._launch_cfg(2, 37, 15, 15, _BLOCK_K[op], ins[0].device)
    else:
        cfg = D._bi_launch_cfg(2, 37, 15, 11, 15, _BLOCK_K[op], ins[0].device, **D._bi_sizes(ins[0], ins[3]))
    assert cfg["MULTI"] == 1 and cfg["P"] == 3
    counters = [3] * (2 // cfg.get("GROUP", 1))  # one counter per sample group (BiECA: both samples in one)
    assert op == "dmk" or cfg["GROUP"] == 2
    last = 2 * cfg["chan_per_prog"]  # program P-1 owns channels last .. 36
    out = forward(ins)
    assert syncs[-1].tolist() == counters + [1]  # every program arrived; the error flag is set
    y, s = out[0], out[2]
    assert torch.isnan(y[:, :last]).all() and torch.isnan(s[:, :last]).all() and torch.isnan(out[-1]).all()
    assert_close(y[:, last:], out1[0][:, last:], name="y of the last program")
    assert_close(s[:, last:], out1[2][:, last:], name="gate of the last program")
    g = backward(gy, ins, out1[1:])
    assert syncs[-1].tolist() == counters + [1]
    assert torch.isnan(g[0][:, :last]).all() and torch.isnan(g[-1]).all()  # grad_x; the last param grad
    assert_close(g[0][:, last:], g1[0][:, last:], name="grad_x of the last program")
    monkeypatch.setenv("ATTN_KERNELS_SE_CHECK", "1")
    with pytest.raises(RuntimeError, match="timed out"):
        forward(ins)
    with pytest.raises(RuntimeError, match="timed out"):
        backward(gy, ins, out1[1:])


@pytest.mark.gpu
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("schedule", ["single", "multi"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gpu_schedules(op, schedule, channels_last, monkeypatch):
    """Both schedules on the GPU, the multi-program one with its error flag checked (a timed-out wait
    raises): N = 2 samples of 1100 channels (≥ 2 channel tiles in either layout), 7×7 maps."""
    monkeypatch.setenv("ATTN_KERNELS_SE_SCHEDULE", schedule)
    monkeypatch.setenv("ATTN_KERNELS_SE_CHECK", "1")
    fused, eager, make, names = OPS[op]
    ins = make((2, 1100, 7, 7), device="cuda")
    if channels_last:
        ins[0] = ins[0].detach().to(memory_format=torch.channels_last).requires_grad_()
    cfg = D._launch_cfg(2, 1100, 49, ins[0].stride(1), 8, ins[0].device)
    assert cfg["MULTI"] == (schedule == "multi") and (cfg["P"] >= 2) == (schedule == "multi")
    for dtype in (torch.float32, torch.bfloat16):
        check_parity(fused, eager, ins, dtype=dtype, param_dtype=torch.float32, names=names)


@pytest.mark.gpu
@pytest.mark.parametrize("n", [64, 256])
def test_gpu_bi_natural_groups(n, monkeypatch):
    """BiECA at the 7×7 stage (C = 2048, hidden 128) at training batches with the launcher's own choice:
    samples grouped (GROUP > 1), bf16 x with fp32 parameters against float64, error flag checked."""
    monkeypatch.setenv("ATTN_KERNELS_SE_CHECK", "1")
    ins = bi_inputs((n, 2048, 7, 7), kf=5, kb=5, rd=128, device="cuda")
    cfg = D._bi_launch_cfg(n, 2048, 49, 128, 49, 8, torch.device("cuda"),
                           **D._bi_sizes(ins[0].to(torch.bfloat16), ins[3]))
    assert cfg["GROUP"] > 1
    check_parity(bi_fused, reference.bi_eca, ins, dtype=torch.bfloat16, param_dtype=torch.float32, names=BI_NAMES)


@pytest.mark.parametrize("op", OPS)
def test_gradcheck_float64(op, device):
    fused, _, make, _ = OPS[op]
    gradcheck(fused, make((2, 5, 2, 2), device=device))


def _sample(op, device, bias=True):
    ins = [t.detach() for t in OPS[op][2]((2, 6, 2, 3), device=device)]
    if not bias:
        if op == "dmk":
            ins[2] = None
        else:
            ins[4] = ins[6] = None
    return ins


@pytest.mark.parametrize("op", OPS)
def test_opcheck(op, device):
    fwd = {"dmk": torch.ops.attn_kernels.dmk_eca_fwd, "bi": torch.ops.attn_kernels.bi_eca_fwd}[op]
    for bias in (True, False):
        ins = _sample(op, device, bias)
        torch.library.opcheck(fwd, tuple(ins))
        ins[0].requires_grad_()
        ins[1].requires_grad_()
        torch.library.opcheck(fwd, tuple(ins))


@pytest.mark.parametrize("op", OPS)
def test_opcheck_backward_op(op, device):
    ins = _sample(op, device)
    x = ins[0]
    if op == "dmk":
        _, pooled, s, blend = torch.ops.attn_kernels.dmk_eca_fwd(*ins)
        args = (torch.randn_like(x), x, ins[1], *ins[3:], pooled, s, blend)
        torch.library.opcheck(torch.ops.attn_kernels.dmk_eca_bwd, args)
    else:
        _, pooled, s, hidden, blend = torch.ops.attn_kernels.bi_eca_fwd(*ins)
        args = (torch.randn_like(x), x, ins[1], ins[2], ins[3], ins[5], pooled, s, hidden, blend)
        torch.library.opcheck(torch.ops.attn_kernels.bi_eca_bwd, args)


@pytest.mark.parametrize("op", OPS)
def test_inputs_not_modified(op, device):
    fused, _, make, _ = OPS[op]
    ins = make((2, 7, 3, 3), device=device)
    before = [t.detach().clone() for t in ins]
    fused(*ins).backward(torch.randn(2, 7, 3, 3, device=device))
    for a, b in zip(ins, before):
        assert torch.equal(a.detach(), b)


@pytest.mark.parametrize("fused_cls,ref_cls,kwargs", [
    (ak.FusedDynamicMultiKernelECA, reference.DynamicMultiKernelECA, {}),
    (ak.FusedBidirectionalECA, reference.BidirectionalECA, {"k_size": 5}),
])
def test_fused_modules_state_dict_and_parity(fused_cls, ref_cls, kwargs, device):
    ref = ref_cls(20, **kwargs).to(device)
    fused = fused_cls(20, backend="triton", **kwargs).to(device)
    assert fused.state_dict().keys() == ref.state_dict().keys()
    fused.load_state_dict(ref.state_dict())  # reference → fused
    ref2 = ref_cls(20, **kwargs).to(device)
    ref2.load_state_dict(fused.state_dict())  # fused → reference
    for a, b in zip(ref.state_dict().values(), ref2.state_dict().values()):
        assert torch.equal(a, b)
    with torch.no_grad():  # keep the single hidden unit of BiECA active so every path is exercised
        for m in (ref, fused):
            if isinstance(m, reference.BidirectionalECA):
                m.gate_mlp[0].bias.fill_(1.0)
    x = torch.randn(2, 20, 3, 3, device=device)
    xf, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    yf, yr = fused(xf), ref(xr)
    assert_close(yf, yr, name="Fused module output")
    g = torch.randn_like(yf)
    yf.backward(g)
    yr.backward(g)
    assert_close(xf.grad, xr.grad, name="grad x")
    for (name, pf), (_, pr) in zip(fused.named_parameters(), ref.named_parameters()):
        assert_close(pf.grad, pr.grad, name=f"grad {name}", atol=1e-5)


@pytest.mark.parametrize("cls", [ak.FusedDynamicMultiKernelECA, ak.FusedBidirectionalECA])
def test_torch_compile_fullgraph(cls, device):
    """The custom ops trace without graph breaks (fake kernels) and compiled forward/backward match eager."""
    torch._dynamo.reset()
    m = cls(8, backend="triton").to(device)
    x = torch.randn(2, 8, 3, 3, device=device)
    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    ye = m(xe)
    yc = torch.compile(m, fullgraph=True)(xc)
    assert_close(yc, ye, name="compiled output")
    g = torch.randn_like(ye)
    ye.backward(g)
    yc.backward(g)
    assert_close(xc.grad, xe.grad, name="compiled grad x")


def test_dispatch_and_info(device):
    """backend="triton" runs the registered custom op (its saved gate shows in the autograd graph)."""
    ins = dmk_inputs((1, 4, 2, 2), device=device)
    y = functional.dmk_eca(*ins, backend="triton")
    assert y.grad_fn.name() == "_EagerBackward"  # the fused launchers without the op's dispatch (ops/_eager.py)
    with torch.no_grad():  # the registered op itself
        assert_close(torch.ops.attn_kernels.dmk_eca_fwd(*ins)[0], y.detach(), name="op")
    assert_close(y, reference.dmk_eca(*ins), name="dmk dispatch")
    assert "dmk_eca" in ak.info()["backends"]["triton"]["ops"] and "bi_eca" in ak.info()["backends"]["triton"]["ops"]


def test_bad_inputs_raise_clear_errors():
    x = torch.randn(2, 6, 3, 3)
    w, b, t3, t5, t7 = torch.randn(3, 6), torch.randn(3), torch.randn(3), torch.randn(5), torch.randn(7)
    with pytest.raises(ValueError, match="fc_weight has shape"):
        functional.dmk_eca(x, torch.randn(3, 5), b, t3, t5, t7)
    with pytest.raises(ValueError, match="fc_bias has shape"):
        functional.dmk_eca(x, w, torch.randn(2), t3, t5, t7)
    with pytest.raises(ValueError, match="taps5 has k=4 taps"):
        functional.dmk_eca(x, w, b, t3, torch.randn(4), t7)
    with pytest.raises(ValueError, match="taps7 must have shape"):
        functional.dmk_eca(x, w, b, t3, t5, torch.randn(2, 7))
    with pytest.raises(ValueError, match="at least one spatial dim"):
        functional.dmk_eca(torch.randn(2, 6), w, b, t3, t5, t7)
    w1, b1, w2, b2 = torch.randn(2, 6), torch.randn(2), torch.randn(2, 2), torch.randn(2)
    with pytest.raises(ValueError, match="w_bwd has k=2 taps"):
        functional.bi_eca(x, t3, torch.randn(2), w1, b1, w2, b2)
    with pytest.raises(ValueError, match="w1 has shape"):
        functional.bi_eca(x, t3, t3, torch.randn(2, 5), b1, w2, b2)
    with pytest.raises(ValueError, match="w2 has shape"):
        functional.bi_eca(x, t3, t3, w1, b1, torch.randn(3, 2), b2)
    with pytest.raises(ValueError, match="b1 has shape"):
        functional.bi_eca(x, t3, t3, w1, torch.randn(3), w2, b2)
    with pytest.raises(TypeError, match="floating"):
        functional.bi_eca(x, t3, t3, w1.long(), b1, w2, b2)
