"""The eager path (attn_kernels/ops/_eager.py): eager calls skip the torch.library op's dispatch and run
the same launchers under one autograd.Function. Held here: the two paths give bit-identical outputs and
gradients for every fused op, the eager path really skips the op (and the op path really uses it), and
everything that must see the op -- tracing, dispatch modes, transforms, subclasses -- still does.
"""
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from attn_kernels import functional
from attn_kernels._backend import unavailable_reason
from attn_kernels.ops import _eager

pytestmark = pytest.mark.triton


def _r(*shape, device):
    return torch.randn(shape, device=device, requires_grad=True)


# (name, backend, call, inputs(device)): small shapes, several channel tiles not needed here (the op
# tests cover the kernels; this is about the two paths agreeing).
CASES = [
    ("se", "triton", lambda x, w1, b1, w2, b2: functional.se(x, w1, b1, w2, b2, "silu", "sigmoid", backend="triton"),
     lambda d: [_r(2, 6, 3, 3, device=d), _r(2, 6, device=d), _r(2, device=d), _r(6, 2, device=d), _r(6, device=d)]),
    ("se_residual", "triton",
     lambda x, sc, w1, b1, w2, b2: functional.se_residual(x, sc, w1, b1, w2, b2, "relu", "hardsigmoid", "relu",
                                                          backend="triton"),
     lambda d: [_r(2, 6, 3, 3, device=d), _r(2, 6, 3, 3, device=d), _r(2, 6, device=d), _r(2, device=d),
                _r(6, 2, device=d), _r(6, device=d)]),
    ("eca", "triton", lambda x, w: functional.eca(x, w, True, backend="triton"),
     lambda d: [_r(2, 7, 3, 2, device=d), _r(3, device=d)]),
    ("eca_residual", "triton", lambda x, sc, w: functional.eca_residual(x, sc, w, False, "silu", backend="triton"),
     lambda d: [_r(2, 7, 3, 2, device=d), _r(2, 7, 3, 2, device=d), _r(1, 1, 3, device=d)]),
    ("cbam", "triton", lambda x, w1, w2, sw: functional.cbam(x, w1, w2, sw, backend="triton"),
     lambda d: [_r(2, 6, 4, 3, device=d), _r(2, 6, device=d), _r(6, 2, device=d), _r(1, 2, 3, 3, device=d)]),
    ("dmk_eca", "triton", lambda x, fw, fb, t3, t5, t7: functional.dmk_eca(x, fw, fb, t3, t5, t7, backend="triton"),
     lambda d: [_r(2, 9, 2, 3, device=d), _r(3, 9, device=d), _r(3, device=d), _r(3, device=d), _r(5, device=d),
                _r(7, device=d)]),
    ("bi_eca", "triton",
     lambda x, wf, wb, w1, b1, w2, b2: functional.bi_eca(x, wf, wb, w1, b1, w2, b2, backend="triton"),
     lambda d: [_r(2, 8, 2, 3, device=d), _r(3, device=d), _r(3, device=d), _r(2, 8, device=d), _r(2, device=d),
                _r(2, 2, device=d), _r(2, device=d)]),
    ("se", "cpu", lambda x, w1, b1, w2, b2: functional.se(x, w1, None, w2, b2, "relu", "sigmoid", backend="cpu"),
     lambda d: [_r(2, 6, 3, 3, device=d), _r(2, 6, device=d), None, _r(6, 2, device=d), _r(6, device=d)]),
    ("eca", "cpu", lambda x, w: functional.eca(x, w, False, backend="cpu"),
     lambda d: [_r(2, 7, 3, 2, device=d), _r(3, device=d)]),
    ("se_residual", "cpu",
     lambda x, sc, w1, b1, w2, b2: functional.se_residual(x, sc, w1, b1, w2, b2, "silu", "sigmoid", "silu",
                                                          backend="cpu"),
     lambda d: [_r(2, 6, 3, 3, device=d), _r(2, 6, 3, 3, device=d), _r(2, 6, device=d), _r(2, device=d),
                _r(6, 2, device=d), _r(6, device=d)]),
    ("eca_residual", "cpu", lambda x, sc, w: functional.eca_residual(x, sc, w, True, "relu", backend="cpu"),
     lambda d: [_r(2, 7, 3, 2, device=d), _r(2, 7, 3, 2, device=d), _r(5, device=d)]),
]
IDS = [f"{backend}-{name}" for name, backend, _, _ in CASES]


def _device_for(backend: str, device: str) -> str:
    if backend == "cpu":
        why = unavailable_reason("cpu", "cpu")
        if why:
            pytest.skip(why)
        return "cpu"
    return device


def _run(call, inputs):
    """Output, every input gradient, and the profiled op / autograd-node names of one forward+backward."""
    for t in inputs:
        if t is not None:
            t.grad = None
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        y = call(*inputs)
        y.backward(torch.linspace(-1, 1, y.numel(), device=y.device).reshape(y.shape))
    names = {e.name for e in prof.events()}
    return y.detach(), [None if t is None else t.grad for t in inputs], names


