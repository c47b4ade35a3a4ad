"""The split-sample schedule shared by the ops with a per-sample global dependency.

SE (and se_residual), DynamicMultiKernelECA, BidirectionalECA and CBAM cannot gate any channel before
every channel of the sample is pooled. Their kernels run in one of two schedules, the constexpr
``MULTI`` (CBAM meets several times per launch and has its own launcher; see ops/cbam.py):

(a) ``MULTI=0``, one program per sample (P = 1): no cross-program communication. The only schedule
    that can run under ``TRITON_INTERPRET=1``, where programs run one after another (a wait on a
    later program would hang), so the one CI covers end to end.
(b) ``MULTI=1``, P programs per sample (GPU only, small batches, so that N = 1 … 8 still spreads over
    many SMs; SE, BiECA and CBAM group samples (``sample_group``), and their meetings are per group):
    program j of sample n owns channels [j·chan_per_prog, (j + 1)·chan_per_prog). It publishes what its
    peers need (pooled means, per-slice partial sums) to small global buffers, then meets
    them at a per-sample counter (``sample_sync``), reads the whole sample's vectors back and goes on
    with its own slice. The grid N·P is capped at half the SM count, so every program is co-resident
    on a GPU that other streams leave at least half free, and the spin cannot deadlock; the spin is
    bounded anyway, and a program that gives up sets an error flag and NaN-poisons what it computes
    (a broken schedule is loud, never silently wrong). The launcher reads the flag only with
    ``ATTN_KERNELS_SE_CHECK=1`` (a host sync; off by default so launches stay capturable in CUDA graphs).

Switches (named after SE, the first op on this schedule; they govern every op above):
``ATTN_KERNELS_SE_SCHEDULE=auto|single|multi`` and ``ATTN_KERNELS_SE_CHECK=1``.

Counters: a zeroed int32 (groups + 1,) buffer per call (``torch.zeros``: one fill kernel, stream-ordered
and capturable), one counter per sample group (per sample when GROUP = 1); the last entry is the error
flag. A kernel that meets twice waits for 2·P arrivals the
second time (the counter only grows).

Testing without a GPU: ``emulate_split`` gives the launcher schedule (b)'s channel partition with
``MULTI=0``; launching that twice on the same scratch buffers is exact, because what a program
publishes depends only on its own slice — the first launch publishes every slice, the second
reads them all. The ``MULTI=1`` code itself runs under the interpreter with a tiny spin bound,
where the programs before the last of each sample time out (their peers have not run yet).
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from ._layout import cdiv, device_of, getenv, next_pow2, run_kernel

__all__ = ["MAX_SPIN", "MAX_GROUP", "sample_sync", "meet", "schedule_mode", "device_sms", "split_plan",
           "sample_group", "group_plan", "tune", "tune_text", "co_resident_per_sm", "fit_occupancy", "emulate_split",
           "sync_buffer", "check_error", "launch"]

MAX_SPIN = 1 << 22  # iterations of a wait before it gives up (seconds on any GPU)
MAX_GROUP = 16  # samples one program may serve (sample_group)


@triton.jit
def sample_sync(cnt_ptr, err_ptr, target, max_spin):
    """Arrive at this sample's counter and wait until it reaches ``target`` (P, or 2·P at a second meeting).

    Release on arrival publishes this program's stores (made visible CTA-wide by the barrier before
    it); acquire on the polling load makes the peers' stores visible. Loads of what the peers wrote
    must bypass L1 (``cache_modifier=".cg"``). Bounded: returns True (and sets the error flag) when
    the wait gave up.
    """
    tl.debug_barrier()
    tl.atomic_add(cnt_ptr, 1, sem="release", scope="gpu")
    seen = tl.atomic_add(cnt_ptr, 0, sem="acquire", scope="gpu")
    it = seen * 0
    while (seen < target) & (it < max_spin):
        seen = tl.atomic_add(cnt_ptr, 0, sem="acquire", scope="gpu")
        it += 1
    failed = seen < target
    if failed:
        tl.atomic_xchg(err_ptr, 1)
    tl.debug_barrier()
    return failed


@triton.jit
def meet(sync_ptr, n, P, target, max_spin, MULTI: tl.constexpr):
    """A meeting point of the kernels on both schedules. (b): ``sample_sync`` on counter n — sample n's,
    or sample group n's (``sync_ptr[n]``; the error flag after the counters) — until ``target``
    arrivals (P; k·P at the k-th meeting); returns the poison, NaN when the wait timed out, else 0.
    (a): a CTA barrier (the program's threads read what the others stored); returns 0."""
    poison = 0.0
    if MULTI:
        failed = sample_sync(sync_ptr + n, sync_ptr + tl.num_programs(0) // P, target, max_spin)
        poison = tl.where(failed, float("nan"), 0.0)
    else:
        tl.debug_barrier()
    return poison


def schedule_mode() -> str:
    return getenv("ATTN_KERNELS_SE_SCHEDULE", "auto")


_SM_COUNT = {}


def device_sms(device: torch.device) -> int:
    """SM count of a CUDA device; 0 (no schedule (b)) on CPU tensors and under the interpreter."""
    if device.type != "cuda" or getenv("TRITON_INTERPRET", "0") == "1":
        return 0
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]


def split_plan(n: int, c: int, block_c: int, sms: int, mode: str, occupancy: int = 1, cap: int = 0):
    """(MULTI, P, chan_per_prog) for N samples (or sample groups) of C channels in BLOCK_C tiles on a device
    with ``sms`` SMs, each of which holds ``occupancy`` of the kernel's programs at once; ``cap`` (> 0): at
    most that many programs per sample (a tuning sweep's forced P).

    Schedule (b) when a sample has ≥ 2 channel tiles and the batch is small (2·N ≤ budget): P =
    min(#tiles, budget // N) programs per sample, each on whole tiles, where budget = SMs·occupancy // 2:
    the grid N·P never asks for more than half the programs the GPU can hold at once. Every program
    must be resident at the same time for the meeting, and kernels of other streams (NCCL during an
    overlapped DDP backward, a data-loader's copies) may hold SMs — with the whole GPU asked for, a few
    busy SMs would turn into a timed-out wait (seconds, then NaN). ``occupancy`` is 1 unless the launcher
    measured the compiled kernel (``fit_occupancy``).
    ``mode="single"`` or ``sms=0`` → schedule (a); ``mode="multi"`` plans as "auto" (which already takes
    schedule (b) wherever the budget allows two or more programs per sample; it never takes more).
    """
    tiles = cdiv(c, block_c)
    single = (0, 1, tiles * block_c)
    budget = sms * max(1, occupancy) // 2  # programs schedule (b) may ask to be co-resident
    if not sms or mode == "single" or tiles < 2 or n * 2 > budget:
        return single
    p = min(tiles, max(1, budget // n), cap or tiles)
    per = cdiv(tiles, p) * block_c
    p = cdiv(c, per)
    return (1, p, per) if p >= 2 else single


def sample_group(n: int, x_bytes: int, w_bytes: int) -> int:
    """The weight rule for GROUP, how many consecutive samples one program serves: the smallest power of
    two with w_bytes / GROUP ≤ x_bytes / 4, at most MAX_GROUP and next_pow2(N), so that the weights a
    program reads from L2 once (an MLP over the whole pooled vector) stay a small fraction of the x
    traffic. ``x_bytes``: one sample of x (C·HW·|x|); ``w_bytes``: the weights each program reads whole;
    0 → no grouping. At the 7×7 stage of SE-ResNet-50 (C = 2048, R = 128, fp32 weights: 2 MB against
    200 KB of bf16 x per sample) ungrouped programs read ten times more weight bytes from L2 than x bytes
    from DRAM. On a GPU ``group_plan`` may serve fewer samples per program so that the grid fills it."""
    if not (w_bytes and x_bytes) or n <= 1:
        return 1
    return min(next_pow2(cdiv(4 * w_bytes, x_bytes)), MAX_GROUP, next_pow2(n))


FILL = 0.9  # group_plan: a plan within this fraction of the fullest grid counts as filling the GPU


def group_plan(n: int, c: int, block_c: int, k: int, sms: int, mode: str, x_bytes: int, w_bytes: int,
               tile: int = 4096, occupancy: int = 1, forced=None) -> dict:
    """The sample-group part of a launch config: GROUP, the schedule over the cdiv(N, GROUP) groups
    (``split_plan``: MULTI, P, chan_per_prog) and the tiles of the MLP products, [GROUP, FC_C, FC_R] ≤
    ``tile`` elements (FC_R ≤ 32 of the k-wide hidden layer, FC_C ≤ BLOCK_C).

    GROUP: off the GPU the weight rule (``sample_group``). On a GPU (``sms`` > 0) the grid must also keep
    the SMs busy — the first H200 run measured SE with 64 programs on 132 SMs, latency-bound — so each
    power of two from the weight rule's GROUP down to 1 is planned; of those whose grid reaches FILL of
    the fullest one (programs counted up to one per SM: more per SM are what schedule (b)'s co-residency
    needs, not what fills the memory pipes — the streaming loops keep several tiles in flight per
    program) the one with the fewest L2 bytes besides x is taken (``_overhead``: the weights once per
    group, and in schedule (b) each program's sum of its peers' P published rows), the larger GROUP on
    a tie. E.g. SE at 64×2048×7×7 (2 MB of weights, 200 KB of x per sample) serves 16 samples per
    program in 4 groups × 16 programs rather than 64 programs of one sample; N = 8 at 1024×14×14 runs
    4 groups of 2 × 16 programs, not one group of 8 × 64 (whose programs would each read 64 peers' rows);
    N = 1024 serves 8 (128 programs, schedule (a)). Reasoned from bytes and SM counts; the sweep that
    measures it is bench/bench_groups.py.
    ``ATTN_KERNELS_SE_TUNE`` (``tune``; or ``forced``, its parsed text) overrides GROUP and P for sweeps."""
    forced = tune() if forced is None else forced
    top = forced.get("GROUP") or sample_group(n, x_bytes, w_bytes)
    plans = []
    group = top
    while group >= 1:
        plan = split_plan(cdiv(n, group), c, block_c, sms, mode, occupancy)
        plans.append((group, plan, cdiv(n, group) * plan[1]))
        group = group // 2 if sms and "GROUP" not in forced else 0
    most = max(min(programs, sms) for _, _, programs in plans)
    full = [pl for pl in plans if min(pl[2], sms) >= FILL * most]  # largest GROUP first
    group, (multi, p, per), _ = min(full, key=lambda pl: _overhead(n, pl[0], pl[1][1], k, w_bytes))
    if "P" in forced:  # a tuning sweep's P, still within the co-residency budget
        multi, p, per = split_plan(cdiv(n, group), c, block_c, sms, mode, occupancy, forced["P"])
    fc_r = max(1, min(next_pow2(k), 32))
    fc_c = max(1, min(block_c, tile // (group * fc_r)))
    return dict(GROUP=group, FC_C=fc_c, FC_R=fc_r, MULTI=multi, P=p, chan_per_prog=per)


def _overhead(n: int, group: int, p: int, k: int, w_bytes: int) -> int:
    """L2 bytes a plan reads besides x: the weights once per group (split among its P programs), and in
    schedule (b) every program's sum of the group's P published (GROUP, k) fp32 rows: N·P²·k·4 in all."""
    return cdiv(n, group) * w_bytes + (n * p * p * k * 4 if p > 1 else 0)


_TUNE_KEYS = ("GROUP", "P", "BLOCK_C", "BLOCK_HW", "num_warps", "NUM_STAGES", "PREFETCH", "maxnreg", "RESIDENT")


def tune() -> dict:
    """``ATTN_KERNELS_SE_TUNE="GROUP=4,P=8,BLOCK_C=64,num_warps=4,NUM_STAGES=3,PREFETCH=1,maxnreg=128"``:
    launch parameters forced for a tuning sweep (bench/bench_groups.py --configs), any subset; the
    launchers still keep schedule (b)'s grid co-resident and the MLP tiles within their budget (a forced
    BLOCK_C × BLOCK_HW is taken as given).
    ``maxnreg``: Triton's register cap per thread (128 at 8 warps lets two programs share an SM, at the
    price of spills). ``RESIDENT=1``: SE's kernels hold each program's tile in registers from pass 1 to
    pass 2 (ops/se.py ``_resident_plan``; every input read once), where the shape allows it. For measuring,
    not for production: it applies to every op on the split schedule (SE, BiECA, CBAM; BLOCK_*, num_warps,
    NUM_STAGES, PREFETCH, maxnreg and RESIDENT to SE only). Bad text raises ValueError."""
    text = tune_text()
    return dict(_parse_tune(text)) if text else {}


def tune_text() -> str:
    """ATTN_KERNELS_SE_TUNE's text (memoised launch configs take it as part of their key)."""
    return getenv("ATTN_KERNELS_SE_TUNE", "").strip()


@functools.lru_cache(maxsize=64)
def _parse_tune(text: str) -> dict:
    out = {}
    for item in (t.strip() for t in text.split(",") if t.strip()):
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in _TUNE_KEYS or not value.strip().isdigit():
            raise ValueError(f"ATTN_KERNELS_SE_TUNE: {item!r} is not KEY=INT with KEY one of {', '.join(_TUNE_KEYS)}")
        v = int(value)
        pow2 = key in ("GROUP", "BLOCK_C", "BLOCK_HW", "num_warps")
        binary = key in ("PREFETCH", "RESIDENT")
        if (v < (0 if binary else 1) or (pow2 and v & (v - 1)) or (key == "GROUP" and v > MAX_GROUP)
                or (key == "maxnreg" and not 24 <= v <= 255)):
            raise ValueError(f"ATTN_KERNELS_SE_TUNE: {item!r} out of range (GROUP, BLOCK_C, BLOCK_HW and num_warps "
                             f"are powers of two, GROUP ≤ {MAX_GROUP}, maxnreg 24 … 255, PREFETCH and RESIDENT 0 "
                             "or 1, the others ≥ 1)")
        if binary and v > 1:
            raise ValueError(f"ATTN_KERNELS_SE_TUNE: {item!r}: {key} is 0 or 1")
        out[key] = v
    return out


def emulate_split(cfg: dict, c: int, split: int) -> dict:
    """Test hook (interpreter): schedule (b)'s channel partition, P = ``split`` programs per sample, but
    MULTI=0: the launcher launches twice on the same scratch buffers instead of meeting (see above)."""
    tiles = cdiv(c, cfg["BLOCK_C"])
    per = cdiv(tiles, split) * cfg["BLOCK_C"]
    return dict(cfg, MULTI=0, P=cdiv(c, per), chan_per_prog=per)


_UNUSED_SYNC = {}  # device -> the placeholder MULTI=0 launches get (the kernel never touches it)


def sync_buffer(multi: int, n: int, device, tickets: int = 0) -> torch.Tensor:
    """Schedule (b)'s zeroed (n + 1,) counters + error flag, and ``tickets`` more counters after them (SE's
    RESIDENT kernels: their work items); a shared placeholder for MULTI=0 launches."""
    if multi:
        return torch.zeros(n + 1 + tickets, dtype=torch.int32, device=device)
    buf = _UNUSED_SYNC.get(device)
    if buf is None:  # one per device, not one allocation per launch
        buf = torch.empty(1, dtype=torch.int32, device=device)
        if device.type != "cuda" or not torch.cuda.is_current_stream_capturing():
            _UNUSED_SYNC[device] = buf  # never one from a graph's private memory pool
    return buf


def check_error(sync: torch.Tensor, multi: int, n: int, op: str) -> None:
    """Debug only (ATTN_KERNELS_SE_CHECK=1): a host sync, so off by default (CUDA-graph capture)."""
    if multi and getenv("ATTN_KERNELS_SE_CHECK", "0") == "1":
        if int(sync[n].item()) != 0:
            raise RuntimeError(f"fused {op}: a multi-program wait timed out (programs not co-resident?); "
                               "outputs are NaN. Set ATTN_KERNELS_SE_SCHEDULE=single to avoid this schedule.")


def co_resident_per_sm(n_regs: int, shared: int, num_warps: int, props) -> int:
    """How many programs of a compiled kernel one SM holds at once, by registers (allocated per thread in
    units of 8), shared memory (1 KB reserved per block) and threads — the occupancy of Triton's fused
    softmax tutorial. ``props``: torch.cuda.get_device_properties (fields a torch may lack default to every
    sm_70+ GPU's 64K registers and 2048 threads per SM, and to the opt-in shared memory of one block)."""
    regs = -(-max(1, n_regs) // 8) * 8
    smem_sm = (getattr(props, "shared_memory_per_multiprocessor", None)
               or getattr(props, "shared_memory_per_block_optin"))
    by_regs = getattr(props, "regs_per_multiprocessor", 65536) // (regs * 32 * num_warps)
    by_smem = smem_sm // (shared + 1024)
    by_threads = getattr(props, "max_threads_per_multi_processor", 2048) // (32 * num_warps)
    return max(1, min(by_regs, by_smem, by_threads, 32))


_FITTED = {}  # (kernel, planner inputs, mode, tune text, meta, dtypes) -> the config fit_occupancy chose


def _kernel_kwargs(cfg: dict, meta):
    kw = dict(cfg)
    p, per = kw.pop("P"), kw.pop("chan_per_prog")
    kw.update(meta(p) if callable(meta) else meta)
    return kw, p, per


def _occupancy(kernel, like, cfg, prepared) -> int:
    """co_resident_per_sm of ``kernel`` compiled for ``cfg`` (Triton's warm-up: compiles, launches nothing;
    the launch that follows finds it in Triton's cache)."""
    n, args, meta = prepared(cfg)
    kw, p, per = _kernel_kwargs(cfg, meta)
    sync = torch.empty(n + 1, dtype=torch.int32, device=like.device)  # only its type and alignment matter here
    with device_of(like):
        compiled = kernel.warmup(*args(sync, p, per, MAX_SPIN), grid=(n * p,), **kw)
        compiled._init_handles()  # loads the cubin: n_regs
    return co_resident_per_sm(compiled.n_regs, compiled.metadata.shared, compiled.metadata.num_warps,
                              torch.cuda.get_device_properties(like.device))


def fit_occupancy(kernel, like: torch.Tensor, cfg: dict, replan, prepared, key) -> dict:
    """The launch config for what the GPU really holds. Launch configs are first planned as if one
    program fit per SM (``occupancy=1``); when ``kernel`` compiled for ``cfg`` fits ``occ`` ≥ 2 per SM,
    ``replan(occ)`` plans again with schedule (b)'s co-residency budget at SMs·occ // 2 (more programs
    per group, other tiles, another GROUP). The new config is taken only if its own compiled kernel fits
    at least ``occ`` per SM, else ``cfg`` stays. ``prepared(cfg)`` → (groups, args, meta): the launch's
    grid rows, argument builder and meta-parameters for a config, as ``launch`` takes them (``args`` may
    hold stand-ins for scratch sized by the config: only dtypes and alignment are read here).
    ``key``: everything the plan was made from (shape, byte counts, layout, device — the planner's
    arguments); with the kernel, the schedule mode, ATTN_KERNELS_SE_TUNE, the meta-parameters and the
    argument dtypes it keys the decision, made once and remembered, so every later call with the same
    inputs launches the same grid (same summation order, same bits) for a dict lookup. Nothing changes
    off the GPU, under a forced schedule or P (``tune``), or when measuring fails (no driver, a
    compile-only stand-in): ``cfg`` is always safe."""
    mode = schedule_mode()
    if not device_sms(like.device) or mode == "single" or "P" in tune():
        return cfg
    _, args, meta = prepared(cfg)
    dtypes = tuple(a.dtype for a in args(like, 1, 0, 0) if isinstance(a, torch.Tensor))
    full_key = (getattr(kernel, "__name__", id(kernel)), key, mode, tune_text(),
                tuple(meta.items()) if isinstance(meta, dict) else meta, dtypes)
    hit = _FITTED.get(full_key)
    if hit is None:
        hit = cfg
        try:
            occ = _occupancy(kernel, like, cfg, prepared)
            new = replan(occ) if occ > 1 else cfg
            if new != cfg and _occupancy(kernel, like, new, prepared) >= occ:
                hit = new
        except Exception:  # noqa: BLE001 -- measuring is an optimisation; the launch reports real errors
            hit = cfg
        if len(_FITTED) >= 4096:  # a bound, like the planners' lru caches
            _FITTED.clear()
        _FITTED[full_key] = hit
    return hit


def launch(kernel, like: torch.Tensor, n: int, c: int, cfg: dict, args, meta, op: str, split: int = 0,
           refill=(), meetings: int = 1) -> tuple:
    """Launch ``kernel`` on the n·P grid of ``cfg`` (keys MULTI, P, chan_per_prog + the kernel's
    meta-parameters; n: the samples, or the sample groups of a kernel that groups them);
    ``args(sync, P, chan_per_prog, max_spin)`` builds its positional arguments; ``meta``: the other
    meta-parameters, a dict or a function of P; ``like``: a tensor on the launch device.
    ``split`` (test hook): schedule (b)'s partition with P = ``split``, emulated with MULTI=0 — launched
    ``meetings + 1`` times on the same scratch buffers, the outputs in ``refill`` (those no peer reads)
    NaN-filled before the last launch. Why that many: in launch L every value a program publishes
    before its L-th meeting is exact (it depends only on what the peers published before earlier
    meetings, exact since launch L − 1 ended), so the last launch reads nothing stale; a peer
    rewriting a value while it is read writes the same bits. One meeting: twice (module docstring).
    Returns the (last) launch as ``run_kernel``'s arguments (kernel, grid, args, kw): what ``Replay`` keeps."""
    if split:
        cfg = emulate_split(cfg, c, split)
    kw, p, per = _kernel_kwargs(cfg, meta)
    if p * per < c:  # a plan that leaves channels to nobody would leave outputs unwritten: never launch it
        raise RuntimeError(f"fused {op}: launch plan covers {p * per} of {c} channels (P={p}, {per} per program)")
    rounds = meetings + 1 if split else 1
    for i in range(rounds):
        for t in refill if i and i == rounds - 1 else ():
            t.fill_(float("nan"))
        sync = sync_buffer(cfg["MULTI"], n, like.device, int(bool(cfg.get("RESIDENT"))))
        launched = (kernel, n * p, args(sync, p, per, MAX_SPIN), kw)
        with device_of(like):
            run_kernel(*launched)
        check_error(sync, cfg["MULTI"], n, op)
    return launched
