"""Compile every Triton kernel variant of attn_kernels.ops for real GPUs, without a GPU.

CI tests the Triton kernels under TRITON_INTERPRET=1, which runs them as NumPy on the CPU and skips
the compiler: a kernel that the interpreter runs can still fail to compile for a GPU (a loop-carried
variable changing dtype, a constexpr misuse, a layout the backend rejects), and the GPU-only
schedule (b) (MULTI=1) never runs there at all. This script makes Triton's active driver a stand-in
that reports a CUDA target (sm_90 by default) and replaces each kernel's launch by a compile-only
warm-up (``JITFunction.run(..., warmup=True)``): the launchers run unchanged on CPU tensors, every
specialization they would launch goes through the full pipeline to a cubin (ptxas included), and
nothing runs. Schedule (b) is forced by reporting 132 SMs to the launchers.

    python .ci/compile_triton.py [--arch 90,80] [--filter TEXT] [--list]

Exit status 1 when any case fails to compile (each failure printed with Triton's error).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

os.environ.pop("TRITON_INTERPRET", None)  # before triton is imported: the real compiler, not the interpreter

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime.driver import driver  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from attn_kernels.ops import cbam as CB  # noqa: E402
from attn_kernels.ops import dynamic_eca as D  # noqa: E402
from attn_kernels.ops import eca as E  # noqa: E402
from attn_kernels.ops import se as S  # noqa: E402

KERNELS = {S: ("_se_fwd_kernel", "_se_bwd_kernel", "_se_param_grads_kernel"), E: ("_eca_fwd_kernel", "_eca_bwd_kernel"),
           CB: ("_cbam_fwd_kernel", "_cbam_bwd_kernel"),
           D: ("_dmk_eca_fwd_kernel", "_dmk_eca_bwd_kernel", "_bi_eca_fwd_kernel", "_bi_eca_bwd_kernel")}
SPLIT_MODULES = (S, D, CB)  # launchers that ask ops._split.device_sms whether schedule (b) applies
SHARED_LIMIT = {75: 65536, 80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448, 100: 232448,
                120: 101376}  # bytes of shared memory a block may opt in to (CUDA programming guide)
SMS = 132  # an H100 SXM: with N = 2 the launchers pick schedule (b) wherever a sample has >= 2 channel tiles


class CompileOnlyDriver:
    """Triton's driver as far as compiling needs it: a CUDA target, device 0, stream 0."""

    def __init__(self, arch: int):
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")

    def get_device_interface(self):
        return torch.cuda

    def get_benchmarker(self):
        return triton.testing.do_bench

    def get_empty_cache_for_benchmark(self):
        return torch.empty(1)

    def clear_cache(self, cache):
        pass


class CompileOnly:
    """Stands in for ``kernel[grid](...)``: compiles the specialization (warm-up), launches nothing."""

    def __init__(self, jit, log):
        self.jit, self.log = jit, log

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            kernel = self.jit.run(*args, grid=grid, warmup=True, **kwargs)
            self.log.append((self.jit.__name__, grid, kwargs, kernel))
            return kernel
        return launch