@pytest.mark.parametrize("name,backend,call,make", CASES, ids=IDS)
def test_eager_path_is_the_op_bit_for_bit(name, backend, call, make, device, monkeypatch):
    dev = _device_for(backend, device)
    inputs = make(dev)
    y_fast, g_fast, names_fast = _run(call, inputs)
    monkeypatch.setattr(_eager, "ENABLED", False)
    y_op, g_op, names_op = _run(call, inputs)
    assert torch.equal(y_fast, y_op)
    for i, (a, b) in enumerate(zip(g_fast, g_op)):
        assert (a is None) == (b is None), i
        assert a is None or torch.equal(a, b), f"gradient of input {i}"
    # which path ran: the eager one's autograd node, or the op's (the registered autograd formula)
    assert any("_EagerBackward" in n for n in names_fast), sorted(names_fast)
    assert not any("GeneratedBackwardFor" in n for n in names_fast), sorted(names_fast)
    assert any("GeneratedBackwardFor" in n for n in names_op) and not any("_EagerBackward" in n for n in names_op)
    if backend == "triton":  # the Triton ops are not dispatched at all on the eager path, only named
        op = {"eca_residual": "eca"}.get(name, name)  # eca_residual is the eca op with a shortcut
        ops = {f"attn_kernels::{op}_fwd", f"attn_kernels::{op}_bwd"}
        assert not ops & names_fast and f"attn_kernels::{op}_fwd[eager]" in names_fast, sorted(names_fast)
        assert ops <= names_op, sorted(names_op)


def test_no_grad_calls_run_the_launcher_alone(device):
    x, w = torch.randn(2, 5, 3, 3, device=device), torch.randn(3, device=device, requires_grad=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with torch.no_grad():
            y = functional.eca(x, w, backend="triton")
    names = {e.name for e in prof.events()}
    assert not y.requires_grad and "attn_kernels::eca_fwd" not in names, sorted(names)


def test_double_backward_refuses_as_the_op_does(device):
    """create_graph: the backward runs the registered backward op, which has no derivative -- an error, as
    on the op path, never a silently zero second derivative."""
    x, w = torch.randn(2, 5, 3, 3, device=device, requires_grad=True), torch.randn(3, device=device)
    y = functional.eca(x, w, backend="triton")
    (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="autograd"):
        gx.sum().backward()


def test_jit_trace_records_the_op(device):
    x, w = torch.randn(2, 5, 3, 3, device=device), torch.randn(3, device=device)
    traced = torch.jit.trace(lambda a, b: functional.eca(a, b, backend="triton"), (x, w), check_trace=False)
    assert "attn_kernels::eca_fwd" in str(traced.graph)


def test_what_must_see_the_op_still_does(device):
    """fast() is False under a dispatch mode (fake tensors), under functorch transforms, for tensor
    subclasses and with ATTN_KERNELS_EAGER_FAST=0; True for plain tensors and Parameters."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    x = torch.randn(2, 3, 2, 2, device=device)
    w = torch.nn.Parameter(torch.randn(3, device=device))
    assert _eager.fast((x, None, w, True, "none"))
    mode = FakeTensorMode()
    fx, fw = mode.from_tensor(x), mode.from_tensor(w.detach())
    with mode:
        assert not _eager.fast((fx,))
        y = functional.eca(fx, fw, backend="triton")  # through the op's fake kernel
        assert y.shape == x.shape
    seen = []
    torch.func.vmap(lambda t: seen.append(_eager.fast((t,))) or t)(x)
    assert seen == [False]

    class Sub(torch.Tensor):
        pass
    assert not _eager.fast((x.as_subclass(Sub),))
    try:
        _eager.ENABLED = False
        assert not _eager.fast((x,))
    finally:
        _eager.ENABLED = True


@pytest.mark.parametrize("residual", [False, True], ids=["se", "se_residual"])
def test_se_bias_grads_stored_in_the_bias_dtype(residual, device, monkeypatch):
    """Low-precision biases (bf16 b1, fp16 b2): the eager path's backward has the weight-gradient kernel
    store their gradients in their own dtypes (no cast after it); the op path's formula casts the fp32
    gradients the backward op returns. On a GPU both round to nearest even: bit-identical. The Triton
    interpreter's fp32 -> bf16 conversion truncates instead, so there the two may differ by one bf16 ulp."""
    torch.manual_seed(5)
    x = _r(3, 12, 4, 4, device=device).to(torch.bfloat16)
    params = [_r(4, 12, device=device).to(torch.bfloat16), _r(4, device=device).to(torch.bfloat16),
              _r(12, 4, device=device).to(torch.bfloat16), _r(12, device=device).to(torch.float16)]
    inputs = [x.detach().requires_grad_()] + [p.detach().requires_grad_() for p in params]
    if residual:
        inputs.insert(1, _r(3, 12, 4, 4, device=device).to(torch.bfloat16).detach().requires_grad_())
        call = lambda *a: functional.se_residual(*a, "gelu", "sigmoid", "relu", backend="triton")  # noqa: E731
    else:
        call = lambda *a: functional.se(*a, "gelu", "sigmoid", backend="triton")  # noqa: E731
    y_fast, g_fast, names_fast = _run(call, inputs)
    monkeypatch.setattr(_eager, "ENABLED", False)
    y_op, g_op, names_op = _run(call, inputs)
    assert torch.equal(y_fast, y_op)
    for i, (a, b) in enumerate(zip(g_fast, g_op)):
        assert a.dtype == inputs[i].dtype, f"gradient of input {i}"
        if device == "cpu" and a.dtype == torch.bfloat16:  # the interpreter: one ulp (2^-7 relative) at most
            torch.testing.assert_close(a, b, rtol=2 ** -7, atol=0, msg=f"gradient of input {i}")
        else:
            assert torch.equal(a, b), f"gradient of input {i}"
    # casts in a forward+backward with a grad_y of y's dtype: none on the eager path, the op path's two
    casts = []
    for enabled in (True, False):
        monkeypatch.setattr(_eager, "ENABLED", enabled)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            y = call(*inputs)
            y.backward(torch.ones_like(y))
        casts.append(sum(e.name == "aten::_to_copy" for e in prof.events()))
    assert casts == [0, 2], casts
