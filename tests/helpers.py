"""The one comparison helper every test uses.

``assert_close`` prints what a reviewer needs on failure: mismatch count, max abs / rel error, the
worst index and its two values, and NaN/inf mismatches. ``check_parity`` applies the error rule used
throughout (flash-attention's): against a float64 reference, the fused error is at most
``2 × (eager PyTorch's error in the same dtype) + atol``, for the output and every gradient.
"""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Callable, Dict, Optional, Sequence

import torch

# (atol, rtol) per dtype for direct comparisons.
TOLERANCES = {
    torch.float64: (1e-10, 1e-8),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}
# Slack added to 2·err(eager) in check_parity: one ulp-ish of the dtype at unit scale.
PARITY_ATOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def tolerances(dtype: torch.dtype):
    return TOLERANCES[dtype]


def _describe(actual: torch.Tensor, expected: torch.Tensor, name: str, atol: float, rtol: float) -> Optional[str]:
    if actual.shape != expected.shape:
        return f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
    a = actual.detach().to(torch.float64).cpu()
    e = expected.detach().to(torch.float64).cpu()
    nan_mismatch = (torch.isnan(a) != torch.isnan(e))
    inf_mismatch = (torch.isinf(a) != torch.isinf(e)) | (torch.isinf(a) & torch.isinf(e) & (a != e))
    finite = torch.isfinite(a) & torch.isfinite(e)
    diff = torch.where(finite, (a - e).abs(), torch.zeros_like(a))
    bad = (diff > atol + rtol * e.abs()) | nan_mismatch | inf_mismatch
    if not bad.any():
        return None
    lines = [f"{name}: {int(bad.sum())} / {bad.numel()} elements mismatch (atol={atol:g}, rtol={rtol:g})"]
    if nan_mismatch.any():
        idx = tuple(int(i) for i in torch.nonzero(nan_mismatch)[0])
        lines.append(f"  NaN mismatches: {int(nan_mismatch.sum())}, first at {idx}: "
                     f"actual={a[idx].item()!r} expected={e[idx].item()!r}")
    if inf_mismatch.any():
        lines.append(f"  inf mismatches: {int(inf_mismatch.sum())}")
    if diff.numel():
        flat = int(diff.argmax())
        idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), diff.shape))
        rel = diff / e.abs().clamp_min(1e-30)
        lines.append(f"  max abs err {diff.max().item():.3e} at {idx}: actual={a[idx].item():.6g} "
                     f"expected={e[idx].item():.6g}; max rel err {rel[finite].max().item() if finite.any() else 0:.3e}")
    return "\n".join(lines)


def assert_close(actual, expected, *, atol: Optional[float] = None, rtol: Optional[float] = None,
                 name: str = "tensor") -> None:
    """allclose with dtype-aware defaults (from ``actual``'s dtype) and a verbose failure message."""
    d_atol, d_rtol = TOLERANCES.get(actual.dtype, TOLERANCES[torch.float32])
    msg = _describe(actual, expected, name, d_atol if atol is None else atol, d_rtol if rtol is None else rtol)
    if msg:
        raise AssertionError(msg)


def _clone_inputs(inputs: Sequence, dtype: Optional[torch.dtype], param_dtype: Optional[torch.dtype]):
    out = []
    for i, t in enumerate(inputs):
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            target = dtype if i == 0 or param_dtype is None else param_dtype
            c = t.detach().to(target) if target is not None else t.detach().clone()
            if c.data_ptr() == t.data_ptr():
                c = c.clone()  # .to() and .clone() keep channels_last; a strided view comes back dense
            out.append(c.requires_grad_(t.requires_grad))
        else:
            out.append(t)
    return out


def _forward_backward(fn: Callable, inputs, grad_out: Optional[torch.Tensor]):
    out = fn(*inputs)
    grads = {}
    if grad_out is not None:
        wrt = [(i, t) for i, t in enumerate(inputs) if isinstance(t, torch.Tensor) and t.requires_grad]
        if wrt:
            g = torch.autograd.grad(out, [t for _, t in wrt], grad_out.to(out.dtype), allow_unused=False)
            grads = {i: gi for (i, _), gi in zip(wrt, g)}
    return out, grads


