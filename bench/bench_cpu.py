"""CPU benchmark of the C++ extension (the ``cpu`` backend) against eager PyTorch and ``x.clone()``.

SE and ECA at the SE-ResNet-50 stage shapes (256×56², 512×28², 1024×14², 2048×7²), batch 1 and 16,
side by side in one run: ``cpu`` (attn_kernels._C), ``eager`` (attn_kernels.reference, ~8 ops per
block) and ``clone`` (x.clone(): read x, write y, allocation included — the floor a fused forward can
reach). Medians from ``torch.utils.benchmark.Timer.blocked_autorange``; with ``--repeat R`` the
whole table runs R times and each cell keeps its fastest median. Forward (inference, no_grad) by
default; ``--mode fwdbwd`` times forward + backward (clone floor then: clone of x and of grad_y).

    python bench/bench_cpu.py [--dtype float32|bfloat16|float16] [--channels-last] [--mode fwd|fwdbwd]
                              [--threads N] [--min-run-time 0.3] [--repeat 1] [--out bench/out]

Large maps (tens of MB) are dominated by first-touch page faults of freshly mmapped outputs under
glibc's default malloc (eager and clone pay them too); the allocator settings are recorded. PyTorch's CPU
tuning guide suggests jemalloc/tcmalloc, or ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``.

Writes ``<out>/cpu_<op-mode-dtype-layout>_<timestamp>.json`` and ``.csv`` (CPU model, thread count,
versions, date in every row / the header) and prints a markdown table with the speedups.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import sys

import torch
import torch.utils.benchmark as tb

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import attn_kernels  # noqa: E402
from attn_kernels import reference  # noqa: E402
from attn_kernels.benchmark import cpu_model  # noqa: E402
from attn_kernels.ops import ext  # noqa: E402

SHAPES = [(256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)]
BATCHES = [1, 16]


def median_us(fn, min_run_time: float) -> float:
    fn()  # warm-up (allocator, caches)
    return tb.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time).median * 1e6


def make_case(op: str, c: int, dtype):
    if op == "se":
        rd = max(1, c // 16)
        params = (torch.randn(rd, c) * 0.05, torch.randn(rd) * 0.05, torch.randn(c, rd) * 0.05, torch.randn(c) * 0.05)
        params = tuple(p.to(dtype) for p in params)
        return (lambda x: ext.se(x, *params, "relu", "sigmoid"),
                lambda x: reference.se(x, *params, "relu", "sigmoid"), params)
    k = reference.eca_kernel_size(c)
    w = (torch.randn(k) * 0.3).to(dtype)
    return lambda x: ext.eca(x, w, False), lambda x: reference.eca(x, w, False), (w,)


def run(args) -> list:
    dtype = getattr(torch, args.dtype)
    rows = []
    for op in args.ops:
        for n in BATCHES:
            for c, h, w in SHAPES:
                x = torch.randn(n, c, h, w).to(dtype)
                if args.channels_last:
                    x = x.to(memory_format=torch.channels_last)
                fused, eager, params = make_case(op, c, dtype)
                if args.mode == "fwd":
                    with torch.no_grad():
                        t_cpu = median_us(lambda: fused(x), args.min_run_time)
                        t_eager = median_us(lambda: eager(x), args.min_run_time)
                        t_clone = median_us(lambda: x.clone(), args.min_run_time)
                else:
                    xg = x.detach().requires_grad_()
                    gy = torch.randn_like(x)
                    fused_g, eager_g, _ = make_case(op, c, dtype)

                    def fb(f):
                        def call():
                            y = f(xg)
                            return torch.autograd.grad(y, [xg], gy)
                        return call
                    t_cpu = median_us(fb(fused), args.min_run_time)
                    t_eager = median_us(fb(eager), args.min_run_time)
                    t_clone = median_us(lambda: (x.clone(), gy.clone()), args.min_run_time)
                rows.append(dict(op=op, mode=args.mode, dtype=args.dtype,
                                 layout="channels_last" if args.channels_last else "nchw", n=n, c=c, h=h, w=w,
                                 cpu_us=round(t_cpu, 2), eager_us=round(t_eager, 2), clone_us=round(t_clone, 2),
                                 speedup_vs_eager=round(t_eager / t_cpu, 3), ratio_to_clone=round(t_cpu / t_clone, 3)))
                print(f"{op:3s} N={n:2d} {c:4d}x{h}x{w}: cpu {t_cpu:9.1f} us  eager {t_eager:9.1f} us  "
                      f"clone {t_clone:9.1f} us  -> {t_eager / t_cpu:5.2f}x eager, {t_cpu / t_clone:5.2f}x clone",
                      flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", nargs="+", default=["se", "eca"], choices=["se", "eca"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--mode", default="fwd", choices=["fwd", "fwdbwd"])
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--min-run-time", type=float, default=0.3)
    ap.add_argument("--repeat", type=int, default=1,
                    help="run the whole table R times, keep each cell's fastest median (robust on a shared machine)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    meta = dict(cpu=cpu_model(), logical_cpus=os.cpu_count(), torch_threads=torch.get_num_threads(),
                cpu_isa=ext._C.cpu_isa(), openmp=ext.has_openmp(),
                torch=torch.__version__, attn_kernels=attn_kernels.__version__, python=platform.python_version(),
                date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                allocator=" ".join(f"{k}={os.environ[k]}" for k in sorted(os.environ)
                                   if k.startswith("MALLOC_") or k == "LD_PRELOAD") or "glibc defaults",
                note="medians of torch.utils.benchmark blocked_autorange; the machine may be shared")
    print(f"# {meta['cpu']}, {meta['torch_threads']} threads, torch {meta['torch']}, {meta['date']}, "
          f"allocator: {meta['allocator']}")
    rows = run(args)
    for _ in range(args.repeat - 1):  # interleaved repeats: a burst of load elsewhere hits one pass only
        for r, again in zip(rows, run(args)):
            for key in ("cpu_us", "eager_us", "clone_us"):
                r[key] = min(r[key], again[key])
            r["speedup_vs_eager"] = round(r["eager_us"] / r["cpu_us"], 3)
            r["ratio_to_clone"] = round(r["cpu_us"] / r["clone_us"], 3)
    meta["repeat"] = args.repeat
    os.makedirs(args.out, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    tag = f"{'-'.join(args.ops)}_{args.mode}_{args.dtype}_{'cl' if args.channels_last else 'nchw'}"
    base = os.path.join(args.out, f"cpu_{tag}_{stamp}")
    with open(base + ".json", "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    with open(base + ".csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]) + list(meta))
        wr.writeheader()
        for r in rows:
            wr.writerow({**r, **meta})
    print("\n| op | N | C×H×W | cpu (µs) | eager (µs) | clone (µs) | vs eager | / clone |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['op']} | {r['n']} | {r['c']}×{r['h']}×{r['w']} | {r['cpu_us']:.1f} | {r['eager_us']:.1f} | "
              f"{r['clone_us']:.1f} | {r['speedup_vs_eager']:.2f}× | {r['ratio_to_clone']:.2f}× |")
    print(f"\nwrote {base}.json and .csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
