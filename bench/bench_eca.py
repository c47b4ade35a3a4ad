"""Benchmark: fused Triton ECA / eca_residual / CBAM vs eager reference vs torch.compile (default, max-autotune).

    python bench/bench_eca.py                    # GPU: ECA-ResNet-50 stages + EfficientNet-B0-like shapes
    python bench/bench_eca.py --ops eca --quick  # one small case (CPU: through the Triton interpreter)

Ops: ``eca`` (reference.ECA, adaptive k), ``eca_residual`` (relu(eca(x) + shortcut), the ECA-ResNet
block tail; eager = reference.eca_residual), ``cbam`` (reference.CBAM, r = 16, 7×7). Shapes: the
ECA-ResNet-50 stages at N = 64 (256×56², 512×28², 1024×14², 2048×7²) and EfficientNet-B0-like SE
sites at N = 64 (32×112², 96×112², 144×56², 240×28², 480×14², 672×14², 1152×7²). For each case (dtype
bf16/fp32, layout NCHW/channels_last, mode fwd / fwd+bwd) and provider (fused, eager, compile,
compile-max-autotune): median time (triton.testing.do_bench on CUDA, wall-clock median on CPU), GB/s
against the minimal-bytes floor (M = N·C·HW·|x|):

    eca, cbam      fwd 2M (read x, write y)          fwd+bwd 5M (+ read x, grad_y, write grad_x)
    eca_residual   fwd 3M (read x, shortcut, write)  fwd+bwd 8M (+ read x, shortcut, grad_y, write 2 grads)

that bandwidth as a fraction of a device copy (x.clone(), measured in the same run on the same x), and
device kernels per call counted with torch.profiler (CUDA only). Writes JSON + CSV (device, torch /
triton versions, date) to --out (default bench/results/) and prints a markdown table.

Without a GPU the full benchmark exits with a message; ``--quick`` still runs one tiny case through the
interpreter (those timings measure the interpreter, not a kernel: never quote them).
``--slab-bytes`` / ``--min-block-c`` override the ECA channel-tile heuristic (recorded in the output)
so a GPU run can sweep it.
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any @triton.jit is defined

import triton  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import attn_kernels as ak  # noqa: E402
from attn_kernels.benchmark import count_launches, time_cpu, time_cuda  # noqa: E402
from attn_kernels import functional, reference  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
RESNET = [(256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)]  # ECA-ResNet-50 stages, C×H×W
EFFNET = [(32, 112, 112), (96, 112, 112), (144, 56, 56), (240, 28, 28), (480, 14, 14), (672, 14, 14),
          (1152, 7, 7)]  # EfficientNet-B0-like SE sites at 224²
PROVIDERS = ["fused", "eager", "compile", "compile-max-autotune"]
FLOOR = {"eca": (2, 5), "eca_residual": (3, 8), "cbam": (2, 5)}  # (fwd, fwd+bwd) in units of M


def _time_ms(fn, grad_to_none=None) -> float:
    """Median ms: do_bench on CUDA, a perf_counter median on CPU (the suite's timers)."""
    if HAS_CUDA:
        return time_cuda(fn, rep_ms=100, grad_to_none=grad_to_none)[0]
    return time_cpu(fn, min_time=0.0, min_reps=3, warmup=1)[0]


def _launches(fn) -> float:
    """Device kernels per call, from torch.profiler (CUDA only)."""
    return float(count_launches(fn, "cuda", "fused")) if HAS_CUDA else float("nan")


class _EcaResidual(torch.nn.Module):
    """ECA-ResNet block tail relu(eca(x) + shortcut) as a module (shortcut passed in)."""

    def __init__(self, c: int, backend=None):
        super().__init__()
        self.eca = reference.ECA(c)
        self.backend = backend

    def forward(self, x, shortcut):
        if self.backend is None:
            return reference.eca_residual(x, shortcut, self.eca.conv.weight, False, "relu")
        return functional.eca_residual(x, shortcut, self.eca.conv.weight, False, "relu", backend=self.backend)


def _modules(op: str, c: int, device):
    if op == "eca":
        ref = reference.ECA(c)
        fused = ak.FusedECA(c, backend="triton")
    elif op == "cbam":
        ref = reference.CBAM(c, reduction=16, spatial_kernel=7)
        fused = ak.FusedCBAM(c, reduction=16, spatial_kernel=7, backend="triton")
    else:
        ref = _EcaResidual(c)
        fused = _EcaResidual(c, backend="triton")
    ref, fused = ref.to(device), fused.to(device)  # fp32 params: the usual mixed-precision setup
    fused.load_state_dict(ref.state_dict())
    mods = {"fused": fused, "eager": ref}
    if HAS_CUDA:
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
        mods["compile"] = torch.compile(ref)
        mods["compile-max-autotune"] = torch.compile(ref, mode="max-autotune-no-cudagraphs")
    return mods


def run_case(op, n, c, h, w, dtype, layout, device, providers):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(n, c, h, w, device=device, dtype=dtype).to(memory_format=fmt)
    sc = torch.randn_like(x) if op == "eca_residual" else None
    gy = torch.randn_like(x)
    m_bytes = x.numel() * x.element_size()
    copy_ms = _time_ms(lambda: x.clone())
    copy_gbs = 2 * m_bytes / copy_ms / 1e6
    rows = []
    mods = _modules(op, c, device)
    for prov in providers:
        if prov not in mods:
            continue
        m = mods[prov]
        xg = x.detach().clone().requires_grad_()
        scg = sc.detach().clone().requires_grad_() if sc is not None else None
        args = (x,) if sc is None else (x, sc)
        gargs = (xg,) if sc is None else (xg, scg)
        for mode, units in zip(("fwd", "fwd+bwd"), FLOOR[op]):
            if mode == "fwd":
                def fn():
                    with torch.no_grad():
                        return m(*args)
                gtn = None
            else:
                def fn():
                    m(*gargs).backward(gy)
                gtn = list(gargs) + list(m.parameters())
            try:
                ms = _time_ms(fn, grad_to_none=gtn)
                launches = _launches(fn)
            except Exception as exc:  # one provider failing (e.g. autotune) must not lose the other rows
                print(f"  {op} {prov} {mode} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                continue
            floor = units * m_bytes
            gbs = floor / ms / 1e6
            rows.append(dict(op=op, n=n, c=c, h=h, w=w, dtype=str(dtype).replace("torch.", ""), layout=layout,
                             mode=mode, provider=prov, median_ms=round(ms, 5), floor_bytes=floor,
                             gbs=round(gbs, 1), copy_gbs=round(copy_gbs, 1), frac_copy=round(gbs / copy_gbs, 3),
                             launches=launches))
    return rows


def _meta() -> dict:
    return dict(device=torch.cuda.get_device_name() if HAS_CUDA else "cpu (TRITON_INTERPRET=1)",
                torch=torch.__version__, triton=triton.__version__,
                date=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                interpreter=os.environ.get("TRITON_INTERPRET", "0") == "1")


def _write(rows, meta, out_dir, tag):
    os.makedirs(out_dir, exist_ok=True)
    stamp = meta["date"].replace("-", "").replace(":", "")
    base = os.path.join(out_dir, f"eca_{tag}_{'cuda' if HAS_CUDA else 'cpu'}_{stamp}")
    with open(base + ".json", "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    if rows:
        with open(base + ".csv", "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=list(meta) + list(rows[0]))
            wr.writeheader()
            for r in rows:
                wr.writerow({**meta, **r})
    print(f"wrote {base}.json" + (" and .csv" if rows else ""))


def _table(rows):
    print("| op | N | C×H×W | dtype | layout | mode | provider | ms | GB/s (floor) | × copy | launches | vs eager |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    key = lambda r: (r["op"], r["n"], r["c"], r["h"], r["dtype"], r["layout"], r["mode"])  # noqa: E731
    eager = {key(r): r["median_ms"] for r in rows if r["provider"] == "eager"}
    for r in rows:
        e = eager.get(key(r))
        sp = f"{e / r['median_ms']:.2f}×" if e else "-"
        print(f"| {r['op']} | {r['n']} | {r['c']}×{r['h']}×{r['w']} | {r['dtype']} | {r['layout']} | {r['mode']} | "
              f"{r['provider']} | {r['median_ms']:.4f} | {r['gbs']} | {r['frac_copy']} | {r['launches']} | {sp} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one small case (runs on CPU via the interpreter)")
    ap.add_argument("--ops", default="eca,eca_residual,cbam")
    ap.add_argument("--shapes", default="resnet,effnet", help="resnet, effnet or both")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--layouts", default="nchw,channels_last")
    ap.add_argument("--providers", default=",".join(PROVIDERS))
    ap.add_argument("--slab-bytes", type=int, default=None,
                    help="override ops.eca._SLAB_BYTES (the per-program slab that picks BLOCK_C), to tune it")
    ap.add_argument("--min-block-c", type=int, default=None, help="override ops.eca._MIN_BLOCK_C")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args(argv)
    from attn_kernels.ops import eca as E
    if args.slab_bytes:
        E._SLAB_BYTES = args.slab_bytes
    if args.min_block_c:
        E._MIN_BLOCK_C = args.min_block_c
    E._plan.cache_clear()  # launch plans are memoised on the call signature, not on these constants
    meta = dict(_meta(), eca_slab_bytes=E._SLAB_BYTES, eca_min_block_c=E._MIN_BLOCK_C)
    device = "cuda" if HAS_CUDA else "cpu"
    ops = args.ops.split(",")
    providers = args.providers.split(",")
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    layouts = args.layouts.split(",")
    if args.quick:
        cases = [(64, 1024, 14, 14)] if HAS_CUDA else [(2, 24, 4, 4)]
        if not HAS_CUDA:
            dtypes, layouts = [torch.float32], layouts[:1]
    elif not HAS_CUDA:
        print("bench_eca: no CUDA device — the full benchmark needs a GPU (Triton on CPU is the interpreter). "
              "Run with --quick for a smoke run.")
        return 0
    else:
        sets = {"resnet": RESNET, "effnet": EFFNET}
        cases = [(args.batch,) + s for name in args.shapes.split(",") for s in sets[name]]
    rows = []
    for op in ops:
        for (n, c, h, w) in cases:
            for dtype in dtypes:
                for layout in layouts:
                    print(f"{op} N={n} C={c} {h}×{w} {dtype} {layout}", file=sys.stderr)
                    rows += run_case(op, n, c, h, w, dtype, layout, device, providers)
    _table(rows)
    _write(rows, meta, args.out, "quick" if args.quick else "full")
    return 0


if __name__ == "__main__":
    sys.exit(main())
