"""64-bit addressing: every fused op, every backend, on inputs whose elements lie past 2^31 elements from
the start of their storage.

A kernel addresses element (n, c, p) of x at n·stride_n + c·stride_c + p·stride_hw. A stride below 2^31
reaches the kernel as a 32-bit integer; if the index it multiplies is 32-bit too, the product wraps once
it passes 2^31 and the kernel reads the wrong element, or outside the allocation (a segfault). A tensor
really that large (≥ 4 GB in fp16) is too big for CI and far too slow under the Triton interpreter, so
these tests use *sparse* views instead: a few dozen elements spread through one ~5.4 GB allocation that
``torch.empty`` leaves untouched (only the pages the views' elements lie on are ever written, so a case
stays within a few MB of resident memory). In each case one of the three dims carries the stride
S = 1.25·2^30 (< 2^31, so it stays a 32-bit argument: a stride ≥ 2^31 would be passed as int64 and hide
a 32-bit index) and size 3, so index 2 lands 2.7·10^9 elements in. x, shortcut and grad_y (the tensors
an op reads) are such views, all in the same allocation; outputs are dense (``empty_like`` of a
non-dense view), so their offsets stay small — they use the same index variables as the inputs.

A wrapped offset usually segfaults, which would end the whole pytest run: the cases run in one child
process (``python -m tests.ops.test_int64_offsets``), which reports case by case; a case that kills
the child fails with the signal and the child's stderr, and a new child runs the cases after it.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attn_kernels import _backend, functional, reference
from tests.helpers import assert_close, tolerances

S = 5 * 2 ** 28  # the sparse stride: < 2^31, and 2·S > 2^31
SHAPES = {  # one dim of size 3 with stride S, the others compact
    "n": ((3, 5, 7), (S, 7, 1)),
    "c": ((1, 3, 7), (3 * S, S, 1)),
    "hw": ((2, 5, 3), (5, 1, S)),  # 1-D map; the one spatial stride is S
}
SLOT = 64  # x, shortcut and grad_y at storage offsets 0, 64, 128: their elements interleave, never overlap
ROOT = Path(__file__).resolve().parents[2]
OPS = ("se", "ese", "se_residual", "eca", "eca_residual", "cbam", "dmk_eca", "bi_eca")
_OP_OF = {"ese": "se"}  # functional op (and backend table row) behind each case


def _cases():
    cases = []
    for op in OPS:
        for backend in ("triton", "cpu", "cuda"):
            if backend not in _backend._IMPLS[_OP_OF.get(op, op)]:
                continue
            for dim in SHAPES:
                cases.append(f"{op}-{backend}-{dim}")
    return cases


CASES = _cases()


def _device(backend: str) -> str:
    if backend == "triton":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return backend


# ---- the child: builds and checks the cases ---------------------------------------------------------
def _params(op: str, c: int, device: str):
    """(reference fn, parameters in fp32, names) for op at c channels."""
    def p(*shape, scale=0.5):
        return (torch.randn(*shape, device=device) * scale).requires_grad_()
    if op == "se":
        return (lambda x, *a: reference.se(x, *a)), [p(1, c), p(1) + 0.5, p(c, 1), p(c)], ["w1", "b1", "w2", "b2"]
    if op == "ese":
        return (lambda x, *a: reference.se(x, None, None, *a)), [p(c, c), p(c)], ["w2", "b2"]
    if op == "se_residual":
        return reference.se_residual, [p(1, c), p(1) + 0.5, p(c, 1), p(c)], ["w1", "b1", "w2", "b2"]
    if op in ("eca", "eca_residual"):
        return getattr(reference, op), [p(3)], ["weight"]
    if op == "cbam":
        return reference.cbam, [p(1, c), p(c, 1), p(1, 2, 3)], ["w1", "w2", "spatial_weight"]
    if op == "dmk_eca":
        return reference.dmk_eca, [p(3, c), p(3), p(3), p(5), p(7)], ["fc_weight", "fc_bias", "taps3", "taps5",
                                                                      "taps7"]
    if op == "bi_eca":
        return reference.bi_eca, [p(3), p(3), p(1, c), p(1) + 0.5, p(2, 1), p(2)], ["w_fwd", "w_bwd", "w1", "b1",
                                                                                      "w2", "b2"]
    raise ValueError(op)


def _fused(op: str, backend: str):
    fn = getattr(functional, _OP_OF.get(op, op))
    if op == "ese":
        return lambda x, w2, b2: fn(x, None, None, w2, b2, backend=backend)
    return lambda *a: fn(*a, backend=backend)


class _NoRoom(Exception):
    """The sparse views' virtual allocation was refused (a machine without the address space / overcommit)."""


