"""ops._layout.run_kernel: the launchers' one launch point (Triton's path for a specialisation's first
launch, the compiled kernel's launcher after). Under the interpreter only Triton's path runs, so the direct
path is checked with the Triton stand-in driver (kernels compiled for sm_90, launches recorded) in a
subprocess (tests/ops/launch_probe.py), and on a GPU against the interpreter-free Triton path."""
import json
import os
import types

import pytest
import torch

from attn_kernels import functional, reference
from attn_kernels.ops import _layout
from attn_kernels.ops import eca as E
from attn_kernels.ops import se as S

from tests.helpers import check_parity, run_stand_in
from tests.ops.test_se import se_inputs


def _probe(**env_over):
    proc = run_stand_in([os.path.join("tests", "ops", "launch_probe.py")], **env_over)
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.triton
def test_direct_launch_hands_the_launcher_what_triton_does():
    """Every Triton launcher (SE incl. schedule (b) and the weight-gradient kernel, se_residual, ECA, CBAM,
    BiECA, DMK-ECA; forward and backward): the second call of a specialisation launches directly, with the
    same grid, kernel, metadata and arguments as Triton's path gave the first; and the installed Triton
    specialises tensors on 16-byte alignment only (what the direct path's cache keys on)."""
    out = _probe()
    assert out["direct"] and not out["errors"], out["errors"]
    assert len(out["checked"]) == 9, out["checked"]


@pytest.mark.triton
def test_direct_launch_switch():
    """ATTN_KERNELS_DIRECT_LAUNCH=0: every launch through Triton's path (the probe then sees second calls go
    through JITFunction.run)."""
    out = _probe(ATTN_KERNELS_DIRECT_LAUNCH="0")
    assert not out["direct"]
    assert all("second call went through JITFunction.run" in e for e in out["errors"]) and len(out["errors"]) == 6
    assert out["checked"] == ["tensor specialisation: 16-byte alignment only"]


def test_specialisation_key():
    """The direct path's cache key: tensors by dtype and 16-byte alignment, the rest by type and value."""
    t = torch.zeros(64, dtype=torch.float16)
    key = _layout._specialisation_key
    assert key((t, t[1:], t[8:], 7, None)) == ((torch.float16, True), (torch.float16, False), (torch.float16, True),
                                               (int, 7), (type(None), None))
    assert key((True,)) != key((1,)) != key((1.0,))
    assert key((t,)) != key((t.float(),))


def test_unhashable_arguments_take_tritons_path(monkeypatch):
    """run_kernel with an argument its cache cannot key (a list): launched through Triton's path, no entry."""
    launched = []

    class Fake:
        pre_run_hooks = []

        def __getitem__(self, grid):
            return lambda *a, **k: launched.append((grid, a, k))
    fake = Fake()
    monkeypatch.setattr(_layout, "JITFunction", Fake)  # treat the fake as a plain JITFunction
    monkeypatch.setattr(_layout, "DIRECT_LAUNCH", True)
    monkeypatch.setattr(_layout, "_HIP", False)
    monkeypatch.setattr(_layout, "driver", types.SimpleNamespace(active=types.SimpleNamespace(get_current_device=int)))
    before = len(_layout._COMPILED)
    _layout.run_kernel(fake, 3, ([1, 2], 4), {"BLOCK": 8})
    assert launched == [((3,), ([1, 2], 4), {"BLOCK": 8})] and len(_layout._COMPILED) == before


# ----------------------------------------------------------------------------------------------
# Replays: a call signature's first call records its launches, later ones launch them again (SE, ECA)
# ----------------------------------------------------------------------------------------------
def _se_call(shape, r=4, dtype=torch.float32, cl=False, ese=False, bias=True, residual=False, act="relu",
             gate="sigmoid"):
    """fwd+bwd of functional.se / se_residual on the triton backend: fresh inputs each call, so that a
    replay launching an earlier call's tensors would show. Returns (run, inputs): run(inputs) -> [y, grads]."""
    def make():
        x, w1, b1, w2, b2 = se_inputs(shape, r, bias=bias, ese=ese)
        x = x.detach().to(dtype)
        if cl:
            x = x.to(memory_format=torch.channels_last)
        ins = [x] + ([torch.randn_like(x)] if residual else []) + [w1, b1, w2, b2]
        return [None if t is None else t.detach().requires_grad_() for t in ins]

    def run(ins):
        if residual:
            y = functional.se_residual(*ins, act=act, gate=gate, backend="triton")
        else:
            y = functional.se(*ins, act=act, gate=gate, backend="triton")
        wrt = [t for t in ins if t is not None]
        return [y.detach()] + list(torch.autograd.grad(y, wrt, torch.randn_like(y)))
    return run, make


