"""The C++/CUDA extension attn_kernels._C (csrc/): the ``cpu`` backend in CI, the ``cuda`` one on a GPU.

Skipped as a whole, with the ImportError as the reason, when the extension is not built.
"""
import sys

import pytest
import torch
import torch.nn.functional as F

from attn_kernels import _backend, functional, reference, use_backend
from tests.helpers import assert_close, check_parity, gradcheck, se_hardswish_inputs

try:
    from attn_kernels.ops import ext
except ImportError as exc:  # not built: say why
    pytest.skip(f"attn_kernels._C is not available: {exc}", allow_module_level=True)

OPS = torch.ops.attn_kernels_ext
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _se_params(c, r, bias=True, ese=False, dtype=torch.float32, device="cpu"):
    g = lambda *s: (torch.randn(*s, dtype=dtype, device=device) * 0.5).requires_grad_()  # noqa: E731
    if ese:
        return None, None, g(c, c), g(c)
    return g(r, c), (g(r) if bias else None), g(c, r), (g(c) if bias else None)


def _x(shape, dtype=torch.float32, device="cpu", channels_last=False):
    x = torch.randn(shape, dtype=dtype, device=device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    return x.requires_grad_()


def _se_fused(act, gate, backend="cpu", view=None):
    def fn(x, w1, b1, w2, b2):
        return functional.se(view(x) if view else x, w1, b1, w2, b2, act, gate, backend=backend)
    return fn


def _se_eager(act, gate):
    return lambda x, w1, b1, w2, b2: reference.se(x, w1, b1, w2, b2, act, gate)


NAMES = {0: "x", 1: "w1", 2: "b1", 3: "w2", 4: "b2"}


# ---- SE -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act,gate,bias,ese", [
    ("relu", "sigmoid", True, False), ("silu", "sigmoid", True, False), ("gelu", "hardsigmoid", False, False),
    ("relu", "hardsigmoid", True, True), ("silu", "sigmoid", False, False),
])
@pytest.mark.parametrize("channels_last", [False, True])
def test_se_parity(dtype, act, gate, bias, ese, channels_last):
    x = _x((3, 24, 5, 7), channels_last=channels_last)
    params = _se_params(24, 6, bias=bias, ese=ese)
    check_parity(_se_fused(act, gate), _se_eager(act, gate), [x, *params], dtype=dtype, names=NAMES)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gate", ["sigmoid", "hardsigmoid"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_se_hardswish_every_piece(dtype, gate, channels_last):
    """hardswish bottleneck (timm's FBNetV3 SE) with pre-activations in all three pieces."""
    x, *params = se_hardswish_inputs((3, 24, 5, 7), 8)
    if channels_last:
        x = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    check_parity(_se_fused("hardswish", gate), _se_eager("hardswish", gate), [x, *params], dtype=dtype, names=NAMES)
    sc = torch.randn(x.shape).requires_grad_()
    check_parity(*_se_res("silu", act="hardswish", gate=gate), [x, sc, *params], dtype=dtype, names=RES_NAMES)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [
    (2, 1, 4, 4),      # C = 1
    (2, 13, 3, 5),     # C prime
    (4, 10, 1, 1),     # HW = 1
    (1, 16, 9, 9),     # N = 1 (phased, intra-sample parallel schedule)
    (0, 8, 3, 3),      # N = 0
    (3, 12, 17),       # 1-D spatial
    (2, 6, 3, 4, 5),   # 3-D spatial
    (5, 7, 2, 3),      # N not a multiple of the thread count
])
def test_se_shapes(dtype, shape):
    c = shape[1]
    x = _x(shape)
    params = _se_params(c, max(1, c // 4))
    check_parity(_se_fused("relu", "sigmoid"), _se_eager("relu", "sigmoid"), [x, *params], dtype=dtype, names=NAMES)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_se_weights_between_a_quarter_and_a_whole_sample(dtype, channels_last):
    """FC weights (8 KB) between 1/4 and 1x a sample (fp32 16 KB, bf16 8 KB) that fit an L2 of >= 24 KB with
    it: on 2 threads (N = 4) one sample per task by se_cpu.cpp's L2 rule (before it, the phased schedule).
    Parity only: both schedules give bitwise the same result (test_deterministic_and_thread_independent)."""
    x = _x((4, 64, 8, 8), channels_last=channels_last)
    params = _se_params(64, 16)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        check_parity(_se_fused("relu", "sigmoid"), _se_eager("relu", "sigmoid"), [x, *params], dtype=dtype,
                     names=NAMES)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("shape,r,dtype,per_sample", [
    ((4, 64, 8, 8), 4, torch.float32, 1),    # weights 2 KB <= 1/4 of a 16 KB sample
    ((4, 64, 8, 8), 16, torch.float32, 1),   # 8 KB: between 1/4 and 1x a sample, both fit any L2 >= 24 KB
    ((4, 64, 2, 2), 16, torch.float32, 0),   # 8 KB of weights against a 1 KB sample: phased
    ((4, 64, 4, 4), 16, torch.float64, 0),   # 16 KB of fp64 weights > an 8 KB sample (not 8 KB at 4 bytes each)
    ((3, 64, 8, 8), 4, torch.float32, 0),    # N = 3 on 2 threads: phased (uneven split)
    ((1, 64, 8, 8), 4, torch.float32, 0),    # N = 1: phased, parallel inside the sample
])
def test_cpu_schedule_choice(shape, r, dtype, per_sample):
    """Which schedule gate_driver.h ran (attn_kernels._C.last_cpu_schedule), forward and backward, 2 threads."""
    x = torch.randn(shape, dtype=dtype)
    params = [p.detach() for p in _se_params(shape[1], r, dtype=dtype)]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        y, pooled, s = OPS.se_fwd(x, *params, 0, 0)
        assert ext._C.last_cpu_schedule() == per_sample
        OPS.se_bwd(torch.randn_like(y), x, *params, pooled, s, 0, 0)
        assert ext._C.last_cpu_schedule() == per_sample
        OPS.eca_fwd(x, torch.randn(3, dtype=dtype), False)  # ECA has no weights to re-read: the sample rule only
        assert ext._C.last_cpu_schedule() == (0 if shape[0] in (1, 3) else 1)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("shape", [(4, 10, 1, 1), (1, 16, 6, 6), (2, 6, 3, 4, 5)])
def test_se_channels_last_odd(shape):
    x = _x(shape, channels_last=True)
    params = _se_params(shape[1], 3)
    check_parity(_se_fused("silu", "sigmoid"), _se_eager("silu", "sigmoid"), [x, *params], dtype=torch.float32,
                 names=NAMES)


VIEWS = {
    "batch_stride": lambda x: x.repeat_interleave(2, 0)[::2],                    # flattens: no copy
    "h_crop": lambda x: F.pad(x, (0, 0, 1, 1))[:, :, 1:-1],                      # flattens: no copy
    "w_crop": lambda x: F.pad(x, (1, 1))[..., 1:-1],                             # copy path
    "hw_transposed": lambda x: x.transpose(2, 3).contiguous().transpose(2, 3),   # copy path
    "nhwc_permute": lambda x: x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2),  # channels_last view
}


@pytest.mark.parametrize("view", sorted(VIEWS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_se_non_contiguous(view, dtype):
    x = _x((3, 8, 5, 6))
    params = _se_params(8, 2)
    check_parity(_se_fused("relu", "sigmoid", view=VIEWS[view]), _se_eager("relu", "sigmoid"), [x, *params],
                 dtype=dtype, names=NAMES)


def test_se_conv_weights():
    """1×1 conv weights (out, in, 1, 1): flattened for the C++ ops, gradients in the weights' shape."""
    torch.manual_seed(0)
    c, r = 12, 4
    x = torch.randn(2, c, 3, 3, requires_grad=True)
    ws = [torch.randn(r, c, 1, 1, requires_grad=True), torch.randn(r, requires_grad=True),
          torch.randn(c, r, 1, 1, requires_grad=True), torch.randn(c, requires_grad=True)]
    check_parity(lambda *a: functional.se(*a, backend="cpu"), reference.se, [x] + ws, dtype=torch.float32)
    sc = torch.randn_like(x, requires_grad=True)
    check_parity(lambda *a: functional.se_residual(*a, backend="cpu"), reference.se_residual, [x, sc] + ws,
                 dtype=torch.float32)


def test_se_fp32_weights_with_bf16_x():
    x = _x((2, 16, 4, 4))
    params = _se_params(16, 4)
    check_parity(_se_fused("relu", "sigmoid"), _se_eager("relu", "sigmoid"), [x, *params], dtype=torch.bfloat16,
                 param_dtype=torch.float32, names=NAMES)


def test_se_output_layout_and_dtype():
    for cl in (False, True):
        x = _x((2, 8, 4, 5), channels_last=cl).detach()
        y = functional.se(x, *_se_params(8, 2), backend="cpu")
        ref = reference.se(x, *_se_params(8, 2))
        assert y.stride() == ref.stride() and y.dtype == x.dtype


# ---- ECA ------------------------------------------------------------------------------------------
def _eca_fused(circular, backend="cpu", view=None):
    return lambda x, w: functional.eca(view(x) if view else x, w, circular, backend=backend)


def _eca_eager(circular):
    return lambda x, w: reference.eca(x, w, circular)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("circular", [False, True])
@pytest.mark.parametrize("k", [1, 3, 5, 9, 31])  # 9 and 31 > C = 7 below
@pytest.mark.parametrize("channels_last", [False, True])
def test_eca_parity(dtype, circular, k, channels_last):
    c = 7 if k >= 9 else 41  # 41: interior channels span vector steps and a scalar remainder (conv_channels)
    x = _x((3, c, 4, 5), channels_last=channels_last)
    w = (torch.randn(1, 1, k) * 0.5).requires_grad_()
    check_parity(_eca_fused(circular), _eca_eager(circular), [x, w], dtype=dtype, names={0: "x", 1: "weight"})


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 1, 4, 4), (2, 13, 3, 5), (4, 10, 1, 1), (1, 32, 7, 7), (0, 8, 3, 3),
                                   (3, 12, 17), (2, 6, 3, 4, 5)])
