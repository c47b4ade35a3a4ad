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

A wrapped offset usually segfaults, which would end the whole pytest run: a backend's cases run in a child
process (``python -m tests.ops.test_int64_offsets CASE...``), which reports case by case; a case that kills
the child fails with the signal and the child's stderr, and a new child runs the cases after it. On a GPU,
test_gpu_dense_past_2_31_elements also runs a real 4 GiB tensor, so the outputs are written past 2^31 too.
"""
import contextlib
import fcntl
import json
import os
import tempfile
import zlib
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


def _cases(backend: str):
    """op-backend-dim for every op the backend implements. Triton on a GPU: dim n only -- each case compiles its
    own kernels there, and the interpreter in CI runs all three dims of the same Triton code."""
    dims = ("n",) if backend == "triton" and _device(backend) == "cuda" else SHAPES
    return [f"{op}-{backend}-{dim}" for op in OPS if backend in _backend._IMPLS[_OP_OF.get(op, op)] for dim in dims]


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
    torch.manual_seed(zlib.crc32(case.encode()))  # fresh per case, the same on every run (a failure replays)
    try:  # on the CPU virtual only (pages untouched); on a GPU ~5 GiB of real memory
        storage = torch.empty(span + 3 * SLOT, dtype=torch.float16, device=device)
    except torch.OutOfMemoryError as exc:
        raise _NoRoom(str(exc)[:300]) from exc
    except RuntimeError as exc:
        if "can't allocate memory" not in str(exc):  # the CPU allocator's words; any other error is a failure
            raise
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
            if _device(case.split("-")[1]) == "cuda":  # the CUDA context may be broken (illegal address):
                os._exit(3)  # the parent starts a fresh child for the cases after this one
        else:
            print(f"@@ PASS {case}", flush=True)


# ---- the parent: a test per backend, its cases in a child process ------------------------------------------
def _run_child(cases, env):
    """Runs the cases in one child: ({case: (status, detail)} for those it reported, the case it was in when it
    ended (None if between cases), its exit code, its stderr)."""
    timeout = 120 + 30 * len(cases)  # a few seconds per case at most (GPU: its kernels' compilation)
    try:
        proc = subprocess.run([sys.executable, "-m", "tests.ops.test_int64_offsets", *cases], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout)
        stdout, stderr, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        def text(b):
            return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")
        stdout, stderr, rc = text(exc.stdout), text(exc.stderr) + f"\n[timed out after {timeout} s]", "timeout"
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


def _run_cases(cases):
    """Every case's (status, detail). A child that ends early -- killed in a case, or exiting after a failed
    GPU case -- is followed by a fresh one for the cases it did not report; one that reports nothing stops it."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    report, todo = {}, list(cases)
    while todo:
        results, died_in, rc, stderr = _run_child(todo, env)
        report.update(results)
        if died_in is not None:
            report[died_in] = ("CRASH", f"the child process died in this case (exit {rc}); stderr tail:\n"
                                        f"{stderr[-3000:]}")
        left = [case for case in todo if case not in report]
        if left and not results and died_in is None:  # nothing ran: the child cannot start (import error, ...)
            for case in left:
                report[case] = ("CRASH", f"not run: the child exited {rc} before any case; stderr tail:\n"
                                         f"{stderr[-2000:]}")
            left = []
        todo = left
    return report


@pytest.mark.parametrize("backend", ["triton", "cpu", "cuda"])
def test_past_2_31_elements(backend):
    """Every op of the backend on sparse views (see the module docstring); one failure message lists every
    failing case (op-backend-dim) with its mismatch or crash."""
    if _device(backend) == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    reason = _backend.unavailable_reason(backend, _device(backend))
    if reason is not None:
        pytest.skip(reason)
    cases = _cases(backend)
    report = _run_cases(cases)
    failures = [f"{case}: {status}: {detail}" for case, (status, detail) in report.items()
                if status not in ("PASS", "SKIP")]
    if failures:
        pytest.fail(f"{len(failures)} of {len(cases)} cases failed:\n\n" + "\n\n".join(failures))
    no_room = [detail for status, detail in report.values() if status == "SKIP"]
    if no_room:
        pytest.skip(f"{len(no_room)} of {len(cases)} cases had no room for the sparse views' "
                    f"{S * 2 * 2 / 2**30:.1f} GiB virtual allocation: {no_room[0]}")