def _eca_call(shape, k=3, dtype=torch.float32, cl=False, circular=False, residual=False):
    def make():
        x = torch.randn(shape, dtype=dtype)
        if cl:
            x = x.to(memory_format=torch.channels_last)
        return [x.requires_grad_()] + ([torch.randn_like(x).requires_grad_()] if residual else []) + [
            torch.randn(1, 1, k, requires_grad=True)]

    def run(ins):
        if residual:
            y = functional.eca_residual(*ins, circular=circular, backend="triton")
        else:
            y = functional.eca(*ins, circular=circular, backend="triton")
        return [y.detach()] + list(torch.autograd.grad(y, ins, torch.randn_like(y)))
    return run, make


_REPLAY_CASES = {
    "se bf16 channels_last": lambda: _se_call((2, 24, 3, 3), dtype=torch.bfloat16, cl=True),
    "ese no bias 3-D hardsigmoid": lambda: _se_call((2, 8, 2, 3, 2), ese=True, bias=False, gate="hardsigmoid"),
    "se_residual fp16 silu": lambda: _se_call((3, 16, 2, 2), dtype=torch.float16, residual=True, act="silu"),
    "eca fp32": lambda: _eca_call((2, 20, 3, 3)),
    "ceca channels_last bf16": lambda: _eca_call((2, 20, 3, 3), k=5, dtype=torch.bfloat16, cl=True, circular=True),
    "eca_residual 1-D": lambda: _eca_call((3, 12, 5), residual=True),
}


def _count_replays(monkeypatch) -> list:
    """[launches replayed] -- SE's and ECA's replay calls counted from now on."""
    count = [0]

    def counting(launch, tensors):
        count[0] += 1
        return _layout.replay(launch, tensors)
    monkeypatch.setattr(S, "_replay", counting)
    monkeypatch.setattr(E, "_replay", counting)
    return count


def _seeded(run, make, seed):
    torch.manual_seed(seed)
    ins = make()
    return run(ins)


@pytest.mark.parametrize("case", list(_REPLAY_CASES))
def test_replays_match_the_full_path(case, monkeypatch):
    """A repeated call signature (new tensors) replays its recorded launches -- every launch of forward and
    backward -- and gives bit for bit what the full path gives on the same inputs (NaN-prefilled outputs:
    the suite's ATTN_KERNELS_NAN_FILL), also on a third call; the recorded call itself is right against
    float64 (the ops' own parity tests hold the full path)."""
    run, make = _REPLAY_CASES[case]()
    S.clear_plans()
    E._REPLAYS.clear()
    count = _count_replays(monkeypatch)
    _seeded(run, make, 0)  # records
    assert count[0] == 0 and (S._REPLAYS or E._REPLAYS)
    replayed = [_seeded(run, make, seed) for seed in (1, 2)]
    launches = 3 if case.startswith(("se", "ese")) else 2  # SE: forward, backward, weight grads; ECA: fwd, bwd
    assert count[0] == 2 * launches
    monkeypatch.setattr(_layout, "REPLAY", False)
    full = [_seeded(run, make, seed) for seed in (1, 2)]
    assert count[0] == 2 * launches  # (the full path replays nothing)
    for got, want in zip(replayed, full):
        assert len(got) == len(want)
        for i, (a, b) in enumerate(zip(got, want)):
            assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride(), (case, i)
            assert torch.equal(a, b), (case, i)