def test_eca_shapes(dtype, shape):
    x = _x(shape)
    w = (torch.randn(3) * 0.5).requires_grad_()
    for circular in (False, True):
        check_parity(_eca_fused(circular), _eca_eager(circular), [x, w], dtype=dtype, names={0: "x", 1: "weight"})


@pytest.mark.parametrize("view", sorted(VIEWS))
def test_eca_non_contiguous(view):
    x = _x((3, 8, 5, 6))
    w = torch.randn(5).requires_grad_()
    check_parity(_eca_fused(True, view=VIEWS[view]), _eca_eager(True), [x, w], dtype=torch.float32)


# ---- schedule-specific paths ------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,c,k", [(1, 37, 5), (4, 16, 3), (2, 7, 7), (3, 40, 9)])
@pytest.mark.parametrize("circular", [False, True])
def test_eca_streaming_path(dtype, n, c, k, circular):
    """Planar maps with HW >= 256 take the one-read streaming forward (halo pooling at chunk edges)."""
    x = _x((n, c, 16, 17))
    w = (torch.randn(k) * 0.5).requires_grad_()
    check_parity(_eca_fused(circular), _eca_eager(circular), [x, w], dtype=dtype, names={0: "x", 1: "weight"})


# The phased schedule's batched excitation (weights heavier than a sample): small_gemm.h's tiles, and for
# z = W2 h + b2 with N > max(8, R/2) and N*C*R >= 2^20 ATen's GEMM (se_cpu.cpp, use_gemm).
BATCHED_EXCITATION = {"tiles": ((8, 512, 2, 2), 256), "gemm": ((40, 1024, 2, 2), 32)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("gate", ["sigmoid", "hardsigmoid"])
@pytest.mark.parametrize("path", BATCHED_EXCITATION)
def test_se_batched_excitation(dtype, gate, path):
    shape, r = BATCHED_EXCITATION[path]
    params = _se_params(shape[1], r)
    check_parity(_se_fused("gelu", gate), _se_eager("gelu", gate), [_x(shape), *params], dtype=dtype, names=NAMES)


@pytest.fixture
def cpu_stream_stores():
    """Force the non-temporal output stores (normally only for outputs above a quarter of the L3)."""
    if not ext._C.can_stream():
        pytest.skip("attn_kernels._C was built without non-temporal stores (portable build)")
    old = ext._C.set_cpu_stream(1)
    yield
    ext._C.set_cpu_stream(old)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(3, 12, 5, 7), (2, 37, 17), (4, 9, 16, 16)])
