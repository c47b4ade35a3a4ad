"""Launch-parameter sweep on a GPU: GROUP (how many samples a Triton program serves) by default, any of
ATTN_KERNELS_SE_TUNE's parameters and the schedule with --configs (SE, BidirectionalECA, CBAM).

These three ops read an MLP's weights whole in every program; a program that serves GROUP samples reads
them once for all of them (ops/_split.py). ``_split.group_plan`` picks GROUP and the schedule from byte
counts, SM counts and the compiled kernel's occupancy -- reasoned, never measured. This script measures
it: each op at the SE-ResNet-50 stages where the weights outweigh a sample (1024×14², 2048×7²; R = C/16)
for several batches, forward and forward+backward, with the launcher's own choice (``auto``) and with
each configuration of --configs forced. A configuration is comma-separated KEY=VALUE items: the keys of
ATTN_KERNELS_SE_TUNE (GROUP, P, BLOCK_C, BLOCK_HW, num_warps, NUM_STAGES, PREFETCH, maxnreg; the last
six SE only), ``schedule=single|auto`` (ATTN_KERNELS_SE_SCHEDULE; multi plans as auto) and, for the ops
se_cuda / eca_cuda (csrc/'s CUDA kernels), ``rows=0|1`` (their row loops, attn_kernels._C.set_cuda_row_loops);
configurations are separated by ``;``. ``auto`` runs with whatever the process has (the row loops: off unless
ATTN_KERNELS_CUDA_ROW_LOOPS=1 was set before the extension loaded).
The default is the GROUP sweep: ``GROUP=1;GROUP=2;GROUP=4;GROUP=8;GROUP=16`` (the schedule re-planned
for the forced group count, as the launcher would; a GROUP above the batch is skipped). Per row: median ms
of each configuration, the fastest, and auto's time over the fastest.

    python bench/bench_groups.py [--ops se,bi_eca,cbam] [--batches 64,256,1024] [--dtype bfloat16]
                                 [--layout nchw|channels_last] [--modes fwd,fwd+bwd] [--configs "A;B;..."]
                                 [--stages 1024x14x14,2048x7x7] [--max-seconds 480] [--out bench/results]
    python bench/bench_groups.py --ops se --configs "schedule=single;GROUP=1,P=2;num_warps=4;NUM_STAGES=2"
    python bench/bench_groups.py --quick   # one tiny case: on CPU through the interpreter (checks the script)

Timing: triton.testing.do_bench (CUDA events; median), inputs rotated through a working set of at least
256 MB so that x comes from HBM, not L2; the forward also replayed from a CUDA graph (no host launch
cost, same input each replay). Small batches are host-bound through autograd: read fwd+bwd at N = 64
with that in mind. Parameters are fp32 (x in --dtype: autocast's setup), which doubles the weight bytes
auto groups by. Each configuration is first called untimed with ATTN_KERNELS_SE_CHECK=1 (compile; a
timed-out schedule (b) wait raises): a failure is recorded in the row and that configuration skipped.
Writes ``groups_<device>_<stamp>.json`` + ``.csv`` to --out after every case (a killed run keeps what it
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

from attn_kernels import _alloc, functional  # noqa: E402
from attn_kernels.benchmark import time_cpu, time_cuda, time_cuda_graph  # noqa: E402
from attn_kernels.ops import _split  # noqa: E402
from attn_kernels.ops import cbam as CB  # noqa: E402
from attn_kernels.ops import dynamic_eca as D  # noqa: E402
from attn_kernels.ops import se as S  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
GROUP_SWEEP = "GROUP=1;GROUP=2;GROUP=4;GROUP=8;GROUP=16"
STAGES = ((1024, 14, 14), (2048, 7, 7))
OPS = ("se", "bi_eca", "cbam", "se_cuda", "eca_cuda")  # *_cuda: csrc/'s kernels, for rows=0|1 (GPU only)
WORKING_SET = 256 << 20  # bytes of x (and grad_y) cycled through: several times an H100/H200's 50-60 MB L2


def parse_configs(text: str):
    """[(label, env)]: each ';'-separated configuration as the environment it runs under."""
    out = []
    for label in (t.strip().replace(" ", "") for t in text.split(";")):
        if not label:
            continue
        tune, env = [], {}
        for item in label.split(","):
            key, _, value = item.partition("=")
            if key == "schedule":
                if value not in ("single", "multi", "auto"):
                    raise ValueError(f"--configs: {item!r}: schedule is single, multi or auto")
                env["ATTN_KERNELS_SE_SCHEDULE"] = value
            elif key == "rows":  # the CUDA kernels' row loops (csrc/cuda/common.cuh), set at run time
                if value not in ("0", "1"):
                    raise ValueError(f"--configs: {item!r}: rows is 0 or 1")
                env["ATTN_KERNELS_CUDA_ROW_LOOPS"] = value
            else:
                tune.append(item)
        if tune:
            env["ATTN_KERNELS_SE_TUNE"] = ",".join(tune)
            _split._parse_tune(env["ATTN_KERNELS_SE_TUNE"])  # bad text fails here, before any timing
        out.append((label, env))
    return out


@contextlib.contextmanager
def environment(env: dict):
    """The block runs with ``env`` set (the launchers read ATTN_KERNELS_SE_* at every call; the CUDA row
    loops, read by the extension only at load, are also switched through attn_kernels._C)."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    rows, before = env.get("ATTN_KERNELS_CUDA_ROW_LOOPS"), None
    try:
        if rows is not None:
            before = _set_cuda_row_loops(rows == "1")
        yield
    finally:
        if before is not None:
            _set_cuda_row_loops(before == 1)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _set_cuda_row_loops(on: bool) -> int:
    """attn_kernels._C.set_cuda_row_loops (the previous setting; -1 without the CUDA kernels)."""
    try:
        from attn_kernels.ops import ext
    except ImportError:  # no extension: nothing to switch
        return -1
    setter = getattr(ext._C, "set_cuda_row_loops", None)
    return setter(on) if setter is not None else -1