def test_replays_not_kept_where_the_full_path_copied(monkeypatch):
    """No replay is recorded where the full path handed the kernel something else than the caller's tensor
    (a non-contiguous weight, an x whose spatial dims do not flatten): every such call takes the full path,
    and is right."""
    count = _count_replays(monkeypatch)
    S.clear_plans()
    E._REPLAYS.clear()
    torch.manual_seed(0)
    x, w1, b1, w2, b2 = se_inputs((2, 12, 3, 3), 4)
    w1_t = w1.detach().t().contiguous().t().requires_grad_()  # (4, 12) with strides (1, 4)
    cropped = torch.randn(2, 12, 3, 4)[..., :3].requires_grad_()  # W cropped: H and W do not flatten
    taps = torch.randn(3, requires_grad=True)
    for _ in range(2):
        check_parity(lambda *a: functional.se(*a, backend="triton"), reference.se, [x, w1_t, b1, w2, b2],
                     dtype=torch.float32, fused_inputs=[x, w1_t, b1, w2, b2])
        check_parity(lambda *a: functional.se(*a, backend="triton"), reference.se, [cropped, w1, b1, w2, b2],
                     dtype=torch.float32, fused_inputs=[cropped, w1, b1, w2, b2])
        check_parity(lambda a, w: functional.eca(a, w, backend="triton"), reference.eca,
                     [cropped, taps], dtype=torch.float32, fused_inputs=[cropped, taps])
    assert count[0] == 0 and not S._REPLAYS and not E._REPLAYS


def test_replay_keys_separate_what_the_launch_depends_on(monkeypatch):
    """The same tensors through calls that differ in a flag, a dtype or an absent tensor, interleaved and
    repeated: every call gives what its own full path gives (a replay under the wrong key would not)."""
    torch.manual_seed(0)
    x, w1, b1, w2, b2 = [t.detach() for t in se_inputs((2, 16, 3, 3), 4)]
    sc, gy = torch.randn_like(x), torch.randn_like(x)
    taps = torch.randn(5)
    aux = S.se_forward(x, w1, b1, w2, b2, "relu", "sigmoid")[1:]  # pooled, u, z
    eca_aux = E.eca_forward(x, None, taps, False)[1:]  # pooled, s
    x_cl, sc_cl, gy_cl = (t.to(memory_format=torch.channels_last) for t in (x, sc, gy))
    gy_exp = torch.randn(1, 16, 1, 1).expand_as(x)  # sum().backward()'s kind: strides 0
    calls = {
        "relu": lambda: S.se_forward(x, w1, b1, w2, b2, "relu", "sigmoid"),
        "silu": lambda: S.se_forward(x, w1, b1, w2, b2, "silu", "sigmoid"),
        "hardsigmoid": lambda: S.se_forward(x, w1, b1, w2, b2, "relu", "hardsigmoid"),
        "no b1": lambda: S.se_forward(x, w1, None, w2, b2, "relu", "sigmoid"),
        "residual": lambda: S.se_forward(x, w1, b1, w2, b2, "relu", "sigmoid", shortcut=sc, out_act="relu"),
        "residual bf16 shortcut": lambda: S.se_forward(x, w1, b1, w2, b2, "relu", "sigmoid",
                                                       shortcut=sc.bfloat16(), out_act="relu"),
        "residual silu": lambda: S.se_forward(x, w1, b1, w2, b2, "relu", "sigmoid", shortcut=sc, out_act="silu"),
        "bf16 w2": lambda: S.se_forward(x, w1, b1, w2.bfloat16(), b2, "relu", "sigmoid"),
        "channels_last x": lambda: S.se_forward(x_cl, w1, b1, w2, b2, "relu", "sigmoid"),
        "channels_last shortcut": lambda: S.se_forward(x, w1, b1, w2, b2, "relu", "sigmoid", shortcut=sc_cl,
                                                       out_act="relu"),
        "bwd channels_last grad_y": lambda: S.se_backward(gy_cl, x, w1, w2, *aux, "relu", "sigmoid"),
        "bwd expanded grad_y": lambda: S.se_backward(gy_exp, x, w1, w2, *aux, "relu", "sigmoid"),
        "eca channels_last x": lambda: E.eca_forward(x_cl, None, taps, False),
        "eca bwd expanded grad_y": lambda: E.eca_backward(gy_exp, x, None, taps, *eca_aux, False),
        "eca bwd": lambda: E.eca_backward(gy, x, None, taps, *eca_aux, False),
        "bwd": lambda: S.se_backward(gy, x, w1, w2, *aux, "relu", "sigmoid"),
        "bwd bf16 bias grads": lambda: S.se_backward(gy, x, w1, w2, *aux, "relu", "sigmoid",
                                                     bias_dtypes=(torch.bfloat16, torch.bfloat16)),
        "bwd silu": lambda: S.se_backward(gy, x, w1, w2, *aux, "silu", "sigmoid"),
        "bwd residual": lambda: S.se_backward(gy, x, w1, w2, *aux, "relu", "sigmoid", shortcut=sc, out_act="relu"),
        "eca": lambda: E.eca_forward(x, None, taps, False),
        "ceca": lambda: E.eca_forward(x, None, taps, True),
        "eca 3 taps": lambda: E.eca_forward(x, None, taps[:3], False),
        "eca_residual": lambda: E.eca_forward(x, sc, taps, False, "relu"),
    }
    monkeypatch.setattr(_layout, "REPLAY", False)
    want = {name: call() for name, call in calls.items()}
    monkeypatch.setattr(_layout, "REPLAY", True)
    S.clear_plans()
    E._REPLAYS.clear()
    count = _count_replays(monkeypatch)
    for _ in range(2):
        for name, call in calls.items():
            got = call()
            for a, b in zip(got, want[name]):
                assert (a is None and b is None) or (a.dtype == b.dtype and torch.equal(a, b)), name
    # the second round replayed every launch (a backward: two, the weight gradients' too)
    assert count[0] == sum(2 if name.startswith("bwd") else 1 for name in calls)
    # (the mutation this guards against: a key without x's strides replays an NCHW launch on channels_last x)