def test_stream_stores_path(cpu_stream_stores, dtype, channels_last, shape):
    """Streamed rows start anywhere (odd C and HW: a scalar head up to the 32/64-byte boundary); SE and ECA,
    forward and backward (grad_x is streamed too); the ECA (4, 9, 16, 16) case runs its halo forward."""
    channels_last = channels_last and len(shape) == 4
    x = _x(shape, channels_last=channels_last)
    check_parity(_se_fused("relu", "sigmoid"), _se_eager("relu", "sigmoid"), [x, *_se_params(shape[1], 3)],
                 dtype=dtype, names=NAMES)
    w = (torch.randn(5) * 0.5).requires_grad_()
    check_parity(_eca_fused(False), _eca_eager(False), [x, w], dtype=dtype, names={0: "x", 1: "weight"})


# ---- residual block tails: out_act(se(x) + shortcut), out_act(eca(x) + shortcut) ---------------------------
OUT_ACTS = list(reference.OUT_ACTS)
RES_NAMES = {0: "x", 1: "shortcut", 2: "w1", 3: "b1", 4: "w2", 5: "b2"}
ECA_RES_NAMES = {0: "x", 1: "shortcut", 2: "weight"}


def _se_res(out_act, view=None, act="silu", gate="sigmoid", backend="cpu"):
    """(fused, eager) se_residual; ``view`` is applied to the fused run's shortcut."""
    def fused(x, sc, *params):
        return functional.se_residual(x, view(sc) if view else sc, *params, act, gate, out_act, backend=backend)
    return fused, lambda x, sc, *params: reference.se_residual(x, sc, *params, act, gate, out_act)


def _eca_res(out_act, circular, view=None, backend="cpu"):
    def fused(x, sc, w):
        return functional.eca_residual(x, view(sc) if view else sc, w, circular, out_act, backend=backend)
    return fused, lambda x, sc, w: reference.eca_residual(x, sc, w, circular, out_act)


