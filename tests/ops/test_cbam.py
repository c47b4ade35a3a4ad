"""Triton CBAM (attn_kernels/ops/cbam.py) vs reference.cbam: output and gradients of x, w1, w2 and
spatial_weight against float64 (check_parity), launch counts, ties of the max pools, layouts, and the
split-sample schedule (ops/_split.py): emulated partition, MULTI=1 timeouts, both schedules on a GPU.

Runs on the GPU when there is one, else on CPU tensors under TRITON_INTERPRET=1 (tiny shapes).
"""
import os

import pytest
import torch

from attn_kernels import functional, reference
from attn_kernels.modules import FusedCBAM
from attn_kernels.ops import _split
from attn_kernels.ops import cbam as CB
from tests.helpers import assert_close, check_parity, gradcheck, short_spin_split

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


# ---------------------------------------------------------------------------------------------
# The split-sample schedule (ops/_split.py): emulated partition and the MULTI=1 code under the
# interpreter; the real cross-program schedule on a GPU
# ---------------------------------------------------------------------------------------------
FWD_OUT = ("y", "avg", "mx", "pre_a", "pre_m", "ca", "d", "sa")
BWD_OUT = ("grad_x", "grad_w1", "grad_w2", "grad_spatial_weight")
SPLIT_CASES = {  # shape, k, rd: 11 channels → tiles of 4/4/3 (one per program); pixel slices as noted
    "2d": ((3, 11, 2, 5), 3, 5),  # pixels 4/4/2 on rows of 5: a 3×3 window reaches two slices back
    "1d": ((3, 11, 10), 7, 5),  # pixels 4/4/2, halo 3: the last slice is narrower than the halo
    "3d": ((2, 11, 2, 2, 3), 3, 5),  # pixels 4/4/4 against a ±6-pixel reach along D; 54 taps, 7 chunks
}


def _shrink(monkeypatch):
    """Tiles small enough for a 3-way split at tiny shapes: BLOCK_C = 4, BLOCK_HW = 4, BLOCK_T = 8 (several
    tap chunks), BLOCK_P = 2, pixel tiles down to 1 pixel; the MLP's FC_R = 4 (two chunks at rd = 5) and
    FC_C ≤ 2 (several chunks over the channels)."""
    monkeypatch.setattr(CB, "_TILE", 16)
    monkeypatch.setattr(CB, "_MAX_BLOCK_HW", 4)
    monkeypatch.setattr(CB, "_MAX_BLOCK_T", 8)
    monkeypatch.setattr(CB, "_MIN_PX_TILE", 1)
    launch_cfg = CB._launch_cfg
    monkeypatch.setattr(CB, "_launch_cfg", lambda *a, **k: dict(launch_cfg(*a, **k), FC_R=4))


def _split_inputs(case, layout, device):
    shape, k, rd = SPLIT_CASES[case]
    torch.manual_seed(3)
    ins = [t.detach() for t in inputs(shape, k, rd, device)]
    if layout == "channels_last":  # channels innermost, any rank
        ins[0] = ins[0].movedim(1, -1).contiguous().movedim(-1, 1)
        assert ins[0].stride(1) == 1
    return ins


def _plan(x, w1, sw):
    n, c = x.shape[:2]
    hw = x.shape[2:].numel()
    return n, c, hw, CB._launch_cfg(n, c, w1.shape[0], hw, sw.numel(), x.device)


