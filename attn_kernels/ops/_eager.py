"""The eager path of the Triton ops: the same launchers and autograd formulas as the ``torch.library`` ops,
under one plain ``torch.autograd.Function``, for calls where nothing needs the registered op.

Why: SE and ECA layers are small and many (16 per ResNet-50), so their per-call host cost counts. A
``torch.library.custom_op`` with ``register_autograd`` runs every call through Python dispatch layers
(the autograd wrapper, the redispatch below autograd, the dynamo-disable wrapper around the kernel,
default filling) and, because the op returns its saved auxiliaries (pooled means, gates) as outputs,
autograd materialises a zero gradient for each of them in the backward (one tiny kernel launch each).
Measured on the 2-core CPU VM (timed loops, the kernel launch replaced by a no-op): ECA
forward+backward through ``functional.eca`` 161 us via the op, 112 us via this path. The H200 run of 2026-12-04
showed what host time costs there: forward+backward of every provider took 2-10x its CUDA-graph
time under ``do_bench`` (e.g. ECA 128x2048x7x7 Triton 1.01 ms against 0.095 ms in a graph).

When the registered op is still used (``fast`` is False): while ``torch.compile`` / export traces (the
op is what they see, with its fake kernel), under ``torch.jit.trace``, under a ``__torch_dispatch__``
mode (FakeTensorMode, FlopCounterMode, ...), under functorch transforms (vmap, grad), for tensor subclasses, and everywhere
with ``ATTN_KERNELS_EAGER_FAST=0`` (read at import; for A/B timings and to rule this path out).
Results are bit-identical between the two paths (same launchers, same formulas; tested per op).
"""
from __future__ import annotations

import os
from typing import Any, Callable, NamedTuple

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

ENABLED = os.environ.get("ATTN_KERNELS_EAGER_FAST", "1") != "0"
_PLAIN = (torch.Tensor, torch.nn.Parameter)


class OpSpec(NamedTuple):
    """One op family's pieces, shared by both paths."""
    op: Callable  # the registered forward op, torch.ops.attn_kernels.<name>_fwd: (*inputs) -> (y, *aux)
    forward: Callable  # what that op runs: the forward launcher, (*inputs) -> (y, *aux)
    setup: Callable  # setup_context registered with the op: (ctx, inputs, output)
    backward: Callable  # the autograd formula registered with the op: (ctx, grad_y, *_, bwd=...) -> grads
    bwd: Callable  # the backward launcher the formula calls on this path (SE's: se_backward, told the bias dtypes)


def fast(inputs) -> bool:
    """Whether this call may take the eager path (see the module docstring)."""
    if not ENABLED or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    if _get_current_dispatch_mode() is not None or torch._C._are_functorch_transforms_active():
        return False
    return all(type(t) in _PLAIN for t in inputs if isinstance(t, torch.Tensor))


class _Eager(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: OpSpec, *inputs: Any):
        output = tuple(spec.forward(*inputs))
        spec.setup(ctx, inputs, output)
        ctx.spec = spec
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(*output[1:])  # the auxiliaries: no zero gradients made for them
        return output

    @staticmethod
    def backward(ctx, grad_y, *_):
        if grad_y is None:  # an undefined gradient (gradcheck's check_undefined_grad passes one): all zero
            return (None,) * len(ctx.needs_input_grad)
        # create_graph (double backward): the registered backward op, which refuses to be differentiated
        # as on the op path, instead of the launcher, whose outputs would carry no history (silently zero)
        bwd = None if torch.is_grad_enabled() else ctx.spec.bwd
        return (None,) + tuple(ctx.spec.backward(ctx, grad_y, bwd=bwd))


def call(spec: OpSpec, *inputs: Any):
    """``spec.op(*inputs)``, through the eager path where ``fast`` allows: the same (y, *aux) tuple. A call
    autograd does not record (grad mode off, or no input requiring grad) runs the launcher alone."""
    if fast(inputs):
        if torch._C._autograd._profiler_enabled() and spec.op._qualified_op_name.startswith("attn_kernels::"):
            # the Triton op is not dispatched here: name the call in profiles ("attn_kernels::eca_fwd[eager]",
            # what profile.attention_ops counts); the extension's C++ op still shows under its own name
            with torch.autograd.profiler.record_function(f"{spec.op._qualified_op_name}[eager]"):
                return _call_fast(spec, inputs)
        return _call_fast(spec, inputs)
    return spec.op(*inputs)


def _call_fast(spec: OpSpec, inputs):
    if torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in inputs):
        return _Eager.apply(spec, *inputs)
    return tuple(spec.forward(*inputs))
