"""Host (CPU) time per call of each fused op against the eager reference: where a training step's time
goes when the GPU outruns Python.

Why: the H200 run of 2026-12-04 timed the Triton ECA forward+backward at 1.010 ms per call with
do_bench (128x2048x7x7 bf16) but 0.095 ms replayed from a CUDA graph -- the call was host-bound by
10x, eager's by 2x (0.644 vs 0.295) -- and ECA-ResNet-50 trained slower fused than eager (55.1 vs 44.0
ms per step) although its attention kernels took 7.4 instead of 16.4 ms. This script measures the host
side alone: tiny tensors (default 2x64x4x4, so that the GPU work per call is a few microseconds and the
loop is bound by the host), ``--iters`` calls back to back, the device synchronised once after them;
host us per call = wall time / calls, the best of ``--repeats`` blocks. Providers: ``eager`` (the
reference ops, as the benchmark's eager provider), ``timm`` (timm's EcaModule / SEModule when timm is
installed), ``timm:swapped`` (that module after ``attn_kernels.swap(..., backend="triton")``: what a
block of a swapped model costs, the module's glue included), and the fused backends available here
through ``functional`` (``backend=`` pinned, as the benchmark calls them). Modes: ``fwd`` (under no_grad) and ``fwd+bwd`` (autograd.grad w.r.t. x, shortcut
and the parameters, as the benchmark's fwd+bwd). Each triton row is followed by a
``triton:launches`` row: the Triton launches that call made, replayed alone with the same arguments
through ``ops._layout.run_kernel`` as the launchers make them (a specialisation's first launch through
Triton's launch path, later ones through the compiled kernel's launcher; ``ATTN_KERNELS_DIRECT_LAUNCH=0``:
always Triton's path), a ``triton:jit-path`` row: the whole call with every launch through Triton's
path, timed in blocks alternating with the direct path (its figure in ``direct_us``), and for the ops
whose launchers replay (SE, ECA and their residual forms) a ``triton:no-replay`` row: the call with
replays off, alternating with replays on (``replay_us``). ``--cprofile``
adds, for every fused row, the Python functions that took the most time per call (cProfile; its own
overhead inflates them ~2x: read them as shares).

    python bench/host_overhead.py [--ops se,eca,se_residual,eca_residual] [--shape 2x64x4x4]
                                  [--dtype bf16] [--layout channels_last] [--iters 200] [--cprofile] [--out DIR]
    python bench/host_overhead.py --stand-in --cprofile     # no GPU: the Triton path's Python side

``--stand-in`` (machines without a GPU): Triton's driver is replaced by the compile-only stand-in of
.ci/compile_triton.py, its kernels compiled for sm_90 and "launched" by a no-op, so the triton rows time
everything of a call but the C launch stub and cuLaunchKernelEx (a few us per launch on a GPU host). The
eager / timm / cpu rows then run real CPU kernels on the tiny tensors: host time plus a little compute.
Host calibration (every run, in the header): the same three micro-loops on every machine -- pure Python
(``sum(range(100))``), one CPU torch op on 1-element tensors (``torch.add``: dispatcher + allocator),
and on a GPU one CUDA op's enqueue (``torch.add`` on 1-element CUDA tensors) -- so two machines' per-call
host times can be compared through them (is a GPU host just slower, or is something GPU-specific costing
time?). Why: the H200 machine of 2026-12-04 ran eager SE forward+backward at ~0.8-1.0 ms per call host-
bound, ~6x this project's 2-core VM, with nothing to say whether its host or its GPU path was slow.
Writes ``host_<stamp>.json`` + ``.md`` to --out (default bench/results/<device>/, ``-stand-in`` appended
to the device folder for --stand-in runs).
"""
from __future__ import annotations

import argparse
import cProfile
import datetime as _dt
import json
import os
import pstats
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _stand_in_requested(argv) -> bool:
    return "--stand-in" in (sys.argv[1:] if argv is None else argv)


