"""GROUP sweep: how many samples a Triton program should serve (SE, BidirectionalECA, CBAM).

These three ops read an MLP's weights whole in every program; a program that serves GROUP samples reads
them once for all of them (ops/_split.py). ``_split.sample_group`` picks GROUP from byte counts and SM
counts -- reasoned, never measured. This script measures it: each op at the SE-ResNet-50 stages where
the weights outweigh a sample (1024×14², 2048×7²; R = C/16) for several batches, forward and
forward+backward, with the launch config's own choice (``auto``) and with GROUP forced to 1, 2, 4, 8, 16
(the schedule re-planned for the forced group count, as the launcher would). Per row: median ms of each
GROUP, the fastest, and auto's time over the fastest.

    python bench/bench_groups.py [--ops se,bi_eca,cbam] [--batches 64,256,1024] [--dtype bfloat16]
                                 [--layout nchw|channels_last] [--modes fwd,fwd+bwd] [--max-seconds 480]
                                 [--out bench/results]
    python bench/bench_groups.py --quick   # one tiny case: on CPU through the interpreter (checks the script)

Timing: triton.testing.do_bench (CUDA events; median), inputs rotated through a working set of at least
256 MB so that x comes from HBM, not L2; the forward also replayed from a CUDA graph (no host launch
cost, same input each replay). Small batches are host-bound through autograd: read fwd+bwd at N = 64
with that in mind. Parameters are fp32 (x in --dtype: autocast's setup), which doubles the weight bytes
auto groups by. Each GROUP is first called untimed with ATTN_KERNELS_SE_CHECK=1 (compile; a timed-out
schedule (b) wait raises): a failure is recorded in the row and that GROUP skipped. Writes
``groups_<device>_<stamp>.json`` + ``.csv`` to --out after every case (a killed run keeps what it
measured; on a lent machine point --out into the folder that comes back), and prints a markdown table.
A full default sweep is ~140 Triton compiles plus ~200 timings: run one op per command if the command
limit is 10 minutes. Without a GPU only ``--quick`` runs; its times measure the interpreter and are
never to be quoted.
"""
from __future__ import annotations

import argparse
import contextlib
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from attn_kernels import functional  # noqa: E402
from attn_kernels.benchmark import time_cpu, time_cuda, time_cuda_graph  # noqa: E402
from attn_kernels.ops import _split  # noqa: E402
from attn_kernels.ops import cbam as CB  # noqa: E402
from attn_kernels.ops import dynamic_eca as D  # noqa: E402
from attn_kernels.ops import se as S  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
GROUPS = (1, 2, 4, 8, 16)
STAGES = ((1024, 14, 14), (2048, 7, 7))
# op -> (module, launch-config function, MLP tile budget)
CONFIGS = {"se": (S, "launch_config", S._TILE), "bi_eca": (D, "_bi_launch_cfg", D._TILE_K),
           "cbam": (CB, "_launch_cfg", CB._TILE)}
WORKING_SET = 256 << 20  # bytes of x (and grad_y) cycled through: several times an H100/H200's 50-60 MB L2