# ---- on a GPU: a real tensor past 2^31 elements (the outputs' offsets too) --------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("op", ["se", "eca"])
def test_gpu_dense_past_2_31_elements(op, backend):
    """x fp16 (2, 4, 2^28 + 2^27): 3.2·10^9 elements (6 GiB); sample 1's last two channels start at
    6·HW = 2.4·10^9 > 2^31, so pooling, Σ grad_y·x, y and grad_x all address there (2^28 + 2^26, the first
    H200 run's size, left them straddling 2^31: the assert below caught it). The four cases run one at a
    time across pytest-xdist workers (a file lock): together they would not fit. x and grad_y get
    per-channel means so the gate depends on the pooled means and grad_x's ∂L/∂pooled / HW term is
    O(0.1) -- a wrong reduction shows.
    Forward and grad_x against float64 references built per channel (autograd through the excitation only:
    grad_x = grad_y·s + (∂L/∂pooled)/HW, ∂L/∂s = Σ_hw grad_y·x); peak ~50 GB of device memory."""
    reason = _backend.unavailable_reason(backend, "cuda")
    if reason is not None:
        pytest.skip(reason)
    n, c, hw = 2, 4, 2 ** 28 + 2 ** 27
    with _one_big_case_at_a_time():
        if torch.cuda.mem_get_info()[0] < 64 * 2 ** 30:
            pytest.skip("needs 64 GiB of free GPU memory")
        _dense_past_2_31(op, backend, n, c, hw)


@contextlib.contextmanager
def _one_big_case_at_a_time():
    """An exclusive lock shared by every process on the machine (pytest-xdist workers)."""
    with open(os.path.join(tempfile.gettempdir(), "attn_kernels_gpu_bigmem.lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _dense_past_2_31(op, backend, n, c, hw):
    try:
        mu_x, mu_g = torch.randn(n, c, 1, device="cuda"), torch.randn(n, c, 1, device="cuda")
        x = (torch.randn(n, c, hw, device="cuda", dtype=torch.float16) + mu_x.half())
        grad_y = (torch.randn(n, c, hw, device="cuda", dtype=torch.float16) + mu_g.half())
        assert (n * c - 2) * hw > 2 ** 31  # sample 1, channels 2 and 3: wholly past 2^31
        if op == "se":
            params = [torch.randn(1, c, device="cuda"), torch.rand(1, device="cuda") + 0.5,
                      torch.randn(c, 1, device="cuda"), torch.randn(c, device="cuda") * 0.5]
            excite = lambda pooled: reference.se_excitation(pooled, *params)  # noqa: E731
            fused = lambda x_: functional.se(x_, *params, backend=backend)  # noqa: E731
        else:
            taps = torch.randn(3, device="cuda")
            excite = lambda pooled: reference.eca_gate(pooled, taps)  # noqa: E731
            fused = lambda x_: functional.eca(x_, taps, backend=backend)  # noqa: E731
        rows = [(i, j) for i in range(n) for j in range(c)]  # float64 temporaries one channel (2.7 GB) at a time
        pooled = torch.zeros(n, c, dtype=torch.float64, device="cuda")
        g = torch.zeros(n, c, dtype=torch.float64, device="cuda")  # ∂L/∂s
        for i, j in rows:
            x64 = x[i, j].double()
            pooled[i, j] = x64.mean()
            g[i, j] = (grad_y[i, j].double() * x64).sum()
            del x64
        pooled.requires_grad_()
        s = excite(pooled)
        (d_pooled,) = torch.autograd.grad(s, pooled, g)
        s, d_pooled = s.detach(), d_pooled.detach()

        x_in = x.clone().requires_grad_()
        y = fused(x_in)
        (grad_x,) = torch.autograd.grad(y, x_in, grad_y)
        atol, rtol = tolerances(torch.float16)
        for i, j in rows:  # on the GPU (assert_close would copy 3·10^8 elements to the host as float64)
            for name, got, want in [
                    ("y", y[i, j], x[i, j].float() * s[i, j].float()),
                    ("grad_x", grad_x[i, j], grad_y[i, j].float() * s[i, j].float() + float(d_pooled[i, j]) / hw)]:
                bad = ((got.float() - want).abs() > atol + rtol * want.abs()) | ~torch.isfinite(got)
                if bad.any():
                    first = int(torch.nonzero(bad)[0])
                    around = slice(max(first - 4, 0), first + 4)
                    assert_close(got[around], want[around], atol=atol, rtol=rtol,
                                 name=f"{name}[{i}, {j}]: {int(bad.sum())} elements off, first at {first}; around it")
                    pytest.fail(f"{name}[{i}, {j}]: {int(bad.sum())} elements off, first at {first} "
                                f"(got {float(got[first])}, want {float(want[first])})")
        # the last elements of the tensor, past 2^31 in x, y, grad_y and grad_x: shown on failure like any mismatch
        assert_close(y[-1, -1, -8:], x[-1, -1, -8:].float() * s[-1, -1].float(), atol=atol, rtol=rtol, name="y tail")
    finally:
        torch.cuda.empty_cache()  # ~30 GB back for the tests that follow


if __name__ == "__main__":  # python -m tests.ops.test_int64_offsets [CASE ...] (default: every CPU-runnable case)
    _child_main(sys.argv[1:] or [case for backend in ("triton", "cpu") for case in _cases(backend)])