def test_replay_argument_checks():
    """A Replay is made from a launch whose tensors come first; replaying it takes that many tensors."""
    t = torch.zeros(4)
    launch = _layout.Replay((None, 1, (t, t, 3, 4), {}), 2)
    assert launch.scalars == (3, 4) and launch.tensors == 2
    with pytest.raises(ValueError, match="first 3 arguments"):
        _layout.Replay((None, 1, (t, t, 3, 4), {}), 3)
    with pytest.raises(ValueError, match="first 1 arguments"):
        _layout.Replay((None, 1, (t, t, 3, 4), {}), 1)


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_gpu_direct_launch_matches_triton_path(layout, monkeypatch):
    """On the GPU: SE and ECA forward + backward, three calls on the same inputs -- Triton's path (direct
    launches and replays off), then the first (full path) and a later call (replays) of the direct path
    -- bit-identical, NaN-prefilled, and
    right against float64 (also x at a data pointer off 16-byte alignment: its own specialisation)."""
    torch.manual_seed(0)
    x, w1, b1, w2, b2 = se_inputs((4, 40, 7, 7), 8, device="cuda")
    if layout == "channels_last":
        x = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    taps = torch.randn(5, device="cuda", requires_grad=True)
    gy = torch.randn_like(x)
    # x's values and strides 4 bytes into a buffer: a data pointer off 16-byte alignment
    shifted = torch.empty(x.numel() + 1, device="cuda")[1:].as_strided(x.shape, x.stride())
    shifted = shifted.copy_(x.detach()).requires_grad_()

    def run_all():
        outs = []
        for xi in (x, shifted):
            for f, params in ((lambda a, *p: functional.se(a, *p, backend="triton"), (w1, b1, w2, b2)),
                              (lambda a, t: functional.eca(a, t, backend="triton"), (taps,))):
                y = f(xi, *params)
                outs += [y.detach()] + list(torch.autograd.grad(y, [xi, *params], gy))
        return outs

    monkeypatch.setattr(_layout, "DIRECT_LAUNCH", False)
    monkeypatch.setattr(_layout, "REPLAY", False)
    via_triton = run_all()
    monkeypatch.setattr(_layout, "DIRECT_LAUNCH", True)
    monkeypatch.setattr(_layout, "REPLAY", True)
    _layout._COMPILED.clear()
    S.clear_plans()
    E._REPLAYS.clear()
    first, later = run_all(), run_all()  # full path + direct launches; replays + direct launches
    assert len(_layout._COMPILED) >= 4  # SE fwd, bwd, weight grads, ECA fwd, bwd at two alignments
    for a, b, c in zip(via_triton, first, later):
        assert torch.equal(a, b) and torch.equal(a, c)
    check_parity(lambda *a: functional.se(*a, backend="triton"), reference.se, [shifted, w1, b1, w2, b2],
                 dtype=torch.float32)