# ----------------------------------------------------------------------------------------------
# The cases: every dtype, both layouts, every epilogue / flag combination, both schedules
# ----------------------------------------------------------------------------------------------
DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _x(shape, dtype, channels_last=False):
    x = torch.randn(shape, dtype=dtype)
    return x.to(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def se_case(dtype, ese=False, residual=False, act="relu", gate="sigmoid", out_act="identity", cl=False, bias=True,
            shape=(2, 520, 3, 3), r=33):
    x = _x(shape, dtype, cl)
    c = shape[1]
    w1 = None if ese else torch.randn(r, c)
    b1 = torch.randn(r) if bias and not ese else None
    w2 = torch.randn(c, c) if ese else torch.randn(c, r)
    b2 = torch.randn(c) if bias else None
    sc = torch.randn_like(x) if residual else None
    y, p, u, z = S.se_forward(x, w1, b1, w2, b2, act, gate, shortcut=sc, out_act=out_act)
    S.se_backward(torch.randn_like(x), x, w1, w2, p, u, z, act, gate, shortcut=sc, out_act=out_act)


def eca_case(dtype, shape, k, circular=False, residual=False, out_act="none", cl=False):
    x = _x(shape, dtype, cl)
    w = torch.randn(1, 1, k)
    sc = torch.randn_like(x) if residual else None
    y, p, s = E.eca_forward(x, sc, w, circular, out_act)
    E.eca_backward(torch.randn_like(x), x, sc, w, p, s, circular, out_act)


def cbam_case(dtype, shape, k, cl=False, r=4):
    x = _x(shape, dtype, cl)
    c, rank = shape[1], len(shape) - 2
    w1, w2 = torch.randn(r, c), torch.randn(c, r)
    sw = torch.randn((1, 2) + (k,) * rank)
    out = CB.cbam_forward(x, w1, w2, sw)
    CB.cbam_backward(torch.randn_like(x), x, w1, w2, sw, *out[1:])


def dmk_case(dtype, cl=False, bias=True, shape=(2, 1100, 6, 6)):
    x = _x(shape, dtype, cl)
    c = shape[1]
    fw, fb = torch.randn(3, c), (torch.randn(3) if bias else None)
    taps = [torch.randn(1, 1, k) for k in (3, 5, 7)]
    y, p, s, blend = D.dmk_eca_forward(x, fw, fb, *taps)
    D.dmk_eca_backward(torch.randn_like(x), x, fw, *taps, p, s, blend)


def bi_case(dtype, cl=False, bias=True, shape=(2, 1100, 6, 6), r=8):
    x = _x(shape, dtype, cl)
    c = shape[1]
    wf, wb = torch.randn(1, 1, 5), torch.randn(1, 1, 3)
    w1, w2 = torch.randn(r, c), torch.randn(2, r)
    b1, b2 = (torch.randn(r), torch.randn(2)) if bias else (None, None)
    y, p, s, h, blend = D.bi_eca_forward(x, wf, wb, w1, b1, w2, b2)
    D.bi_eca_backward(torch.randn_like(x), x, wf, wb, w1, w2, p, s, h, blend)


def tuned(text, fn):
    """``fn`` under ATTN_KERNELS_SE_TUNE=text: the launch parameters a GPU run picks from the compiled kernel's
    occupancy (narrow channels_last tiles, more programs) or a tuning sweep forces."""
    def run():
        old = os.environ.get("ATTN_KERNELS_SE_TUNE")
        os.environ["ATTN_KERNELS_SE_TUNE"] = text
        try:
            fn()
        finally:
            if old is None:
                os.environ.pop("ATTN_KERNELS_SE_TUNE")
            else:
                os.environ["ATTN_KERNELS_SE_TUNE"] = old
    return run


def cases():
    """(name, fn, multi): multi=True reports SMS SMs to the launchers (schedule (b) where it applies)."""
    out = []
    for multi in (False, True):
        tag = " multi" if multi else ""
        for dt in DTYPES:
            out.append((f"se {dt}{tag}", lambda dt=dt: se_case(dt), multi))
            out.append((f"dmk {dt}{tag}", lambda dt=dt: dmk_case(dt, cl=dt == torch.bfloat16, bias=dt != torch.float16),
                        multi))
            out.append((f"bi {dt}{tag}", lambda dt=dt: bi_case(dt, cl=dt == torch.bfloat16, bias=dt != torch.float16),
                        multi))
            out.append((f"cbam {dt} 2d{tag}", lambda dt=dt: cbam_case(dt, (2, 600, 14, 14), 7, cl=dt == torch.bfloat16),
                        multi))
        out += [
            (f"se ese hardsigmoid{tag}", lambda: se_case(torch.float32, ese=True, gate="hardsigmoid", bias=False), multi),
            (f"se hardswish/hardsigmoid{tag}", lambda: se_case(torch.bfloat16, act="hardswish", gate="hardsigmoid"),
             multi),
            (f"se residual gelu/silu channels_last{tag}",
             lambda: se_case(torch.bfloat16, residual=True, act="gelu", out_act="silu", cl=True), multi),
            (f"se ese residual relu{tag}", lambda: se_case(torch.float16, ese=True, residual=True, out_act="relu",
                                                          cl=True), multi),
            (f"se 1x2048x7x7 channels_last{tag}", lambda: se_case(torch.bfloat16, shape=(1, 2048, 7, 7), r=128,
                                                                 cl=True), multi),
            (f"se 8x256x56x56{tag}", lambda: se_case(torch.bfloat16, shape=(8, 256, 56, 56), r=16), multi),
            # SE-ResNet-50 stage 4 at N = 64: 16 samples per program (no SMs), 8 with schedule (b)
            (f"se 64x2048x7x7 grouped{tag}", lambda: se_case(torch.bfloat16, shape=(64, 2048, 7, 7), r=128), multi),
            # the 64-channel channels_last tiles the plan takes where 256-channel ones cannot fill the GPU
            (f"se 8x256x56x56 channels_last 64-channel tiles{tag}",
             tuned("BLOCK_C=64,BLOCK_HW=64", lambda: se_case(torch.bfloat16, shape=(8, 256, 56, 56), r=16, cl=True)),
             multi),
            (f"se 4x1024x14x14 4 warps, 2 stages{tag}",
             tuned("num_warps=4,NUM_STAGES=2", lambda: se_case(torch.float16, shape=(4, 1024, 14, 14), r=64, cl=True)),
             multi),
            (f"se 4x1024x14x14 maxnreg=128{tag}",
             tuned("maxnreg=128", lambda: se_case(torch.bfloat16, shape=(4, 1024, 14, 14), r=64, cl=True)), multi),
            # the opt-in register-resident forward (x read once; tickets with schedule (b))
            (f"se RESIDENT 4x1024x14x14 channels_last{tag}",
             tuned("RESIDENT=1", lambda: se_case(torch.bfloat16, shape=(4, 1024, 14, 14), r=64, cl=True)), multi),
            (f"se RESIDENT 4x2048x7x7{tag}",
             tuned("RESIDENT=1", lambda: se_case(torch.bfloat16, shape=(4, 2048, 7, 7), r=128)), multi),
            (f"se RESIDENT residual ese fp32{tag}", tuned("RESIDENT=1", lambda: se_case(
                torch.float32, ese=True, residual=True, out_act="relu", shape=(2, 512, 9, 9))), multi),
            (f"se ese 16x512x7x7 channels_last{tag}",
             lambda: se_case(torch.float32, ese=True, shape=(16, 512, 7, 7), cl=True), multi),
            # BiECA at stage 4, N = 64: 16 samples per program (no SMs), 8 with 132 SMs
            (f"bi 64x2048x7x7 grouped{tag}", lambda: bi_case(torch.bfloat16, shape=(64, 2048, 7, 7), r=128), multi),
            (f"cbam 1d{tag}", lambda: cbam_case(torch.float32, (2, 600, 20), 3), multi),
            # CBAM at stage 4, N = 64: 16 samples per program (no SMs), 8 with 132 SMs
            (f"cbam 64x2048x7x7 grouped{tag}", lambda: cbam_case(torch.bfloat16, (64, 2048, 7, 7), 7, cl=True, r=128),
             multi),
            (f"cbam 3d{tag}", lambda: cbam_case(torch.float32, (2, 600, 3, 5, 5), 3), multi),
        ]
    for dt in DTYPES:  # ECA has no cross-program schedule: one pass per dtype, resident and streamed tiles
        out.append((f"eca {dt} resident", lambda dt=dt: eca_case(dt, (2, 40, 7, 7), 5), False))
        out.append((f"eca {dt} streamed circular", lambda dt=dt: eca_case(dt, (2, 40, 30, 30), 5, circular=True),
                    False))
    for oa in ("relu", "silu", "gelu", "identity"):
        out.append((f"eca residual {oa} channels_last",
                    lambda oa=oa: eca_case(torch.bfloat16, (2, 300, 7, 7), 7, True, True, oa, True), False))
    out.append(("eca 1d k=1", lambda: eca_case(torch.float32, (2, 16, 9), 1), False))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="90", help="comma list of compute capabilities, e.g. 90,80")
    ap.add_argument("--filter", default="", help="only the cases whose name contains this text")
    ap.add_argument("--list", action="store_true", help="print the case names and exit")
    args = ap.parse_args(argv)
    todo = [c for c in cases() if args.filter in c[0]]
    if args.list:
        print("\n".join(name for name, _, _ in todo))
        return 0
    log = []
    for mod, names in KERNELS.items():
        for name in names:
            setattr(mod, name, CompileOnly(getattr(mod, name), log))
    multi = {"on": False}
    for mod in SPLIT_MODULES:
        mod._device_sms = lambda device: SMS if multi["on"] else 0
    failed = []
    t_all = time.perf_counter()
    wrappers = [getattr(mod, name) for mod, names in KERNELS.items() for name in names]
    for arch in (int(a) for a in args.arch.split(",")):
        driver.set_active(CompileOnlyDriver(arch))
        for w in wrappers:  # the per-device caches hold the target they were made for: drop the last arch's
            w.jit.device_caches.clear()
        for name, fn, want_multi in todo:
            multi["on"] = want_multi
            start, t0 = len(log), time.perf_counter()
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 -- report every failing case, then fail
                failed.append(f"sm_{arch} {name}")
                print(f"FAIL sm_{arch} {name}: {type(exc).__name__}: {exc}", flush=True)
                traceback.print_exc(limit=2)
                continue
            built = log[start:]
            kinds = ", ".join(f"{k}(MULTI={kw.get('MULTI', '-')}, GROUP={kw.get('GROUP', '-')}, grid={tuple(g)}, "
                              f"smem={kern.metadata.shared})" for k, g, kw, kern in built)
            if want_multi and not any(kw.get("MULTI") for _, _, kw, _ in built):
                failed.append(f"sm_{arch} {name}: no MULTI=1 kernel was built")
                print(f"FAIL sm_{arch} {name}: schedule (b) was asked for but not chosen: {kinds}", flush=True)
                continue
            streamed = [k for k, _, kw, _ in built if k != "_se_param_grads_kernel" and not kw.get("RESIDENT")]
            if "RESIDENT" in name and streamed:
                failed.append(f"sm_{arch} {name}: a streaming plan was built, not the RESIDENT one")
                print(f"FAIL sm_{arch} {name}: not RESIDENT: {kinds}", flush=True)
                continue
            if not all("cubin" in k.asm for _, _, _, k in built):
                failed.append(f"sm_{arch} {name}: no cubin")
            wrong = [f"{k}: {kern.metadata.target}" for k, _, _, kern in built if kern.metadata.target.arch != arch]
            if wrong:
                failed.append(f"sm_{arch} {name}: built for another target: {', '.join(wrong)}")
                print(f"FAIL sm_{arch} {name}: built for another target: {', '.join(wrong)}", flush=True)
                continue
            # a launch would raise OutOfResources past the block's shared-memory limit (the pipelined
            # streaming loops hold their stages there); compiling alone does not check it
            over = [f"{k}: {kern.metadata.shared} B" for k, _, _, kern in built
                    if kern.metadata.shared > SHARED_LIMIT.get(arch, SHARED_LIMIT[120])]
            if over:
                failed.append(f"sm_{arch} {name}: shared memory over the block limit: {', '.join(over)}")
                print(f"FAIL sm_{arch} {name}: shared memory over {SHARED_LIMIT.get(arch, SHARED_LIMIT[120])} B: "
                      f"{', '.join(over)}", flush=True)
                continue
            print(f"ok   sm_{arch} {name} ({time.perf_counter() - t0:.1f}s): {kinds}", flush=True)
    n_total = len(todo) * len(args.arch.split(","))
    print(f"compile_triton: {n_total - len(failed)} of {n_total} cases compiled ({len(log)} kernel builds, "
          f"triton {triton.__version__}) in {time.perf_counter() - t_all:.0f}s", flush=True)
    for f in failed:
        print(f"  FAILED {f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
