"""A small CUDA workload to run under ``compute-sanitizer`` (memcheck, racecheck, synccheck, initcheck).

Every GPU kernel of the package runs forward and backward once per case, at small shapes, and its
results are compared with a float64 CPU reference (the references run on the CPU so that the
sanitizer instruments as few of torch's own kernels as possible):

- ``ext``: the C++/CUDA extension through its raw ops ``torch.ops.attn_kernels_ext.{se,eca}_{fwd,bwd}``
  (SE, effective SE, ECA, CECA), NCHW and channels_last, fp32 and bf16, with the sm_90 cluster forward
  enabled and disabled (``_C.set_cuda_cluster``; ``_C.last_cuda_path()`` says which one ran);
- ``triton_se``: the Triton SE forward + backward (``functional.se(..., backend="triton")`` under autograd)
  with both schedules (``ATTN_KERNELS_SE_SCHEDULE=single|multi``) at a shape where ``multi`` applies;
- ``triton_eca``: the Triton ECA forward + backward, both layouts;
- ``triton_dynamic``: the Triton DynamicMultiKernelECA, BidirectionalECA and CBAM forward + backward on SE's two
  schedules (the same ``--se-schedules``), fp32 NCHW and bf16 channels_last (the dtypes asked for).
  SE, CBAM and BiECA also run fp32 NCHW with both samples in one program (bench_groups.forced_group: at
  these shapes a GPU's launch config would group none).

Usage (bench/gpu_check.sh runs these):

    compute-sanitizer --tool memcheck --destroy-on-device-error kernel python bench/sanitize_check.py
    compute-sanitizer --tool racecheck python bench/sanitize_check.py --se-schedules single

``PYTORCH_NO_CUDA_MEMORY_CACHING=1`` is set here (before torch is imported) unless ``--keep-caching``:
with the caching allocator a tensor sits inside a larger cudaMalloc block, so memcheck cannot see an
access just past its end. ``ATTN_KERNELS_NAN_FILL=1`` likewise: an output element a kernel never
writes stays NaN and fails the comparison.

Exit status: 0 every case ran and matched; 1 a case raised or mismatched; 2 no CUDA device (nothing
checked, e.g. on a CPU-only machine). ``--device cpu`` runs the same cases on the CPU (the extension's
CPU kernels, Triton under the interpreter): a dry run of this script, no check of any GPU code.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

PARTS = ("ext", "triton_se", "triton_eca", "triton_dynamic")
DTYPE_NAMES = ("fp32", "bf16")
# ‖out − ref‖ / ‖ref‖ against the float64 reference computed from the same (rounded) inputs:
# fp32 arithmetic lands far under 1e-4; bf16 outputs carry their own rounding (2^-8 relative).
REL_TOL = {"fp32": 1e-4, "bf16": 2e-2}
GROUPED_OPS = ("se", "cbam", "bi_eca")  # the ops whose programs serve groups of samples (bench_groups.OPS)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma list of: {', '.join(PARTS)}")
    p.add_argument("--dtypes", default=",".join(DTYPE_NAMES), help="comma list of: fp32, bf16")
    p.add_argument("--se-schedules", default="single,multi",
                   help="Triton SE / DMK-ECA / BiECA schedules (ATTN_KERNELS_SE_SCHEDULE); racecheck needs only "
                        "single: it checks "
                        "shared memory, and multi's extra is a global-memory counter wait that a slowed run could "
                        "stretch to its spin limit")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                   help="cpu: dry-run the same cases on the CPU (ext CPU kernels, Triton interpreter)")
    p.add_argument("--keep-caching", action="store_true",
                   help="keep torch's caching allocator (memcheck then misses overruns inside its blocks)")
    args = p.parse_args(argv)
    args.parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    args.dtypes = [s.strip() for s in args.dtypes.split(",") if s.strip()]
    args.se_schedules = [s.strip() for s in args.se_schedules.split(",") if s.strip()]
    for flag, vals, allowed in (("--parts", args.parts, PARTS), ("--dtypes", args.dtypes, DTYPE_NAMES),
                                ("--se-schedules", args.se_schedules, ("single", "multi"))):
        bad = [v for v in vals if v not in allowed]
        if bad:
            p.error(f"{flag}: unknown {', '.join(bad)}; expected from {', '.join(allowed)}")
    return args


def sync():
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class Report:
    """Counts cases; prints one line per case so a sanitizer error can be placed between two lines."""

    def __init__(self):
        self.ok, self.failed = 0, []

    def case(self, name, fn):
        print(f"case {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            worst = fn()
            sync()  # a kernel fault surfaces here, attributed to this case
        except Exception as exc:  # keep going: the sanitizer report is the point of the run
            msg = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            print(f"  FAIL {name}: {msg}", flush=True)
            self.failed.append((name, msg))
            return
        print(f"  ok   {name} ({worst}; {time.perf_counter() - t0:.2f}s)", flush=True)
        self.ok += 1

    def fail(self, name, msg):
        print(f"case {name} ...\n  FAIL {name}: {msg}", flush=True)
        self.failed.append((name, msg))


def rel_err(out, ref) -> float:
    """‖out − ref‖ / ‖ref‖ in float64 on the CPU; inf when out has a NaN/inf that ref has not."""
    import torch

    a = out.detach().double().cpu()
    b = ref.detach().double().cpu()
    if a.shape != b.shape:
        raise AssertionError(f"shape {tuple(a.shape)} != reference {tuple(b.shape)}")
    if not torch.isfinite(a).all() and torch.isfinite(b).all():
        return float("inf")
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def check(pairs, dtype_name: str, loose=()) -> str:
    """Raise when any (name, out, ref) is off by more than REL_TOL (10x that for the names in ``loose``:
    ill-conditioned gradients); else the worst error, as text."""
    tol = REL_TOL[dtype_name]
    errs = {name: rel_err(out, ref) for name, out, ref in pairs}
    bad = {k: v for k, v in errs.items() if not v <= tol * (10 if k in loose else 1)}
    if bad:
        raise AssertionError("rel err over %g: %s" % (tol, ", ".join(f"{k}={v:.2e}" for k, v in bad.items())))
    name = max(errs, key=errs.get)
    return f"worst rel err {errs[name]:.1e} ({name})"


def cpu_reference(fn, inputs, grad_y):
    """fn on float64 CPU copies of ``inputs`` (None stays None): (y, grads of the float inputs)."""
    leaves = [None if t is None else t.detach().double().cpu().requires_grad_() for t in inputs]
    y = fn(*leaves)
    y.backward(grad_y.detach().double().cpu())
    return y, [None if t is None else t.grad for t in leaves]


def ext_cases(report, dtypes, dev):
    import torch

    from attn_kernels import reference

    try:
        from attn_kernels.ops import ext
    except ImportError as exc:
        report.fail("ext import", str(exc))
        return
    if dev == "cuda" and not ext.has_cuda():
        report.fail("ext CUDA kernels", "attn_kernels._C was built without its CUDA kernels (see `attn-kernels info`)")
        return
    ops = torch.ops.attn_kernels_ext
    act_code, gate_code = ext.ACT_CODES, ext.GATE_CODES
    paths = {0: "portable", 1: "cluster", -1: "n/a"}

    def se_case(shape, r, dtype_name, channels_last, ese):
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
        c = shape[1]
        act, gate = ("relu", "hardsigmoid") if ese else ("relu", "sigmoid")

        def run():
            x = torch.randn(shape, device=dev, dtype=dtype)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            w1 = None if ese else (torch.randn(r, c, device=dev) * 0.3).to(dtype)
            b1 = None if ese else (torch.randn(r, device=dev) * 0.1).to(dtype)
            w2 = (torch.randn(c, c if ese else r, device=dev) * 0.3).to(dtype)
            b2 = (torch.randn(c, device=dev) * 0.1).to(dtype)
            gy = torch.randn_like(x)
            y, pooled, s = ops.se_fwd(x, w1, b1, w2, b2, act_code[act], gate_code[gate])
            path = paths.get(ext._C.last_cuda_path(), "?")
            gx, gw1, gb1, gw2, gb2 = ops.se_bwd(gy, x, w1, b1, w2, b2, pooled, s, act_code[act], gate_code[gate])
            sync()
            y_ref, (gx_ref, gw1_ref, gb1_ref, gw2_ref, gb2_ref) = cpu_reference(
                lambda *t: reference.se(*t, act, gate), [x, w1, b1, w2, b2], gy)
            pairs = [("y", y, y_ref), ("grad_x", gx, gx_ref), ("grad_w2", gw2, gw2_ref), ("grad_b2", gb2, gb2_ref)]
            if not ese:
                pairs += [("grad_w1", gw1, gw1_ref), ("grad_b1", gb1, gb1_ref)]
            return f"fwd path {path}; " + check(pairs, dtype_name)
        return run

    def eca_case(shape, k, dtype_name, channels_last, circular):
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]

        def run():
            x = torch.randn(shape, device=dev, dtype=dtype)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            w = (torch.randn(k, device=dev) * 0.5).to(dtype)
            gy = torch.randn_like(x)
            y, pooled, s = ops.eca_fwd(x, w, circular)
            path = paths.get(ext._C.last_cuda_path(), "?")
            gx, gw = ops.eca_bwd(gy, x, w, pooled, s, circular)
            sync()
            y_ref, (gx_ref, gw_ref) = cpu_reference(lambda a, b: reference.eca(a, b, circular), [x, w], gy)
            return f"fwd path {path}; " + check([("y", y, y_ref), ("grad_x", gx, gx_ref), ("grad_w", gw, gw_ref)],
                                                dtype_name)
        return run

    # (2, 64, 7, 7): small enough for the sanitizers, and the cluster schedule applies (slice fits).
    # (3, 13, 5, 7): C prime and HW odd, the tails of every tile.
    for cluster in (True, False):
        ext._C.set_cuda_cluster(cluster)
        sched = "cluster-on" if cluster else "cluster-off"
        for dtype_name in dtypes:
            for cl in (False, True):
                lay = "channels_last" if cl else "nchw"
                report.case(f"ext se {sched} {dtype_name} {lay}", se_case((2, 64, 7, 7), 4, dtype_name, cl, False))
                report.case(f"ext ese {sched} {dtype_name} {lay}", se_case((2, 64, 7, 7), 0, dtype_name, cl, True))
                for circ in (False, True):
                    report.case(f"ext {'ceca' if circ else 'eca'} {sched} {dtype_name} {lay}",
                                eca_case((2, 64, 7, 7), 3, dtype_name, cl, circ))
        for cl in (False, True):
            lay = "channels_last" if cl else "nchw"
            report.case(f"ext se {sched} fp32 {lay} odd", se_case((3, 13, 5, 7), 3, "fp32", cl, False))
            report.case(f"ext eca {sched} fp32 {lay} odd", eca_case((3, 13, 5, 7), 5, "fp32", cl, False))
    ext._C.set_cuda_cluster(True)


def triton_se_cases(report, dtypes, dev, schedules=("single", "multi")):
    import torch

    from attn_kernels import functional, reference
    from attn_kernels.ops import se as S
    from bench_groups import forced_group  # this script's folder is on sys.path

    # (2, 520, 3, 3): three 256-channel tiles per sample in either layout, so ``multi`` (P = 3 programs
    # per sample, the counter sync) applies; ``single`` is the one-program-per-sample schedule.
    shape, r = (2, 520, 3, 3), 32
    # + fp32 NCHW with both samples in one program (GROUP = 2, forced: bench_groups.forced_group)
    variants = [(d, cl, None) for d in dtypes for cl in (False, True)] + ([("fp32", False, 2)] if "fp32" in dtypes
                                                                          else [])
    for schedule in schedules:
        for dtype_name, cl, group in variants:
            lay = ("channels_last" if cl else "nchw") + (f" group {group}" if group else "")

            def run(schedule=schedule, dtype_name=dtype_name, cl=cl, group=group):
                with forced_group("se", group):
                    os.environ["ATTN_KERNELS_SE_SCHEDULE"] = schedule
                    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
                    x = torch.randn(shape, device=dev, dtype=dtype)
                    if cl:
                        x = x.contiguous(memory_format=torch.channels_last)
                    c = shape[1]
                    params = [(torch.randn(*s, device=dev) * sc).to(dtype)
                              for s, sc in (((r, c), 0.3), ((r,), 0.1), ((c, r), 0.3), ((c,), 0.1))]
                    cfg = S.launch_config(shape[0], shape[1], r, shape[2] * shape[3], 1 if cl else shape[2] * shape[3],
                                          x.device, **S._sizes(x, params[0], params[2]))
                    leaves = [t.detach().requires_grad_() for t in [x] + params]
                    gy = torch.randn_like(x)
                    y = functional.se(*leaves, "silu", "sigmoid", backend="triton")
                    y.backward(gy)
                    sync()
                    y_ref, grads_ref = cpu_reference(lambda *t: reference.se(*t, "silu", "sigmoid"), [x] + params, gy)
                    names = ("grad_x", "grad_w1", "grad_b1", "grad_w2", "grad_b2")
                    pairs = [("y", y, y_ref)] + [(n, t.grad, g) for n, t, g in zip(names, leaves, grads_ref)]
                    return f"MULTI={cfg['MULTI']} P={cfg['P']} GROUP={cfg['GROUP']}; " + check(pairs, dtype_name)
            report.case(f"triton se {schedule} {dtype_name} {lay}", run)
    os.environ.pop("ATTN_KERNELS_SE_SCHEDULE", None)


def triton_eca_cases(report, dtypes, dev):
    import torch

    from attn_kernels import functional, reference

    shape, k = (2, 96, 5, 5), 5
    for dtype_name in dtypes:
        for cl in (False, True):
            lay = "channels_last" if cl else "nchw"

            def run(dtype_name=dtype_name, cl=cl):
                dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
                x = torch.randn(shape, device=dev, dtype=dtype)
                if cl:
                    x = x.contiguous(memory_format=torch.channels_last)
                w = (torch.randn(k, device=dev) * 0.5).to(dtype)
                leaves = [x.detach().requires_grad_(), w.detach().requires_grad_()]
                gy = torch.randn_like(x)
                y = functional.eca(*leaves, False, backend="triton")
                y.backward(gy)
                sync()
                y_ref, (gx_ref, gw_ref) = cpu_reference(lambda a, b: reference.eca(a, b, False), [x, w], gy)
                return check([("y", y, y_ref), ("grad_x", leaves[0].grad, gx_ref), ("grad_w", leaves[1].grad, gw_ref)],
                             dtype_name)
            report.case(f"triton eca {dtype_name} {lay}", run)


def triton_dynamic_cases(report, dtypes, dev, schedules=("single", "multi")):
    import torch

    from attn_kernels import functional, reference
    from attn_kernels.ops import cbam as CB
    from attn_kernels.ops import dynamic_eca as D
    from bench_groups import forced_group  # this script's folder is on sys.path

    # (2, 520, 3, 3): three 256-channel tiles per sample in either layout (as for SE), so ``multi`` applies
    shape, r = (2, 520, 3, 3), 32
    c = shape[1]
    ops = {
        "cbam": (functional.cbam, reference.cbam, None,
                 [((r, c), 0.3), ((c, r), 0.3), ((1, 2, 3, 3), 0.3)], ("grad_x", "grad_w1", "grad_w2", "grad_sw")),
        "dmk_eca": (functional.dmk_eca, reference.dmk_eca, 8,
                    [((3, c), 0.3), ((3,), 0.1), ((1, 1, 3), 0.5), ((1, 1, 5), 0.5), ((1, 1, 7), 0.5)],
                    ("grad_x", "grad_fc_weight", "grad_fc_bias", "grad_taps3", "grad_taps5", "grad_taps7")),
        "bi_eca": (functional.bi_eca, reference.bi_eca, 4,
                   [((1, 1, 3), 0.5), ((1, 1, 3), 0.5), ((r, c), 0.3), ((r,), 0.1), ((2, r), 0.3), ((2,), 0.1)],
                   ("grad_x", "grad_w_fwd", "grad_w_bwd", "grad_w1", "grad_b1", "grad_w2", "grad_b2")),
    }
    variants = [(d, cl) for d, cl in (("fp32", False), ("bf16", True)) if d in dtypes]
    for op, (fused, eager, block_k, param_shapes, names) in ops.items():
        # + CBAM and BiECA fp32 NCHW with both samples in one program (GROUP = 2: bench_groups.forced_group)
        grouped = [("fp32", False, 2)] if op in GROUPED_OPS and "fp32" in dtypes else []
        for schedule in schedules:
            for dtype_name, cl, group in [(d, cl, None) for d, cl in variants] + grouped:
                lay = ("channels_last" if cl else "nchw") + (f" group {group}" if group else "")

                def run(op=op, fused=fused, eager=eager, block_k=block_k, param_shapes=param_shapes, names=names,
                        schedule=schedule, dtype_name=dtype_name, cl=cl, group=group):
                    os.environ["ATTN_KERNELS_SE_SCHEDULE"] = schedule
                    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
                    x = torch.randn(shape, device=dev, dtype=dtype)
                    if cl:
                        x = x.contiguous(memory_format=torch.channels_last)
                    params = [(torch.randn(*s, device=dev) * sc).to(dtype) for s, sc in param_shapes]
                    hw = shape[2] * shape[3]
                    with forced_group(op, group):
                        if op == "cbam":
                            cfg = CB._launch_cfg(shape[0], c, r, hw, 18, x.device, **CB._sizes(x, params[0], params[1]))
                        elif op == "bi_eca":
                            cfg = D._bi_launch_cfg(shape[0], c, hw, r, x.stride(1), block_k, x.device,
                                                   **D._bi_sizes(x, params[2]))
                        else:
                            cfg = dict(D._launch_cfg(shape[0], c, hw, x.stride(1), block_k, x.device), GROUP=1)
                        leaves = [t.detach().requires_grad_() for t in [x] + params]
                        gy = torch.randn_like(x)
                        y = fused(*leaves, backend="triton")
                        y.backward(gy)
                        sync()
                    y_ref, grads_ref = cpu_reference(eager, [x] + params, gy)
                    pairs = [("y", y, y_ref)] + [(n, t.grad, g) for n, t, g in zip(names, leaves, grads_ref)]
                    # BiECA's blend-logit grads are dl = a0·a1·(g0 − g1) per sample: g0 and g1 (Σ over the channels
                    # of du·f and du·b) cancel where the two branches agree, so fp32 rounding in them is
                    # amplified (one draw here: 1.1e-4 relative, with identical bits for GROUP 1 and 2)
                    loose = ("grad_w2", "grad_b2") if op == "bi_eca" else ()
                    return f"MULTI={cfg['MULTI']} P={cfg['P']} GROUP={cfg['GROUP']}; " + check(pairs, dtype_name,
                                                                                                  loose)
                report.case(f"triton {op} {schedule} {dtype_name} {lay}", run)
    os.environ.pop("ATTN_KERNELS_SE_SCHEDULE", None)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.keep_caching:
        os.environ.setdefault("PYTORCH_NO_CUDA_MEMORY_CACHING", "1")  # before torch initialises CUDA
    os.environ.setdefault("ATTN_KERNELS_NAN_FILL", "1")  # before attn_kernels._alloc is imported
    if args.device == "cpu":  # dry run of this script's own logic; must precede any triton.jit definition
        os.environ["TRITON_INTERPRET"] = "1"
    elif os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("sanitize_check: TRITON_INTERPRET=1 is set, so the Triton kernels would not run on the GPU; "
              "unset it", file=sys.stderr)
        return 2
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("sanitize_check: no CUDA device visible to torch: nothing checked. This script is the GPU "
              "workload for compute-sanitizer (bench/gpu_check.sh); `--device cpu` dry-runs its cases on "
              "the CPU (ext CPU kernels, Triton interpreter)", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    # fp32 tolerance 1e-4: no TF32 in the GEMMs of the backward launchers (torch's default, made explicit)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    where = torch.cuda.get_device_name() if args.device == "cuda" else "CPU (dry run: checks nothing on a GPU)"
    print(f"sanitize_check on {where}: parts {','.join(args.parts)}, dtypes {','.join(args.dtypes)}; "
          f"caching allocator {'on' if args.keep_caching else 'off'}", flush=True)
    report = Report()
    t0 = time.perf_counter()
    for part in args.parts:
        if part == "ext":
            ext_cases(report, args.dtypes, args.device)
        elif part == "triton_se":
            triton_se_cases(report, args.dtypes, args.device, args.se_schedules)
        elif part == "triton_dynamic":
            triton_dynamic_cases(report, args.dtypes, args.device, args.se_schedules)
        else:
            triton_eca_cases(report, args.dtypes, args.device)
    print(f"sanitize_check: {report.ok} ok, {len(report.failed)} failed in {time.perf_counter() - t0:.1f}s", flush=True)
    for name, msg in report.failed:
        print(f"  FAILED {name}: {msg}")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