def run_case(case: str) -> None:
    """Fused op on sparse views vs the reference on dense copies (check_parity: fp16, the output and every gradient
    against float64)."""
    from tests.helpers import check_parity

    op, backend, dim = case.split("-")
    device = _device(backend)
    shape, strides = SHAPES[dim]
    residual = op.endswith("_residual")
    span = 1 + sum((size - 1) * stride for size, stride in zip(shape, strides))
    try:
        storage = torch.empty(span + 3 * SLOT, dtype=torch.float16, device=device)  # untouched: virtual only
    except (RuntimeError, MemoryError) as exc:  # torch.OutOfMemoryError is a RuntimeError
        raise _NoRoom(str(exc)[:300]) from exc

    def sparse(slot: int, values: torch.Tensor) -> torch.Tensor:
        view = storage.as_strided(shape, strides, slot * SLOT)
        view.copy_(values)  # writes the view's elements only
        return view

    dense_x = torch.randn(shape, device=device)
    dense_sc = torch.randn(shape, device=device)
    eager, params, names = _params(op, shape[1], device)
    inputs = [dense_x.requires_grad_()] + ([dense_sc.requires_grad_()] if residual else []) + params
    fused_inputs = [sparse(0, dense_x.detach()).requires_grad_()]
    if residual:
        fused_inputs.append(sparse(1, dense_sc.detach()).requires_grad_())
    fused_inputs += [t.detach().to(torch.float16).requires_grad_() for t in params]
    grad_y = sparse(2, torch.randn(shape, device=device))
    names = dict(enumerate(["x"] + (["shortcut"] if residual else []) + names))
    check_parity(_fused(op, backend), eager, inputs, dtype=torch.float16, names=names, fused_inputs=fused_inputs,
                 grad_out=grad_y)


def _child_main(cases) -> None:
    for case in cases:
        print(f"@@ START {case}", flush=True)
        try:
            run_case(case)
        except _NoRoom as exc:
            print(f"@@ SKIP {case} {json.dumps(str(exc))}", flush=True)
        except Exception as exc:  # an AssertionError from check_parity, or any other error: the case fails
            print(f"@@ FAIL {case} {json.dumps(f'{type(exc).__name__}: {exc}')}", flush=True)
        else:
            print(f"@@ PASS {case}", flush=True)


# ---- the parent: one child for all cases, a test per case ---------------------------------------------
def _runnable(case: str):
    """None, or why the case cannot run here."""
    _, backend, _ = case.split("-")
    if _device(backend) == "cuda" and not torch.cuda.is_available():
        return "needs a CUDA device"
    return _backend.unavailable_reason(backend, _device(backend))


def _run_child(cases, env):
    """Runs the cases in one child: {case: (status, detail)} for those it reported, and the case it died in
    (None if it finished) with the exit code and stderr."""
    try:
        proc = subprocess.run([sys.executable, "-m", "tests.ops.test_int64_offsets", *cases], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)
        stdout, stderr, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        stderr, rc = "timed out after 600 s", "timeout"
    results, started = {}, None
    for line in stdout.splitlines():
        if line.startswith("@@ "):
            status, case, *rest = line[3:].split(" ", 2)
            if status == "START":
                started = case
            else:
                results[case] = (status, json.loads(rest[0]) if rest else "")
                started = None
    return results, started, rc, stderr


@pytest.fixture(scope="module")
def child_report():
    """Every runnable case's (status, detail): a child that dies in a case is restarted after it."""
    todo = [c for c in CASES if _runnable(c) is None]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    report = {}
    while todo:
        results, died_in, rc, stderr = _run_child(todo, env)
        report.update(results)
        if died_in is None:
            for case in todo:
                report.setdefault(case, ("CRASH", f"not reported: the child exited {rc}; stderr tail:\n"
                                                  f"{stderr[-2000:]}"))
            break
        report[died_in] = ("CRASH", f"the child process died in this case (exit {rc}); stderr tail:\n"
                                    f"{stderr[-3000:]}")
        todo = todo[todo.index(died_in) + 1:]
    return report