@contextlib.contextmanager
def forced_group(op: str, group):
    """Within the block the op's launcher serves ``group`` samples per program (None: its own choice),
    with the schedule (MULTI, P) re-planned for cdiv(N, group) groups -- keeping schedule (b)'s grid
    co-resident -- and the MLP tiles shrunk to the tile budget. The config functions of all three ops
    take (N, C, ...) first."""
    if group is None:
        yield
        return
    module, name, tile = CONFIGS[op]
    launch_cfg = getattr(module, name)

    def forced(n, c, *a, **k):
        cfg = launch_cfg(n, c, *a, **k)
        device = next((v for v in list(a) + list(k.values()) if isinstance(v, torch.device)), torch.device("cpu"))
        multi, p, per = _split.split_plan(-(-n // group), c, cfg["BLOCK_C"], _split.device_sms(device),
                                          _split.schedule_mode())
        return dict(cfg, GROUP=group, FC_C=max(1, min(cfg["BLOCK_C"], tile // (group * cfg["FC_R"]))), MULTI=multi,
                    P=p, chan_per_prog=per)
    setattr(module, name, forced)
    try:
        yield
    finally:
        setattr(module, name, launch_cfg)


def _params(op: str, c: int, device):
    r = max(1, c // 16)
    if op == "se":
        shapes = [(r, c), (r,), (c, r), (c,)]
    elif op == "bi_eca":
        shapes = [(1, 1, 5), (1, 1, 5), (r, c), (r,), (2, r), (2,)]
    else:
        shapes = [(r, c), (c, r), (1, 2, 7, 7)]
    return [(torch.randn(s, device=device) * 0.1).requires_grad_() for s in shapes]


def _call(op: str):
    return {"se": lambda x, p: functional.se(x, *p, "relu", "sigmoid", backend="triton"),
            "bi_eca": lambda x, p: functional.bi_eca(x, *p, backend="triton"),
            "cbam": lambda x, p: functional.cbam(x, *p, backend="triton")}[op]


def _time(fn, grad_to_none=None) -> float:
    if HAS_CUDA:
        return time_cuda(fn, rep_ms=100, grad_to_none=grad_to_none)[0]
    return time_cpu(fn, min_time=0.0, min_reps=2, warmup=1)[0]


def _graph_time(fn) -> float:
    """Forward replayed from a CUDA graph: no host launch overhead, but the same input every replay (from
    L2 when it fits: below ~50 MB). None where the capture fails."""
    try:
        return round(time_cuda_graph(fn, rep_ms=100), 5)
    except Exception:  # a capture failure is a finding for the row, not the end of the sweep
        return None


@contextlib.contextmanager
def _checked_schedule():
    """ATTN_KERNELS_SE_CHECK=1 for the untimed first call: a timed-out schedule (b) wait raises (a host
    sync) instead of spinning through every timed call and returning NaN."""
    old = os.environ.get("ATTN_KERNELS_SE_CHECK")
    os.environ["ATTN_KERNELS_SE_CHECK"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("ATTN_KERNELS_SE_CHECK")
        else:
            os.environ["ATTN_KERNELS_SE_CHECK"] = old


def run_case(op, n, c, h, w, dtype, layout, modes, device):
    """Rows (one per mode): ms per GROUP and for auto (forward also replayed from a CUDA graph), the GROUP
    auto picked, and the (GROUP, MULTI, P) each timing launched with. A GROUP whose first call fails
    (compile error, timed-out wait, NaN output) gets its error in the row instead of a time."""
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    elem = torch.empty((), dtype=dtype).element_size()
    count = max(2, -(-WORKING_SET // (n * c * h * w * elem))) if HAS_CUDA else 1
    xs = [torch.randn(n, c, h, w, device=device, dtype=dtype).to(memory_format=fmt) for _ in range(count)]
    gys = [torch.randn_like(x) for x in xs]
    params = _params(op, c, device)
    call = _call(op)
    seen = []
    module, name, _ = CONFIGS[op]
    rows = []
    for mode in modes:
        row = dict(op=op, n=n, c=c, h=h, w=w, dtype=str(dtype).replace("torch.", ""), layout=layout, mode=mode)
        for group in (None,) + GROUPS:
            if group is not None and group > n:
                continue
            key = "auto" if group is None else f"g{group}"
            state = {"i": 0}

            def fn():
                i = state["i"] = (state["i"] + 1) % count
                if mode == "fwd":
                    with torch.no_grad():
                        return call(xs[i], params)
                x = xs[i].detach().requires_grad_()
                y = call(x, params)
                y.backward(gys[i])
                return x.grad

            with forced_group(op, group):
                launch_cfg = getattr(module, name)
                setattr(module, name, lambda *a, **k: seen.append(launch_cfg(*a, **k)) or seen[-1])
                try:
                    with _checked_schedule():  # compile outside the timing; records the config the launcher used
                        out = fn()
                        if not bool(torch.isfinite(out).all()):
                            raise RuntimeError("non-finite output")
                except Exception as exc:
                    row[f"{key}_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                    print(f"  {op} N={n} {mode} {key}: {row[f'{key}_error']}", file=sys.stderr, flush=True)
                    continue
                finally:
                    setattr(module, name, launch_cfg)
                row[f"{key}_cfg"] = "GROUP={GROUP} MULTI={MULTI} P={P}".format(**seen[-1])  # what the launcher ran
                row[f"{key}_ms"] = round(_time(fn, params if mode == "fwd+bwd" else None), 5)
                if mode == "fwd" and HAS_CUDA:
                    row[f"{key}_graph_ms"] = _graph_time(fn)
            if group is None:
                row["auto_group"] = seen[-1]["GROUP"]
        timed = {g: row[f"g{g}_ms"] for g in GROUPS if f"g{g}_ms" in row}
        if timed:
            best = min(timed, key=timed.get)
            row["best_group"] = best
            if "auto_ms" in row:
                row["auto_over_best"] = round(row["auto_ms"] / timed[best], 3)
        rows.append(row)
    return rows


def _meta() -> dict:
    return dict(device=torch.cuda.get_device_name() if HAS_CUDA else "cpu (TRITON_INTERPRET=1)",
                sms=_split.device_sms(torch.device("cuda")) if HAS_CUDA else 0,
                torch=torch.__version__, triton=triton.__version__,
                date=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                interpreter=os.environ.get("TRITON_INTERPRET", "0") == "1", working_set_bytes=WORKING_SET)


def _write(rows, meta, out_dir, quiet=False):
    """JSON + CSV of the rows so far (the same two files, rewritten after every case)."""
    if not rows:
        return
    os.makedirs(out_dir, exist_ok=True)
    stamp = meta["date"].replace("-", "").replace(":", "")
    base = os.path.join(out_dir, f"groups_{'cuda' if HAS_CUDA else 'cpu'}_{stamp}")
    with open(base + ".json", "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    fields = list(meta) + sorted({k for r in rows for k in r}, key=lambda k: (k not in rows[0], k))
    with open(base + ".csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=fields)
        wr.writeheader()
        for r in rows:
            wr.writerow({**meta, **r})
    if not quiet:
        print(f"wrote {base}.json and .csv")


def _table(rows):
    print("| op | N | C×H×W | mode | auto GROUP | auto ms | " + " | ".join(f"G={g} ms" for g in GROUPS)
          + " | best | auto / best |")
    print("|---|---|---|---|---|---|" + "---|" * len(GROUPS) + "---|---|")

    def ms(r, key):
        return f"{r[key + '_ms']:.4f}" if key + "_ms" in r else ("error" if key + "_error" in r else "-")
    for r in rows:
        cells = " | ".join(ms(r, f"g{g}") for g in GROUPS)
        ratio = f"{r['auto_over_best']:.2f}×" if "auto_over_best" in r else "-"
        print(f"| {r['op']} | {r['n']} | {r['c']}×{r['h']}×{r['w']} | {r['mode']} | {r.get('auto_group', '-')} | "
              f"{ms(r, 'auto')} | {cells} | {r.get('best_group', '-')} | {ratio} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ops", default="se,bi_eca,cbam")
    ap.add_argument("--batches", default="64,256,1024")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--layout", default="nchw", choices=["nchw", "channels_last"])
    ap.add_argument("--modes", default="fwd,fwd+bwd")
    ap.add_argument("--quick", action="store_true", help="one tiny case (CPU: the interpreter; checks the script)")
    ap.add_argument("--max-seconds", type=float, default=480,
                    help="start no new case after this many seconds (results are written after every case)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args(argv)
    ops = [o for o in args.ops.split(",") if o]
    unknown = [o for o in ops if o not in CONFIGS]
    if unknown:
        ap.error(f"--ops: unknown {', '.join(unknown)}; expected from {', '.join(CONFIGS)}")
    modes = [m for m in args.modes.split(",") if m]
    if any(m not in ("fwd", "fwd+bwd") for m in modes):
        ap.error("--modes: fwd and/or fwd+bwd")
    device = "cuda" if HAS_CUDA else "cpu"
    if args.quick:
        cases = [(4, 64, 3, 3)]
    elif not HAS_CUDA:
        print("bench_groups: no CUDA device -- the sweep needs a GPU (Triton on CPU is the interpreter). "
              "--quick runs one tiny case to check the script.")
        return 0
    else:
        cases = [(n,) + s for s in STAGES for n in (int(b) for b in args.batches.split(","))]
    dtype = getattr(torch, args.dtype)
    meta = dict(_meta(), params="fp32 (x in --dtype: the autocast setup)", max_seconds=args.max_seconds)
    rows, start = [], time.monotonic()
    for op in ops:
        for (n, c, h, w) in cases:
            if time.monotonic() - start > args.max_seconds:
                print(f"bench_groups: --max-seconds {args.max_seconds} reached; skipping {op} N={n} C={c} and the "
                      "cases after it", file=sys.stderr)
                meta["stopped_early"] = True
                break
            print(f"case {op} N={n} C={c} {h}×{w} {args.dtype} {args.layout}", file=sys.stderr, flush=True)
            rows += run_case(op, n, c, h, w, dtype, args.layout, modes, device)
            _write(rows, meta, args.out, quiet=True)  # after every case: a killed run keeps what it measured
    _table(rows)
    _write(rows, meta, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