def check_parity(fused: Callable, eager: Callable, inputs: Sequence, *, dtype: torch.dtype,
                 param_dtype: Optional[torch.dtype] = None, grad: bool = True,
                 names: Optional[Dict[int, str]] = None, factor: float = 2.0,
                 atol: Optional[float] = None, fused_inputs: Optional[Sequence] = None,
                 grad_out: Optional[torch.Tensor] = None) -> None:
    """Hold ``fused`` to ``eager`` against float64.

    ``inputs``: tensors (x first) — float ones with ``requires_grad=True`` get their gradient checked.
    Three runs: fused in ``dtype``, eager in ``dtype``, eager in float64 (the truth). Parameters are
    given ``param_dtype`` (default: ``dtype``). For every output/gradient:
    ``max|fused − truth| ≤ factor · max|eager − truth| + atol``, and no NaN/inf where the truth has none.
    ``fused_inputs`` (optional) overrides the fused run's inputs, e.g. a strided view of x.
    ``grad_out`` (optional, default random): the output gradient; the fused run gets it as given (e.g. a
    strided view in ``dtype``), the eager runs in their own dtype.
    """
    atol = PARITY_ATOL[dtype] if atol is None else atol
    names = names or {}
    truth_in = _clone_inputs(inputs, torch.float64, torch.float64)
    eager_in = _clone_inputs(inputs, dtype, param_dtype)
    fused_in = list(fused_inputs) if fused_inputs is not None else _clone_inputs(inputs, dtype, param_dtype)
    if grad and grad_out is None:
        grad_out = torch.randn_like(truth_in[0].detach(), dtype=torch.float64)
    elif not grad:
        grad_out = None
    ref_out, ref_g = _forward_backward(eager, truth_in, grad_out)
    eager_out, eager_g = _forward_backward(eager, eager_in, grad_out)
    fused_out, fused_g = _forward_backward(fused, fused_in, grad_out)

    assert fused_out.dtype == eager_out.dtype, f"output dtype {fused_out.dtype} != eager {eager_out.dtype}"
    pairs = [("output", fused_out, eager_out, ref_out)]
    for i in ref_g:
        label = "grad " + names.get(i, f"input[{i}]")
        assert i in fused_g, f"{label}: fused op returned no gradient"
        assert fused_g[i].dtype == eager_g[i].dtype, f"{label}: dtype {fused_g[i].dtype} != {eager_g[i].dtype}"
        pairs.append((label, fused_g[i], eager_g[i], ref_g[i]))
    failures = []
    for label, f, e, r in pairs:
        r64 = r.detach().to(torch.float64)
        err_eager = (e.detach().to(torch.float64) - r64).abs().nan_to_num(0.0).max().item() if r.numel() else 0.0
        bound = factor * err_eager + atol * max(1.0, r64.abs().max().item() if r.numel() else 1.0)
        msg = _describe(f, r64, label, bound, 0.0)
        if msg:
            failures.append(msg + f"\n  (bound = {factor:g} × eager err {err_eager:.3e} + atol)")
    if failures:
        raise AssertionError("\n".join(failures))


def gradcheck(fn: Callable, inputs: Sequence, **kwargs) -> None:
    """torch.autograd.gradcheck in float64 on the given inputs (converted), for every float input."""
    ins = [t.detach().to(torch.float64).requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor)
           and t.is_floating_point() else t for t in inputs]
    assert torch.autograd.gradcheck(fn, ins, **kwargs)


def short_spin_split(monkeypatch, op_module=None, split: int = 3, cfg_name: str = "_launch_cfg") -> list:
    """Schedule (b)'s MULTI=1 code under the interpreter (programs run one after another): a 3-iteration
    wait, so programs before the last of each sample (group) time out; ``op_module.<cfg_name>`` (if given)
    forced to ``split`` programs per sample (group) with MULTI=1. Returns the list every launch's counter
    buffer is appended to."""
    from attn_kernels.ops import _split

    if op_module is not None:
        launch_cfg = getattr(op_module, cfg_name)
        monkeypatch.setattr(op_module, cfg_name,
                            lambda n, c, *a, **k: dict(_split.emulate_split(launch_cfg(n, c, *a, **k), c, split),
                                                       MULTI=1))
    monkeypatch.setattr(_split, "MAX_SPIN", 3)
    syncs = []
    sync_buffer = _split.sync_buffer
    monkeypatch.setattr(_split, "sync_buffer", lambda *a: syncs.append(sync_buffer(*a)) or syncs[-1])
    return syncs


def se_hardswish_inputs(shape, rd: int, device="cpu"):
    """SE inputs ``[x, w1, b1, w2, b2]`` (fp32, requiring grad) whose hidden pre-activations
    ``u = W1 · mean(x) + b1`` fall in all three pieces of hardswish (u < -3: slope 0; -3 <= u <= 3: slope
    u / 3 + 1/2; u > 3: slope 1) and stay >= 0.1 from the kinks, so every dtype and finite differences see
    the same piece: b1 cycles through -5, -1.5, 1.5, 5 (each moved by at most 0.5: >= 1 from a kink, for any
    rd >= 4) and W1 · mean(x) moves u by a few hundredths (checked here). Random inputs with the usual scales
    only ever reach the middle piece."""
    assert rd >= 4, "rd >= 4 puts a b1 value in every piece"
    c, spatial = shape[1], tuple(range(2, len(shape)))
    x = torch.randn(shape, dtype=torch.float64)
    w1 = torch.randn(rd, c, dtype=torch.float64) * (0.1 / c ** 0.5)
    centres = torch.tensor([-5.0, -1.5, 1.5, 5.0], dtype=torch.float64).repeat((rd + 3) // 4)[:rd]
    b1 = centres + torch.linspace(-0.5, 0.5, rd, dtype=torch.float64)
    w2 = torch.randn(c, rd, dtype=torch.float64) / rd
    b2 = torch.randn(c, dtype=torch.float64) * 0.5
    u = x.mean(spatial) @ w1.t() + b1
    assert (u < -3).any() and (u.abs() < 3).any() and (u > 3).any(), u
    assert ((u.abs() - 3).abs() > 0.1).all(), u
    return [t.float().to(device).requires_grad_() for t in (x, w1, b1, w2, b2)]


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_stand_in(script_args: Sequence[str], **env_over: str) -> subprocess.CompletedProcess:
    """``python *script_args`` in the repository root for a script that installs the Triton stand-in driver
    (bench/host_overhead.py's: kernels compiled for sm_90, no launches): a subprocess, as the stand-in
    replaces Triton's driver; without TRITON_INTERPRET and with no GPU visible (the stand-in is for machines
    without one); ``env_over`` set on top. Asserts exit 0."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    env.update(env_over)
    proc = subprocess.run([sys.executable, *script_args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc
