"""Run by tests/ops/test_launch.py in a subprocess (it replaces Triton's driver): the launchers' direct
launches (``ops._layout.run_kernel``) checked against Triton's own launch path without a GPU.

Triton's driver is bench/host_overhead.py's stand-in -- kernels compiled for sm_90, "launched" by a
launcher object -- here one that records what it is handed. Each fused op is called twice with inputs
of the same shapes: the first call goes through ``JITFunction.run`` (a fresh specialisation), the second,
on new tensors, must take the direct path for every launch (no ``JITFunction.run``) and hand the
launcher the same thing: grid, kernel function, metadata, hooks, and argument for argument the same
integers and meta-parameters, tensors of the same dtype, shape and strides -- and those tensors the very
objects the launcher handed ``run_kernel`` in that call (not, say, the first call's). Also checked: Triton
specialises a tensor argument on its dtype and on whether its data pointer is 16-byte aligned, nothing
finer (``run_kernel``'s cache keys on exactly that). Prints one JSON line: {"checked": [...], "errors": [...]}.
"""
import json
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, ROOT)

import host_overhead  # noqa: E402  (bench/: its install_stand_in)
import torch  # noqa: E402

LAUNCHES = []


class RecordingLauncher:
    def __init__(self, src, metadata):
        pass

    def __call__(self, *args):
        LAUNCHES.append(args)


def _norm(v):
    if isinstance(v, torch.Tensor):
        return ("tensor", v.dtype, tuple(v.shape), v.stride())
    if type(v).__name__ == "LazyDict":  # the launch metadata handed to launch hooks: compare what it holds
        return ("LazyDict", sorted((k, repr(x)) for k, x in v.get().items()))
    return (type(v).__name__, v if isinstance(v, (int, float, str, bool, type(None))) else repr(v))


def _launch_key(args):
    """What the launcher got: grid, function, packed metadata, launch metadata, hooks, then the bound arguments."""
    return (tuple(_norm(a) for a in args[:4]) + tuple(repr(a) for a in args[4:6]) + (_norm(args[6]),)
            + tuple(repr(a) for a in args[7:9]) + tuple(_norm(a) for a in args[9:]))