@pytest.mark.parametrize("case", CASES)
def test_past_2_31_elements(case, child_report):
    reason = _runnable(case)
    if reason is not None:
        pytest.skip(reason)
    status, detail = child_report[case]
    if status == "SKIP":
        pytest.skip(f"no room for the sparse views' {S * 2 * 2 / 2**30:.1f} GiB virtual allocation: {detail}")
    if status != "PASS":
        pytest.fail(f"{status}: {detail}")


# ---- on a GPU: a real tensor past 2^31 elements (the outputs' offsets too) --------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("op", ["se", "eca"])
def test_gpu_dense_past_2_31_elements(op, backend):
    """x fp16 (2, 4, 2^28 + 1): 2^31 + 8 elements (4 GiB), so y and grad_x are written past 2^31 as well.
    Forward and grad_x against float64 gates computed from float64 pooled means (autograd through the
    excitation only: grad_x = grad_y·s + (∂L/∂pooled)/HW, ∂L/∂s = Σ_hw grad_y·x), to keep memory ~40 GB."""
    reason = _backend.unavailable_reason(backend, "cuda")
    if reason is not None:
        pytest.skip(reason)
    n, c, hw = 2, 4, 2 ** 28 + 1
    try:
        x = torch.randn(n, c, hw, device="cuda", dtype=torch.float16)
        grad_y = torch.randn_like(x)
    except torch.OutOfMemoryError:
        pytest.skip("no room on this GPU for two 4 GiB tensors")
    assert x.numel() > 2 ** 31
    if op == "se":
        params = [torch.randn(1, c, device="cuda") * 0.5, torch.rand(1, device="cuda") + 0.5,
                  torch.randn(c, 1, device="cuda") * 0.5, torch.randn(c, device="cuda") * 0.5]
        excite = lambda pooled: reference.se_excitation(pooled, *params)  # noqa: E731
        fused = lambda x_: functional.se(x_, *params, backend=backend)  # noqa: E731
    else:
        taps = torch.randn(3, device="cuda") * 0.5
        excite = lambda pooled: reference.eca_gate(pooled, taps)  # noqa: E731
        fused = lambda x_: functional.eca(x_, taps, backend=backend)  # noqa: E731
    pooled = torch.stack([x[i].double().mean(-1) for i in range(n)]).requires_grad_()
    s = excite(pooled)
    g = torch.stack([(grad_y[i].double() * x[i].double()).sum(-1) for i in range(n)])  # ∂L/∂s
    (d_pooled,) = torch.autograd.grad(s, pooled, g)
    s, d_pooled = s.detach().float(), d_pooled.float()

    x_in = x.clone().requires_grad_()
    y = fused(x_in)
    (grad_x,) = torch.autograd.grad(y, x_in, grad_y)
    atol, rtol = tolerances(torch.float16)
    for i in range(n):  # on the GPU, per sample (assert_close would copy 2^30 elements to the host as float64)
        for name, got, want in [("y", y[i], x[i].float() * s[i, :, None]),
                                ("grad_x", grad_x[i], grad_y[i].float() * s[i, :, None] + d_pooled[i, :, None] / hw)]:
            bad = ((got.float() - want).abs() > atol + rtol * want.abs()) | ~torch.isfinite(got)
            if bad.any():
                first = tuple(int(j) for j in torch.nonzero(bad)[0])
                around = (first[0], slice(max(first[1] - 4, 0), first[1] + 4))
                assert_close(got[around], want[around], atol=atol, rtol=rtol,
                             name=f"{name}[{i}]: {int(bad.sum())} elements off, first at {(i, *first)}; around it")
    # the last elements sit past 2^31 in y and grad_x: shown on failure like any mismatch
    assert_close(y[-1, -1, -8:], x[-1, -1, -8:].float() * s[-1, -1], atol=atol, rtol=rtol, name="y tail")


if __name__ == "__main__":
    _child_main(sys.argv[1:] or CASES)
