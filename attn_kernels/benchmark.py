"""Microbenchmark suite behind ``attn-kernels bench`` (and ``pytest bench --benchmark-only``).

What is measured
----------------
Every op (rows ``op``): ``se`` (ReLU/sigmoid, SE-ResNet), ``se_silu`` (SiLU/sigmoid, EfficientNet),
``se_hsig`` (ReLU/hardsigmoid, MobileNetV3), ``ese`` (effective SE: one C→C FC, hardsigmoid), ``eca``,
``ceca`` (circular ECA), ``cbam``, ``se_residual`` / ``eca_residual`` (block tail ``relu(attn(x) + shortcut)``)
and the seed variants ``dmk_eca`` / ``bi_eca``; modes ``fwd`` (inference forward, no autograd graph),
``bwd`` (``torch.autograd.grad`` of a retained graph w.r.t. x, shortcut and the parameters) and ``fwd+bwd``;
dtypes bf16/fp16/fp32; layouts NCHW and channels_last.

Shapes: the attention sites of four networks at 224² input, as (C, H, W, hidden width R or ECA taps k);
``site_batch`` (default 128 on CUDA, 16 on CPU) images each, plus a batch sweep 1…256 at one key site:

- SE-ResNet-50 (SE after conv3 of each bottleneck, R = C/16): 256×56², 512×28², 1024×14², 2048×7²
  (3/4/6/3 blocks). Key site 1024×14².
- ECA-ResNet-50: the same sites, k = ECA's adaptive size (5, 5, 5, 7).
- EfficientNet-B0 (SE on the expanded channels after the depthwise conv, R = block input C / 4; checked
  against timm ``efficientnet_b0`` with forward hooks): 32×112² R8, 96×56² R4, 144×56² R6, 144×28² R6,
  240×28² R10, 240×14² R10, 480×14² R20, 672×14² R28, 672×7² R28, 1152×7² R48. Key site 480×14².
- MobileNetV3-Large (R = make_divisible(C/4, 8), ReLU + hardsigmoid; checked against timm
  ``mobilenetv3_large_100``): 72×28² R24, 120×28² R32, 480×14² R120, 672×14² R168, 672×7² R168,
  960×7² R240. Key site 480×14².

``se``/``se_residual``/``cbam``/``ese`` run at the SE-ResNet-50 sites, ``eca``/``ceca``/``eca_residual``/
``dmk_eca``/``bi_eca`` at the ECA-ResNet-50 sites, ``se_silu`` at EfficientNet-B0's, ``se_hsig`` at
MobileNetV3-Large's.

``--quick``: se, eca and se_residual at the key site 1024×14² (batch 128 on CUDA, 8 on CPU), fwd and fwd+bwd,
bf16 on CUDA / fp32 on CPU, both layouts, no sweep, providers eager, compile and the fused backends.

Providers: ``eager`` (``attn_kernels.reference``), ``compile`` (``torch.compile(reference, dynamic=False)``),
``compile-max-autotune`` (mode ``max-autotune-no-cudagraphs``: CUDA graphs are the separate column) and every
fused backend that implements the op on this device (``triton``/``cuda`` on CUDA tensors, ``cpu``; the Triton
interpreter is never benchmarked).

Per row: median/p20/p80 time (ms); on CUDA also the CUDA-graph median; GB/s against the minimal-bytes
floor (fwd: read x + write y; bwd: read x and grad_y + write grad_x; fwd+bwd: the sum; residual ops also
read the shortcut, and their backward also writes grad_shortcut; parameters and the (N, C) gate are not
counted); that bandwidth as a fraction of a copy of the same tensor measured in the same run (CUDA:
``dst.copy_(x)``; CPU: ``x.clone()``, a fresh output like every provider's); speedup over eager and over
compile; kernel launches per call; peak memory.

Timing: on CUDA ``triton.testing.do_bench`` (CUDA events, warm-up, L2 flushed between calls by do_bench),
inputs rotated through a working set of at least twice the L2 size, so no call finds its input in cache;
the CUDA-graph column is ``triton.testing.do_bench_cudagraph`` over the same rotation. On CPU: a
``time.perf_counter`` loop (median/p20/p80 of single calls after warm-up), the providers of a case and
an ``x.clone()`` taking turns in rotating rounds of ~10 ms (a shared VM's speed drifts over minutes: every
provider then sees the same drift), same rotation against the last-level cache. Launches: on CUDA the
device kernels per call (torch.profiler); on CPU the top-level dispatched ops per call (aten::/custom ops;
n/a for compiled providers, whose generated C++ kernels the profiler does not see).
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as dt
import itertools
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from . import functional, reference
from ._autotable import cpu_model, slug
from ._backend import _IMPLS, unavailable_reason

# ----------------------------------------------------------------------------------------------
# Shapes
# ----------------------------------------------------------------------------------------------
# (C, H, W, R-or-k) per attention site; R = hidden width of the SE MLP, k = ECA taps.
RESNET50_SITES = [(256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)]
SITES: Dict[str, List[Tuple[int, int, int, int]]] = {
    "se_resnet50": [(c, h, w, c // 16) for c, h, w in RESNET50_SITES],
    "eca_resnet50": [(c, h, w, reference.eca_kernel_size(c)) for c, h, w in RESNET50_SITES],
    "efficientnet_b0": [(32, 112, 112, 8), (96, 56, 56, 4), (144, 56, 56, 6), (144, 28, 28, 6), (240, 28, 28, 10),
                        (240, 14, 14, 10), (480, 14, 14, 20), (672, 14, 14, 28), (672, 7, 7, 28), (1152, 7, 7, 48)],
    "mobilenetv3_large": [(72, 28, 28, 24), (120, 28, 28, 32), (480, 14, 14, 120), (672, 14, 14, 168),
                          (672, 7, 7, 168), (960, 7, 7, 240)],
}
KEY_SITE = {"se_resnet50": 2, "eca_resnet50": 2, "efficientnet_b0": 6, "mobilenetv3_large": 2}
BATCH_SWEEP = [1, 2, 4, 8, 16, 32, 64, 128, 256]

MODES = ("fwd", "bwd", "fwd+bwd")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
LAYOUTS = ("nchw", "channels_last")
BASE_PROVIDERS = ("eager", "compile", "compile-max-autotune")
FUSED_BACKENDS = ("triton", "cuda", "cpu")


# ----------------------------------------------------------------------------------------------
# Ops
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class OpSpec:
    name: str
    impl_op: str  # key in _backend._IMPLS
    sites: str  # key in SITES
    residual: bool = False

    def params(self, c: int, r: int, dtype, device) -> tuple:
        """The op's parameters (after x and shortcut), small random values, in x's dtype."""
        def t(*shape, scale=0.1):
            return (torch.randn(*shape, device=device) * scale).to(dtype)

        n = self.name
        if n in ("se", "se_silu", "se_hsig", "se_residual"):
            return (t(r, c), t(r), t(c, r), t(c))
        if n == "ese":
            return (None, None, t(c, c), t(c))
        if n in ("eca", "ceca", "eca_residual"):
            return (t(r, scale=0.3),)
        if n == "cbam":
            rd = max(1, c // 16)
            return (t(rd, c), t(c, rd), t(1, 2, 7, 7))
        if n == "dmk_eca":
            return (t(3, c), t(3), t(3, scale=0.3), t(5, scale=0.3), t(7, scale=0.3))
        if n == "bi_eca":
            rd = max(1, c // 16)
            return (t(r, scale=0.3), t(r, scale=0.3), t(rd, c), t(rd), t(2, rd), t(2))
        raise ValueError(n)

    def fn(self, backend: Optional[str]) -> Callable:
        """f(x, [shortcut,] *params); backend None → the eager reference."""
        n = self.name
        mod = reference if backend is None else functional
        kw = {} if backend is None else {"backend": backend}
        if n == "se":
            return lambda x, *p: mod.se(x, *p, "relu", "sigmoid", **kw)
        if n == "se_silu":
            return lambda x, *p: mod.se(x, *p, "silu", "sigmoid", **kw)
        if n == "se_hsig":
            return lambda x, *p: mod.se(x, *p, "relu", "hardsigmoid", **kw)
        if n == "ese":
            return lambda x, *p: mod.se(x, *p, "relu", "hardsigmoid", **kw)
        if n == "eca":
            return lambda x, w: mod.eca(x, w, False, **kw)
        if n == "ceca":
            return lambda x, w: mod.eca(x, w, True, **kw)
        if n == "se_residual":
            return lambda x, s, *p: mod.se_residual(x, s, *p, "relu", "sigmoid", "relu", **kw)
        if n == "eca_residual":
            return lambda x, s, w: mod.eca_residual(x, s, w, False, "relu", **kw)
        if n == "cbam":
            return lambda x, *p: mod.cbam(x, *p, **kw)
        if n == "dmk_eca":
            return lambda x, *p: mod.dmk_eca(x, *p, **kw)
        if n == "bi_eca":
            return lambda x, *p: mod.bi_eca(x, *p, **kw)
        raise ValueError(n)


OPS: Dict[str, OpSpec] = {s.name: s for s in (
    OpSpec("se", "se", "se_resnet50"),
    OpSpec("se_silu", "se", "efficientnet_b0"),
    OpSpec("se_hsig", "se", "mobilenetv3_large"),
    OpSpec("ese", "se", "se_resnet50"),
    OpSpec("eca", "eca", "eca_resnet50"),
    OpSpec("ceca", "eca", "eca_resnet50"),
    OpSpec("cbam", "cbam", "se_resnet50"),
    OpSpec("se_residual", "se_residual", "se_resnet50", residual=True),
    OpSpec("eca_residual", "eca_residual", "eca_resnet50", residual=True),
    OpSpec("dmk_eca", "dmk_eca", "eca_resnet50"),
    OpSpec("bi_eca", "bi_eca", "eca_resnet50"),
) if s.impl_op in _IMPLS}

# ``--quick``: what runs in under two minutes on a 2-core CPU (and in seconds on a GPU).
QUICK = {
    "ops": ["se", "eca", "se_residual"],
    "modes": ["fwd", "fwd+bwd"],
    "dtypes": {"cuda": ["bf16"], "cpu": ["fp32"]},
    "layouts": ["nchw", "channels_last"],
    "batches": {"cuda": [128], "cpu": [8]},
    "sweep": {"cuda": [], "cpu": []},
    "providers": ["eager", "compile"] + list(FUSED_BACKENDS),  # max-autotune: too slow to compile for --quick
    "sites": [2],  # index into the op's site list: the key site only (1024×14² for the ResNets)
}


@dataclasses.dataclass
class Case:
    op: str
    source: str  # "se_resnet50[2]" (model and site index), "sweep" or "custom"
    n: int
    c: int
    h: int
    w: int
    r: int
    dtype: str
    layout: str
    mode: str

    @property
    def shape(self) -> str:
        return f"{self.n}x{self.c}x{self.h}x{self.w}"

    @property
    def key(self) -> tuple:
        return (self.op, self.source, self.shape, self.dtype, self.layout, self.mode)


def fused_backends(op: str, device_type: str) -> List[str]:
    """Fused backends implementing ``op`` that run on ``device_type`` (never the Triton interpreter)."""
    out = []
    for b in FUSED_BACKENDS:
        if b not in _IMPLS[OPS[op].impl_op]:
            continue
        if b == "triton" and device_type != "cuda":
            continue  # the interpreter is a test vehicle, not a performance path
        if unavailable_reason(b, device_type) is None:
            out.append(b)
    return out


def providers_for(op: str, device_type: str, wanted: Optional[Sequence[str]]) -> List[str]:
    base = [p for p in BASE_PROVIDERS if device_type == "cuda" or p != "compile-max-autotune"]
    if wanted:
        base = [p for p in BASE_PROVIDERS if p in wanted]
    fused = [b for b in fused_backends(op, device_type) if not wanted or b in wanted]
    return base + fused


def parse_shape(text: str) -> Tuple[int, int, int, int]:
    parts = [int(p) for p in re.split(r"[x×,]", text.strip()) if p]
    if len(parts) != 4 or min(parts) < 1:
        raise ValueError(f"--shape wants NxCxHxW with positive sizes, got {text!r}")
    return tuple(parts)


def build_cases(ops, modes, dtypes, layouts, device_type: str, quick: bool, batch: Optional[int],
                shapes: Optional[List[Tuple[int, int, int, int]]] = None, sweep: bool = True) -> List[Case]:
    cases = []
    for op in ops:
        spec = OPS[op]
        sites = SITES[spec.sites]
        geoms = []  # (source, n, c, h, w, r)
        if shapes:
            for n, c, h, w in shapes:
                r = reference.eca_kernel_size(c) if spec.impl_op in ("eca", "eca_residual") or op in (
                    "dmk_eca", "bi_eca") else max(1, c // 16)
                geoms.append(("custom", n, c, h, w, r))
        else:
            idxs = QUICK["sites"] if quick else range(len(sites))
            batches = [batch] if batch else QUICK["batches"][device_type] if quick else [
                128 if device_type == "cuda" else 16]
            for b in batches:
                for i in idxs:
                    c, h, w, r = sites[i]
                    geoms.append((f"{spec.sites}[{i}]", b, c, h, w, r))
            if sweep:
                c, h, w, r = sites[KEY_SITE[spec.sites]]
                for b in (QUICK["sweep"][device_type] if quick else BATCH_SWEEP):
                    if not any(g[1:] == (b, c, h, w, r) for g in geoms):
                        geoms.append(("sweep", b, c, h, w, r))
        for (src, n, c, h, w, r), dtype, layout, mode in itertools.product(geoms, dtypes, layouts, modes):
            cases.append(Case(op, src, n, c, h, w, r, dtype, layout, mode))
    return cases


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------
def cache_bytes(device: torch.device) -> int:
    """L2 (CUDA) or last-level cache (CPU) size, for the rotating working set."""
    if device.type == "cuda":
        return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 << 20))
    for idx in (3, 2):
        try:
            with open(f"/sys/devices/system/cpu/cpu0/cache/index{idx}/size") as f:
                text = f.read().strip()
            mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1], 1)
            return int(text.rstrip("KMG")) * mult
        except (OSError, ValueError):
            continue
    return 32 << 20


def _quantiles(times: List[float]) -> Tuple[float, float, float]:
    t = torch.tensor(times, dtype=torch.float64)
    q = torch.quantile(t, torch.tensor([0.5, 0.2, 0.8], dtype=torch.float64))
    return tuple(float(v) for v in q)


def time_cpu(fn: Callable, min_time: float, min_reps: int = 5, max_reps: int = 10000, warmup: int = 2):
    """(median, p20, p80) in ms of single calls, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    end = time.perf_counter() + min_time
    while len(times) < min_reps or (time.perf_counter() < end and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return _quantiles(times)


def time_cpu_interleaved(fns: Dict[str, Callable], min_time: float, min_reps: int = 5, max_reps: int = 10000,
                         warmup: int = 2, round_ms: float = 10.0) -> Dict[str, object]:
    """{name: (median, p20, p80) in ms of single calls, or the exception the provider raised}.

    The providers take turns: in every round each runs single calls (each timed alone) for ~``round_ms``, the
    order rotating from round to round, until each has ``min_time`` of timed calls and ``min_reps`` calls. On
    a shared machine whose speed drifts over minutes (seen on the project's CPU VMs: the same copy at 2x the
    time a few minutes later) all providers of a case then see the same conditions, so their ratios hold;
    timed one after the other, a slow phase lands on one provider only."""
    out: Dict[str, object] = {}
    live = {}
    for name, fn in fns.items():
        try:
            for _ in range(warmup):
                fn()
            live[name] = fn
        except Exception as exc:  # this provider is out; the others are still timed
            out[name] = exc
    times: Dict[str, List[float]] = {name: [] for name in live}
    spent = {name: 0.0 for name in live}
    rnd = 0
    while live:
        names = list(live)
        k = rnd % len(names)
        for name in names[k:] + names[:k]:
            fn, ts = live[name], times[name]
            end = time.perf_counter() + round_ms * 1e-3
            try:
                while True:
                    t0 = time.perf_counter()
                    fn()
                    t1 = time.perf_counter()
                    ts.append((t1 - t0) * 1e3)
                    spent[name] += t1 - t0
                    if t1 >= end or len(ts) >= max_reps:
                        break
            except Exception as exc:
                out[name] = exc
                del live[name]
                continue
            if len(ts) >= max_reps or (len(ts) >= min_reps and spent[name] >= min_time):
                out[name] = _quantiles(ts)
                del live[name]
        rnd += 1
    return out


def time_cuda(fn: Callable, rep_ms: int, grad_to_none=None):
    import triton.testing

    med, p20, p80 = triton.testing.do_bench(fn, warmup=max(5, rep_ms // 4), rep=rep_ms, quantiles=[0.5, 0.2, 0.8],
                                            grad_to_none=grad_to_none)
    return float(med), float(p20), float(p80)


def time_cuda_graph(fn: Callable, rep_ms: int) -> Optional[float]:
    import triton.testing

    return float(triton.testing.do_bench_cudagraph(fn, rep=rep_ms, return_mode="median"))


def count_launches(fn: Callable, device_type: str, provider: str) -> Optional[int]:
    """CUDA: device kernels per call. CPU: top-level dispatched ops per call (None for compiled code)."""
    from torch.profiler import ProfilerActivity, profile

    if device_type != "cuda" and provider.startswith("compile"):
        return None
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device_type == "cuda" else [])
    with profile(activities=acts) as prof:
        fn()
        if device_type == "cuda":
            torch.cuda.synchronize()
    events = prof.events()
    if device_type == "cuda":
        return sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA
                   and not e.name.startswith(("Memcpy", "Memset")))

    def is_op(e):
        return "::" in e.name and not e.name.startswith(("autograd::", "profiler::", "cudaLaunch"))

    count = 0
    for e in events:
        if not is_op(e):
            continue
        parent, nested = e.cpu_parent, False
        while parent is not None:
            if is_op(parent):
                nested = True
                break
            parent = parent.cpu_parent
        count += not nested
    return count