@pytest.mark.filterwarnings("ignore:overflow encountered", "ignore:invalid value encountered")  # early launches
@pytest.mark.parametrize("case", SPLIT_CASES)  # read unpublished (NaN) scratch, as documented in _launch
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_split_partition_emulated(case, layout, device, monkeypatch):
    """Schedule (b)'s partition (program (n, j) on a channel slice in the pool / grad-ca / grad-x passes
    and on a pixel slice in the descriptor / conv passes; the MLP in every program; the conv and
    transposed-conv halos read from the peers' pixels; the tap gradient summed over P published rows)
    vs schedule (a): every output of the forward and every gradient of the backward."""
    _shrink(monkeypatch)
    monkeypatch.setenv("ATTN_KERNELS_SE_SCHEDULE", "single")  # on a GPU, auto would pick schedule (b) itself
    x, w1, w2, sw = _split_inputs(case, layout, device)
    n, c, hw, cfg = _plan(x, w1, sw)
    assert cfg["MULTI"] == 0 and cfg["P"] == 1 and _split.emulate_split(cfg, c, 3)["P"] == 3
    assert CB._pixel_plan(hw, 3, cfg)[2] == 4 and 8 < hw <= 12  # three pixel slices, the last ragged or not
    out1 = CB.cbam_forward(x, w1, w2, sw)
    out3 = CB.cbam_forward(x, w1, w2, sw, _split=3)
    for a, b, name in zip(out3, out1, FWD_OUT):
        assert_close(a, b, name=name)
    gy = torch.randn_like(x)
    g1 = CB.cbam_backward(gy, x, w1, w2, sw, *out1[1:])
    g3 = CB.cbam_backward(gy, x, w1, w2, sw, *out1[1:], _split=3)
    for a, b, name in zip(g3, g1, BWD_OUT):
        assert_close(a, b, name=name)


