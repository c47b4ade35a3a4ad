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

import os

import torch
import triton
import triton.language as tl

from ._layout import cdiv, device_of, next_pow2

__all__ = ["MAX_SPIN", "MAX_GROUP", "sample_sync", "meet", "schedule_mode", "device_sms", "split_plan",
           "sample_group", "group_plan", "emulate_split", "sync_buffer", "check_error", "launch"]

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
    return os.environ.get("ATTN_KERNELS_SE_SCHEDULE", "auto")


_SM_COUNT = {}


def device_sms(device: torch.device) -> int:
    """SM count of a CUDA device; 0 (no schedule (b)) on CPU tensors and under the interpreter."""
    if device.type != "cuda" or os.environ.get("TRITON_INTERPRET", "0") == "1":
        return 0
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]


def split_plan(n: int, c: int, block_c: int, sms: int, mode: str):
    """(MULTI, P, chan_per_prog) for N samples of C channels in BLOCK_C tiles on a device with ``sms`` SMs.

    Schedule (b) when a sample has ≥ 2 channel tiles and the batch is small (4·N ≤ SMs; 2·N ≤ SMs when
    forced with ``mode="multi"``): P = min(#tiles, (SMs // 2) // N) programs per sample, each on whole
    tiles. The grid N·P stays within half the SMs: every program must be resident at once for the
    meeting, and kernels of other streams (NCCL during an overlapped DDP backward, a data-loader's
    copies) may hold SMs — with the whole GPU asked for, a few busy SMs would turn into a timed-out wait
    (seconds, then NaN). ``mode="single"`` or ``sms=0`` → schedule (a).
    """
    tiles = cdiv(c, block_c)
    single = (0, 1, tiles * block_c)
    budget = sms // 2  # programs schedule (b) may ask to be co-resident
    if not sms or mode == "single" or tiles < 2 or n * 2 > budget * (2 if mode == "multi" else 1):
        return single
    p = min(tiles, max(1, budget // n))
    per = cdiv(tiles, p) * block_c
    p = cdiv(c, per)
    return (1, p, per) if p >= 2 else single


def sample_group(n: int, tiles: int, sms: int, x_bytes: int, w_bytes: int) -> int:
    """GROUP: how many consecutive samples one program serves, so that weights it reads from L2 once per
    program (an MLP over the whole pooled vector) stay a small fraction of the x traffic: the smallest
    power of two with w_bytes / GROUP ≤ x_bytes / 4, at most MAX_GROUP and next_pow2(N). ``x_bytes``:
    one sample of x (C·HW·|x|); ``w_bytes``: the weights each program reads whole; 0 → no grouping.
    At the 7×7 stage of SE-ResNet-50 (C = 2048, R = 128, fp32 weights: 2 MB against 200 KB of bf16 x per
    sample) ungrouped programs read ten times more weight bytes from L2 than x bytes from DRAM. On a GPU
    (``sms`` > 0) two caps keep the SMs busy: GROUP ≤ N·tiles / SMs, so that the (sample group, channel
    tile) work of schedule (b) (few groups, P programs each) still fills them; and for N ≥ SMs, where the
    groups are many and schedule (a) runs one program per group, GROUP ≤ ⌈N / SMs⌉, so that there are
    about as many programs as SMs (without it N = 1024 at 2048×7×7 ran 64 programs of 16 samples on a
    132-SM GPU: half of it idle). Not tuned on a GPU yet: the 1/4 ratio and both caps are reasoned
    from bytes and SM counts, not measured."""
    if not (w_bytes and x_bytes) or n <= 1:
        return 1
    group = min(next_pow2(cdiv(4 * w_bytes, x_bytes)), MAX_GROUP, next_pow2(n))
    if sms:
        group = min(group, max(1, prev_pow2(n * tiles // sms)))
        if n >= sms:
            group = min(group, prev_pow2(cdiv(n, sms)))
    return group


def group_plan(n: int, c: int, block_c: int, k: int, sms: int, mode: str, x_bytes: int, w_bytes: int,
               tile: int = 4096) -> dict:
    """The sample-group part of a launch config: GROUP (``sample_group``), the schedule over the
    cdiv(N, GROUP) groups (``split_plan``: MULTI, P, chan_per_prog) and the tiles of the MLP products,
    [GROUP, FC_C, FC_R] ≤ ``tile`` elements (FC_R ≤ 32 of the k-wide hidden layer, FC_C ≤ BLOCK_C)."""
    group = sample_group(n, cdiv(c, block_c), sms, x_bytes, w_bytes)
    multi, p, per = split_plan(cdiv(n, group), c, block_c, sms, mode)
    fc_r = max(1, min(next_pow2(k), 32))
    fc_c = max(1, min(block_c, tile // (group * fc_r)))
    return dict(GROUP=group, FC_C=fc_c, FC_R=fc_r, MULTI=multi, P=p, chan_per_prog=per)


def prev_pow2(v: int) -> int:
    """Largest power of two <= v (0 for v < 1)."""
    return 1 << (v.bit_length() - 1) if v >= 1 else 0


def emulate_split(cfg: dict, c: int, split: int) -> dict:
    """Test hook (interpreter): schedule (b)'s channel partition, P = ``split`` programs per sample, but
    MULTI=0: the launcher launches twice on the same scratch buffers instead of meeting (see above)."""
    tiles = cdiv(c, cfg["BLOCK_C"])
    per = cdiv(tiles, split) * cfg["BLOCK_C"]
    return dict(cfg, MULTI=0, P=cdiv(c, per), chan_per_prog=per)


def sync_buffer(multi: int, n: int, device) -> torch.Tensor:
    if multi:
        return torch.zeros(n + 1, dtype=torch.int32, device=device)
    return torch.empty(1, dtype=torch.int32, device=device)  # never touched (MULTI=0)


def check_error(sync: torch.Tensor, multi: int, n: int, op: str) -> None:
    """Debug only (ATTN_KERNELS_SE_CHECK=1): a host sync, so off by default (CUDA-graph capture)."""
    if multi and os.environ.get("ATTN_KERNELS_SE_CHECK", "0") == "1":
        if int(sync[n].item()) != 0:
            raise RuntimeError(f"fused {op}: a multi-program wait timed out (programs not co-resident?); "
                               "outputs are NaN. Set ATTN_KERNELS_SE_SCHEDULE=single to avoid this schedule.")


def launch(kernel, like: torch.Tensor, n: int, c: int, cfg: dict, args, meta, op: str, split: int = 0,
           refill=(), meetings: int = 1) -> None:
    """Launch ``kernel`` on the n·P grid of ``cfg`` (keys MULTI, P, chan_per_prog + the kernel's
    meta-parameters; n: the samples, or the sample groups of a kernel that groups them);
    ``args(sync, P, chan_per_prog, max_spin)`` builds its positional arguments; ``meta``: the other
    meta-parameters, a dict or a function of P; ``like``: a tensor on the launch device.
    ``split`` (test hook): schedule (b)'s partition with P = ``split``, emulated with MULTI=0 — launched
    ``meetings + 1`` times on the same scratch buffers, the outputs in ``refill`` (those no peer reads)
    NaN-filled before the last launch. Why that many: in launch L every value a program publishes
    before its L-th meeting is exact (it depends only on what the peers published before earlier
    meetings, exact since launch L − 1 ended), so the last launch reads nothing stale; a peer
    rewriting a value while it is read writes the same bits. One meeting: twice (module docstring)."""
    if split:
        cfg = emulate_split(cfg, c, split)
    kw = dict(cfg)
    p, per = kw.pop("P"), kw.pop("chan_per_prog")
    kw.update(meta(p) if callable(meta) else meta)
    rounds = meetings + 1 if split else 1
    for i in range(rounds):
        for t in refill if i and i == rounds - 1 else ():
            t.fill_(float("nan"))
        sync = sync_buffer(cfg["MULTI"], n, like.device)
        with device_of(like):
            kernel[(n * p,)](*args(sync, p, per, MAX_SPIN), **kw)
        check_error(sync, cfg["MULTI"], n, op)