def peak_memory_mb(fn: Callable, device: torch.device) -> Optional[float]:
    """Extra device memory at peak during one call, over what was allocated before (CUDA only)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


# ----------------------------------------------------------------------------------------------
# Running one case
# ----------------------------------------------------------------------------------------------
def floor_bytes(case: Case, elem: int, residual: bool) -> int:
    """Minimal bytes a perfect kernel moves (see module docstring)."""
    t = case.n * case.c * case.h * case.w * elem
    fwd = (3 if residual else 2) * t  # x (+ shortcut) read, y written
    bwd = (5 if residual else 3) * t  # x, grad_y (+ shortcut) read; grad_x (+ grad_shortcut) written
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[case.mode]


class _Inputs:
    """A rotating set of input copies: total bytes ≥ 2× the cache, so no call starts with a warm cache."""

    def __init__(self, case: Case, device: torch.device, budget_bytes: int, cache: int, seed: int = 0):
        spec = OPS[case.op]
        dtype = DTYPES[case.dtype]
        g = torch.Generator(device=device).manual_seed(seed)  # on the device: no host randn of large maps
        shape = (case.n, case.c, case.h, case.w)
        fmt = torch.channels_last if case.layout == "channels_last" else torch.contiguous_format

        def feat():
            return torch.randn(shape, generator=g, device=device, dtype=dtype).contiguous(memory_format=fmt)

        torch.manual_seed(seed)
        self.params = spec.params(case.c, case.r, dtype, device)
        per_set = math.prod(shape) * torch.empty((), dtype=dtype).element_size() * (
            (2 if spec.residual else 1) + (1 if case.mode != "fwd" else 0) + (2 if case.mode == "bwd" else 0))
        want = max(1, math.ceil(2 * cache / max(per_set, 1)))
        self.count = max(1, min(want, 64, budget_bytes // max(per_set, 1)))
        self.sets = []
        for _ in range(self.count):
            xs = [feat()] + ([feat()] if spec.residual else [])
            self.sets.append(xs)
        self.shape, self.fmt, self.feat = shape, fmt, feat


def _make_callable(case: Case, provider: str, inputs: _Inputs, compiled: Dict) -> Callable:
    """A zero-argument function running one call of ``case`` on the next input set."""
    spec = OPS[case.op]
    if provider == "eager":
        f = spec.fn(None)
    elif provider.startswith("compile"):
        mode = None if provider == "compile" else "max-autotune-no-cudagraphs"
        f = torch.compile(spec.fn(None), dynamic=False, mode=mode)
    else:
        f = spec.fn(provider)
    params = inputs.params
    sets = inputs.sets
    if case.mode == "fwd":
        cyc = itertools.cycle(sets)

        def call():
            with torch.no_grad():
                return f(*next(cyc), *params)
        return call
    leaves_p = [p.detach().requires_grad_() if p is not None else None for p in params]
    grad_params = [p for p in leaves_p if p is not None]
    if case.mode == "fwd+bwd":
        prepared = []
        for xs in sets:
            leaves = [x.detach().requires_grad_() for x in xs]
            prepared.append((leaves, inputs.feat()))
        cyc = itertools.cycle(prepared)

        def call():
            leaves, gy = next(cyc)
            y = f(*leaves, *leaves_p)
            return torch.autograd.grad(y, leaves + grad_params, gy)
        return call
    # bwd: one retained graph per input set
    prepared = []
    for xs in sets:
        leaves = [x.detach().requires_grad_() for x in xs]
        y = f(*leaves, *leaves_p)
        prepared.append((y, leaves, inputs.feat()))
    cyc = itertools.cycle(prepared)

    def call():
        y, leaves, gy = next(cyc)
        return torch.autograd.grad(y, leaves + grad_params, gy, retain_graph=True)
    return call


_COPY = "copy"  # the copy's key among the interleaved providers


def _copy_callable(inputs: _Inputs) -> Callable:
    if inputs.sets[0][0].device.type == "cpu":
        # x.clone(): a fresh output per call, as every provider allocates its y. A destination rotating with
        # the inputs (as on CUDA) misses every cache level, while malloc hands the providers the same
        # cache-warm block call after call: seen here, dst.copy_(x) at 8x1024x14x14 fp32 took ~2 ms against
        # the fused op's 0.83 ms (241 % "of copy").
        sources = itertools.cycle([xs[0] for xs in inputs.sets])
        return lambda: next(sources).clone()
    dsts = [torch.empty_like(xs[0]) for xs in inputs.sets]
    pairs = itertools.cycle(list(zip(dsts, [xs[0] for xs in inputs.sets])))

    def call():
        d, s = next(pairs)
        d.copy_(s)
    return call


@dataclasses.dataclass
class Settings:
    device: torch.device
    min_time: float = 0.2  # CPU: seconds of timed calls per row
    rep_ms: int = 100  # CUDA: do_bench rep
    cuda_graphs: bool = True
    launches: bool = True
    budget_bytes: int = 0


ROW_FIELDS = [
    "op", "source", "shape", "n", "c", "h", "w", "r", "dtype", "layout", "mode", "provider",
    "median_ms", "p20_ms", "p80_ms", "cudagraph_ms", "floor_bytes", "gbps", "copy_gbps", "frac_copy",
    "speedup_vs_eager", "speedup_vs_compile", "launches", "peak_mem_mb", "error",
]
META_FIELDS = ["device", "device_type", "capability", "torch", "triton", "cuda", "attn_kernels", "commit", "date",
               "python", "host", "threads", "timing", "launches_counted"]
FIELDS = META_FIELDS + ROW_FIELDS


def run_case(case: Case, providers: List[str], st: Settings, copy_cache: Dict) -> List[dict]:
    spec = OPS[case.op]
    elem = torch.empty((), dtype=DTYPES[case.dtype]).element_size()
    inputs = _Inputs(case, st.device, st.budget_bytes, cache_bytes(st.device))
    timer = lambda fn: time_cuda(fn, st.rep_ms)  # noqa: E731  (CUDA; the CPU path interleaves, below)
    ckey = (case.shape, case.dtype, case.layout)
    copy_bytes = 2 * case.n * case.c * case.h * case.w * elem

    def record_copy(ms: float):  # CUDA: the best copy seen for this tensor
        copy_cache[ckey] = max(copy_bytes / (ms * 1e-3) / 1e9, copy_cache.get(ckey, 0.0))

    cpu = st.device.type == "cpu"
    if not cpu:  # CUDA: before and after the case's providers
        record_copy(timer(_copy_callable(inputs))[0])
    fbytes = floor_bytes(case, elem, spec.residual)
    rows, fns, interleaved = [], {}, {}
    copy_gbps = None
    if cpu:  # the case's providers and its copy take turns (time_cpu_interleaved): a drifting VM speed hits all
        for prov in providers:
            try:
                fns[prov] = _make_callable(case, prov, inputs, {})
            except Exception as exc:
                fns[prov] = exc
        interleaved = time_cpu_interleaved(
            {_COPY: _copy_callable(inputs), **{p: f for p, f in fns.items() if not isinstance(f, Exception)}},
            st.min_time)
        if not isinstance(interleaved[_COPY], Exception):
            copy_gbps = copy_bytes / (interleaved[_COPY][0] * 1e-3) / 1e9
    for prov in providers:
        row = {k: getattr(case, k) for k in ("op", "source", "n", "c", "h", "w", "r", "dtype", "layout", "mode")}
        row.update(shape=case.shape, provider=prov, floor_bytes=fbytes, error="")
        try:
            fn = fns[prov] if cpu else _make_callable(case, prov, inputs, {})  # CUDA: one provider at a time
            if isinstance(fn, Exception):
                raise fn
            timed = interleaved[prov] if prov in interleaved else timer(fn)
            if isinstance(timed, Exception):
                raise timed
            med, p20, p80 = timed
            row.update(median_ms=med, p20_ms=p20, p80_ms=p80)
            row["gbps"] = fbytes / (med * 1e-3) / 1e9
            # bwd replays a graph whose forward ran on the default stream outside any capture: its backward
            # kernels follow the forward's stream, not the capture stream, so the capture cannot work.
            if st.device.type == "cuda" and st.cuda_graphs and case.mode != "bwd":
                try:
                    # fwd+bwd: fresh leaves for the capture. The timed calls above ran on the default stream
                    # and the leaves keep those calls' AccumulateGrad nodes; torch warns that autograd then
                    # syncs with the default stream, which can invalidate a capture. Probably what one H200 row
                    # hit (se 128x256x56x56 triton: "operation failed due to a previous error during capture",
                    # after that warning); not confirmed on a GPU since.
                    graph_fn = _make_callable(case, prov, inputs, {}) if case.mode == "fwd+bwd" else fn
                    row["cudagraph_ms"] = time_cuda_graph(graph_fn, st.rep_ms)
                except Exception as exc:  # backward on the side stream, allocator limits, ...
                    row["cudagraph_ms"] = None
                    row["error"] = f"cudagraph: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
            if st.launches:
                row["launches"] = count_launches(fn, st.device.type, prov)
            row["peak_mem_mb"] = peak_memory_mb(fn, st.device)
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        rows.append(row)
    if not cpu:
        record_copy(timer(_copy_callable(inputs))[0])
        copy_gbps = copy_cache[ckey]
    for row in rows:
        row["copy_gbps"] = round(copy_gbps, 2) if copy_gbps else None
        row["frac_copy"] = row["gbps"] / copy_gbps if row.get("gbps") and copy_gbps else None
    ref = {r["provider"]: r.get("median_ms") for r in rows}
    for r in rows:
        m = r.get("median_ms")
        for col, base in (("speedup_vs_eager", ref.get("eager")), ("speedup_vs_compile", ref.get("compile"))):
            r[col] = (base / m) if (m and base) else None
    del inputs
    return rows


class StopRun(BaseException):
    """A run was asked to stop (SIGTERM, e.g. from ``timeout``): write what was measured, then exit.

    A BaseException, so that the per-row ``except Exception`` handlers do not swallow it."""


@contextlib.contextmanager
def stop_on_sigterm():
    """Inside the block a SIGTERM raises StopRun instead of killing the process (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise StopRun("SIGTERM")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ----------------------------------------------------------------------------------------------
# Metadata and output
# ----------------------------------------------------------------------------------------------
def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU {cpu_model()}"


def repo_root() -> Optional[str]:
    """The source checkout this package runs from (editable install), else None."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.isdir(os.path.join(root, ".git")) and os.path.isdir(os.path.join(root, "bench")):
        return root
    return None


def git_commit() -> Optional[str]:
    root = repo_root()
    if root is None:
        return None
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) or None
    except Exception:
        return None


def default_out_dir(device: torch.device, kind: str = "bench") -> str:
    root = repo_root()
    name = slug(device_name(device))
    if root is not None:
        return os.path.join(root, "bench", "results", name)
    return os.path.join(os.getcwd(), f"attn_kernels_{kind}", name)


def metadata(device: torch.device) -> dict:
    try:
        import triton

        tv = triton.__version__
    except Exception:
        tv = None
    from . import __version__

    cuda = device.type == "cuda"
    return {
        "device": device_name(device),
        "device_type": device.type,
        "capability": "%d.%d" % torch.cuda.get_device_capability(device) if cuda else None,
        "torch": torch.__version__,
        "triton": tv,
        "cuda": torch.version.cuda if cuda else None,
        "attn_kernels": __version__,
        "commit": git_commit(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": platform.python_version(),
        "host": platform.node(),
        "threads": torch.get_num_threads(),
        "timing": ("triton.testing.do_bench (CUDA events, warm-up, L2 flushed), inputs rotated through >= 2x L2; "
                   "cudagraph_ms: do_bench_cudagraph" if cuda else
                   "time.perf_counter median of single calls after warm-up, the providers of a case taking turns "
                   "(rotating rounds of ~10 ms), inputs rotated through >= 2x LLC"),
        "launches_counted": ("CUDA kernels per call (torch.profiler)" if cuda else
                             "top-level aten/custom ops per call on CPU (torch.profiler); n/a for compiled providers"),
    }


def _fmt(v, digits=3):
    if v is None or v == "":
        return "-"
    if isinstance(v, float):
        if v == 0:
            return "0"
        return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def markdown_table(rows: List[dict], meta: dict) -> str:
    cols = [("op", "op"), ("shape", "N×C×H×W"), ("dtype", "dtype"), ("layout", "layout"), ("mode", "mode"),
            ("provider", "provider"), ("median_ms", "ms"), ("p20_ms", "p20"), ("p80_ms", "p80")]
    if meta["device_type"] == "cuda":
        cols.append(("cudagraph_ms", "graph ms"))
    cols += [("gbps", "GB/s"), ("frac_copy", "of copy"), ("speedup_vs_eager", "× eager"),
             ("speedup_vs_compile", "× compile"), ("launches", "launches")]
    if meta["device_type"] == "cuda":
        cols.append(("peak_mem_mb", "peak MB"))
    lines = [f"Device: {meta['device']} · torch {meta['torch']} · triton {meta['triton']} · commit "
             f"{meta['commit'] or 'n/a'} · {meta['date']}",
             f"Timing: {meta['timing']}. Launches: {meta['launches_counted']}.", "",
             "| " + " | ".join(h for _, h in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        cells = []
        for k, _ in cols:
            v = r.get(k)
            if k == "frac_copy" and isinstance(v, float):
                v = f"{100 * v:.0f}%"
            elif k.startswith("speedup") and isinstance(v, float):
                v = f"{v:.2f}×"
            cells.append(_fmt(v))
        if r.get("error") and r.get("median_ms") is None:
            cells[6] = "error"
        lines.append("| " + " | ".join(cells) + " |")
    errs = [r for r in rows if r.get("error")]
    if errs:
        lines.append("")
        lines.append(f"{len(errs)} row(s) with errors:")
        for r in errs[:20]:
            lines.append(f"- {r['op']} {r['shape']} {r['dtype']} {r['layout']} {r['mode']} {r['provider']}: {r['error']}")
    return "\n".join(lines)


def write_outputs(rows: List[dict], meta: dict, out_dir: str, stem: str, plots: bool = True) -> Dict[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    full = [{**meta, **{k: r.get(k) for k in ROW_FIELDS}} for r in rows]
    paths = {"json": os.path.join(out_dir, f"{stem}.json"), "csv": os.path.join(out_dir, f"{stem}.csv"),
             "md": os.path.join(out_dir, f"{stem}.md")}
    with open(paths["json"], "w") as f:
        json.dump({"schema": FIELDS, "meta": meta, "rows": full}, f, indent=1)
    with open(paths["csv"], "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=FIELDS)
        wr.writeheader()
        wr.writerows(full)
    with open(paths["md"], "w") as f:
        f.write(markdown_table(rows, meta) + "\n")
    if plots:
        paths.update(write_plots(rows, meta, out_dir, stem))
    return paths


def write_plots(rows: List[dict], meta: dict, out_dir: str, stem: str) -> Dict[str, str]:
    """Speedup over eager per shape and fraction of copy bandwidth, one panel per (op, mode)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:
        print(f"plots skipped: matplotlib is not importable ({type(exc).__name__}); "
              "`pip install matplotlib` to get PNGs", file=sys.stderr)
        return {}
    ok = [r for r in rows if r.get("median_ms")]
    groups = sorted({(r["op"], r["mode"], r["dtype"], r["layout"]) for r in ok})
    if not groups:
        return {}
    out = {}
    for metric, label, fname in (("speedup_vs_eager", "speedup over eager (×)", "speedup"),
                                 ("frac_copy", "fraction of copy bandwidth", "roofline")):
        ncol = min(3, len(groups))
        nrow = math.ceil(len(groups) / ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(6 * ncol, 3.2 * nrow), squeeze=False)
        for ax, g in zip(axes.flat, groups):
            sel = [r for r in ok if (r["op"], r["mode"], r["dtype"], r["layout"]) == g]
            shapes = list(dict.fromkeys(r["shape"] for r in sel))
            provs = list(dict.fromkeys(r["provider"] for r in sel))
            width = 0.8 / max(1, len(provs))
            for j, p in enumerate(provs):
                vals = [next((r.get(metric) or float("nan") for r in sel if r["shape"] == s and r["provider"] == p),
                             float("nan")) for s in shapes]
                ax.bar([i + j * width for i in range(len(shapes))], vals, width, label=p)
            ax.set_xticks([i + 0.4 - width / 2 for i in range(len(shapes))])
            ax.set_xticklabels(shapes, rotation=45, ha="right", fontsize=7)
            ax.axhline(1.0, color="k", lw=0.6)
            if metric == "speedup_vs_eager":
                ax.set_yscale("log")
            ax.set_title(" · ".join(g), fontsize=9)
            ax.set_ylabel(label, fontsize=8)
            ax.legend(fontsize=7)
        for ax in list(axes.flat)[len(groups):]:
            ax.axis("off")
        fig.suptitle(f"{meta['device']} · torch {meta['torch']} · {meta['date']}", fontsize=9)
        fig.tight_layout()
        path = os.path.join(out_dir, f"{stem}_{fname}.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        out[fname] = path
    return out


class Progress:
    """tqdm when importable, else a one-line counter on stderr."""

    def __init__(self, total: int, desc: str, enable: bool = True):
        self.total, self.n, self.desc, self.enable = total, 0, desc, enable
        self.bar = None
        if enable:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True)
            except Exception:
                self.bar = None
        self.t0 = time.time()

    def update(self, k: int = 1, note: str = ""):
        self.n += k
        if not self.enable:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(note[:60])
            self.bar.update(k)
        else:
            print(f"\r{self.desc}: {self.n}/{self.total} [{time.time() - self.t0:.0f}s] {note[:60]:<60}",
                  end="", file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
        elif self.enable:
            print(file=sys.stderr)


def _split(text: Optional[str]) -> Optional[List[str]]:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def configure_compile() -> None:
    """One compiled graph per shape (dynamic=False) needs a generous recompile limit."""
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, 4096)
    if hasattr(cfg, "accumulated_recompile_limit"):
        cfg.accumulated_recompile_limit = 1 << 16
    elif hasattr(cfg, "accumulated_cache_size_limit"):
        cfg.accumulated_cache_size_limit = 1 << 16


def add_arguments(p) -> None:
    p.add_argument("--quick", action="store_true",
                   help="reduced set: se, eca, se_residual at the key site (1024x14x14, batch 128 on CUDA / 8 on CPU); "
                        "fwd and fwd+bwd; bf16 on CUDA, fp32 on CPU; both layouts; no batch sweep; "
                        "eager, compile and the fused backends")
    p.add_argument("--ops", help=f"comma list of: {', '.join(OPS)} (default: all)")
    p.add_argument("--modes", help="comma list of: fwd, bwd, fwd+bwd")
    p.add_argument("--dtypes", help="comma list of: bf16, fp16, fp32 (default: all on CUDA, fp32 on CPU)")
    p.add_argument("--layouts", help="comma list of: nchw, channels_last")
    p.add_argument("--providers", help="comma list of: eager, compile, compile-max-autotune, triton, cuda, cpu "
                                       "(default: all available)")
    p.add_argument("--batch", type=int, help="images per site shape (default 128 on CUDA, 16 on CPU; --quick: 128 / 8)")
    p.add_argument("--shape", action="append", metavar="NxCxHxW",
                   help="benchmark these shapes instead of the model sites (repeatable)")
    p.add_argument("--no-sweep", action="store_true", help="skip the batch sweep")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--min-time", type=float, default=None, help="CPU: seconds of timed calls per row (default 0.2, quick 0.1)")
    p.add_argument("--rep-ms", type=int, default=100, help="CUDA: do_bench rep in ms")
    p.add_argument("--no-cudagraph", action="store_true", help="skip the CUDA-graph timing column")
    p.add_argument("--no-launches", action="store_true", help="skip counting launches (torch.profiler)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--out", help="output directory (default bench/results/<device>/ in a checkout, "
                                 "else ./attn_kernels_bench/<device>/)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="start no new case after this many seconds; the rows measured so far are written (as on "
                        "SIGTERM), in files named *_partial_*")
    p.add_argument("--list", action="store_true", help="print the cases and providers, run nothing")


def main(args) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dt_ = device.type
    ops = _split(args.ops) or (QUICK["ops"] if args.quick else list(OPS))
    modes = _split(args.modes) or (QUICK["modes"] if args.quick else list(MODES))
    dtypes = _split(args.dtypes) or (QUICK["dtypes"][dt_] if args.quick else
                                     (list(DTYPES) if dt_ == "cuda" else ["fp32"]))
    layouts = _split(args.layouts) or (QUICK["layouts"] if args.quick else list(LAYOUTS))
    wanted = _split(args.providers)
    for name, vals, allowed in (("--ops", ops, OPS), ("--modes", modes, MODES), ("--dtypes", dtypes, DTYPES),
                                ("--layouts", layouts, LAYOUTS),
                                ("--providers", wanted or [], BASE_PROVIDERS + FUSED_BACKENDS)):
        bad = [v for v in vals if v not in allowed]
        if bad:
            print(f"error: {name}: unknown {', '.join(bad)}; expected from {', '.join(allowed)}", file=sys.stderr)
            return 2
    shapes = [parse_shape(s) for s in args.shape] if args.shape else None
    cases = build_cases(ops, modes, dtypes, layouts, dt_, args.quick, args.batch, shapes, sweep=not args.no_sweep)
    if args.quick and not wanted:
        wanted = QUICK["providers"]
    plan = [(c, providers_for(c.op, dt_, wanted)) for c in cases]
    skipped: Dict[str, List[str]] = {}
    for op in ops:
        for b in FUSED_BACKENDS:
            if b in _IMPLS[OPS[op].impl_op] and b not in fused_backends(op, dt_) and b in ("triton", dt_):
                skipped.setdefault(b, []).append(op)
    for b, skipped_ops in skipped.items():
        why = ("the Triton interpreter is not a performance path" if b == "triton" and dt_ != "cuda"
               else unavailable_reason(b, dt_))
        print(f"note: backend {b} not benchmarked on {dt_} ({', '.join(skipped_ops)}): {why}", file=sys.stderr)
    total = sum(len(p) for _, p in plan)
    if args.list:
        for c, p in plan:
            print(f"{c.op:13s} {c.source:18s} {c.shape:16s} {c.dtype:5s} {c.layout:13s} {c.mode:8s} {', '.join(p)}")
        print(f"{len(plan)} cases, {total} rows")
        return 0
    configure_compile()
    if dt_ == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = int(free * 0.25)
    else:
        budget = 1 << 30
    st = Settings(device=device, min_time=args.min_time if args.min_time is not None else (0.1 if args.quick else 0.2),
                  rep_ms=args.rep_ms, cuda_graphs=not args.no_cudagraph, launches=not args.no_launches,
                  budget_bytes=budget)
    meta = metadata(device)
    print(f"attn-kernels bench on {meta['device']}: {len(plan)} cases, {total} rows. {meta['timing']}.",
          file=sys.stderr)
    rows, copy_cache = [], {}
    bar = Progress(total, "bench", enable=not args.no_progress)
    t0 = time.time()
    max_seconds = getattr(args, "max_seconds", None)
    stopped, done = None, 0
    with stop_on_sigterm():
        try:
            for case, provs in plan:
                if max_seconds is not None and time.time() - t0 > max_seconds:
                    stopped = f"--max-seconds {max_seconds:g} reached"
                    break
                rows += run_case(case, provs, st, copy_cache)
                done += 1
                bar.update(len(provs), f"{case.op} {case.shape} {case.dtype} {case.layout} {case.mode}")
                if dt_ == "cuda":
                    torch.cuda.empty_cache()
        except StopRun as exc:
            stopped = str(exc)
    bar.close()
    if stopped:
        print(f"note: stopped early ({stopped}): {done} of {len(plan)} cases measured; writing those",
              file=sys.stderr)
    out_dir = args.out or default_out_dir(device)
    stem = ("bench" + ("_quick" if args.quick else "") + ("_partial" if stopped else "") + "_"
            + meta["date"].replace("-", "").replace(":", ""))
    paths = write_outputs(rows, meta, out_dir, stem, plots=not args.no_plots)
    print(markdown_table(rows, meta))
    print(f"\n{len(rows)} rows in {time.time() - t0:.1f}s; wrote " + ", ".join(paths.values()))
    return 0
