"""Benchmark: fused Triton SE vs eager reference.SEBlock vs torch.compile (default, max-autotune).

    python bench/bench_se.py                 # GPU: SE-ResNet-50 stage shapes at N=64 + batch sweep
    python bench/bench_se.py --quick         # one small case (CPU: through the Triton interpreter)
    python bench/bench_se.py --overhead      # per-call CPU overhead of the custom_op path

For each case (shape, dtype bf16/fp32, layout NCHW/channels_last, mode fwd / fwd+bwd) and provider
(fused, eager, compile, compile-max-autotune): median time (triton.testing.do_bench on CUDA,
wall-clock median on CPU), GB/s against the minimal-bytes floor (forward: read x + write y =
2·M·|x|; forward+backward: that + read x and grad_y + write grad_x = 5·M·|x|), that bandwidth as a
fraction of a device copy (x.clone(), measured in the same run on the same x), and kernel launches per
call counted with torch.profiler (CUDA only). Writes JSON + CSV (device, torch/triton versions, date)
to --out (default bench/results/) and prints a markdown table.

Without a GPU the full benchmark is skipped with a message; ``--quick`` still runs one tiny case
through the interpreter (timings then measure the interpreter, not a kernel: never quote them).
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import sys
import time

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any @triton.jit is defined

import triton  # noqa: E402

import attn_kernels as ak  # noqa: E402
from attn_kernels.benchmark import count_launches, time_cpu, time_cuda  # noqa: E402
from attn_kernels import reference  # noqa: E402
from attn_kernels.ops import se as S  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
STAGES = [(256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)]  # SE-ResNet-50 stages, C×H×W
BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256]
PROVIDERS = ["fused", "eager", "compile", "compile-max-autotune"]


def _time_ms(fn, grad_to_none=None) -> float:
    """Median ms: do_bench on CUDA, a perf_counter median on CPU (the suite's timers)."""
    if HAS_CUDA:
        return time_cuda(fn, rep_ms=100, grad_to_none=grad_to_none)[0]
    return time_cpu(fn, min_time=0.0, min_reps=5, warmup=1)[0]


def _launches(fn) -> float:
    """Device kernels per call, from torch.profiler (CUDA only)."""
    return float(count_launches(fn, "cuda", "fused")) if HAS_CUDA else float("nan")


def _modules(c: int, device, dtype):
    ref = reference.SEBlock(c, reduction=16).to(device)  # fp32 params: the usual mixed-precision setup
    fused = ak.FusedSE(c, reduction=16, backend="triton").to(device)
    fused.load_state_dict(ref.state_dict())
    mods = {"fused": fused, "eager": ref}
    if HAS_CUDA:
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
        mods["compile"] = torch.compile(ref)
        mods["compile-max-autotune"] = torch.compile(ref, mode="max-autotune")  # includes CUDA graphs
    return mods


def run_case(n, c, h, w, dtype, layout, device, providers):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(n, c, h, w, device=device, dtype=dtype).to(memory_format=fmt)
    gy = torch.randn_like(x)
    m_bytes = x.numel() * x.element_size()
    copy_ms = _time_ms(lambda: x.clone())
    copy_gbs = 2 * m_bytes / copy_ms / 1e6
    rows = []
    mods = _modules(c, device, dtype)
    w1, _, w2, _ = mods["fused"].se_params()  # the fused launch config, recorded with the fused rows
    cfg = S.launch_config(n, c, w1.shape[0], h * w, x.stride(1), x.device, **S._sizes(x, w1, w2))
    schedule = f"GROUP={cfg['GROUP']} MULTI={cfg['MULTI']} P={cfg['P']}"
    for prov in providers:
        if prov not in mods:
            continue
        m = mods[prov]
        xg = x.detach().clone().requires_grad_()
        for mode in ("fwd", "fwd+bwd"):
            if mode == "fwd":
                def fn():
                    with torch.no_grad():
                        return m(x)
                floor = 2 * m_bytes
                gtn = None
            else:
                def fn():
                    m(xg).backward(gy)
                floor = 5 * m_bytes
                gtn = [xg] + list(m.parameters())
            try:
                ms = _time_ms(fn, grad_to_none=gtn)
                launches = _launches(fn)
            except Exception as exc:  # a provider failing (e.g. autotune) must not lose the other rows
                print(f"  {prov} {mode} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                continue
            gbs = floor / ms / 1e6
            rows.append(dict(n=n, c=c, h=h, w=w, dtype=str(dtype).replace("torch.", ""), layout=layout, mode=mode,
                             provider=prov, median_ms=round(ms, 5), floor_bytes=floor, gbs=round(gbs, 1),
                             copy_gbs=round(copy_gbs, 1), frac_copy=round(gbs / copy_gbs, 3),
                             launches=launches, schedule=schedule if prov == "fused" else ""))
    return rows


def measure_overhead(iters: int = 2000) -> dict:
    """Per-call CPU cost of the custom_op path, with the kernel launch stubbed out (so the interpreter
    or the GPU does not enter the figure): direct launcher call vs torch.ops (no grad) vs torch.ops with
    autograd vs the public functional.se (validation + dispatch + op + autograd node)."""
    device = "cuda" if HAS_CUDA else "cpu"
    x = torch.randn(2, 16, 4, 4, device=device)
    w1, b1 = torch.randn(4, 16, device=device), torch.randn(4, device=device)
    w2, b2 = torch.randn(16, 4, device=device), torch.randn(16, device=device)
    y, pooled, u, z = S.se_forward(x, w1, b1, w2, b2, "relu", "sigmoid")
    original = S.se_forward

    def stub(*args, **kwargs):
        return y, pooled, u, z

    def bench(fn):
        for _ in range(50):
            fn()
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t0) / iters * 1e6

    ps = [t.clone().requires_grad_() for t in (w1, b1, w2, b2)]
    S.se_forward = stub
    try:
        out = {
            "direct_launcher_stub_us": bench(lambda: S.se_forward(x, w1, b1, w2, b2, "relu", "sigmoid")),
            "torch_ops_nograd_us": bench(lambda: torch.ops.attn_kernels.se_fwd(x, w1, b1, w2, b2, "relu", "sigmoid")),
            "torch_ops_autograd_us": bench(lambda: torch.ops.attn_kernels.se_fwd(x, *ps, "relu", "sigmoid")),
            "functional_se_autograd_us": bench(lambda: ak.functional.se(x, *ps, backend="triton")),
        }
    finally:
        S.se_forward = original
    out = {k: round(v, 2) for k, v in out.items()}
    out["custom_op_overhead_us"] = round(out["torch_ops_nograd_us"] - out["direct_launcher_stub_us"], 2)
    if HAS_CUDA:  # the real launcher's CPU cost (kernel launch included, no sync)
        out["real_launcher_cpu_us"] = round(bench(lambda: S.se_forward(x, w1, b1, w2, b2, "relu", "sigmoid")), 2)
        torch.cuda.synchronize()
    return out


def _meta() -> dict:
    return dict(device=torch.cuda.get_device_name() if HAS_CUDA else "cpu (TRITON_INTERPRET=1)",
                torch=torch.__version__, triton=triton.__version__,
                date=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                interpreter=os.environ.get("TRITON_INTERPRET", "0") == "1")


def _write(rows, meta, out_dir, tag):
    os.makedirs(out_dir, exist_ok=True)
    stamp = meta["date"].replace("-", "").replace(":", "")
    base = os.path.join(out_dir, f"se_{tag}_{'cuda' if HAS_CUDA else 'cpu'}_{stamp}")
    with open(base + ".json", "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    if rows and isinstance(rows, list):
        with open(base + ".csv", "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=list(meta) + list(rows[0]))
            wr.writeheader()
            for r in rows:
                wr.writerow({**meta, **r})
    print(f"wrote {base}.json" + (" and .csv" if rows and isinstance(rows, list) else ""))


def _table(rows):
    print("| N | C×H×W | dtype | layout | mode | provider | ms | GB/s (floor) | × copy | launches | speedup vs eager |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    eager = {(r["n"], r["c"], r["dtype"], r["layout"], r["mode"]): r["median_ms"] for r in rows
             if r["provider"] == "eager"}
    for r in rows:
        e = eager.get((r["n"], r["c"], r["dtype"], r["layout"], r["mode"]))
        sp = f"{e / r['median_ms']:.2f}×" if e else "-"
        print(f"| {r['n']} | {r['c']}×{r['h']}×{r['w']} | {r['dtype']} | {r['layout']} | {r['mode']} | "
              f"{r['provider']} | {r['median_ms']:.4f} | {r['gbs']} | {r['frac_copy']} | {r['launches']} | {sp} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one small case (runs on CPU via the interpreter)")
    ap.add_argument("--overhead", action="store_true", help="only the custom_op CPU-overhead measurement")
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--layouts", default="nchw,channels_last")
    ap.add_argument("--providers", default=",".join(PROVIDERS))
    ap.add_argument("--no-sweep", action="store_true", help="skip the batch sweep")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args(argv)
    meta = _meta()
    if args.overhead:
        ov = measure_overhead()
        print(json.dumps(dict(meta=meta, overhead=ov), indent=1))
        _write([dict(**ov)], meta, args.out, "overhead")
        return 0
    device = "cuda" if HAS_CUDA else "cpu"
    providers = args.providers.split(",")
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    layouts = args.layouts.split(",")
    if args.quick:
        cases = [(2, 32, 4, 4)] if not HAS_CUDA else [(64, 1024, 14, 14)]
        dtypes, layouts = dtypes[:1] if not HAS_CUDA else dtypes, layouts
    elif not HAS_CUDA:
        print("bench_se: no CUDA device — the full benchmark needs a GPU (Triton on CPU is the interpreter). "
              "Run with --quick for a smoke run or --overhead for the CPU-overhead figure.")
        return 0
    else:
        cases = [(64,) + s for s in STAGES]
        if not args.no_sweep:
            cases += [(n, 1024, 14, 14) for n in BATCHES if n != 64]
    rows = []
    for (n, c, h, w) in cases:
        for dtype in dtypes:
            for layout in layouts:
                print(f"case N={n} C={c} {h}×{w} {dtype} {layout}", file=sys.stderr)
                rows += run_case(n, c, h, w, dtype, layout, device, providers)
    _table(rows)
    _write(rows, meta, args.out, "quick" if args.quick else "full")
    return 0


if __name__ == "__main__":
    sys.exit(main())