def _check_residuals(shape, dtype, out_act="relu", x_cl=False, sc_cl=False, k=5, circular=False):
    """SE (with a hidden layer) and ECA residual tails: output and every gradient against the reference."""
    x, sc = _x(shape, channels_last=x_cl), _x(shape, channels_last=sc_cl)
    params = _se_params(shape[1], max(1, shape[1] // 4))
    check_parity(*_se_res(out_act), [x, sc, *params], dtype=dtype, names=RES_NAMES)
    w = (torch.randn(k) * 0.5).requires_grad_()
    check_parity(*_eca_res(out_act, circular), [x, sc, w], dtype=dtype, names=ECA_RES_NAMES)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("out_act", OUT_ACTS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_residual_parity(dtype, out_act, channels_last):
    _check_residuals((3, 24, 5, 7), dtype, out_act, x_cl=channels_last, sc_cl=channels_last,
                     circular=out_act in ("silu", "identity"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("x_cl", [False, True])
@pytest.mark.parametrize("out_act", ["relu", "gelu"])
def test_residual_shortcut_in_other_layout(dtype, x_cl, out_act):
    """The shortcut has its own strides: NCHW x with a channels_last shortcut and the other way round."""
    _check_residuals((2, 16, 6, 5), dtype, out_act, x_cl=x_cl, sc_cl=not x_cl)


@pytest.mark.parametrize("view", sorted(VIEWS))
def test_residual_shortcut_views(view):
    """Shortcut views that flatten (batch stride, cropped H) are read in place; the others are copied."""
    x, sc = _x((3, 8, 5, 6)), _x((3, 8, 5, 6))
    check_parity(*_se_res("relu", view=VIEWS[view]), [x, sc, *_se_params(8, 2)], dtype=torch.float32,
                 names=RES_NAMES)
    check_parity(*_eca_res("silu", True, view=VIEWS[view]), [x, sc, torch.randn(3).requires_grad_()],
                 dtype=torch.float32, names=ECA_RES_NAMES)


def test_residual_ese_hardsigmoid():
    x, sc = _x((3, 12, 4, 4)), _x((3, 12, 4, 4))
    check_parity(*_se_res("relu", act="relu", gate="hardsigmoid"), [x, sc, *_se_params(12, 12, ese=True)],
                 dtype=torch.float32, names={0: "x", 1: "shortcut", 4: "w2", 5: "b2"})


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [
    (2, 1, 4, 4),      # C = 1
    (2, 13, 3, 5),     # C prime
    (4, 10, 1, 1),     # HW = 1
    (1, 16, 9, 9),     # N = 1 (phased schedule)
    (0, 8, 3, 3),      # N = 0
    (3, 12, 17),       # 1-D spatial
    (2, 6, 3, 4, 5),   # 3-D spatial
    (5, 7, 2, 3),      # N not a multiple of the thread count
])
def test_residual_shapes(dtype, shape):
    _check_residuals(shape, dtype, "relu", k=3, circular=True)


@pytest.mark.parametrize("shape", [(4, 10, 1, 1), (1, 16, 6, 6), (2, 6, 3, 4, 5)])
def test_residual_channels_last_odd(shape):
    _check_residuals(shape, torch.float32, "silu", x_cl=True, sc_cl=True, k=3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,cl", [
    ((2, 3, 7, 7), False),   # rows of 49: bf16/fp16 one chunk of 32 + a tail of 17 (two partial vectors)
    ((2, 3, 48), False),     # 32 + 16: the tail's second vector empty; fp32: three whole chunks
    ((2, 3, 33), False),     # a tail of one element
    ((2, 48, 2, 2), True),   # channels_last rows of C = 48 / 33: the tails of the column passes
    ((3, 33, 3, 1), True),
])
def test_partial_chunk_tails(dtype, shape, cl):
    """A row's last chunk runs as a partial vector chunk (loads and stores of m < width elements): values
    and gradients through every epilogue that reads or writes beside the row (shortcut, grad_shortcut)."""
    _check_residuals(shape, dtype, "silu", x_cl=cl, sc_cl=cl, k=3)
    x = _x(shape, channels_last=cl)
    check_parity(_se_fused("relu", "sigmoid"), _se_eager("relu", "sigmoid"), [x, *_se_params(shape[1], 2)],
                 dtype=dtype, names=NAMES)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,c,k,circular", [(1, 37, 5, True), (4, 16, 3, False), (2, 7, 7, True)])
def test_eca_residual_streaming_path(dtype, n, c, k, circular):
    """Planar maps with HW >= 256 take the one-read streaming ECA forward, with the residual epilogue."""
    x, sc = _x((n, c, 16, 17)), _x((n, c, 16, 17))
    w = (torch.randn(k) * 0.5).requires_grad_()
    check_parity(*_eca_res("gelu", circular), [x, sc, w], dtype=dtype, names=ECA_RES_NAMES)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("path", BATCHED_EXCITATION)
def test_se_residual_batched_excitation(dtype, path):
    shape, r = BATCHED_EXCITATION[path]
    x, sc = _x(shape), _x(shape)
    check_parity(*_se_res("relu", act="gelu"), [x, sc, *_se_params(shape[1], r)], dtype=dtype, names=RES_NAMES)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(3, 12, 5, 7), (2, 37, 17), (4, 9, 16, 16)])
def test_residual_stream_stores_path(cpu_stream_stores, dtype, channels_last, shape):
    """Streamed y (forward) and streamed grad_x + grad_shortcut (backward, aligned alike) from odd offsets;
    the ECA (4, 9, 16, 16) case runs the halo forward with the residual epilogue."""
    channels_last = channels_last and len(shape) == 4
    _check_residuals(shape, dtype, "silu", x_cl=channels_last, sc_cl=channels_last)


def test_binary_names_its_isa_and_is_refused_on_a_cpu_without_it(monkeypatch):
    """The .so carries its ISA as a marker string (read before loading); a CPU lacking the ISA's flags gets
    an ImportError naming them, not an illegal instruction."""
    import importlib.util

    from attn_kernels import _isa

    path = importlib.util.find_spec("attn_kernels._C").origin
    ext.check_cpu_isa(path)  # this machine built it: accepted
    with open(path, "rb") as f:
        assert f"attn_kernels_cpu_isa={ext._C.cpu_isa()};".encode() in f.read()
    if ext._C.cpu_isa() == "default":
        pytest.skip("the portable build runs anywhere")
    monkeypatch.setattr(_isa, "cpu_flags", lambda: ["fpu", "sse2"])
    with pytest.raises(ImportError, match=f"built for {ext._C.cpu_isa()}, but this CPU lacks"):
        ext.check_cpu_isa(path)


def test_isa_choice():
    from attn_kernels import _isa

    assert _isa.choose_isa("avx2") == "avx2" and _isa.isa_flags("default") == []
    with pytest.raises(ValueError, match="ATTN_KERNELS_CPU_ISA"):
        _isa.choose_isa("avx-512")
    assert _isa.missing_cpu_flags("avx512", ["avx2", "fma", "f16c", "avx512f"]) == ["avx512bw", "avx512vl", "avx512dq"]
    assert _isa.missing_cpu_flags("avx2", []) == []  # no /proc/cpuinfo: cannot tell, do not refuse


def test_schedule_setters_reject_bad_mode():
    with pytest.raises(ValueError, match="mode must be"):
        ext._C.set_cpu_stream(2)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="OpenMP build checked on Linux (gcc) only")
def test_built_with_openmp():
    """at::parallel_for is parallel only in code compiled with -fopenmp: without it every CPU kernel
    runs on one thread (the state of this package before setup.py passed -fopenmp)."""
    assert ext.has_openmp()


# ---- op contracts ----------------------------------------------------------------------------------
def _opcheck_args():
    x = torch.randn(2, 8, 3, 4, dtype=torch.float64, requires_grad=True)
    w1, b1, w2, b2 = (torch.randn(*s, dtype=torch.float64, requires_grad=True) for s in ((2, 8), (2,), (8, 2), (8,)))
    return x, w1, b1, w2, b2