def install_stand_in(arch: int = 90, sms: int = 132):
    """Triton's active driver → the compile-only stand-in of .ci/compile_triton.py plus a no-op launcher
    and binary loader, so ``kernel[grid](...)`` runs Triton's whole Python launch path (binder, cache
    lookup, launch metadata) and the launcher's call without a GPU. ``sms``: what the SE-family launchers
    plan for (an H100's 132)."""
    sys.path.insert(0, os.path.join(ROOT, ".ci"))
    import compile_triton as ct  # pops TRITON_INTERPRET before importing triton: the real compiler
    from triton.runtime.driver import driver

    class _Binaries:
        def load_binary(self, name, kernel, shared, device):
            return 0, 0, 64, 0, 1024  # module, function, registers, spills, max threads per block

        def get_device_properties(self, device):
            return {"max_shared_mem": ct.SHARED_LIMIT.get(arch, ct.SHARED_LIMIT[120]), "multiprocessor_count": sms,
                    "max_num_regs": 65536, "warpSize": 32, "sm_clock_rate": 1, "mem_clock_rate": 1,
                    "mem_bus_width": 1}

    class _NoLaunch:
        def __init__(self, src, metadata):
            pass

        def __call__(self, *args):
            pass

    class StandInDriver(ct.CompileOnlyDriver):
        utils = _Binaries()
        launcher_cls = _NoLaunch

    driver.set_active(StandInDriver(arch))
    for mod in ct.SPLIT_MODULES:
        mod._device_sms = lambda device: sms
    return ct


