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
    assert len(out["checked"]) == 7, out["checked"]


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


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_gpu_direct_launch_matches_triton_path(layout, monkeypatch):
    """On the GPU: SE and ECA forward + backward, three calls on the same inputs -- Triton's path (direct
    launch off), then the first and a later call of the direct path -- bit-identical, NaN-prefilled, and
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
    via_triton = run_all()
    monkeypatch.setattr(_layout, "DIRECT_LAUNCH", True)
    _layout._COMPILED.clear()
    first, later = run_all(), run_all()
    assert len(_layout._COMPILED) >= 4  # SE fwd, bwd, weight grads, ECA fwd, bwd at two alignments
    for a, b, c in zip(via_triton, first, later):
        assert torch.equal(a, b) and torch.equal(a, c)
    check_parity(lambda *a: functional.se(*a, backend="triton"), reference.se, [shifted, w1, b1, w2, b2],
                 dtype=torch.float32)