def main() -> int:
    ct = host_overhead.install_stand_in()  # .ci/compile_triton.py, the stand-in's home
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    driver.active.launcher_cls = RecordingLauncher
    from attn_kernels.ops import _layout

    jit_runs = [0]
    run = JITFunction.run

    def counting(self, *a, **kw):
        jit_runs[0] += 1
        return run(self, *a, **kw)
    JITFunction.run = counting

    f32 = torch.float32  # compile_triton's case builders: inputs made and forward + backward launched
    cases = {
        "se 2x520x3x3 (schedule b)": lambda: ct.se_case(f32, shape=(2, 520, 3, 3), r=8),
        "se_residual 3x24x5x5": lambda: ct.se_case(f32, residual=True, out_act="relu", shape=(3, 24, 5, 5), r=8),
        "eca 2x48x4x4 channels_last": lambda: ct.eca_case(f32, (2, 48, 4, 4), 5, cl=True),
        "cbam 2x16x5x5": lambda: ct.cbam_case(f32, (2, 16, 5, 5), 3),
        "bi_eca 2x40x3x3": lambda: ct.bi_case(f32, shape=(2, 40, 3, 3)),
        "dmk_eca 2x40x3x3": lambda: ct.dmk_case(f32, shape=(2, 40, 3, 3)),
    }
    checked, errors = [], []
    for name, call in cases.items():
        try:
            LAUNCHES.clear()
            jit_runs[0] = 0
            call()
            first, first_runs = [_launch_key(a) for a in LAUNCHES], jit_runs[0]
            LAUNCHES.clear()
            jit_runs[0] = 0
            handed = []
            _layout.recorder = handed  # what the launchers handed run_kernel in the second call
            try:
                call()
            finally:
                _layout.recorder = None
            second = [_launch_key(a) for a in LAUNCHES]
            # the direct launches pass this call's own tensors, in place (not the first call's): the launcher's
            # arguments after the 9 launch fields start with run_kernel's positional arguments, as they are
            stale = [i for i, (got, (_, _, args, _)) in enumerate(zip(LAUNCHES, handed))
                     if len(got) < 9 + len(args) or any(g is not a for g, a in zip(got[9:], args))]
        except Exception as exc:  # noqa: BLE001 -- reported, the other cases still run
            errors.append(f"{name}: {type(exc).__name__}: {exc}"[:500])
            continue
        if not first or first_runs != len(first):
            errors.append(f"{name}: first call: {len(first)} launches, {first_runs} through JITFunction.run")
        elif jit_runs[0]:
            errors.append(f"{name}: second call went through JITFunction.run {jit_runs[0]} times (no direct launch)")
        elif len(handed) != len(LAUNCHES) or stale:
            errors.append(f"{name}: second call's launches do not pass the arguments run_kernel got: launches {stale}")
        elif first != second:
            diff = [(i, j, a, b) for i, (f, s) in enumerate(zip(first, second)) for j, (a, b) in enumerate(zip(f, s))
                    if a != b]
            counts = [(len(f), len(s)) for f, s in zip(first, second)]
            errors.append(f"{name}: launcher arguments differ ({len(first)} vs {len(second)} launches, "
                          f"arguments per launch {counts}): {diff[:4]}")
        else:
            checked.append(f"{name}: {len(first)} launches")

    # Replays (SE, ECA) at a new alignment: x 4 bytes off 16-byte alignment after a call that recorded with
    # an aligned x. The replay's first launch there compiles through Triton's path (a new specialisation), its
    # second launches directly; both hand the launcher what the full path through Triton (replays and direct
    # launches off) hands it for the same inputs.
    from attn_kernels.ops import eca as E
    from attn_kernels.ops import se as S

    def shifted(t):  # t's values and strides, 4 bytes into a buffer
        return torch.empty(t.numel() + 1, dtype=t.dtype)[1:].as_strided(t.shape, t.stride()).copy_(t)

    def se_run(x):
        c = x.shape[1]
        w1, b1, w2, b2 = torch.randn(8, c), torch.randn(8), torch.randn(c, 8), torch.randn(c)
        y, p, u, z = S.se_forward(x, w1, b1, w2, b2, "relu", "sigmoid")
        S.se_backward(shifted(torch.randn_like(x)), x, w1, w2, p, u, z, "relu", "sigmoid")

    def eca_run(x):
        w = torch.randn(1, 1, 5)
        y, p, s = E.eca_forward(x, None, w, False)
        E.eca_backward(shifted(torch.randn_like(x)), x, None, w, p, s, False)

    replays = [0]
    for mod in (S, E):
        def counting(launch, tensors, _replay=mod._replay):
            replays[0] += 1
            return _replay(launch, tensors)
        mod._replay = counting
    # launches that see the shifted x or grad_y (SE's weight-gradient kernel sees neither: its kernel is found)
    cases = (("se", se_run, (2, 40, 3, 3), 2), ("eca", eca_run, (2, 48, 4, 4), 2))
    for name, run_op, shape, respecialised in cases if _layout.DIRECT_LAUNCH else ():
        try:
            run_op(torch.randn(shape))  # records (aligned)
            _layout.DIRECT_LAUNCH, _layout.REPLAY = False, False
            LAUNCHES.clear()
            run_op(shifted(torch.randn(shape)))
            want = [_launch_key(a) for a in LAUNCHES]
            _layout.DIRECT_LAUNCH, _layout.REPLAY = True, True
            got = []
            for _ in range(2):
                LAUNCHES.clear()
                jit_runs[0] = replays[0] = 0
                run_op(shifted(torch.randn(shape)))
                got.append(([_launch_key(a) for a in LAUNCHES], jit_runs[0], replays[0]))
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{name} replay off alignment: {type(exc).__name__}: {exc}"[:500])
            continue
        (first, first_runs, first_replays), (second, second_runs, second_replays) = got
        if first_replays != len(want) or second_replays != len(want):
            errors.append(f"{name} replay off alignment: {first_replays} / {second_replays} of {len(want)} launches "
                          "replayed")
        elif first_runs != respecialised or second_runs:
            errors.append(f"{name} replay off alignment: {first_runs} / {second_runs} launches through "
                          f"JITFunction.run (want {respecialised} / 0)")
        elif first != want or second != want:
            errors.append(f"{name} replay off alignment: launcher arguments differ from the full path's")
        else:
            checked.append(f"{name} replay off alignment: {len(want)} launches")

    # Triton's tensor specialisation: dtype and 16-byte alignment of the data pointer, nothing finer
    import triton
    import triton.language as tl

    @triton.jit
    def _probe_kernel(x_ptr, n, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=offs < n) + 1, mask=offs < n)

    base = torch.zeros(256, dtype=torch.float16)  # 2-byte elements: a byte offset of off is off // 2 elements
    kernels = {off: _probe_kernel.warmup(base[off // 2:], 7, BLOCK=8, grid=(1,))
               for off in (0, 16, 32, 48, 2, 4, 8, 24)}
    aligned = {id(kernels[o]) for o in (0, 16, 32, 48)}
    unaligned = {id(kernels[o]) for o in (2, 4, 8, 24)}
    if len(aligned) != 1 or len(unaligned) != 1 or aligned == unaligned:
        errors.append(f"Triton {triton.__version__} specialises tensors on more than 16-byte alignment: kernels "
                      f"for byte offsets 0/16/32/48: {len(aligned)}, 2/4/8/24: {len(unaligned)} (run_kernel's key "
                      "is too coarse)")
    else:
        checked.append("tensor specialisation: 16-byte alignment only")
    print(json.dumps({"checked": checked, "errors": errors, "direct": _layout.DIRECT_LAUNCH}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