def _forced_group(monkeypatch, group):
    """Make the launchers serve ``group`` samples per program (the MLP tiles shrunk to stay ≤ _TILE)."""
    launch_cfg = CB._launch_cfg

    def cfg(*a, **k):
        base = launch_cfg(*a, **k)
        return dict(base, GROUP=group, FC_C=max(1, min(base["BLOCK_C"], CB._TILE // (group * base["FC_R"]))))
    monkeypatch.setattr(CB, "_launch_cfg", cfg)


@pytest.mark.parametrize("group", [2, 4, 8])
@pytest.mark.parametrize("case", ["2d", "2d channels_last", "1d", "3d"])
def test_sample_groups(group, case, device, monkeypatch):
    """Programs serving GROUP samples (the MLP weights read once per group, forward and backward): 5
    samples, so the last group is ragged (for GROUP = 8 the only group), a hidden width of 5 over FC_R
    chunks of 4 (shrunken tiles), against the float64 reference, output and every grad."""
    _shrink(monkeypatch)
    _forced_group(monkeypatch, group)
    seen = []
    launch = CB._launch
    monkeypatch.setattr(CB, "_launch", lambda kernel, like, n, c, cfg, *a: seen.append((n, cfg["GROUP"]))
                        or launch(kernel, like, n, c, cfg, *a))
    shape = {"1d": (5, 11, 10), "3d": (5, 6, 2, 2, 3)}.get(case, (5, 11, 2, 5))
    ins = inputs(shape, 3, 5, device)
    if case.endswith("channels_last"):
        ins[0] = ins[0].detach().to(memory_format=torch.channels_last).requires_grad_()
    check_parity(fused, reference.cbam, ins, dtype=torch.float32, names=NAMES)
    assert seen and all(v == (-(-5 // group), group) for v in seen)  # grid over the groups


def test_sample_groups_low_precision_and_gradcheck(device, monkeypatch):
    """Two samples per program (3 samples: a ragged group) with bf16 / fp16 x against float64, and the
    float64 kernels (the fp64 accumulation path of the group tiles) through gradcheck."""
    _forced_group(monkeypatch, 2)
    for dtype in (torch.bfloat16, torch.float16):
        check_parity(fused, reference.cbam, inputs((3, 6, 4, 5), 3, 2, device), dtype=dtype,
                     param_dtype=torch.float32, names=NAMES)
    gradcheck(fused, inputs((3, 2, 3), 3, 1, device), eps=1e-6, atol=1e-6)


def test_group_choice():
    """GROUP from the byte counts (_split.sample_group on W1 + W2): the weight-heavy 7×7 stage groups,
    the 56×56 stage does not; on a GPU the grid still fills the SMs (_split.group_plan)."""
    def cfg(n, c, hw, sms):
        x, w1, w2 = torch.empty(1, c, hw, dtype=torch.bfloat16), torch.empty(c // 16, c), torch.empty(c, c // 16)
        sizes = CB._sizes(x, w1, w2)
        monkey = CB._device_sms
        try:
            CB._device_sms = lambda device: sms
            return CB._launch_cfg(n, c, c // 16, hw, 2 * 49, x.device, **sizes)
        finally:
            CB._device_sms = monkey
    assert cfg(64, 2048, 49, 0)["GROUP"] == 16  # 2 MB of fp32 weights against 200 KB of bf16 x per sample
    big = cfg(64, 2048, 49, 132)  # any GROUP gives 64 programs (half the SMs): the largest, P = 16
    assert big["GROUP"] == 16 and big["P"] == 16 and big["GROUP"] * big["FC_C"] * big["FC_R"] <= CB._TILE
    assert cfg(1024, 2048, 49, 132)["GROUP"] == 8 and cfg(1024, 2048, 49, 132)["MULTI"] == 0  # ~1 program per SM
    assert cfg(64, 256, 3136, 132)["GROUP"] == 1
    assert cfg(1, 2048, 49, 0)["GROUP"] == 1


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") != "1", reason="interpreter only: a Python stand-in wait")
@pytest.mark.filterwarnings("ignore:overflow encountered", "ignore:invalid value encountered")
@pytest.mark.parametrize("group", [1, 2])
def test_multi_schedule_meetings_emulated(group, monkeypatch):
    """The MULTI=1 code itself on schedule (b)'s partition, its waits replaced by a stand-in that records
    the target and reports success (launched meetings + 1 times, as the emulation): equal to schedule
    (a), and every program meets at k·P for k = 1 … 1 + v forward and 1 … 2·v + 1 backward, v = the
    samples of its group (GROUP = 2 over 3 samples: groups of 2 and 1). (The emulated partition test
    runs the MULTI=0 code; the timeout test gets past one meeting only.)"""
    _shrink(monkeypatch)
    _forced_group(monkeypatch, group)
    x, w1, w2, sw = _split_inputs("2d", "nchw", "cpu")
    targets = []

    def wait_succeeds(cnt_ptr, err_ptr, target, max_spin):
        targets.append(int(torch.as_tensor(getattr(getattr(target, "handle", None), "data", target)).reshape(-1)[0]))
        return False

    out1 = CB.cbam_forward(x, w1, w2, sw)
    gy = torch.randn_like(x)
    g1 = CB.cbam_backward(gy, x, w1, w2, sw, *out1[1:])
    monkeypatch.setattr(CB, "_sample_sync", wait_succeeds)
    emulate_split = _split.emulate_split
    monkeypatch.setattr(_split, "emulate_split", lambda *a: dict(emulate_split(*a), MULTI=1))
    n, p = x.shape[0], 3
    sizes = [min(group, n - n0) for n0 in range(0, n, group)]  # samples per group
    meetings = CB.meetings(group)
    out3 = CB.cbam_forward(x, w1, w2, sw, _split=3)
    per_launch = [k * p for v in sizes for _ in range(p) for k in range(1, v + 2)]
    assert targets == per_launch * (meetings["forward"] + 1)
    for a, b, name in zip(out3, out1, FWD_OUT):
        assert_close(a, b, name=name)
    targets.clear()
    g3 = CB.cbam_backward(gy, x, w1, w2, sw, *out1[1:], _split=3)
    per_launch = [k * p for v in sizes for _ in range(p) for k in range(1, 2 * v + 2)]
    assert targets == per_launch * (meetings["backward"] + 1)
    for a, b, name in zip(g3, g1, BWD_OUT):
        assert_close(a, b, name=name)


def _exact_or_nan(got, expected, name):
    """Every element of ``got`` is NaN or equal (assert_close) to ``expected``'s."""
    nan = torch.isnan(got)
    assert_close(torch.where(nan, expected, got), expected, name=f"{name}: the elements that are not NaN")


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") != "1", reason="interpreter only: programs run in order")
@pytest.mark.filterwarnings("ignore:overflow encountered", "ignore:invalid value encountered", "ignore:All-NaN slice")
def test_multi_schedule_timeout_is_loud(monkeypatch):
    """The MULTI=1 code (a counter shared by several meetings, bounded waits, error flag, sticky NaN
    poison) under the interpreter: programs run one after another, with 3-iteration waits. Per sample
    (P = 3), forward and backward alike: program 0 arrives at meeting 1 (counter 1 < 3), times out and
    arrives nowhere else; program 1 likewise (2 < 3); program 2 sees 3, passes meeting 1 — every peer
    has published — and times out at meeting 2 (4 < 6). Counters end at 4, not 2·P or 3·P: a program
    that gave up stays away (else program 1 would have counted program 0's second arrival as the third
    at meeting 1 and gone on with program 2's channels unpooled).

    Exact, then: what every program stores before meeting 1 (pooled vectors; dz_s, channel-max ties,
    tap rows) and what program 2 computes between meetings 1 and 2 (its MLP row, d of its pixels;
    grad d of its pixels). Everything else is NaN: every stored element is exact or NaN."""
    _shrink(monkeypatch)
    _forced_group(monkeypatch, 1)  # one sample per program (test_sample_groups covers groups)
    shape, k = (2, 11, 6, 2), 3  # channels 4/4/3, pixels 4/4/4 (rows 0-1 / 2-3 / 4-5)
    x, w1, w2, sw = [t.detach() for t in inputs(shape, k, 5, "cpu")]
    r = w1.shape[0]
    kept = []
    scratch = CB._scratch
    monkeypatch.setattr(CB, "_scratch", lambda *a: kept.append(scratch(*a)) or kept[-1])
    out1 = CB.cbam_forward(x, w1, w2, sw)  # schedule (a): the expected values
    gy = torch.randn_like(x)
    g1 = CB.cbam_backward(gy, x, w1, w2, sw, *out1[1:])
    dzs1, cnt1, dd1 = kept[-1][:3]
    syncs = short_spin_split(monkeypatch, CB)
    n, c, hw, cfg = _plan(x, w1, sw)
    assert cfg["MULTI"] == 1 and cfg["P"] == 3
    p_lo = 2 * CB._pixel_plan(hw, 3, cfg)[2]  # the last program's pixels: p_lo .. hw − 1
    assert p_lo == 8

    out = CB.cbam_forward(x, w1, w2, sw)
    assert syncs[-1].tolist() == [4, 4, 1]  # arrivals per sample; the error flag is set
    for i in (1, 2):  # avg, mx: pooled before meeting 1
        assert_close(out[i], out1[i], name=f"{FWD_OUT[i]} (timed-out forward)")
    for i in (0, 3, 4, 5, 7):  # y, pre_a, pre_m, ca (the first program's), sa (after meeting 2)
        assert torch.isnan(out[i]).all(), FWD_OUT[i]
    own = kept[-1][0].view(3, n, r + c)  # row j·N + n: program j's [h | ca] of sample n
    assert torch.isnan(own[:2]).all()  # programs 0, 1: poisoned at meeting 1
    hidden = torch.relu(out1[3]) + torch.relu(out1[4])
    assert_close(own[2], torch.cat([hidden, out1[5]], 1), name="the last program's MLP rows [h | ca]")
    assert torch.isnan(out[6][:, :, :p_lo]).all()
    assert_close(out[6][:, :, p_lo:], out1[6][:, :, p_lo:], name="d of the last program's pixels")
    for a, b, name in zip(out, out1, FWD_OUT):
        _exact_or_nan(a, b, name)

    g = CB.cbam_backward(gy, x, w1, w2, sw, *out1[1:])
    assert syncs[-1].tolist() == [4, 4, 1]
    dzs, cnt, dd, _, gpart = kept[-1][:5]
    assert_close(dzs, dzs1, name="dz_s (pass 1, before any meeting)")
    assert_close(cnt, cnt1, name="channel-max ties (pass 1)")
    assert_close(gpart.sum(0).view_as(sw), g1[3], name="the tap rows (pass 2, from the program's own dz_s)")
    assert torch.isnan(dd[:, :, :p_lo]).all()  # programs 0, 1: poisoned at meeting 1
    assert_close(dd[:, :, p_lo:], dd1[:, :, p_lo:], name="grad d of the last program's pixels")
    for a, name in zip(g, BWD_OUT):  # all after meeting 2 (or stored by the poisoned first program)
        assert torch.isnan(a).all(), name

    monkeypatch.setenv("ATTN_KERNELS_SE_CHECK", "1")
    with pytest.raises(RuntimeError, match="timed out"):
        CB.cbam_forward(x, w1, w2, sw)
    with pytest.raises(RuntimeError, match="timed out"):
        CB.cbam_backward(gy, x, w1, w2, sw, *out1[1:])


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") != "1", reason="interpreter only: programs run in order")
@pytest.mark.filterwarnings("ignore:overflow encountered", "ignore:invalid value encountered", "ignore:All-NaN slice")
def test_multi_schedule_timeout_is_loud_with_groups(monkeypatch):
    """The timeout test's schedule with both samples in one group (GROUP = 2, P = 3, one counter):
    programs 0 and 1 give up at meeting 1, program 2 passes it and gives up at the next (sample 0's
    descriptor meeting), so the counter ends at 4 in the forward and the backward alike. Exact: the
    pooled vectors, program 2's MLP rows of both samples, d of program 2's pixels of sample 0 (its pass
    B ran before it gave up); dz_s and the tap rows (no poison enters them). Everything else NaN; every
    stored element exact or NaN."""
    _shrink(monkeypatch)
    _forced_group(monkeypatch, 2)
    shape, k = (2, 11, 6, 2), 3  # channels 4/4/3, pixels 4/4/4
    x, w1, w2, sw = [t.detach() for t in inputs(shape, k, 5, "cpu")]
    r, c = w1.shape
    kept = []
    scratch = CB._scratch
    monkeypatch.setattr(CB, "_scratch", lambda *a: kept.append(scratch(*a)) or kept[-1])
    out1 = CB.cbam_forward(x, w1, w2, sw)  # schedule (a), GROUP = 2: the expected values
    gy = torch.randn_like(x)
    g1 = CB.cbam_backward(gy, x, w1, w2, sw, *out1[1:])
    dzs1 = kept[-1][0]
    syncs = short_spin_split(monkeypatch, CB)
    n, _, hw, cfg = _plan(x, w1, sw)
    assert cfg["MULTI"] == 1 and cfg["P"] == 3 and cfg["GROUP"] == 2
    p_lo = 2 * CB._pixel_plan(hw, 3, cfg)[2]

    out = CB.cbam_forward(x, w1, w2, sw)
    assert syncs[-1].tolist() == [4, 1]  # one counter for the group; the error flag is set
    for i in (1, 2):
        assert_close(out[i], out1[i], name=f"{FWD_OUT[i]} (pooled before meeting 1)")
    for i in (0, 3, 4, 5, 7):  # y, pre_a, pre_m, ca (the first program's), sa
        assert torch.isnan(out[i]).all(), FWD_OUT[i]
    own = kept[-1][0].view(3, n, r + c)
    assert torch.isnan(own[:2]).all()
    hidden = torch.relu(out1[3]) + torch.relu(out1[4])
    assert_close(own[2], torch.cat([hidden, out1[5]], 1), name="program 2's MLP rows of both samples")
    assert_close(out[6][0, :, p_lo:], out1[6][0, :, p_lo:], name="d of program 2's pixels, sample 0")
    assert torch.isnan(out[6][1]).all() and torch.isnan(out[6][0, :, :p_lo]).all()
    for a, b, name in zip(out, out1, FWD_OUT):
        _exact_or_nan(a, b, name)

    g = CB.cbam_backward(gy, x, w1, w2, sw, *out1[1:])
    assert syncs[-1].tolist() == [4, 1]
    dzs, _, dd, _, gpart = kept[-1][:5]
    assert_close(dzs, dzs1, name="dz_s of both samples")
    assert_close(gpart.sum(0).view_as(sw), g1[3], name="the tap rows of every program and sample")
    assert torch.isnan(dd[1]).all() and torch.isnan(dd[0, :, :p_lo]).all()
    for a, name in zip(g, BWD_OUT):
        assert torch.isnan(a).all(), name


@pytest.mark.gpu
@pytest.mark.parametrize("n", [64, 256])
def test_gpu_natural_groups(n, monkeypatch):
    """CBAM at the 7×7 stage (C = 2048, hidden 128, 7×7 spatial kernel) at training batches with the
    launcher's own choice: samples grouped (GROUP > 1), fp32 against float64 (fp32: bf16 max-pool ties
    against eager are fragile at this width), error flag checked."""
    monkeypatch.setenv("ATTN_KERNELS_SE_CHECK", "1")
    ins = inputs((n, 2048, 7, 7), 7, 128, "cuda")
    x, w1, w2, sw = (t.detach() for t in ins)
    cfg = CB._launch_cfg(n, 2048, 128, 49, sw.numel(), x.device, **CB._sizes(x, w1, w2))
    assert cfg["GROUP"] > 1
    check_parity(fused, reference.cbam, ins, dtype=torch.float32, names=NAMES)


@pytest.mark.gpu
@pytest.mark.parametrize("schedule", ["single", "multi"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("shape", [(2, 64, 20, 20), (2, 1100, 7, 7)], ids=str)
def test_gpu_schedules(shape, schedule, channels_last, monkeypatch):
    """Both schedules on the GPU, the multi-program one with its error flag checked (a timed-out wait
    raises), 7×7 spatial kernel. (2, 64, 20, 20): 4 channel tiles of 16 → P = 4, pixel slices
    128/128/128/16 (a 3-row halo of 63 pixels); (2, 1100, 7, 7): 18 channel tiles of 64 → P = 18, pixel
    slices 16/16/16/1 (the halo reaches two slices back). fp32 against float64 (check_parity); bf16 /
    multi against bf16 / single (the max-pool ties make bf16 against eager fragile at 1100 channels)."""
    monkeypatch.setenv("ATTN_KERNELS_SE_SCHEDULE", schedule)
    monkeypatch.setenv("ATTN_KERNELS_SE_CHECK", "1")
    ins = inputs(shape, 7, shape[1] // 16, "cuda")
    if channels_last:
        ins[0] = ins[0].detach().to(memory_format=torch.channels_last).requires_grad_()
    n, c, hw, cfg = _plan(*(t.detach() for t in (ins[0], ins[1], ins[3])))
    multi = schedule == "multi"
    assert cfg["MULTI"] == multi and (cfg["P"] >= 2) == multi
    if multi:
        assert _split.device_sms(ins[0].device) >= n * cfg["P"]
        assert CB._pixel_plan(hw, cfg["P"], cfg)[2] < hw  # ≥ 2 programs own pixels
    check_parity(fused, reference.cbam, ins, dtype=torch.float32, names=NAMES)
    if multi:
        xb = ins[0].detach().to(torch.bfloat16)
        params = [t.detach().clone().requires_grad_() for t in ins[1:]]
        gy = torch.randn_like(xb)
        results = []
        for sched in ("multi", "single"):
            monkeypatch.setenv("ATTN_KERNELS_SE_SCHEDULE", sched)
            xs = xb.clone().requires_grad_()
            y = fused(xs, *params)
            results.append((y, *torch.autograd.grad(y, [xs, *params], gy)))
        for a, b, name in zip(*results, ("y",) + BWD_OUT):  # fp32 weight grads: summation order only
            tol = {} if a.dtype == torch.bfloat16 else dict(atol=1e-4, rtol=1e-4)
            assert_close(a, b, name=f"bf16, multi vs single: {name}", **tol)