def main(argv=None) -> int:
    if _stand_in_requested(argv):
        os.environ.pop("TRITON_INTERPRET", None)
    import torch

    if not torch.cuda.is_available() and not _stand_in_requested(argv):
        os.environ.setdefault("TRITON_INTERPRET", "1")
    sys.path.insert(0, ROOT)
    from attn_kernels import benchmark as B
    from attn_kernels._backend import unavailable_reason

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ops", default="se,eca,se_residual,eca_residual")
    ap.add_argument("--shape", default="2x64x4x4", help="N x C x H x W (keep it tiny: host-bound)")
    ap.add_argument("--dtype", default="bf16", choices=sorted(B.DTYPES))
    ap.add_argument("--layout", default="channels_last", choices=B.LAYOUTS)
    ap.add_argument("--modes", default="fwd,fwd+bwd")
    ap.add_argument("--providers", default=None, help="comma list (default: eager, timm, every fused backend here)")
    ap.add_argument("--iters", type=int, default=200, help="calls per timed block")
    ap.add_argument("--repeats", type=int, default=7, help="timed blocks; the best is reported")
    ap.add_argument("--cprofile", action="store_true", help="top Python functions per fused row")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--stand-in", action="store_true", help="no GPU: Triton compiled for sm_90, launches are no-ops")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    if args.stand_in:
        if torch.cuda.is_available():
            ap.error("--stand-in is for machines without a GPU (here the real launches can be timed)")
        install_stand_in()
        device = torch.device("cpu")
        from attn_kernels import _backend

        for op in B.OPS:  # functional refuses Triton on CPU tensors without the interpreter: the stand-in runs them
            if "triton" in _backend._IMPLS[B.OPS[op].impl_op]:
                _backend._resolved[(B.OPS[op].impl_op, "triton", "cpu")] = _backend._load(B.OPS[op].impl_op, "triton")
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if device.type == "cpu":
            print("host_overhead: no GPU -- no triton rows (the interpreter would time NumPy); --stand-in "
                  "times the Triton path's host side", file=sys.stderr)
    n, c, h, w = B.parse_shape(args.shape)
    dtype = B.DTYPES[args.dtype]
    fmt = torch.channels_last if args.layout == "channels_last" else torch.contiguous_format
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for o in ops:
        if o not in B.OPS:
            ap.error(f"unknown op {o!r} (known: {', '.join(B.OPS)})")
    for m in modes:
        if m not in ("fwd", "fwd+bwd"):
            ap.error(f"mode {m!r}: fwd or fwd+bwd")

    rows = []
    for op in ops:
        spec = B.OPS[op]
        providers = _providers(op, device, args, unavailable_reason, B)
        torch.manual_seed(0)
        r = 5 if "eca" in op else max(1, c // 16)  # ECA ops: r is the taps' length
        params = spec.params(c, r, dtype, device)
        xs = [torch.randn(n, c, h, w, device=device, dtype=dtype).contiguous(memory_format=fmt)
              for _ in range(2 if spec.residual else 1)]
        gy = torch.randn_like(xs[0])
        for mode in modes:
            for prov in providers:
                row = dict(op=op, shape=f"{n}x{c}x{h}x{w}", dtype=args.dtype, layout=args.layout, mode=mode,
                           provider=prov, host_us=None, enqueue_us=None, top=None, error="")
                launch_row = jit_row = replay_row = None
                try:
                    fn = _callable(spec, op, prov, mode, xs, params, gy, c, r, torch)
                    row["host_us"], row["enqueue_us"] = time_host(fn, device, args.iters, args.repeats, torch)
                    if args.cprofile and prov not in ("eager", "timm"):
                        row["top"] = profile_top(fn, args.iters, args.top)
                    if prov == "triton":
                        launch_row = _launch_row(row, fn, device, args, torch)
                        jit_row = _jit_path_row(row, fn, device, args, torch)
                        if op in ("se", "se_residual", "eca", "eca_residual"):  # the launchers with replays
                            replay_row = _no_replay_row(row, fn, device, args, torch)
                except Exception as exc:  # noqa: BLE001 -- a row records its error, the others still run
                    row["error"] = f"{type(exc).__name__}: {exc}"[:300]
                for rw in (row, launch_row, jit_row, replay_row):
                    if rw is None:
                        continue
                    rows.append(rw)
                    extra = (f" ({rw['launches']} launches)" if "launches" in rw else
                             f" (direct path, alternating: {rw['direct_us']:.1f} us)" if rw.get("direct_us") else
                             f" (replays, alternating: {rw['replay_us']:.1f} us)" if rw.get("replay_us") else "")
                    print(f"{op:13s} {mode:8s} {rw['provider']:15s} "
                          + (f"{rw['host_us']:8.1f} us{extra}" if rw["host_us"] is not None else rw["error"]),
                          flush=True)

    meta = B.metadata(device)
    meta["timing"] = (f"host us per call: wall time of {args.iters} calls back to back / {args.iters}, device "
                      f"synchronised after each block, best of {args.repeats} blocks; tiny tensors: host-bound")
    meta["launch_hooks"] = launch_hooks()
    meta["calibration"] = calibration(device, torch)
    if args.stand_in:
        meta["device"] = f"{meta['device']} (Triton stand-in driver: sm_90 builds, no-op launches)"
        meta["stand_in"] = True
    out = args.out or (B.default_out_dir(device, "host") + ("-stand-in" if args.stand_in else ""))
    os.makedirs(out, exist_ok=True)
    stem = "host_" + _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    with open(os.path.join(out, stem + ".json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    with open(os.path.join(out, stem + ".md"), "w") as f:
        f.write(markdown(rows, meta) + "\n")
    print(f"host_overhead: wrote {os.path.join(out, stem)}.json / .md")
    return 1 if any(r["error"] for r in rows) else 0


def _providers(op, device, args, unavailable_reason, B):
    from attn_kernels._backend import _IMPLS

    if args.providers:
        return [p.strip() for p in args.providers.split(",") if p.strip()]
    out = ["eager"]
    if op in ("se", "eca"):
        try:
            import timm  # noqa: F401
            out.append("timm")
        except Exception:
            pass
    for be in B.FUSED_BACKENDS:
        if be not in _IMPLS[B.OPS[op].impl_op]:
            continue
        if be == "triton" and args.stand_in:
            out.append(be)
        elif (be != "triton" or device.type == "cuda") and unavailable_reason(be, device.type) is None:
            out.append(be)
    if "timm" in out and "triton" in out:
        out.append("timm:swapped")  # what a swapped model's block costs: the module's glue + the fused op
    return out


def _callable(spec, op, prov, mode, xs, params, gy, c, r, torch):
    """One call of ``op`` by ``prov`` in ``mode``, as the benchmark makes it (fresh leaves once)."""
    module = _timm_module(op, c, params, xs[0], torch) if prov in ("timm", "timm:swapped") else None
    if prov == "timm:swapped":  # timm's module swapped (attn_kernels.swap), then run on the triton backend
        import attn_kernels as ak
        from attn_kernels.swap import SwappedECA, SwappedSE

        module = torch.nn.Sequential(module)  # swap replaces a parent's children
        # swapped on the reference backend, whose probe runs anywhere (the stand-in's no-op launches would
        # fail it), then pinned to triton: the same module, the call a swapped model makes
        report = ak.swap(module, backend="reference")
        if not report.kinds():
            raise RuntimeError(f"swap left timm's {op} module alone: {report}")
        for m in module.modules():
            if isinstance(m, (SwappedSE, SwappedECA)):
                m.backend = "triton"
    f = (lambda x_, *p: module(x_)) if module is not None else spec.fn(None if prov == "eager" else prov)
    if mode == "fwd":
        def call():
            with torch.no_grad():
                return f(*xs, *params)
        return call
    leaves = [x.detach().requires_grad_() for x in xs]
    leaves_p = [p.detach().requires_grad_() if p is not None else None for p in params]
    # the same gradients from every provider: x (and shortcut) and every parameter (timm: its own copies)
    wrt = leaves + (list(module.parameters()) if module is not None else [p for p in leaves_p if p is not None])

    def call():
        return torch.autograd.grad(f(*leaves, *leaves_p), wrt, gy)
    return call


def _timm_module(op, c, params, x, torch):
    """timm's own block (the module users swap out) holding the fused rows' parameter values."""
    import timm.layers as tl

    if op == "eca":
        m = tl.EcaModule(channels=None, kernel_size=params[0].numel())  # channels= would override kernel_size
    else:
        m = tl.SEModule(c, rd_channels=params[0].shape[0])
    m = m.to(device=x.device, dtype=x.dtype)
    mine = [m.conv.weight] if op == "eca" else [m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias]
    with torch.no_grad():
        for p, value in zip(mine, params):
            p.copy_(value.reshape(p.shape))
    return m


def launch_hooks() -> dict:
    """Triton's launch enter / exit hooks as set now (a profiler or torch.compile may install them; each
    registered one is called on every launch)."""
    try:
        from triton import knobs

        hooks = (knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook)
    except Exception:  # triton without knobs
        from triton.compiler import CompiledKernel

        hooks = (getattr(CompiledKernel, "launch_enter_hook", None), getattr(CompiledKernel, "launch_exit_hook", None))

    def describe(h):  # triton >= 3.5: a HookChain (never None) holding the registered hooks in .calls
        if h is None:
            return "none"
        calls = getattr(h, "calls", None)
        return f"{len(calls)} registered" if calls is not None else repr(h)
    return {"enter": describe(hooks[0]), "exit": describe(hooks[1])}


def record_launches(fn):
    """[(kernel, grid, args, kwargs)] of every Triton launch ``fn()`` makes (through ops._layout.run_kernel,
    every launcher's one launch point)."""
    from attn_kernels.ops import _layout

    calls = []
    _layout.recorder = calls
    try:
        fn()
    finally:
        _layout.recorder = None
    return calls


def _launch_row(row, fn, device, args, torch):
    """The Triton launches of one fused call replayed alone (same arguments, through ``run_kernel`` as the
    launchers make them: Triton's launch path the first time, the compiled kernel's own launcher after):
    how much of the call's host time is launching, the rest being the launchers' Python, torch ops and
    autograd."""
    from attn_kernels.ops._layout import run_kernel

    calls = record_launches(fn)
    # a schedule-(b) launch (MULTI=1) waits on per-call counters: replayed on the recorded (already
    # counted) buffer it would not wait as a real call does; give it fresh zeros each time, as the
    # launcher does (torch.zeros per call, so the replay times that fill too)
    fresh = [kernel.arg_names.index("sync_ptr") if kw.get("MULTI") and "sync_ptr" in kernel.arg_names else None
             for kernel, _, _, kw in calls]

    def replay():
        for (kernel, grid, a, kw), i in zip(calls, fresh):
            if i is not None:
                a = a[:i] + (torch.zeros_like(a[i]),) + a[i + 1:]
            run_kernel(kernel, grid, a, kw)
    host, enqueue = time_host(replay, device, args.iters, args.repeats, torch)
    return dict(row, provider="triton:launches", launches=len(calls), top=None, host_us=host, enqueue_us=enqueue)


def _jit_path_row(row, fn, device, args, torch):
    """The same call with every launch through Triton's ``JITFunction.run`` (``ATTN_KERNELS_DIRECT_LAUNCH=0``'s
    path), timed in blocks alternating with the direct path's so that both see the same host: what
    ``run_kernel``'s direct launches save per call. ``host_us``: Triton's path; ``direct_us``: the direct
    path in the same alternation (best blocks)."""
    return _switched_row(row, fn, device, args, torch, "DIRECT_LAUNCH", "triton:jit-path", "direct_us")


def _no_replay_row(row, fn, device, args, torch):
    """The same call with replays off (``ATTN_KERNELS_REPLAY=0``: every call plans, packs its arguments and
    keys its launch), alternating with replays on (``replay_us``): what the launchers' replays save per call."""
    return _switched_row(row, fn, device, args, torch, "REPLAY", "triton:no-replay", "replay_us")


def _switched_row(row, fn, device, args, torch, switch: str, provider: str, on_field: str):
    """``fn`` timed with ``ops._layout.<switch>`` off (``host_us``) and on (``on_field``), in blocks taking
    turns, the best block of each."""
    from attn_kernels.ops import _layout

    best = {True: float("inf"), False: float("inf")}
    enqueue = float("inf")
    saved = getattr(_layout, switch)
    try:
        for _ in range(max(3, args.repeats // 2)):  # ~one timed row's calls: gpu_check's host step has 90 s
            for on in (True, False):
                setattr(_layout, switch, on)
                host, enq = time_host(fn, device, args.iters, 1, torch)
                best[on] = min(best[on], host)
                if not on:
                    enqueue = min(enqueue, enq)
    finally:
        setattr(_layout, switch, saved)
    return dict(row, provider=provider, top=None, host_us=best[False], enqueue_us=enqueue, **{on_field: best[True]})


def time_host(fn, device, iters: int, repeats: int, torch):
    """(per-call wall time, per-call time to enqueue) in us, each the best over ``repeats`` blocks of
    ``iters`` back-to-back calls; wall time includes the device sync at the block's end. Where the two
    differ much the device, not the host, bounded the block (the markdown flags it)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(max(5, iters // 10)):  # compile, caches, allocator
        fn()
    sync()
    best, best_enqueue = float("inf"), float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        t1 = time.perf_counter()
        sync()
        t2 = time.perf_counter()
        best, best_enqueue = min(best, (t2 - t0) / iters * 1e6), min(best_enqueue, (t1 - t0) / iters * 1e6)
    return best, best_enqueue


def calibration(device, torch, iters: int = 2000, repeats: int = 7) -> dict:
    """Host speed on three micro-loops (us per call, best of ``repeats`` blocks): pure Python, one CPU
    torch op, and where there is a GPU one CUDA op's enqueue -- the yardstick between machines."""
    def best(fn):
        for _ in range(iters // 10):
            fn()
        t = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            t = min(t, (time.perf_counter() - t0) / iters * 1e6)
        return round(t, 3)

    a, b = torch.ones(1), torch.ones(1)
    out = {"python_sum_range_100_us": best(lambda: sum(range(100))), "cpu_torch_add_us": best(lambda: torch.add(a, b))}
    if device.type == "cuda":
        ga, gb = a.to(device), b.to(device)
        out["cuda_torch_add_enqueue_us"] = best(lambda: torch.add(ga, gb))
        torch.cuda.synchronize()
    return out


def profile_top(fn, iters: int, top: int):
    """[(function, calls per call, own us per call, cumulative us per call)] of the ``top`` functions by
    own time (cProfile over ``iters`` calls; cProfile's overhead included)."""
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(iters):
        fn()
    prof.disable()
    stats = pstats.Stats(prof).stats
    rows = []
    for (path, line, name), (cc, nc, tt, ct, _) in stats.items():
        where = f"{os.path.basename(path)}:{line}({name})" if path != "~" else name
        rows.append((where, nc / iters, tt / iters * 1e6, ct / iters * 1e6))
    rows.sort(key=lambda r: -r[2])
    return [[w, round(k, 2), round(t, 2), round(cu, 2)] for w, k, t, cu in rows[:top]]


def markdown(rows, meta) -> str:
    lines = [f"Device: {meta['device']} · torch {meta['torch']} · triton {meta['triton']} · commit "
             f"{meta['commit'] or 'n/a'} · {meta['date']}", f"Timing: {meta['timing']}.",
             f"Triton launch hooks: {meta.get('launch_hooks')}.",
             f"Host calibration (us per call): {meta.get('calibration')}.", "",
             "| op | shape | dtype | layout | mode | provider | host us/call | × eager |", "|---|---|---|---|---|---|---|---|"]
    eager = {(r["op"], r["mode"]): r["host_us"] for r in rows if r["provider"] == "eager"}
    for r in rows:
        e = eager.get((r["op"], r["mode"]))
        ratio = f"{r['host_us'] / e:.2f}" if r["host_us"] and e else "-"
        us = f"{r['host_us']:.1f}" if r["host_us"] is not None else f"error: {r['error']}"
        if r["host_us"] and r.get("enqueue_us") is not None and r["enqueue_us"] < 0.8 * r["host_us"]:
            us += f" (enqueue {r['enqueue_us']:.1f}: device-bound)"
        if r.get("direct_us"):
            us += f" (direct launches, alternating: {r['direct_us']:.1f})"
        if r.get("replay_us"):
            us += f" (replays, alternating: {r['replay_us']:.1f})"
        lines.append(f"| {r['op']} | {r['shape']} | {r['dtype']} | {r['layout']} | {r['mode']} | {r['provider']} | "
                     f"{us} | {ratio} |")
    for r in rows:
        if r.get("top"):
            lines += ["", f"{r['op']} {r['mode']} {r['provider']}: top functions by own time "
                      "(us per call under cProfile; calls per call)", "",
                      "| function | calls | own us | cum us |", "|---|---|---|---|"]
            lines += [f"| `{w}` | {k:g} | {t:.1f} | {cu:.1f} |" for w, k, t, cu in r["top"]]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