@pytest.mark.parametrize("ese", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_opcheck_se(ese, channels_last):
    x, w1, b1, w2, b2 = _opcheck_args()
    if channels_last:
        x = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    if ese:
        w1 = b1 = None
        w2 = torch.randn(8, 8, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(OPS.se_fwd.default, (x, w1, b1, w2, b2, 1, 1))
    y, pooled, s = (t.detach() for t in OPS.se_fwd(x, w1, b1, w2, b2, 1, 1))
    d = [None if t is None else t.detach() for t in (x, w1, b1, w2, b2)]
    torch.library.opcheck(OPS.se_bwd.default, (torch.randn_like(y), *d, pooled, s, 1, 1))


@pytest.mark.parametrize("circular", [False, True])
def test_opcheck_eca(circular):
    x = torch.randn(2, 8, 3, 4, requires_grad=True)
    w = torch.randn(1, 1, 3, requires_grad=True)
    torch.library.opcheck(OPS.eca_fwd.default, (x, w, circular))
    y, pooled, s = (t.detach() for t in OPS.eca_fwd(x, w, circular))
    torch.library.opcheck(OPS.eca_bwd.default, (torch.randn_like(y), x.detach(), w.detach(), pooled, s, circular))


@pytest.mark.parametrize("out_act", [0, 1, 3])
@pytest.mark.parametrize("ese", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_opcheck_se_residual(out_act, ese, channels_last):
    x, w1, b1, w2, b2 = _opcheck_args()
    sc = torch.randn(2, 8, 3, 4, dtype=torch.float64, requires_grad=True)
    if channels_last:  # the shortcut stays NCHW: a different layout than x
        x = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    if ese:
        w1 = b1 = None
        w2 = torch.randn(8, 8, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(OPS.se_residual_fwd.default, (x, sc, w1, b1, w2, b2, 1, 0, out_act))
    y, pooled, s = (t.detach() for t in OPS.se_residual_fwd(x, sc, w1, b1, w2, b2, 1, 0, out_act))
    d = [None if t is None else t.detach() for t in (x, sc, w1, b1, w2, b2)]
    torch.library.opcheck(OPS.se_residual_bwd.default, (torch.randn_like(y), *d, pooled, s, 1, 0, out_act))


@pytest.mark.parametrize("out_act", [0, 2, 3])
@pytest.mark.parametrize("circular", [False, True])
def test_opcheck_eca_residual(out_act, circular):
    x = torch.randn(2, 8, 3, 4, requires_grad=True)
    sc = torch.randn(2, 8, 3, 4).to(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(1, 1, 3, requires_grad=True)
    torch.library.opcheck(OPS.eca_residual_fwd.default, (x, sc, w, circular, out_act))
    y, pooled, s = (t.detach() for t in OPS.eca_residual_fwd(x, sc, w, circular, out_act))
    torch.library.opcheck(OPS.eca_residual_bwd.default,
                          (torch.randn_like(y), x.detach(), sc.detach(), w.detach(), pooled, s, circular, out_act))


@pytest.mark.parametrize("out_act", OUT_ACTS)
def test_gradcheck_residual(out_act):
    x, sc = torch.randn(2, 5, 3, 2), torch.randn(2, 5, 3, 2)
    w1, b1, w2, b2 = torch.randn(2, 5), torch.randn(2), torch.randn(5, 2), torch.randn(5)
    ins = [t.requires_grad_() for t in (x, sc, w1, b1, w2, b2)]
    gradcheck(lambda *a: ext.se_residual(*a, "silu", "sigmoid", out_act), ins)
    gradcheck(lambda x_, sc_, w_: ext.eca_residual(x_, sc_, w_, True, out_act), [x, sc, torch.randn(5).requires_grad_()])


@pytest.mark.parametrize("gate", ["sigmoid", "hardsigmoid"])
@pytest.mark.parametrize("act", ["relu", "silu", "gelu"])
def test_gradcheck_se(act, gate):
    x = torch.randn(2, 5, 3, 2)
    w1, b1, w2, b2 = torch.randn(2, 5), torch.randn(2), torch.randn(5, 2), torch.randn(5)
    ins = [t.requires_grad_() for t in (x, w1, b1, w2, b2)]
    gradcheck(lambda *a: ext.se(*a, act, gate), ins)
    gradcheck(lambda x_, w_, b_: ext.se(x_, None, None, w_, b_, act, gate),
              [x, torch.randn(5, 5).requires_grad_(), b2])


@pytest.mark.parametrize("gate", ["sigmoid", "hardsigmoid"])
def test_gradcheck_se_hardswish(gate):
    gradcheck(lambda *a: ext.se(*a, "hardswish", gate), se_hardswish_inputs((2, 5, 3, 2), 4))


@pytest.mark.parametrize("circular", [False, True])
@pytest.mark.parametrize("c,k", [(5, 7), (24, 3), (24, 5)])  # C < k: no interior; C = 24: float64 vector steps
def test_gradcheck_eca(circular, c, k):
    x = torch.randn(2, c, 3, 2).requires_grad_()
    gradcheck(lambda x_, w_: ext.eca(x_, w_, circular), [x, torch.randn(k).requires_grad_()])


@pytest.mark.parametrize("case", ["se", "se_n1", "se_n3", "se_cl_n3", "se_tiles", "se_ps_n3", "eca_stream_n1", "eca_cl",
                                  "se_res", "se_res_n1", "se_res_cl_n3", "eca_res_stream_n1", "eca_res_cl"])
def test_deterministic_and_thread_independent(case):
    """Bitwise equal run to run and with 1 thread vs the default: every reduction has one owner and a
    fixed order. (The forward's GEMM path for W2 h, many samples and a short R, is excluded: ATen's GEMM
    does not promise that.) se_tiles: the batched excitation's products (small_gemm.h) split over several
    tasks each. se_ps_n3 / se_n3 / se_cl_n3: one sample per task on 1 thread, the phased schedule (one batched
    excitation, tiles of several samples) on 2 or more; C = 40 is not a multiple of the vector width. The
    residual cases (out_act silu) include grad_shortcut."""
    shape = {"se": (4, 32, 6, 6), "se_n1": (1, 40, 6, 6), "se_n3": (3, 40, 5, 5), "se_cl_n3": (3, 40, 5, 5),
             "se_tiles": (9, 512, 2, 2), "se_ps_n3": (3, 16, 16, 16), "eca_stream_n1": (1, 40, 16, 16),
             "eca_cl": (3, 40, 5, 5)}[case.replace("_res", "")]
    x = _x(shape, channels_last=case.endswith("cl") or "_cl_" in case).detach()
    params = [p.detach() for p in _se_params(shape[1], 8)]
    taps = torch.randn(5)
    gy, sc = torch.randn_like(x), torch.randn(shape)

    def run():
        if case.startswith("se_res"):
            y, pooled, s = OPS.se_residual_fwd(x, sc, *params, 0, 0, 1)
            return (y, pooled, s) + tuple(OPS.se_residual_bwd(gy, x, sc, *params, pooled, s, 0, 0, 1))
        if case.startswith("eca_res"):
            y, pooled, s = OPS.eca_residual_fwd(x, sc, taps, True, 1)
            return (y, pooled, s) + tuple(OPS.eca_residual_bwd(gy, x, sc, taps, pooled, s, True, 1))
        if case.startswith("se"):
            y, pooled, s = OPS.se_fwd(x, *params, 0, 0)
            return (y,) + tuple(OPS.se_bwd(gy, x, *params, pooled, s, 0, 0))
        y, pooled, s = OPS.eca_fwd(x, taps, True)
        return (y, pooled, s) + tuple(OPS.eca_bwd(gy, x, taps, pooled, s, True))

    threads = torch.get_num_threads()
    first = run()
    try:
        torch.set_num_threads(1)
        single = run()
    finally:
        torch.set_num_threads(threads)
    for a, b, c in zip(first, run(), single):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_torch_compile_fullgraph():
    x = torch.randn(2, 8, 4, 4)
    params = _se_params(8, 2)
    fn = torch.compile(lambda x_: ext.se(x_, *params, "relu", "sigmoid") + 1, fullgraph=True, backend="eager")
    assert_close(fn(x), reference.se(x, *params) + 1)


def test_inputs_not_modified():
    x = torch.randn(2, 8, 4, 4)
    params = _se_params(8, 2)
    x0 = x.clone()
    ext.se(x, *params, "relu", "sigmoid")
    ext.eca(x, torch.randn(3), True)
    sc = torch.randn(2, 8, 4, 4).requires_grad_()
    sc0 = sc.detach().clone()
    x.requires_grad_()
    ext.se_residual(x, sc, *params, "relu", "sigmoid", "relu").sum().backward()
    ext.eca_residual(x, sc, torch.randn(3), True, "gelu").sum().backward()
    assert torch.equal(x.detach(), x0) and torch.equal(sc.detach(), sc0)


def test_residual_output_layout_dtype_and_no_alias():
    for cl in (False, True):
        x, sc = _x((2, 8, 4, 5), channels_last=cl).detach(), _x((2, 8, 4, 5), channels_last=cl).detach()
        params = [p.detach() for p in _se_params(8, 2)]
        y = functional.se_residual(x, sc, *params, backend="cpu")
        assert y.stride() == reference.se_residual(x, sc, *params).stride() and y.dtype == x.dtype
        y, pooled, s = OPS.eca_residual_fwd(x, sc, torch.randn(3), False, 3)
        outs = (y, *OPS.eca_residual_bwd(torch.randn_like(x), x, sc, torch.randn(3), pooled, s, False, 3))
        ptrs = {t.data_ptr() for t in outs}
        assert len(ptrs) == len(outs) and not ptrs & {x.data_ptr(), sc.data_ptr()}


# ---- bad input → clear error (the ops validate on their own too, beyond functional's checks) ------
@pytest.mark.parametrize("call,exc,match", [
    (lambda: OPS.se_fwd(torch.randn(2, 8, 3, 3), None, None, torch.randn(8, 4), None, 0, 0), ValueError, "w2"),
    (lambda: OPS.se_fwd(torch.randn(2, 8), None, None, torch.randn(8, 8), None, 0, 0), ValueError, "spatial"),
    (lambda: OPS.se_fwd(torch.ones(2, 8, 3, 3, dtype=torch.int32), None, None, torch.randn(8, 8), None, 0, 0),
     TypeError, "float"),
    (lambda: OPS.se_fwd(torch.randn(2, 8, 3, 3), torch.randn(2, 8), None, torch.randn(8, 2), None, 7, 0),
     ValueError, "act"),
    (lambda: OPS.se_fwd(torch.randn(2, 8, 3, 3), torch.randn(2, 8), torch.randn(3), torch.randn(8, 2), None, 0, 0),
     ValueError, "b1"),
    (lambda: OPS.eca_fwd(torch.randn(2, 8, 3, 3), torch.randn(4), False), ValueError, "odd"),
    (lambda: OPS.eca_fwd(torch.randn(2, 8, 0, 3), torch.randn(3), False), ValueError, "empty spatial"),
    (lambda: OPS.eca_fwd(torch.randn(2, 8, 3, 3), torch.randn(2, 3), False), ValueError, r"\(k,\)"),
    (lambda: OPS.se_residual_fwd(torch.randn(2, 8, 3, 3), torch.randn(2, 8, 3, 4), None, None, torch.randn(8, 8), None,
                                 0, 0, 0), ValueError, r"shortcut has shape \[2, 8, 3, 4\], expected \[2, 8, 3, 3\]"),
    (lambda: OPS.eca_residual_fwd(torch.randn(2, 8, 3, 3), torch.randn(2, 8, 9), torch.randn(3), False, 0),
     ValueError, "shortcut has shape"),
    (lambda: OPS.eca_residual_fwd(torch.randn(2, 8, 3, 3), torch.randn(2, 8, 3, 3, dtype=torch.float64),
                                  torch.randn(3), False, 0), TypeError, "shortcut dtype"),
    (lambda: OPS.eca_residual_fwd(torch.randn(2, 8, 3, 3), torch.randn(2, 8, 3, 3), torch.randn(3), False, 4),
     ValueError, "out_act"),
    (lambda: OPS.eca_residual_bwd(torch.randn(2, 8, 3, 3), torch.randn(2, 8, 3, 3), torch.randn(2, 8, 1, 3),
                                  torch.randn(3), torch.randn(2, 8), torch.randn(2, 8), False, 0),
     ValueError, "shortcut has shape"),
])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_functional_bad_input_same_error_as_reference():
    with pytest.raises(ValueError, match="gate"):
        functional.se(torch.randn(2, 8, 3, 3), None, None, torch.randn(8, 8), None, gate="tanh", backend="cpu")
    with pytest.raises(ValueError, match="shortcut has shape"):
        functional.eca_residual(torch.randn(2, 8, 3, 3), torch.randn(2, 8, 3), torch.randn(3), backend="cpu")


# ---- dispatch --------------------------------------------------------------------------------------
def test_auto_picks_cpu_backend():
    assert _backend.unavailable_reason("cpu", "cpu") is None
    with use_backend("auto"):
        assert _backend.resolve("se", "cpu") is ext.se
        assert _backend.resolve("eca", "cpu") is ext.eca
        assert _backend.resolve("se_residual", "cpu") is ext.se_residual
        assert _backend.resolve("eca_residual", "cpu") is ext.eca_residual


def test_cuda_row_loops_switch():
    """set_cuda_row_loops returns the previous setting (-1: built without the CUDA kernels, a no-op); off by
    default, ATTN_KERNELS_CUDA_ROW_LOOPS=1 at load turns it on (a child process)."""
    import os
    import subprocess

    previous = ext._C.set_cuda_row_loops(True)
    if previous == -1:
        assert not ext.has_cuda() and ext._C.set_cuda_row_loops(False) == -1
        return
    try:
        assert ext._C.set_cuda_row_loops(False) == 1
    finally:
        ext._C.set_cuda_row_loops(previous == 1)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    code = "from attn_kernels.ops import ext; print(ext._C.set_cuda_row_loops(False))"
    for value, expect in (("1", "1"), ("", "0")):
        env = dict(os.environ, ATTN_KERNELS_CUDA_ROW_LOOPS=value)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root,
                             timeout=120)
        lines = out.stdout.strip().splitlines()
        assert lines and lines[-1] == expect, out.stderr[-2000:]


def test_info_reports_cpu_available():
    import attn_kernels

    assert attn_kernels.info()["backends"]["cpu"]["cpu"] == "available"


# ---- CUDA kernels (GPU only; never run in CI) -----------------------------------------------------
@pytest.fixture(params=[(True, False), (False, False), (True, True), (False, True)],
                ids=["cluster", "portable", "cluster-rows", "portable-rows"])
def cuda_schedule(request):
    """Run each CUDA test with the sm_90 cluster forward enabled (used where it applies) and disabled, each
    with the per-element loops (default) and with the row loops + cp.async copies (set_cuda_row_loops, off by
    default until a GPU has run these). Yields whether the cluster forward is enabled."""
    cluster, rows = request.param
    ext._C.set_cuda_cluster(cluster)
    previous = ext._C.set_cuda_row_loops(rows)
    yield cluster
    ext._C.set_cuda_cluster(True)
    ext._C.set_cuda_row_loops(previous == 1)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(3, 24, 5, 7), (2, 256, 56, 56), (1, 2048, 7, 7), (2, 13, 1, 1)])
def test_cuda_se_parity(dtype, channels_last, shape, cuda_schedule):
    if not ext.has_cuda():
        pytest.skip("attn_kernels._C was built without CUDA kernels")
    c = shape[1]
    x = _x(shape, device="cuda", channels_last=channels_last)
    params = _se_params(c, max(1, c // 16), device="cuda")
    check_parity(_se_fused("relu", "sigmoid", backend="cuda"), _se_eager("relu", "sigmoid"), [x, *params],
                 dtype=dtype, names=NAMES)
    ese = _se_params(c, c, ese=True, device="cuda")
    check_parity(_se_fused("relu", "hardsigmoid", backend="cuda"), _se_eager("relu", "hardsigmoid"), [x, *ese],
                 dtype=dtype, names=NAMES)
    if c >= 4:  # hardswish bottleneck, pre-activations in all three pieces (needs R >= 4)
        xh, *hs = se_hardswish_inputs(shape, max(4, c // 16), "cuda")
        if channels_last:
            xh = xh.detach().to(memory_format=torch.channels_last).requires_grad_()
        check_parity(_se_fused("hardswish", "sigmoid", backend="cuda"), _se_eager("hardswish", "sigmoid"),
                     [xh, *hs], dtype=dtype, names=NAMES)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape,k", [((3, 16, 5, 7), 3), ((2, 512, 28, 28), 5), ((2, 7, 3, 3), 9)])
def test_cuda_eca_parity(dtype, channels_last, shape, k, cuda_schedule):
    if not ext.has_cuda():
        pytest.skip("attn_kernels._C was built without CUDA kernels")
    x = _x(shape, device="cuda", channels_last=channels_last)
    w = torch.randn(k, device="cuda").requires_grad_()
    for circular in (False, True):
        check_parity(_eca_fused(circular, backend="cuda"), _eca_eager(circular), [x, w], dtype=dtype)


def _need_cuda_kernels():
    if not ext.has_cuda():
        pytest.skip("attn_kernels._C was built without CUDA kernels")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_cuda_cluster_path_taken(dtype, channels_last):
    """On sm_90+ the (1, 2048, 7, 7) forward runs as one thread-block cluster per sample (last_cuda_path 1);
    with the cluster schedule disabled it runs the portable one (path 0), with the same results."""
    _need_cuda_kernels()
    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("the thread-block-cluster forward needs sm_90+")
    x = _x((1, 2048, 7, 7), dtype=dtype, device="cuda", channels_last=channels_last).detach()
    params = [p.detach() for p in _se_params(2048, 128, device="cuda")]
    try:
        ext._C.set_cuda_cluster(True)
        cluster = OPS.se_fwd(x, *params, 0, 0)
        assert ext._C.last_cuda_path() == 1, (
            "cluster forward not taken on an sm_90+ device: was the extension built without sm_90 code "
            "(TORCH_CUDA_ARCH_LIST)?")
        ext._C.set_cuda_cluster(False)
        portable = OPS.se_fwd(x, *params, 0, 0)
        assert ext._C.last_cuda_path() == 0
    finally:
        ext._C.set_cuda_cluster(True)
    for name, a, b in zip(("y", "pooled", "s"), cluster, portable):
        assert_close(a, b, name=name)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(1, 2048, 7, 7), (3, 257, 5, 3), (2, 256, 56, 56), (4, 64, 1, 1)])
def test_cuda_row_loops_bit_identical(dtype, channels_last, shape):
    """The row loops (set_cuda_row_loops: cp.async slice copies, row-wise scaling) take the cluster forward
    where the per-element version does, and give the same bits: forward outputs and backward gradients,
    NCHW (one contiguous run, a head to the 16-byte boundary) and channels_last (16-byte row chunks, or
    the row fallback for C = 257), HW = 1."""
    _need_cuda_kernels()
    x = _x(shape, dtype=dtype, device="cuda", channels_last=channels_last).detach()
    params = [p.detach() for p in _se_params(shape[1], max(1, shape[1] // 16), device="cuda")]
    gy = torch.randn_like(x)
    runs = {}
    previous = ext._C.set_cuda_row_loops(False)
    try:
        for rows in (False, True):
            ext._C.set_cuda_row_loops(rows)
            out = OPS.se_fwd(x, *params, 0, 0)
            path = ext._C.last_cuda_path()
            xg = x.clone().requires_grad_()
            grads = torch.autograd.grad(_se_fused("relu", "sigmoid", backend="cuda")(xg, *params), xg, gy)
            runs[rows] = (path, [t.clone() for t in out] + [g.clone() for g in grads])
    finally:
        ext._C.set_cuda_row_loops(previous == 1)
    assert runs[True][0] == runs[False][0]  # the same schedule (cluster where it fits, both ways)
    for i, (a, b) in enumerate(zip(runs[False][1], runs[True][1])):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=lambda m, i=i: f"output {i}: {m}")


@pytest.mark.gpu
def test_cuda_residual_ops_refuse_cuda_tensors():
    """The residual ops have only a CPU kernel: on CUDA tensors the dispatcher says so, and neither the cpu
    backend nor auto routes CUDA tensors to them."""
    _need_cuda_kernels()
    x = torch.randn(2, 8, 3, 3, device="cuda")
    with pytest.raises(NotImplementedError, match="CUDA"):
        OPS.eca_residual_fwd(x, x, torch.randn(3, device="cuda"), False, 0)
    with pytest.raises(_backend.BackendUnavailableError, match="cpu tensors"):
        functional.eca_residual(x, x, torch.randn(3, device="cuda"), backend="cpu")
    assert _backend.resolve("se_residual", "cuda", "auto") is not ext.se_residual


@pytest.mark.gpu
def test_cuda_se_beyond_shared_memory():
    """C + R floats past the device's opt-in shared memory per block (227 KB on H100/H200): the excitation,
    forward and backward, runs from global memory instead of failing with 'invalid argument' (and the
    cluster forward, whose blocks hold C floats, does not apply)."""
    _need_cuda_kernels()
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    optin = getattr(props, "shared_memory_per_block_optin", 227 * 1024)
    c = optin // 4 + 16
    x = _x((2, c, 2, 2), device="cuda")
    w1 = (torch.randn(4, c, device="cuda") / c ** 0.5).requires_grad_()
    w2 = torch.randn(c, 4, device="cuda").requires_grad_()
    b1, b2 = torch.randn(4, device="cuda").requires_grad_(), torch.randn(c, device="cuda").requires_grad_()
    check_parity(_se_fused("relu", "sigmoid", backend="cuda"), _se_eager("relu", "sigmoid"), [x, w1, b1, w2, b2],
                 dtype=torch.float32, names=NAMES)
    assert ext._C.last_cuda_path() == 0


@pytest.mark.gpu
def test_cuda_effective_se_large_c():
    """Effective SE at C = 16384 (W2 is C x C, 1 GiB): the backward excitation used to ask for 5C floats of
    shared memory (320 KB, past the 227 KB limit) where it needs 2C (128 KB)."""
    _need_cuda_kernels()
    c = 16384
    x = _x((2, c, 2, 2), device="cuda")
    w2 = (torch.randn(c, c, device="cuda") / c ** 0.5).requires_grad_()
    b2 = torch.randn(c, device="cuda").requires_grad_()
    check_parity(_se_fused("relu", "hardsigmoid", backend="cuda"), _se_eager("relu", "hardsigmoid"),
                 [x, None, None, w2, b2], dtype=torch.float32, names=NAMES)


@pytest.mark.gpu
@pytest.mark.parametrize("ese", [False, True])
@pytest.mark.parametrize("shape", [(1, 2048, 7, 7), (4, 64, 9, 9)])
def test_cuda_graph_capture_se(shape, ese, cuda_schedule):
    """The cuda backend's se forward + backward captured in a CUDA graph and replayed on new inputs gives
    what an eager call gives (bitwise: every reduction has one owner and a fixed order). The schedule is
    chosen from cached answers before launching, so the capture never sees a refused cluster launch."""
    _need_cuda_kernels()
    c = shape[1]
    x = torch.randn(shape, device="cuda")
    params = [None if p is None else p.detach() for p in _se_params(c, max(1, c // 16), ese=ese, device="cuda")]
    gy = torch.randn_like(x)

    def step():
        y, pooled, s = OPS.se_fwd(x, *params, 0, 0)
        return (y, pooled, s) + tuple(OPS.se_bwd(gy, x, *params, pooled, s, 0, 0))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture (one-time probes, allocator pools)
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    if cuda_schedule and torch.cuda.get_device_capability() >= (9, 0):
        assert ext._C.last_cuda_path() == 1  # the cluster launch is part of the graph
    with torch.no_grad():
        x.copy_(torch.randn_like(x))
        gy.copy_(torch.randn_like(gy))
    graph.replay()
    torch.cuda.synchronize()
    expected = step()
    for i, (a, b) in enumerate(zip(captured, expected)):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=lambda m, i=i: f"output {i}: {m}")


# ---- a crash of the CPU kernels is one failing test, not a dead worker per test -------------------------
_SMOKE = r"""
import faulthandler, sys, torch
faulthandler.enable()
from attn_kernels.ops import ext
print("built with", ext._C.build_info() if hasattr(ext._C, "build_info") else "?", flush=True)
for threads in (1, 2, 16):
    torch.set_num_threads(threads)
    for cl in (False, True):
        x = torch.randn(2, 8, 4, 5)
        if cl:
            x = x.to(memory_format=torch.channels_last)
        x.requires_grad_()
        w1, b1, w2, b2 = (torch.randn(*s, requires_grad=True) for s in ((2, 8), (2,), (8, 2), (8,)))
        ext.se(x, w1, b1, w2, b2).sum().backward()
        ext.eca(x, torch.randn(3, requires_grad=True)).sum().backward()
print("ok", flush=True)
"""


def test_cpu_kernels_run_in_a_fresh_process():
    """The first SE / ECA CPU kernel call of a process, forward and backward, at 1, 2 and 16 threads, in a child
    process: a build whose CPU kernels crash (seen once: every first call segfaulted, killing each xdist worker)
    fails here with the child's signal, its faulthandler trace and the compiler the binary was built with."""
    import os
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.run([sys.executable, "-c", _SMOKE], capture_output=True, text=True, timeout=300, env=env,
                          cwd=root)
    assert proc.returncode == 0 and proc.stdout.rstrip().endswith("ok"), (
        f"CPU kernels failed in a fresh process (exit code {proc.returncode}; negative: killed by that signal)\n"
        f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-6000:]}")
