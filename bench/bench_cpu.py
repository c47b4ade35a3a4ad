"""CPU benchmark of the C++ extension (the ``cpu`` backend) against eager PyTorch and ``x.clone()``.

SE and ECA at the SE-ResNet-50 stage shapes (256×56², 512×28², 1024×14², 2048×7²), batch 1 and 16,
side by side in one run: ``cpu`` (attn_kernels._C), ``eager`` (attn_kernels.reference, ~8 ops per
block) and ``clone`` (x.clone(): read x, write y, allocation included — the floor a fused forward can
reach). Forward (inference, no_grad) by default; ``--mode fwdbwd`` times forward + backward, the
gradients of x and of every weight, as in training (clone floor then: clone of x and of grad_y).

Timing is interleaved (``attn_kernels.benchmark.time_cpu_interleaved``): the three providers of a case
take turns, single calls for at least ``--block-ms`` each, for about ``--rounds`` rounds, the order rotating
from round to round; each cell is the median (and p20 / p80) of the single calls. Timing one provider after the other
(``torch.utils.benchmark``'s blocked_autorange per provider, as this script did before) put minutes-long
swings of a shared VM's speed into the ratios -- seen here: the same ``x.clone()`` at 477 us and 946 us
two minutes apart; taking turns puts every provider under the same conditions, so the ratios hold even
while the absolute times drift.

    python bench/bench_cpu.py [--dtype float32|bfloat16|float16] [--channels-last] [--mode fwd|fwdbwd]
                              [--threads N] [--rounds 15] [--block-ms 20] [--out bench/out]

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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import attn_kernels  # noqa: E402
from attn_kernels import reference  # noqa: E402
from attn_kernels.benchmark import cpu_model, time_cpu_interleaved  # noqa: E402
from attn_kernels.ops import ext  # noqa: E402

SHAPES = [(256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)]
BATCHES = [1, 16]


def interleaved_us(fns: dict, rounds: int, block_ms: float) -> dict:
    """{name: (median, p20, p80)} in microseconds per call: attn_kernels.benchmark's interleaved timer (the
    providers take turns, rounds of ~block_ms of single calls, rotating order), ``rounds`` rounds' worth."""
    out = {}
    for name, timed in time_cpu_interleaved(fns, min_time=rounds * block_ms * 1e-3, min_reps=rounds,
                                            warmup=2, round_ms=block_ms).items():
        if isinstance(timed, Exception):
            raise timed
        out[name] = tuple(v * 1e3 for v in timed)
    return out


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
                        t = interleaved_us(dict(cpu=lambda: fused(x), eager=lambda: eager(x), clone=lambda: x.clone()),
                                           args.rounds, args.block_ms)
                else:
                    # as in training: the FC / conv weights need their gradients too (both providers)
                    xg = x.detach().requires_grad_()
                    gy = torch.randn_like(x)
                    for prm in params:
                        prm.requires_grad_()

                    def fb(f):
                        def call():
                            y = f(xg)
                            return torch.autograd.grad(y, [xg, *params], gy)
                        return call
                    t = interleaved_us(dict(cpu=fb(fused), eager=fb(eager), clone=lambda: (x.clone(), gy.clone())),
                                       args.rounds, args.block_ms)
                (t_cpu, *q_cpu), (t_eager, *q_eager), (t_clone, *q_clone) = t["cpu"], t["eager"], t["clone"]
                rows.append(dict(op=op, mode=args.mode, dtype=args.dtype,
                                 layout="channels_last" if args.channels_last else "nchw", n=n, c=c, h=h, w=w,
                                 cpu_us=round(t_cpu, 2), eager_us=round(t_eager, 2), clone_us=round(t_clone, 2),
                                 cpu_p20_p80=[round(v, 2) for v in q_cpu], eager_p20_p80=[round(v, 2) for v in q_eager],
                                 clone_p20_p80=[round(v, 2) for v in q_clone],
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
    ap.add_argument("--rounds", type=int, default=15, help="blocks per provider and case (the providers take turns)")
    ap.add_argument("--block-ms", type=float, default=20.0, help="minimum duration of one timed block of calls")
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
                timing=f"providers interleaved, ~{args.rounds} rounds of >= {args.block_ms} ms each, "
                       "median (p20, p80) of single calls",
                note="the machine may be shared: compare ratios within a run, not absolute times across runs")
    print(f"# {meta['cpu']}, {meta['torch_threads']} threads, torch {meta['torch']}, {meta['date']}, "
          f"allocator: {meta['allocator']}")
    rows = run(args)
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