def forced_group(op: str, group):
    """Within the block the launchers serve ``group`` samples per program (None: their own choice), with
    the schedule re-planned for cdiv(N, group) groups -- keeping schedule (b)'s grid co-resident -- and
    the MLP tiles shrunk to their budget (``_split.group_plan`` under ATTN_KERNELS_SE_TUNE=GROUP=g; the
    same for SE, BiECA and CBAM, so ``op`` only documents the call)."""
    return environment({} if group is None else {"ATTN_KERNELS_SE_TUNE": f"GROUP={group}"})


def _params(op: str, c: int, device):
    r = max(1, c // 16)
    if op in ("se", "se_cuda"):
        shapes = [(r, c), (r,), (c, r), (c,)]
    elif op == "eca_cuda":
        shapes = [(1, 1, 5)]
    elif op == "bi_eca":
        shapes = [(1, 1, 5), (1, 1, 5), (r, c), (r,), (2, r), (2,)]
    else:
        shapes = [(r, c), (c, r), (1, 2, 7, 7)]
    return [(torch.randn(s, device=device) * 0.1).requires_grad_() for s in shapes]


def _call(op: str):
    return {"se": lambda x, p: functional.se(x, *p, "relu", "sigmoid", backend="triton"),
            "bi_eca": lambda x, p: functional.bi_eca(x, *p, backend="triton"),
            "cbam": lambda x, p: functional.cbam(x, *p, backend="triton"),
            "se_cuda": lambda x, p: functional.se(x, *p, "relu", "sigmoid", backend="cuda"),
            "eca_cuda": lambda x, p: functional.eca(x, *p, backend="cuda")}[op]


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


@contextlib.contextmanager
def _nan_filled():
    """The package's outputs NaN-filled when allocated (as in the tests), for the untimed first call: an
    element a configuration leaves unwritten shows as NaN instead of a recycled block's old, right-looking
    value (every configuration's first call gets the same input)."""
    old, _alloc.NAN_FILL = _alloc.NAN_FILL, True
    try:
        yield
    finally:
        _alloc.NAN_FILL = old


_LAUNCH_KEYS = ("GROUP", "MULTI", "P", "BLOCK_C", "BLOCK_HW", "num_warps", "NUM_STAGES", "PREFETCH", "ROW_ALIGN",
                "maxnreg", "RESIDENT")
# A configuration's first output against auto's on the same input (same op and dtypes: only the summation
# order and the rounding of the last bits may differ): past this, the configuration is wrong, not timed.
AGREE_RTOL, AGREE_ATOL = 2e-2, 2e-2


@contextlib.contextmanager
def recording_launches(op: str, seen: list):
    """Within the block every launch of ``op``'s kernels appends its config and meta-parameters (one dict,
    _LAUNCH_KEYS among them) to ``seen``: what ran, after SE's occupancy fit. The launcher is restored
    after the block (whatever it was before)."""
    if op.endswith("_cuda"):  # csrc/'s kernels: nothing to record (their schedule is the extension's)
        yield
        return
    module = S if op == "se" else (D if op == "bi_eca" else CB)
    before = module._launch

    def recorded(kernel, like, n, c, cfg, args, meta, *rest, **kw):
        seen.append(dict(cfg, **(meta(cfg["P"]) if callable(meta) else meta)))
        return before(kernel, like, n, c, cfg, args, meta, *rest, **kw)
    module._launch = recorded
    try:
        yield
    finally:
        module._launch = before


def run_case(op, n, c, h, w, dtype, layout, modes, device, configs):
    """Rows (one per mode): ms per configuration and for auto (forward also replayed from a CUDA graph),
    and the launch parameters each timing's forward ran with (_LAUNCH_KEYS: after SE's occupancy fit, as
    launched; recorded in the untimed first call, nothing wraps the timed ones). A configuration whose
    first call fails (compile error, timed-out wait, NaN output -- outputs NaN-filled when allocated for that
    call --, an output or, for fwd+bwd, a gradient of x or of a weight that disagrees with auto's on the
    same input: ``{label}_max_diff``) gets its error in the row instead of a time."""
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    elem = torch.empty((), dtype=dtype).element_size()
    count = max(2, -(-WORKING_SET // (n * c * h * w * elem))) if HAS_CUDA else 1
    xs = [torch.randn(n, c, h, w, device=device, dtype=dtype).to(memory_format=fmt) for _ in range(count)]
    gys = [torch.randn_like(x) for x in xs]
    params = _params(op, c, device)
    call = _call(op)
    rows = []
    for mode in modes:
        row = dict(op=op, n=n, c=c, h=h, w=w, dtype=str(dtype).replace("torch.", ""), layout=layout, mode=mode)
        expected = None  # auto's first output (every configuration's first call gets the same input)
        for label, env in [("auto", {})] + configs:
            with environment(env):
                group = _split.tune().get("GROUP")
            if group is not None and group > n:
                continue
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

            seen = []
            try:
                with environment(env):
                    for prm in params:  # the first call's weight gradients alone (they accumulate)
                        prm.grad = None
                    with _checked_schedule(), recording_launches(op, seen), _nan_filled():  # compile, untimed
                        out = fn()
                    # x's output or gradient, then (fwd+bwd) every weight gradient, flattened into one vector
                    got = torch.cat([out.detach().float().flatten()] + ([prm.grad.float().flatten() for prm in params]
                                                                        if mode == "fwd+bwd" else []))
                    if not bool(torch.isfinite(got).all()):
                        raise RuntimeError("non-finite output")
                    if label == "auto":
                        expected = got.clone()
                    elif expected is not None:
                        diff = (got - expected).abs()
                        row[f"{label}_max_diff"] = float(diff.max())
                        if not bool((diff <= AGREE_ATOL + AGREE_RTOL * expected.abs()).all()):
                            raise RuntimeError(f"output differs from auto's by up to {row[f'{label}_max_diff']:.3g}")
                    ran = seen[0] if seen else {}  # the forward's launch (none recorded for csrc/'s kernels)
                    row[f"{label}_cfg"] = " ".join(f"{k}={ran[k]}" for k in _LAUNCH_KEYS if k in ran)
                    row[f"{label}_ms"] = round(_time(fn, params if mode == "fwd+bwd" else None), 5)
                    if mode == "fwd" and HAS_CUDA:
                        row[f"{label}_graph_ms"] = _graph_time(fn)
            except Exception as exc:
                row[f"{label}_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                print(f"  {op} N={n} {mode} {label}: {row[f'{label}_error']}", file=sys.stderr, flush=True)
                continue
            if label == "auto" and "GROUP" in ran:
                row["auto_group"] = ran["GROUP"]
        timed = {label: row[f"{label}_ms"] for label, _ in configs if f"{label}_ms" in row}
        if timed:
            best = min(timed, key=timed.get)
            row["best"] = best
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


def _table(rows, configs):
    labels = [label for label, _ in configs]
    print("| op | N | C×H×W | mode | auto config | auto ms | " + " | ".join(f"{lb} ms" for lb in labels)
          + " | best | auto / best |")
    print("|---|---|---|---|---|---|" + "---|" * len(labels) + "---|---|")

    def ms(r, key):
        return f"{r[key + '_ms']:.4f}" if key + "_ms" in r else ("error" if key + "_error" in r else "-")
    for r in rows:
        cells = " | ".join(ms(r, lb) for lb in labels)
        ratio = f"{r['auto_over_best']:.2f}×" if "auto_over_best" in r else "-"
        print(f"| {r['op']} | {r['n']} | {r['c']}×{r['h']}×{r['w']} | {r['mode']} | {r.get('auto_cfg', '-')} | "
              f"{ms(r, 'auto')} | {cells} | {r.get('best', '-')} | {ratio} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ops", default="se,bi_eca,cbam")
    ap.add_argument("--batches", default="64,256,1024")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--layout", default="nchw", choices=["nchw", "channels_last"])
    ap.add_argument("--modes", default="fwd,fwd+bwd")
    ap.add_argument("--configs", default=GROUP_SWEEP,
                    help="';'-separated configurations of KEY=VALUE items (ATTN_KERNELS_SE_TUNE keys, schedule=)")
    ap.add_argument("--stages", default=",".join(f"{c}x{h}x{w}" for c, h, w in STAGES),
                    help="comma list of CxHxW per sample")
    ap.add_argument("--quick", action="store_true", help="one tiny case (CPU: the interpreter; checks the script)")
    ap.add_argument("--max-seconds", type=float, default=480,
                    help="start no new case after this many seconds (results are written after every case)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args(argv)
    ops = [o for o in args.ops.split(",") if o]
    unknown = [o for o in ops if o not in OPS]
    if unknown:
        ap.error(f"--ops: unknown {', '.join(unknown)}; expected from {', '.join(OPS)}")
    try:
        configs = parse_configs(args.configs)
        stages = [tuple(int(v) for v in st.split("x")) for st in args.stages.split(",") if st]
    except ValueError as exc:
        ap.error(str(exc))
    if any(len(st) != 3 for st in stages):
        ap.error("--stages: CxHxW items")
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
        cases = [(n,) + st for st in stages for n in (int(b) for b in args.batches.split(","))]
    dtype = getattr(torch, args.dtype)
    meta = dict(_meta(), params="fp32 (x in --dtype: the autocast setup)", max_seconds=args.max_seconds,
                configs=args.configs)
    rows, start = [], time.monotonic()
    for op in ops:
        for (n, c, h, w) in cases:
            if time.monotonic() - start > args.max_seconds:
                print(f"bench_groups: --max-seconds {args.max_seconds} reached; skipping {op} N={n} C={c} and the "
                      "cases after it", file=sys.stderr)
                meta["stopped_early"] = True
                break
            print(f"case {op} N={n} C={c} {h}×{w} {args.dtype} {args.layout}", file=sys.stderr, flush=True)
            rows += run_case(op, n, c, h, w, dtype, args.layout, modes, device, configs)
            _write(rows, meta, args.out, quiet=True)  # after every case: a killed run keeps what it measured
    _table(rows, configs)
    _write(rows, meta, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
