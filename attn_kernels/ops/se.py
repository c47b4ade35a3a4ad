"""Fused squeeze-and-excitation in Triton: one launch forward, two backward (grad_x; the weight gradients), a
real torch op.

    p = mean_hw(x)                      (N, C)   pooled
    u = W1 p + b1                       (N, R)   hidden pre-activation   (absent for effective SE)
    z = W2 act(u) + b2   (eSE: W2 p + b2)  (N, C) gate logits
    s = gate(z);  y = x · s             se
                  y = out_act(x · s + shortcut)   se_residual (same kernels, RESIDUAL epilogue flag)

The design problem is the global dependency: every gate needs the mean of every channel of its
sample. Two schedules, chosen per call by the launcher and passed as the constexpr ``MULTI``:

(a) ``MULTI=0`` — one program per sample (per group of samples, below). It pools all its channel
    tiles into an fp32 (N, C) buffer, computes the excitation on chip (FC tiles against the pooled
    vector re-read after ``tl.debug_barrier()``), then, tile by tile, the gate and the scaling. No
    cross-program communication: this is the schedule that runs under ``TRITON_INTERPRET=1`` (where
    programs run one after another, so any wait on another program would hang) and the one CI covers.
(b) ``MULTI=1`` — several programs per sample (GPU only, small N): program j of sample n owns a slice
    of ``chan_per_prog`` channels. It pools its slice, publishes the means to the (N, C) buffer and
    its slice's part of the hidden pre-activation, W1[:, slice]·p[slice], as row j of an (N·P, R)
    buffer, then arrives at a per-sample counter (``atomic_add(+1, sem="release")``) and spins on
    ``atomic_add(+0, sem="acquire")`` until all P programs of the sample have arrived. Every program
    then sums the P rows in program order into the hidden vector — identical bits, so the racing
    identical stores of it are benign — and computes the gates and scaling of its own slice from
    W2's rows of its channels. So each program reads only its slice's share of the weights. The
    grid is N·P ≤ half of what the GPU holds at once — SMs × the compiled kernel's occupancy
    (``_split.fit_occupancy``: registers, shared memory; one per SM until measured) — so the spin
    cannot deadlock while other streams leave half the GPU free; the spin is bounded (``max_spin``
    iterations): on timeout the program sets an error flag and poisons its outputs with NaN instead
    of hanging. The launcher reads the flag (a host sync) only with ``ATTN_KERNELS_SE_CHECK=1`` — off
    by default so the launch path has no host sync and CUDA-graph capture works; the NaN poison
    makes a broken schedule loud without it.
    Counters: a fresh zeroed int32 (groups + 1,) buffer per call (``torch.zeros``: one fill kernel,
    stream ordered and capturable, safe across streams and graph replays; the +1 is the error flag).
    The counter wait, the split plan, the group rule and the test hooks live in ops/_split.py (shared
    with DynamicMultiKernelECA, BidirectionalECA and CBAM). CI runs schedule (b)'s channel partition (emulated)
    and its MULTI=1 code with a tiny spin bound under the interpreter; the real schedule only a GPU runs.

Sample groups (both schedules): a program serves GROUP consecutive samples (``GROUP`` constexpr, 1 … 16,
chosen by ``launch_config`` from the byte counts, as far as the grid still fills the GPU) — it pools,
and later scales, its channel slice of each of them, but reads each FC weight tile once for all of them
([GROUP, FC_C, FC_R] register
tiles). Without it every sample reads the FC weights from L2 once: at the 7×7 stage (C = 2048,
R = 128, fp32 weights: 2 MB per sample against 200 KB of bf16 x) that is ten times the x traffic.
In (b) the meeting, the counters and the published parts are per group.

Backward, same structure: pass 1 per channel g = Σ_hw gy'·x (gy' = grad_y, or grad_y·out_act'(x·s +
shortcut) for se_residual), dz = g·gate'(z) published to (N, C), and the slice's part of W2ᵀ dz as
its row; [sync in (b)]; the excitation backward du = (Σ rows)·act'(u) (every program, identical
bits), dp = W1ᵀ du (eSE: W2ᵀ dz) for its own channels; pass 2 grad_x = gy'·s + dp/HW (and
grad_shortcut = gy'). The kernel writes fp32 per-sample partials dz (N, C) and du (N, R); a second,
small launch (``_se_param_grads_kernel``) reduces them over the batch deterministically (fixed order, no
atomics) into grad_w2 = dzᵀ act(u), grad_b2 = Σ_n dz, grad_w1 = duᵀ p, grad_b1 = Σ_n du, the weight
gradients stored in their weights' dtypes. (It replaced torch's two GEMMs, the activation and two sums,
plus two casts for low-precision weights: five to seven small launches per backward.)

Saved for backward: x (and shortcut for se_residual: needed to recompute the sign/derivative of
out_act at x·s + shortcut; for out_act='identity' it is still saved — N·C·HW·|x| bytes — but never
read), plus pooled (N, C), u (N, R) and z (N, C) in fp32 (the gate s is recomputed from z: exact at
hardsigmoid's derivative boundaries). No full-size intermediate.

Layouts: x (and grad_y, shortcut, the outputs) are addressed as (stride_n, stride_c, stride_hw):
NCHW, channels_last, channels_last_3d, x[::2], expanded grad_y (stride 0) and any view whose spatial
dims flatten to one stride run without a copy. Other views (e.g. spatial dims transposed) are copied
to contiguous first — the documented fallback. Outputs are ``_alloc.empty_like(x)`` (same memory
format). Any spatial rank, HW = 1. Offsets are int64 (``program_id.to(int64)``, int64 channel and hw
offsets) so tensors past 2^31 elements address correctly — not tested here (no memory for it).

Bytes per call (|x| = element size, M = N·C·HW):
    forward    reads x twice (pool, then scale — the second read from L2 when the sample slabs in
               flight fit; the tile is NOT kept on chip) + writes y:           3·M·|x|
               se_residual also reads shortcut once:                            4·M·|x|
    backward   reads grad_y and x (pass 1), grad_y again (pass 2), writes grad_x: 4·M·|x|
               se_residual: pass 1 reads grad_y, x, shortcut; pass 2 the same (identity out_act: only
               grad_y), writes grad_x and grad_shortcut:                    up to 8·M·|x|
plus O(N·(C + R)) fp32 vectors and the weights once per group of samples (L2-resident). The bound judged
against is the compulsory floor: forward 2·M·|x| (read x, write y), backward 3·M·|x| (read x and
grad_y, write grad_x) — fraction of a measured device copy, see bench/bench_se.py.

RESIDENT plans (opt-in, ``ATTN_KERNELS_SE_TUNE=RESIDENT=1``; ``_resident_plan``): one program per
[BLOCK_C, BLOCK_HW] tile of a sample, BLOCK_HW covering the whole map, the tile held in registers from
pass 1 to pass 2 — forward: x read once, 2·M·|x|; backward: grad_y (se_residual: gy') kept, 3·M·|x|; the
floors — with P = C / BLOCK_C programs per sample meeting as in schedule (b). Their work items are
tickets (an atomic counter) rather than program ids, so only one sample's P ≤ 32 programs need to be
resident together, not the grid: every lower ticket belongs to a program that has started, so the
samples before a waiting one can always finish and make room. Why: with the streaming schedules at
N = 128 × 1024 × 14² bf16 all 51 MB of x are in flight between the pool and the scale pass, about an
H100's L2, so the second read is likely to come from HBM (3·M·|x|, at best 2/3 of a copy's speed). Not
the default until a GPU has timed it (bench/gpu_check.sh's tune_se step runs it).

L2 weight traffic: every group reads the FC weights once — R·C·(|w1| + |w2|) bytes (2 MB at C = 2048,
R = 128, fp32 weights), split among its P programs in schedule (b) — so N/GROUP times that per call
(the 7×7 stage at N = 64: 8 MB with GROUP = 16 on a 132-SM GPU, against 38 MB of bf16 x traffic;
128 MB ungrouped).

Streaming loops: each pass runs one loop over (sample of the group, channel tile, hw tile), flattened so
that Triton can software-pipeline its loads (``tl.range(num_stages=NUM_STAGES)``: cp.async into shared
memory, several tiles in flight), or, where a tile row's pieces cannot be copied 4 bytes at a time
(bf16 NCHW at 7×7: 98-byte rows), with a one-tile register prefetch (``PREFETCH``); see ``_tile_at``,
``_pipeline`` and ``_layout.multiple`` (ROW_ALIGN). The first version
(three nested loops, one tile in flight per program) was measured on an H200 (2026-12-04, bf16,
128x1024x14x14): forward 0.48 ms NCHW / 0.43 ms channels_last against eager's 0.12 / 0.17 ms, about 6 %
of a copy's bandwidth — latency-bound, and on half the GPU: every SE training shape of that run
(N = 64 … 128) launched 64 programs on 132 SMs (the group rule and the half-the-SMs cap of schedule (b)
together). Now the group plan keeps the grid filling the SMs and schedule (b)'s cap follows the
compiled kernel's occupancy (``_split.group_plan``, ``_split.fit_occupancy``). Neither the pipelined
loops nor the new plan have run on a GPU yet (sm_90 builds at 8 warps: forward ≤ 128 registers per
thread, capped, 0 - 32 bytes of spill; backward 120 - 250, uncapped, no spill; up to 56 KB of shared
memory), so they have no measured figure (bench/results/nvidia-h200/ holds the first run's).
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .. import _alloc
from . import _eager
from . import _split as _split_mod
from ._layout import as_flat as _as_flat, cdiv as _cdiv, flat_strides as _flat_strides
from ._layout import multiple as _aligned, multiple_rows as _aligned_rows, next_pow2 as _next_pow2
from ._layout import device_of as _device_of, out_like as _out_like, run_kernel as _run_kernel
from ._layout import stream_alignment as _stream_alignment, Replay as _Replay, replay as _replay
from ._layout import meta as _tmeta, remember as _remember, replay_key as _replay_key_of
from ._split import device_sms as _device_sms, launch as _launch, meet as _meet
from ._split import FILL as _FILL, fit_occupancy as _fit_occupancy, group_plan as _group_plan
from ._split import _parse_tune, schedule_mode as _schedule_mode, tune as _split_tune, tune_text as _tune_text

__all__ = ["se", "se_residual", "se_forward", "se_backward", "launch_config"]

_X_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_ACTS = {"relu": 0, "silu": 1, "gelu": 2, "identity": 3, "hardswish": 4}
_GATES = {"sigmoid": 0, "hardsigmoid": 1}
_TILE = 4096  # elements per [BLOCK_C, BLOCK_HW] x tile and per [GROUP, FC_C, FC_R] FC tile
_MAX_BLOCK_HW = 1024
_STAGE_SMEM = 96 * 1024  # bytes of shared memory the pipelined streaming loops may hold (_num_stages)


# ----------------------------------------------------------------------------------------------
# Device helpers
# ----------------------------------------------------------------------------------------------
@triton.jit
def _act(u, ACT: tl.constexpr):
    """relu / silu / gelu (exact, erf) / identity / hardswish (u · relu6(u + 3) / 6, as F.hardswish)."""
    if ACT == 0:
        return tl.maximum(u, 0.0)
    elif ACT == 1:
        return u / (1.0 + tl.exp(-u))
    elif ACT == 2:
        return 0.5 * u * (1.0 + tl.math.erf(u * 0.7071067811865476))
    elif ACT == 4:
        return u * tl.minimum(tl.maximum(u + 3.0, 0.0), 6.0) / 6.0
    else:
        return u


@triton.jit
def _act_grad(u, ACT: tl.constexpr):
    """d act(u) / du (relu: 1 where u > 0; hardswish: 0 below -3, u / 3 + 1/2 on [-3, 3], 1 above -- as torch)."""
    if ACT == 0:
        return tl.where(u > 0.0, 1.0, 0.0)
    elif ACT == 1:
        sg = 1.0 / (1.0 + tl.exp(-u))
        return sg * (1.0 + u * (1.0 - sg))
    elif ACT == 2:
        return 0.5 * (1.0 + tl.math.erf(u * 0.7071067811865476)) + u * 0.3989422804014327 * tl.exp(-0.5 * u * u)
    elif ACT == 4:
        return tl.where(u < -3.0, 0.0, tl.where(u <= 3.0, u / 3.0 + 0.5, 1.0))
    else:
        return u * 0.0 + 1.0


@triton.jit
def _gate(z, GATE: tl.constexpr):
    if GATE == 0:
        return 1.0 / (1.0 + tl.exp(-z))
    else:
        return tl.minimum(tl.maximum(z + 3.0, 0.0), 6.0) / 6.0


@triton.jit
def _gate_grad(z, GATE: tl.constexpr):
    if GATE == 0:
        sg = 1.0 / (1.0 + tl.exp(-z))
        return sg * (1.0 - sg)
    else:
        return tl.where((z > -3.0) & (z < 3.0), 1.0 / 6.0, 0.0)


@triton.jit
def _group_matvec(w_ptr, so, sk, v_ptr, ldv, offs_g, mask_g, offs_o, mask_o, k_lo, k_hi, ACT: tl.constexpr,
                  APPLY: tl.constexpr, ACC: tl.constexpr, GROUP: tl.constexpr, BLOCK_O: tl.constexpr,
                  BLOCK_K: tl.constexpr):
    """out[g, o] = Σ_{k in [k_lo, k_hi)} W[o, k] · f(v[g, k]) for the group's samples (rows offs_g of the
    vectors v, row stride ldv) and the outputs offs_o; f = act if APPLY else identity. W[o, k] sits at
    w_ptr + o·so + k·sk: a row-major (O, K) matrix is (so, sk) = (K, 1), its transpose (1, O).

    Each [BLOCK_O, BLOCK_K] weight tile is read once for all GROUP samples: this is what grouping
    samples buys (the weights are read once per group, not once per sample)."""
    acc = tl.zeros([GROUP, BLOCK_O], dtype=ACC)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        offs_k = (k0 + tl.arange(0, BLOCK_K)).to(tl.int64)
        mask_k = offs_k < k_hi
        v = tl.load(v_ptr + offs_g[:, None] * ldv + offs_k[None, :], mask=mask_g[:, None] & mask_k[None, :],
                    other=0.0, cache_modifier=".cg")  # .cg: in schedule (b) partly a peer's stores
        if APPLY:
            v = tl.where(mask_k[None, :], _act(v, ACT), 0.0)
        w = tl.load(w_ptr + offs_o[:, None] * so + offs_k[None, :] * sk, mask=mask_o[:, None] & mask_k[None, :],
                    other=0.0).to(ACC)
        acc += tl.sum(v[:, None, :] * w[None, :, :], axis=2)
    return acc


@triton.jit
def _program_slice(N, C, P, chan_per_prog, GROUP: tl.constexpr):
    """This program's place in the grid, program (g, j) of P per group of GROUP samples: its id, g, the
    group's first sample n0, its channel slice [c_lo, c_hi) and the group's sample indices with their mask."""
    return _slice_of(tl.program_id(0).to(tl.int64), N, C, P, chan_per_prog, GROUP)


@triton.jit
def _work_item(sync_ptr, P, TICKET: tl.constexpr):
    """This program's work item: its program id, or with TICKET (the RESIDENT kernels on schedule (b)) a
    ticket from the counter after the error flag. Tickets are taken in start order, so every ticket below
    this one belongs to a program that has started."""
    if TICKET:
        return tl.atomic_add(sync_ptr + tl.num_programs(0) // P + 1, 1, sem="relaxed").to(tl.int64)
    else:
        return tl.program_id(0).to(tl.int64)


@triton.jit
def _slice_of(pid, N, C, P, chan_per_prog, GROUP: tl.constexpr):
    """_program_slice for the work item ``pid`` (the program id, or a ticket: the RESIDENT kernels)."""
    grp = pid // P
    n0 = grp * GROUP
    c_lo = (pid % P) * chan_per_prog
    c_hi = tl.minimum(c_lo + chan_per_prog, C)
    offs_g = n0 + tl.arange(0, GROUP).to(tl.int64)
    return pid, grp, n0, c_lo, c_hi, offs_g, offs_g < N


@triton.jit
def _publish_part(block_ptr, w_ptr, so, sk, v_ptr, ldv, offs_g, mask_g, c_lo, c_hi, R, ACC: tl.constexpr,
                  GROUP: tl.constexpr, FC_C: tl.constexpr, FC_R: tl.constexpr):
    """This program's part, over its channels [c_lo, c_hi), of an R-wide product for the group's samples
    (forward: W1 p; backward: W2ᵀ dz; W addressed as in _group_matvec with o = r, k = c), stored as its
    (GROUP, R) block at block_ptr for _sum_rows."""
    for r0 in range(0, R, FC_R):
        offs_r = (r0 + tl.arange(0, FC_R)).to(tl.int64)
        mask_r = offs_r < R
        part = _group_matvec(w_ptr, so, sk, v_ptr, ldv, offs_g, mask_g, offs_r, mask_r, c_lo, c_hi, 0, 0, ACC,
                             GROUP, FC_R, FC_C)
        tl.store(block_ptr + tl.arange(0, GROUP)[:, None] * R + offs_r[None, :], part, mask=mask_r[None, :])


@triton.jit
def _tile_at(t, n0, c_lo, c_hi, N, HW, n_c, n_hw, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    """Tile t of the program's streaming loops, which run over (sample of the group, channel tile of the
    slice, hw tile) flattened into one index, hw fastest: its sample n, channel offsets and mask, hw
    offsets, the [BLOCK_C, BLOCK_HW] mask, and whether it is its channel tile's last hw tile.

    Why flattened: Triton software-pipelines only innermost loops, so with the three nested loops of the
    first version (one x tile in flight per program: the H200's first run measured SE forward at
    128x1024x14x14 bf16 at 0.48 ms, 6 % of a copy's bandwidth, 4x slower than eager) the loads could not
    be issued ahead; one loop with ``tl.range(num_stages=NUM_STAGES)`` becomes cp.async copies into
    shared memory NUM_STAGES − 1 tiles ahead of their use (checked in the sm_90 PTX). Only where a
    thread's piece of a tile row is ≥ 4 bytes and known aligned (cp.async copies 4, 8 or 16 bytes; NCHW
    rows get their alignment from ROW_ALIGN, see ``_layout.multiple``: bf16 at 14×14 copies 8 bytes). Where
    it is not (bf16 NCHW at 7×7: 2 bytes) Triton leaves the loads synchronous, so there the loops
    prefetch by hand instead (PREFETCH: tile t + 1 is loaded into registers before tile t is used; two
    tiles in flight)."""
    per_sample = n_c * n_hw
    gi = t // per_sample
    rem = t - gi * per_sample
    ci = rem // n_hw
    hi = rem - ci * n_hw
    n = n0 + gi
    offs_c = (c_lo + ci * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
    mask_c = (offs_c < c_hi) & (n < N)
    offs_hw = (hi * BLOCK_HW + tl.arange(0, BLOCK_HW)).to(tl.int64)
    m = mask_c[:, None] & (offs_hw < HW)[None, :]
    return n, offs_c, mask_c, offs_hw, m, hi == n_hw - 1


@triton.jit
def _load_tile(ptr, n, offs_c, offs_hw, m, sn, sc, shw):
    return tl.load(ptr + n * sn + offs_c[:, None] * sc + offs_hw[None, :] * shw, mask=m, other=0.0)


@triton.jit
def _prefetch(ptr, t, T, n0, c_lo, c_hi, N, HW, n_c, n_hw, sn, sc, shw, ON: tl.constexpr, BLOCK_C: tl.constexpr,
              BLOCK_HW: tl.constexpr):
    """Tile t + 1 of ``ptr`` (strides sn, sc, shw), as _tile_at orders them: the PREFETCH loops' load of
    the next tile. Nothing is read past the last tile, nor at all when ``ON`` is 0."""
    n, offs_c, mask_c, offs_hw, m, last = _tile_at(t + 1, n0, c_lo, c_hi, N, HW, n_c, n_hw, BLOCK_C, BLOCK_HW)
    return _load_tile(ptr, n, offs_c, offs_hw, m & (t + 1 < T) & (ON != 0), sn, sc, shw)


@triton.jit
def _sum_rows(rows_ptr, offs_r, mask_r, P, R, poison, ACC: tl.constexpr, GROUP: tl.constexpr,
              BLOCK_R: tl.constexpr):
    """[GROUP, BLOCK_R]: Σ_q rows[q, :, offs_r] over the group's P published (GROUP, R) blocks, in program
    order (identical bits in every program), plus ``poison`` (NaN after a timed-out wait). ``.cg``:
    the rows are the peers' stores."""
    offs_gi = tl.arange(0, GROUP)
    acc = tl.zeros([GROUP, BLOCK_R], dtype=ACC) + poison
    for q in range(0, P):
        acc += tl.load(rows_ptr + (q * GROUP + offs_gi[:, None]) * R + offs_r[None, :], mask=mask_r[None, :],
                       other=0.0, cache_modifier=".cg")
    return acc


# ----------------------------------------------------------------------------------------------
# Forward kernel
# ----------------------------------------------------------------------------------------------
@triton.jit
def _se_fwd_kernel(
    x_ptr,  # (N, C, HW) strided, x dtype
    sc_ptr,  # (N, C, HW) strided shortcut, x dtype (read only if RESIDUAL)
    y_ptr,  # (N, C, HW) strided, x dtype (out)
    w1_ptr,  # (R, C) row-major, any float (unused unless HAS_FC1)
    b1_ptr,  # (R,) (unused unless HAS_B1)
    w2_ptr,  # (C, R) row-major, or (C, C) for eSE
    b2_ptr,  # (C,) (unused unless HAS_B2)
    p_ptr,  # (N, C) ACC (out, saved): pooled means
    u_ptr,  # (N, R) ACC (out, saved): hidden pre-activation (unused for eSE)
    z_ptr,  # (N, C) ACC (out, saved): gate logits
    hpart_ptr,  # (groups·P, GROUP, R) ACC scratch: each program's part of W1 p (HAS_FC1)
    sync_ptr,  # (groups + 1,) int32: per-group arrival counters, then the error flag (MULTI only)
    N, C, R, HW, P, chan_per_prog, max_spin,
    sxn, sxc, sxhw, ssn, ssc, sshw, syn, syc, syhw,
    HAS_FC1: tl.constexpr, HAS_B1: tl.constexpr, HAS_B2: tl.constexpr, ACT: tl.constexpr,
    GATE: tl.constexpr, RESIDUAL: tl.constexpr, OUT_ACT: tl.constexpr, MULTI: tl.constexpr,
    ACC: tl.constexpr, GROUP: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
    FC_C: tl.constexpr, FC_R: tl.constexpr, NUM_STAGES: tl.constexpr, PREFETCH: tl.constexpr,
    ROW_ALIGN: tl.constexpr, RESIDENT: tl.constexpr,
):
    """Program (g, j) of P per group (P = 1 in schedule (a)): samples [g·GROUP, (g + 1)·GROUP), channels
    [j·chan_per_prog, +chan_per_prog).

    Bytes: reads its x slice of each sample twice (pool; scale — from L2) and writes y once:
    3·C·HW·|x| per sample (+ C·HW·|x| shortcut for RESIDUAL); plus O(GROUP·(C + P·R)) fp32 vectors and
    its slice's share of the FC weights, once for its GROUP samples: W1's columns and W2's rows of
    its channels (2·R·C/P; eSE: W2's rows, C·C/P).
    RESIDENT (opt-in, ``_resident_plan``): the slice is one [BLOCK_C, BLOCK_HW] tile of one sample, held
    in registers from pooling to scaling — x read once: 2·C·HW·|x| per sample, the floor. With MULTI the
    work item is a ticket (an atomic counter after the error flag) instead of the program id, so a
    program waits only for peers that have already started, whatever order the GPU starts them in:
    the grid need not be co-resident, only one sample's P programs (P ≤ RESIDENT_MAX_P).
    """
    HW = _aligned(HW, ROW_ALIGN)  # NCHW rows: alignment the launcher knows (_pipeline), told to Triton
    sxn, sxc = _aligned_rows(sxn, sxc, ROW_ALIGN)
    ssn, ssc = _aligned_rows(ssn, ssc, ROW_ALIGN)
    syn, syc = _aligned_rows(syn, syc, ROW_ALIGN)
    pid, grp, n0, c_lo, c_hi, offs_g, mask_g = _slice_of(_work_item(sync_ptr, P, RESIDENT * MULTI), N, C, P,
                                                         chan_per_prog, GROUP)
    n_c = tl.cdiv(c_hi - c_lo, BLOCK_C)
    n_hw = tl.cdiv(HW, BLOCK_HW)
    T = GROUP * n_c * n_hw
    if RESIDENT:
        # pass 1 on the one tile (GROUP = 1, chan_per_prog = BLOCK_C, HW ≤ BLOCK_HW): it stays in registers
        rn, roffs_c, rmask_c, roffs_hw, rm, _ = _tile_at(0, n0, c_lo, c_hi, N, HW, 1, 1, BLOCK_C, BLOCK_HW)
        v_res = _load_tile(x_ptr, rn, roffs_c, roffs_hw, rm, sxn, sxc, sxhw)
        tl.store(p_ptr + rn * C + roffs_c, tl.sum(v_res.to(ACC), axis=1) / HW, mask=rmask_c)
    else:
        # pass 1: pool this program's channels of each sample of the group (one pipelined loop, _tile_at);
        # a channel tile's mean is stored at its last hw tile
        acc = tl.zeros([BLOCK_C], dtype=ACC)
        v_next = _prefetch(x_ptr, -1, T, n0, c_lo, c_hi, N, HW, n_c, n_hw, sxn, sxc, sxhw, PREFETCH, BLOCK_C,
                           BLOCK_HW)  # tile 0
        for t in tl.range(0, T, num_stages=NUM_STAGES):
            n, offs_c, mask_c, offs_hw, m, last = _tile_at(t, n0, c_lo, c_hi, N, HW, n_c, n_hw, BLOCK_C, BLOCK_HW)
            if PREFETCH:
                v = v_next
                v_next = _prefetch(x_ptr, t, T, n0, c_lo, c_hi, N, HW, n_c, n_hw, sxn, sxc, sxhw, 1, BLOCK_C,
                                   BLOCK_HW)
            else:
                v = _load_tile(x_ptr, n, offs_c, offs_hw, m, sxn, sxc, sxhw)
            acc += tl.sum(v.to(ACC), axis=1)
            tl.store(p_ptr + n * C + offs_c, acc / HW, mask=mask_c & last)
            acc = tl.where(last, 0.0, acc)
    if HAS_FC1:
        # this slice's part of W1 p for the group's samples, published as this program's (GROUP, R) block
        tl.debug_barrier()  # the pooled slice is re-read by other threads of this program
        _publish_part(hpart_ptr + pid * GROUP * R, w1_ptr, C, 1, p_ptr, C, offs_g, mask_g, c_lo, c_hi, R, ACC,
                      GROUP, FC_C, FC_R)
    # what every thread (schedule (b): every program of the group) stored is re-read by others below
    poison = _meet(sync_ptr, grp, P, P, max_spin, MULTI)
    # excitation: the hidden vectors u = Σ of the group's P parts + b1 (every program, identical bits;
    # NaN after a timed-out wait, so a peer never reads a u silently computed from a partial sum)
    if HAS_FC1:
        for r0 in range(0, R, FC_R):
            offs_r = (r0 + tl.arange(0, FC_R)).to(tl.int64)
            mask_r = offs_r < R
            u = _sum_rows(hpart_ptr + grp * P * GROUP * R, offs_r, mask_r, P, R, poison, ACC, GROUP, FC_R)
            if HAS_B1:
                u += tl.load(b1_ptr + offs_r, mask=mask_r, other=0.0).to(ACC)[None, :]
            tl.store(u_ptr + offs_g[:, None] * R + offs_r[None, :], u, mask=mask_g[:, None] & mask_r[None, :])
        tl.debug_barrier()
    # the gate logits of this program's channels, for the group (W2's rows read once per group)
    for c0 in range(c_lo, c_hi, FC_C):
        offs_c = (c0 + tl.arange(0, FC_C)).to(tl.int64)
        mask_c = offs_c < c_hi
        if HAS_FC1:
            z = _group_matvec(w2_ptr, R, 1, u_ptr, R, offs_g, mask_g, offs_c, mask_c, 0, R, ACT, 1, ACC,
                              GROUP, FC_C, FC_R)
        else:
            z = _group_matvec(w2_ptr, C, 1, p_ptr, C, offs_g, mask_g, offs_c, mask_c, 0, C, ACT, 0, ACC,
                              GROUP, FC_C, FC_R)
        if HAS_B2:
            z += tl.load(b2_ptr + offs_c, mask=mask_c, other=0.0).to(ACC)[None, :]
        z += poison
        tl.store(z_ptr + offs_g[:, None] * C + offs_c[None, :], z, mask=mask_g[:, None] & mask_c[None, :])
    tl.debug_barrier()  # the logits are re-read, one sample at a time, by other threads below
    if RESIDENT:  # pass 2 on the tile still in registers
        s = _gate(tl.load(z_ptr + rn * C + roffs_c, mask=rmask_c, other=0.0), GATE)
        _scale_store(v_res, s, sc_ptr, y_ptr, rn, roffs_c, roffs_hw, rm, ssn, ssc, sshw, syn, syc, syhw, RESIDUAL,
                     OUT_ACT, ACC)
    else:
        # pass 2: gate and scale each sample's slice (one pipelined loop; the gate of a tile's channels is
        # recomputed from z for each of its hw tiles: BLOCK_C loads from L1 against BLOCK_C·BLOCK_HW of x)
        v_next = _prefetch(x_ptr, -1, T, n0, c_lo, c_hi, N, HW, n_c, n_hw, sxn, sxc, sxhw, PREFETCH, BLOCK_C,
                           BLOCK_HW)  # tile 0
        for t in tl.range(0, T, num_stages=NUM_STAGES):
            n, offs_c, mask_c, offs_hw, m, last = _tile_at(t, n0, c_lo, c_hi, N, HW, n_c, n_hw, BLOCK_C, BLOCK_HW)
            s = _gate(tl.load(z_ptr + n * C + offs_c, mask=mask_c, other=0.0), GATE)
            if PREFETCH:
                v = v_next
                v_next = _prefetch(x_ptr, t, T, n0, c_lo, c_hi, N, HW, n_c, n_hw, sxn, sxc, sxhw, 1, BLOCK_C,
                                   BLOCK_HW)
            else:
                v = _load_tile(x_ptr, n, offs_c, offs_hw, m, sxn, sxc, sxhw)
            _scale_store(v, s, sc_ptr, y_ptr, n, offs_c, offs_hw, m, ssn, ssc, sshw, syn, syc, syhw, RESIDUAL,
                         OUT_ACT, ACC)


@triton.jit
def _scale_store(v, s, sc_ptr, y_ptr, n, offs_c, offs_hw, m, ssn, ssc, sshw, syn, syc, syhw,
                 RESIDUAL: tl.constexpr, OUT_ACT: tl.constexpr, ACC: tl.constexpr):
    """y = x·s (se_residual: out_act(x·s + shortcut)) for one [BLOCK_C, BLOCK_HW] tile ``v`` of x."""
    out = v.to(ACC) * s[:, None]
    if RESIDUAL:
        sc = tl.load(sc_ptr + n * ssn + offs_c[:, None] * ssc + offs_hw[None, :] * sshw, mask=m, other=0.0)
        out = _act(out + sc.to(ACC), OUT_ACT)
    tl.store(y_ptr + n * syn + offs_c[:, None] * syc + offs_hw[None, :] * syhw, out.to(y_ptr.dtype.element_ty),
             mask=m)


# ----------------------------------------------------------------------------------------------
# Backward kernel
# ----------------------------------------------------------------------------------------------
@triton.jit
def _grad_pre(gy, x, s, sc, RESIDUAL: tl.constexpr, OUT_ACT: tl.constexpr):
    """Gradient at x·s (fp32): grad_y, or grad_y · out_act'(x·s + shortcut) for se_residual."""
    if RESIDUAL:
        if OUT_ACT == 3:
            return gy
        else:
            return gy * _act_grad(x * s + sc, OUT_ACT)
    else:
        return gy


@triton.jit
def _se_bwd_kernel(
    gy_ptr,  # (N, C, HW) strided, grad_y
    x_ptr,  # (N, C, HW) strided
    sc_ptr,  # (N, C, HW) strided shortcut (RESIDUAL only)
    gx_ptr,  # (N, C, HW) strided (out): grad_x
    gsc_ptr,  # (N, C, HW) strided (out, RESIDUAL only): grad_shortcut
    w1_ptr,  # (R, C) row-major (HAS_FC1)
    w2_ptr,  # (C, R) row-major, or (C, C) for eSE
    u_ptr,  # (N, R) ACC: hidden pre-activation (saved)
    z_ptr,  # (N, C) ACC: gate logits (saved)
    dz_ptr,  # (N, C) ACC (out): per-sample dL/dz — grad_b2 / grad_w2 partials
    du_ptr,  # (N, R) ACC (out): per-sample dL/du — grad_b1 / grad_w1 partials (HAS_FC1)
    dp_ptr,  # (N, C) ACC scratch: dL/d pooled
    hpart_ptr,  # (groups·P, GROUP, R) ACC scratch: each program's part of W2ᵀ dz (HAS_FC1)
    sync_ptr,  # (groups + 1,) int32 counters + error flag (MULTI only)
    N, C, R, HW, P, chan_per_prog, max_spin,
    sgn, sgc, sghw, sxn, sxc, sxhw, ssn, ssc, sshw, sdn, sdc, sdhw, son, soc, sohw,
    HAS_FC1: tl.constexpr, ACT: tl.constexpr, GATE: tl.constexpr, RESIDUAL: tl.constexpr,
    OUT_ACT: tl.constexpr, MULTI: tl.constexpr, ACC: tl.constexpr, GROUP: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, FC_C: tl.constexpr, FC_R: tl.constexpr,
    NUM_STAGES: tl.constexpr, PREFETCH: tl.constexpr, ROW_ALIGN: tl.constexpr, RESIDENT: tl.constexpr,
):
    """Program (g, j) as in the forward.

    Bytes: pass 1 reads grad_y and x (and shortcut), pass 2 reads grad_y again (and x, shortcut
    for a non-identity residual out_act) and writes grad_x (and grad_shortcut): 4·C·HW·|x| per sample
    for se; plus O(GROUP·(C + P·R)) fp32 vectors and its slice's share of the weights once for its
    GROUP samples (2·R·C/P; eSE: W2's columns of its channels, C·C/P).
    RESIDENT (as in the forward): the one tile of grad_y (se_residual: of gy' = grad_y·out_act'(x·s +
    shortcut), fp32) stays in registers for pass 2, so every input is read once: 3·C·HW·|x| per sample
    for se, the floor (se_residual: grad_y, x, shortcut read once, grad_x and grad_shortcut written).
    """
    HW = _aligned(HW, ROW_ALIGN)  # NCHW rows: alignment the launcher knows (_pipeline), told to Triton
    sgn, sgc = _aligned_rows(sgn, sgc, ROW_ALIGN)
    sxn, sxc = _aligned_rows(sxn, sxc, ROW_ALIGN)
    ssn, ssc = _aligned_rows(ssn, ssc, ROW_ALIGN)
    sdn, sdc = _aligned_rows(sdn, sdc, ROW_ALIGN)
    son, soc = _aligned_rows(son, soc, ROW_ALIGN)
    pid, grp, n0, c_lo, c_hi, offs_g, mask_g = _slice_of(_work_item(sync_ptr, P, RESIDENT * MULTI), N, C, P,
                                                         chan_per_prog, GROUP)
    n_c = tl.cdiv(c_hi - c_lo, BLOCK_C)
    n_hw = tl.cdiv(HW, BLOCK_HW)
    T = GROUP * n_c * n_hw
    if RESIDENT:
        # pass 1 on the one tile; what pass 2 needs of it (grad_y, or gy' for se_residual) stays in registers
        rn, roffs_c, rmask_c, roffs_hw, rm, _ = _tile_at(0, n0, c_lo, c_hi, N, HW, 1, 1, BLOCK_C, BLOCK_HW)
        z = tl.load(z_ptr + rn * C + roffs_c, mask=rmask_c, other=0.0)
        g_res = _load_tile(gy_ptr, rn, roffs_c, roffs_hw, rm, sgn, sgc, sghw)
        xv = _load_tile(x_ptr, rn, roffs_c, roffs_hw, rm, sxn, sxc, sxhw).to(ACC)
        if RESIDUAL:
            sc = tl.load(sc_ptr + rn * ssn + roffs_c[:, None] * ssc + roffs_hw[None, :] * sshw, mask=rm,
                         other=0.0).to(ACC)
            g_res = _grad_pre(g_res.to(ACC), xv, _gate(z, GATE)[:, None], sc, RESIDUAL, OUT_ACT)
        tl.store(dz_ptr + rn * C + roffs_c, tl.sum(g_res.to(ACC) * xv, axis=1) * _gate_grad(z, GATE), mask=rmask_c)
    else:
        # pass 1: dz = gate'(z) · Σ_hw gy'·x for this program's channels of each sample of the group (one
        # pipelined loop, _tile_at; a channel tile's dz is stored at its last hw tile)
        acc = tl.zeros([BLOCK_C], dtype=ACC)
        g_next = _prefetch(gy_ptr, -1, T, n0, c_lo, c_hi, N, HW, n_c, n_hw, sgn, sgc, sghw, PREFETCH, BLOCK_C,
                           BLOCK_HW)  # tile 0
        x_next = _prefetch(x_ptr, -1, T, n0, c_lo, c_hi, N, HW, n_c, n_hw, sxn, sxc, sxhw, PREFETCH, BLOCK_C,
                           BLOCK_HW)  # tile 0
        for t in tl.range(0, T, num_stages=NUM_STAGES):
            n, offs_c, mask_c, offs_hw, m, last = _tile_at(t, n0, c_lo, c_hi, N, HW, n_c, n_hw, BLOCK_C, BLOCK_HW)
            z = tl.load(z_ptr + n * C + offs_c, mask=mask_c, other=0.0)
            s = _gate(z, GATE)
            if PREFETCH:
                g = g_next.to(ACC)
                xv = x_next.to(ACC)
                g_next = _prefetch(gy_ptr, t, T, n0, c_lo, c_hi, N, HW, n_c, n_hw, sgn, sgc, sghw, 1, BLOCK_C,
                                   BLOCK_HW)
                x_next = _prefetch(x_ptr, t, T, n0, c_lo, c_hi, N, HW, n_c, n_hw, sxn, sxc, sxhw, 1, BLOCK_C,
                                   BLOCK_HW)
            else:
                g = _load_tile(gy_ptr, n, offs_c, offs_hw, m, sgn, sgc, sghw).to(ACC)
                xv = _load_tile(x_ptr, n, offs_c, offs_hw, m, sxn, sxc, sxhw).to(ACC)
            if RESIDUAL:
                sc = tl.load(sc_ptr + n * ssn + offs_c[:, None] * ssc + offs_hw[None, :] * sshw, mask=m,
                             other=0.0).to(ACC)
            else:
                sc = xv
            acc += tl.sum(_grad_pre(g, xv, s[:, None], sc, RESIDUAL, OUT_ACT) * xv, axis=1)
            tl.store(dz_ptr + n * C + offs_c, acc * _gate_grad(z, GATE), mask=mask_c & last)
            acc = tl.where(last, 0.0, acc)
    tl.debug_barrier()  # dz stored by every thread is re-read below
    if HAS_FC1:
        # this slice's part of W2ᵀ dz (W2's rows of its channels only), published as its (GROUP, R) block
        _publish_part(hpart_ptr + pid * GROUP * R, w2_ptr, 1, R, dz_ptr, C, offs_g, mask_g, c_lo, c_hi, R, ACC,
                      GROUP, FC_C, FC_R)
    poison = _meet(sync_ptr, grp, P, P, max_spin, MULTI)
    # excitation backward: du = (Σ of the P parts of W2ᵀ dz) · act'(u), all R (every program, identical
    # bits; NaN after a timed-out wait: the shared du is never silently wrong)
    if HAS_FC1:
        for r0 in range(0, R, FC_R):
            offs_r = (r0 + tl.arange(0, FC_R)).to(tl.int64)
            mask_r = offs_r < R
            dh = _sum_rows(hpart_ptr + grp * P * GROUP * R, offs_r, mask_r, P, R, poison, ACC, GROUP, FC_R)
            mask = mask_g[:, None] & mask_r[None, :]
            u = tl.load(u_ptr + offs_g[:, None] * R + offs_r[None, :], mask=mask, other=0.0)
            tl.store(du_ptr + offs_g[:, None] * R + offs_r[None, :], dh * _act_grad(u, ACT), mask=mask)
        tl.debug_barrier()
    # dp = W1ᵀ du (eSE: W2ᵀ dz) for this program's channels, for the group (weights read once per group)
    for c0 in range(c_lo, c_hi, FC_C):
        offs_c = (c0 + tl.arange(0, FC_C)).to(tl.int64)
        mask_c = offs_c < c_hi
        if HAS_FC1:
            dp = _group_matvec(w1_ptr, 1, C, du_ptr, R, offs_g, mask_g, offs_c, mask_c, 0, R, ACT, 0, ACC,
                               GROUP, FC_C, FC_R)
        else:
            dp = _group_matvec(w2_ptr, 1, C, dz_ptr, C, offs_g, mask_g, offs_c, mask_c, 0, C, ACT, 0, ACC,
                               GROUP, FC_C, FC_R)
        tl.store(dp_ptr + offs_g[:, None] * C + offs_c[None, :], dp / HW + poison,
                 mask=mask_g[:, None] & mask_c[None, :])
    tl.debug_barrier()  # dp is re-read, one sample at a time, by other threads below
    if RESIDENT:  # pass 2 on the tile still in registers (gy' already applied for se_residual)
        dp_hw = tl.load(dp_ptr + rn * C + roffs_c, mask=rmask_c, other=0.0)
        s = _gate(tl.load(z_ptr + rn * C + roffs_c, mask=rmask_c, other=0.0), GATE)
        _grads_store(g_res.to(ACC), s, dp_hw, gsc_ptr, gx_ptr, rn, roffs_c, roffs_hw, rm, son, soc, sohw, sdn, sdc,
                     sdhw, RESIDUAL)
    else:
        # pass 2: grad_x = gy'·s + dp/HW (and grad_shortcut = gy') for each sample's slice (one pipelined loop)
        g_next = _prefetch(gy_ptr, -1, T, n0, c_lo, c_hi, N, HW, n_c, n_hw, sgn, sgc, sghw, PREFETCH, BLOCK_C,
                           BLOCK_HW)  # tile 0
        for t in tl.range(0, T, num_stages=NUM_STAGES):
            n, offs_c, mask_c, offs_hw, m, last = _tile_at(t, n0, c_lo, c_hi, N, HW, n_c, n_hw, BLOCK_C, BLOCK_HW)
            dp_hw = tl.load(dp_ptr + n * C + offs_c, mask=mask_c, other=0.0)
            s = _gate(tl.load(z_ptr + n * C + offs_c, mask=mask_c, other=0.0), GATE)
            if PREFETCH:
                g = g_next.to(ACC)
                g_next = _prefetch(gy_ptr, t, T, n0, c_lo, c_hi, N, HW, n_c, n_hw, sgn, sgc, sghw, 1, BLOCK_C,
                                   BLOCK_HW)
            else:
                g = _load_tile(gy_ptr, n, offs_c, offs_hw, m, sgn, sgc, sghw).to(ACC)
            if RESIDUAL:
                if OUT_ACT != 3:
                    xv = tl.load(x_ptr + n * sxn + offs_c[:, None] * sxc + offs_hw[None, :] * sxhw, mask=m,
                                 other=0.0).to(ACC)
                    sc = tl.load(sc_ptr + n * ssn + offs_c[:, None] * ssc + offs_hw[None, :] * sshw, mask=m,
                                 other=0.0).to(ACC)
                    g = g * _act_grad(xv * s[:, None] + sc, OUT_ACT)
            _grads_store(g, s, dp_hw, gsc_ptr, gx_ptr, n, offs_c, offs_hw, m, son, soc, sohw, sdn, sdc, sdhw, RESIDUAL)


@triton.jit
def _grads_store(g, s, dp_hw, gsc_ptr, gx_ptr, n, offs_c, offs_hw, m, son, soc, sohw, sdn, sdc, sdhw,
                 RESIDUAL: tl.constexpr):
    """grad_x = gy'·s + dp/HW (and grad_shortcut = gy' for se_residual) of one tile; ``g`` = gy' (fp32)."""
    if RESIDUAL:
        tl.store(gsc_ptr + n * son + offs_c[:, None] * soc + offs_hw[None, :] * sohw,
                 g.to(gsc_ptr.dtype.element_ty), mask=m)
    out = g * s[:, None] + dp_hw[:, None]
    tl.store(gx_ptr + n * sdn + offs_c[:, None] * sdc + offs_hw[None, :] * sdhw, out.to(gx_ptr.dtype.element_ty),
             mask=m)


@triton.jit
def _outer_sum_tile(a_ptr, b_ptr, out_ptr, bias_ptr, N, I, J, ti, tj, APPLY: tl.constexpr, ACT: tl.constexpr,
                    ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
    """One [BLOCK_I, BLOCK_J] tile of out[i, j] = Σ_n a[n, i] · f(b[n, j]) (f = act if APPLY), and from the
    tiles with tj == 0 bias[i] = Σ_n a[n, i]. a (N, I), b (N, J), out (I, J) row-major; the store casts
    to out's dtype (the weight's). The n loop runs in a fixed order: deterministic, no atomics.
    The product is ``tl.dot`` in IEEE precision (no TF32: the fp32 contract of the op; each thread
    accumulates its outputs along n, no cross-thread reduction per step); the bias sum is kept
    elementwise per [BLOCK_N, BLOCK_I] position and reduced over n once, after the loop."""
    offs_i = ti.to(tl.int64) * BLOCK_I + tl.arange(0, BLOCK_I)
    offs_j = tj.to(tl.int64) * BLOCK_J + tl.arange(0, BLOCK_J)
    mask_i = offs_i < I
    mask_j = offs_j < J
    acc = tl.zeros([BLOCK_I, BLOCK_J], dtype=ACC)
    acc_a = tl.zeros([BLOCK_N, BLOCK_I], dtype=ACC)
    for n0 in range(0, N, BLOCK_N):
        offs_n = (n0 + tl.arange(0, BLOCK_N)).to(tl.int64)
        mask_n = offs_n < N
        a = tl.load(a_ptr + offs_n[:, None] * I + offs_i[None, :], mask=mask_n[:, None] & mask_i[None, :],
                    other=0.0).to(ACC)
        b = tl.load(b_ptr + offs_n[:, None] * J + offs_j[None, :], mask=mask_n[:, None] & mask_j[None, :],
                    other=0.0).to(ACC)
        if APPLY:
            b = _act(b, ACT)  # (masked rows: a is 0 there)
        acc = tl.dot(tl.trans(a), b, acc, input_precision="ieee", out_dtype=ACC)
        acc_a += a
    tl.store(out_ptr + offs_i[:, None] * J + offs_j[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=mask_i[:, None] & mask_j[None, :])
    if tj == 0:
        tl.store(bias_ptr + offs_i, tl.sum(acc_a, axis=0).to(bias_ptr.dtype.element_ty), mask=mask_i)


@triton.jit
def _se_param_grads_kernel(dz_ptr, du_ptr, pooled_ptr, u_ptr, gw2_ptr, gb2_ptr, gw1_ptr, gb1_ptr, N, C, R,
                           jobs_w2, tiles_j2, tiles_j1, HAS_FC1: tl.constexpr, ACT: tl.constexpr,
                           ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_I: tl.constexpr,
                           BLOCK_J: tl.constexpr):
    """The weight gradients from the backward kernel's per-sample partials dz (N, C) and du (N, R),
    reduced over the batch in one launch (it replaced two GEMMs, the activation, two sums and, for
    low-precision weights, two casts: five to seven launches per backward):
        grad_w2 = dzᵀ act(u)  (eSE: dzᵀ p)   grad_b2 = Σ_n dz      programs [0, jobs_w2), tiles_j2 per row
        grad_w1 = duᵀ p                      grad_b1 = Σ_n du      the programs after, tiles_j1 per row
    Bytes: each output tile reads its BLOCK_I columns of a and BLOCK_J columns of b over the N samples
    (fp32 partials of O(N·(C + R)) in all -- 1 MB at N = 128, C = 2048 -- so the re-reads across tiles
    come from L2) and writes its part of the weight gradients once: R·C·(|w1| + |w2|) + (R + C)·4 bytes
    in all. Noise next to the backward kernel's 4·M·|x|; judged by launches (one) and host time."""
    pid = tl.program_id(0)
    if pid < jobs_w2:
        if HAS_FC1:
            _outer_sum_tile(dz_ptr, u_ptr, gw2_ptr, gb2_ptr, N, C, R, pid // tiles_j2, pid % tiles_j2, True, ACT,
                            ACC, BLOCK_N, BLOCK_I, BLOCK_J)
        else:
            _outer_sum_tile(dz_ptr, pooled_ptr, gw2_ptr, gb2_ptr, N, C, C, pid // tiles_j2, pid % tiles_j2, False,
                            ACT, ACC, BLOCK_N, BLOCK_I, BLOCK_J)
    elif HAS_FC1:
        q = pid - jobs_w2
        _outer_sum_tile(du_ptr, pooled_ptr, gw1_ptr, gb1_ptr, N, R, C, q // tiles_j1, q % tiles_j1, False, ACT, ACC,
                        BLOCK_N, BLOCK_I, BLOCK_J)


# ----------------------------------------------------------------------------------------------
# Layout helpers and the launch heuristic
# ----------------------------------------------------------------------------------------------


def launch_config(n: int, c: int, k: int, hw: int, stride_c: int, device: torch.device, *, x_bytes: int = 0,
                  w_bytes: int = 0, occupancy: int = 1, resident: bool = False) -> dict:
    """The one launch heuristic. ``x_bytes``: one sample of x (C·HW·|x|); ``w_bytes``: the FC weights
    (R·C·(|w1| + |w2|), eSE C·C·|w2|); without them no samples are grouped.

    Tiles: the contiguous axis (HW for NCHW, C when stride_c == 1, i.e. channels_last) gets the long
    side of a ≤ 4096-element [BLOCK_C, BLOCK_HW] x tile (powers of two; channels_last BLOCK_C ≤ 256, or
    ≤ 64 on a GPU where 256-channel tiles leave too few (sample group, channel tile) pieces to fill it:
    SE-ResNet-50's 56×56 stage, C = 256, is one tile per sample, so N = 64 could only ever run 64
    programs; 64 bf16 channels are still a whole 128-byte line per row). Warps: 8 for a full
    4096-element tile, 4 below.
    Groups and schedule: ``_split.group_plan`` — GROUP samples per program so that the FC weights, read
    from L2 once per program rather than once per sample, stay a small fraction of the x traffic, as far
    as the grid still fills the GPU; schedule (b) (MULTI, P programs per group, GPU only) when the groups
    are few and a sample has ≥ 2 channel tiles, its grid within half of what the GPU holds at once.
    FC tiles [GROUP, FC_C, FC_R] ≤ 4096 elements (FC_R ≤ 32 hidden units; k = R, or C for eSE).
    ``ATTN_KERNELS_SE_SCHEDULE=single`` forces schedule (a) (``multi`` plans as auto);
    ``ATTN_KERNELS_SE_TUNE`` forces any of GROUP, P, BLOCK_C, BLOCK_HW, num_warps, maxnreg (``_split.tune``).
    ``occupancy``: programs of the compiled kernel one SM holds (schedule (b)'s budget is SMs·occupancy
    // 2); the launchers plan with 1, then again with the compiled kernel's (``_split.fit_occupancy``).
    ``resident``: the caller's kernel can run ``_resident_plan``'s register-resident tiles, taken
    when ``ATTN_KERNELS_SE_TUNE`` has RESIDENT=1 and the shape allows them (opt-in until a GPU has timed it).
    Memoised on the shape (SE layers are small and many: this runs on every call).
    """
    return dict(_launch_config(n, c, k, hw, stride_c == 1, _schedule_mode(), _device_sms(device), x_bytes,
                               w_bytes, _tune_text(), occupancy, resident))


_CL_BLOCK_C = (256, 64)  # channels_last BLOCK_C: the default, and the one for grids that 256 cannot fill


def _tiles(c: int, hw: int, c_contiguous: bool, block_c_max: int) -> Tuple[int, int]:
    if c_contiguous and c > 1 and hw > 1:
        block_c = min(_next_pow2(c), block_c_max)
        block_hw = max(1, min(_next_pow2(hw), _MAX_BLOCK_HW, _TILE // block_c))
    else:
        block_hw = min(_next_pow2(hw), _MAX_BLOCK_HW)
        block_c = max(1, min(_next_pow2(c), _TILE // block_hw))
    return block_c, block_hw


@functools.lru_cache(maxsize=4096)
def _launch_config(n: int, c: int, k: int, hw: int, c_contiguous: bool, mode: str, sms: int, x_bytes: int,
                   w_bytes: int, tune_text: str = "", occupancy: int = 1, resident: bool = False) -> dict:
    """launch_config for a device with ``sms`` SMs (0: no multi-program schedule: CPU / interpreter);
    ``tune_text``: ATTN_KERNELS_SE_TUNE's value (part of the memo's key, and what it forces)."""
    forced = _parse_tune(tune_text) if tune_text else {}
    if resident and forced.get("RESIDENT"):
        cfg = _resident_plan(c, k, hw, mode, sms, occupancy, forced)
        if cfg is not None:
            return cfg

    def plan(block_c, block_hw):
        return dict(BLOCK_C=block_c, BLOCK_HW=block_hw,
                    **_group_plan(n, c, block_c, k, sms, mode, x_bytes, w_bytes, _TILE, occupancy, forced))

    def programs(cfg):
        return _cdiv(n, cfg["GROUP"]) * cfg["P"]

    if "BLOCK_C" in forced or "BLOCK_HW" in forced:
        block_c, block_hw = _tiles(c, hw, c_contiguous, _CL_BLOCK_C[0])
        cfg = plan(forced.get("BLOCK_C", block_c), forced.get("BLOCK_HW", block_hw))
    else:
        cfg = plan(*_tiles(c, hw, c_contiguous, _CL_BLOCK_C[0]))
        if sms and c_contiguous and programs(cfg) < _FILL * sms:
            narrow = plan(*_tiles(c, hw, c_contiguous, _CL_BLOCK_C[1]))
            if programs(narrow) > programs(cfg):
                cfg = narrow
    warps = 8 if cfg["BLOCK_C"] * cfg["BLOCK_HW"] >= _TILE else 4
    cfg["num_warps"] = forced.get("num_warps", warps)
    if "maxnreg" in forced:  # Triton's compile option, passed through the launch like num_warps
        cfg["maxnreg"] = forced["maxnreg"]
    return cfg


_RESIDENT_TILE = 8192  # elements of a RESIDENT tile: 32 per thread at 8 warps (x held in registers)
RESIDENT_MAX_P = 32  # programs per sample a RESIDENT plan may take (each sums all P published parts: P² rows)
# FC tiles of a RESIDENT plan: 1024 elements, not _TILE -- the registers hold x. With 4096-element FC tiles
# the sm_90 bf16 build at 2048×7² (BLOCK 128×64) spilled 124 bytes per thread under maxnreg 128; see
# _resident_plan for the builds now.
_RESIDENT_FC_TILE = 1024


def _resident_plan(c: int, k: int, hw: int, mode: str, sms: int, occupancy: int, forced: dict):
    """The register-resident plan (``ATTN_KERNELS_SE_TUNE=RESIDENT=1``; forward and backward), or None where
    the shape does not allow it: one program per [BLOCK_C, BLOCK_HW] tile of a sample, BLOCK_HW =
    next_pow2(HW) (the whole map), BLOCK_C = _RESIDENT_TILE // BLOCK_HW channels (or the forced BLOCK_C),
    P = C / BLOCK_C programs per sample meeting as in schedule (b), GROUP = 1. Every input is read once
    (the streaming schedules read x, or grad_y, twice and hope the second read hits L2: at N = 128 × 1024
    × 14² bf16, 51 MB are in flight between the two reads, about an H100's whole L2). The cost: P²
    published rows of R floats per sample (P ≤ RESIDENT_MAX_P; at 1024×14², R = 64, P = 32: 256 KB of L2
    reads per 400 KB sample) and no loads in flight during the meeting beyond the other programs on the SM.
    E.g. 1024×14² (BLOCK_HW 256): 32 channels, P = 32; 2048×7² (64): 128 channels, P = 16; 512×28²
    (1024): 8 channels, P = 64 -- too many, None unless a BLOCK_C is forced. Off the GPU (``sms`` = 0) a
    P > 1 plan has MULTI = 0 and the launcher emulates the meeting (``_split.launch``: two launches).
    sm_90 builds (ptxas, .ci/compile_triton.py's stand-in): bf16 forward at 1024×14² and 2048×7²
    channels_last 107 - 111 registers under the 128 cap, no spill; 2048×7² NCHW 128 with 56 - 84 bytes
    spilled; backward (not capped) 117 at 1024×14² channels_last, 180 at 2048×7²; fp32 eSE se_residual
    spills (forward 272 - 288 bytes, backward 44). Opt-in: compiled, run under the interpreter, not yet
    timed on a GPU."""
    block_hw = _next_pow2(hw)
    if block_hw > _RESIDENT_TILE:
        return None
    block_c = forced.get("BLOCK_C") or max(1, min(_next_pow2(c), _RESIDENT_TILE // block_hw))
    if c == 0 or block_c * block_hw > 2 * _RESIDENT_TILE:  # a forced BLOCK_C: at most twice the tile (no spill
        return None  # at 64×256 bf16; 64×4096 at 56×56 spilled 6 KB per thread in the sm_90 build)
    p = _cdiv(c, block_c)
    if p > RESIDENT_MAX_P or (p > 1 and sms and (mode == "single" or p > sms * max(1, occupancy) // 2)):
        return None
    fc_r = max(1, min(_next_pow2(k), 32))
    fc_c = max(1, min(block_c, _RESIDENT_FC_TILE // fc_r))
    cfg = dict(BLOCK_C=block_c, BLOCK_HW=block_hw, GROUP=1, FC_C=fc_c, FC_R=fc_r,
               MULTI=int(p > 1 and sms > 0), P=p, chan_per_prog=block_c, RESIDENT=1,
               num_warps=forced.get("num_warps", 8 if block_c * block_hw >= _TILE else 4))
    if "maxnreg" in forced:
        cfg["maxnreg"] = forced["maxnreg"]
    return cfg


def _pipeline(cfg: dict, x: torch.Tensor, hw: int, strides, loads: int) -> dict:
    """NUM_STAGES, PREFETCH and ROW_ALIGN of the streaming loops (_tile_at) for tensors with the (N, C, HW)
    ``strides`` (x first, then the others a kernel streams: shortcut, y / grad_y, grad_x, ...).

    Pipelined (cp.async) and ROW_ALIGN as ``_layout.stream_alignment`` says (channels_last: 16-byte row
    pitch; NCHW: the alignment A of HW and every row / sample stride, told to Triton by the kernels'
    ``_aligned`` rewrites; bf16 at 14×14: A = 4, pipelined; at 7×7: A = 1, 2 bytes, not). Where they are
    not, the loops prefetch one tile by hand into registers (PREFETCH). ``ATTN_KERNELS_SE_TUNE`` may force NUM_STAGES
    (where pipelined) or PREFETCH."""
    forced = _split_tune()
    elem = x.element_size()
    aligned, row_align = _stream_alignment(elem, hw, strides, cfg["BLOCK_C"])
    if forced.get("PREFETCH", 0 if aligned else 1):
        return dict(NUM_STAGES=1, PREFETCH=1, ROW_ALIGN=row_align)
    stages = forced.get("NUM_STAGES", _num_stages(cfg, elem, loads)) if aligned else 1
    return dict(NUM_STAGES=stages, PREFETCH=0, ROW_ALIGN=row_align)


def _num_stages(cfg: dict, elem_size: int, loads: int) -> int:
    """Software-pipeline depth of the streaming loops (tl.range num_stages): each stage holds ``loads``
    [BLOCK_C, BLOCK_HW] tiles of ``elem_size`` bytes in shared memory; at most _STAGE_SMEM of them (under
    the 163 KB an sm_80 block may have), 2 … 4 stages, 1 (not pipelined) when even two do not fit (fp64
    with more than one streamed tensor). Not tuned: chosen from the shared-memory budget, no GPU has timed it."""
    per_stage = cfg["BLOCK_C"] * cfg["BLOCK_HW"] * elem_size * loads
    stages = min(4, _STAGE_SMEM // max(1, per_stage))
    return stages if stages >= 2 else 1


_FWD_MAXNREG = 128  # registers per thread of the 8-warp forward kernel: two programs per SM (_fwd_register_cap)


def _fwd_register_cap(cfg: dict, x: torch.Tensor) -> dict:
    """Triton's ``maxnreg`` for the forward kernel: 128 at 8 warps (not fp64), so that two programs fit an
    SM's 64K registers and schedule (b) may ask for twice the programs (``_split.fit_occupancy``). Left
    alone, ptxas gives the fp32 / fp16 / eSE forward 163 - 189 registers (one program per SM); capped at
    128, 22 of the 23 non-fp64 8-warp sm_90 forward builds of .ci/compile_triton.py spill nothing (the
    grouped 64x2048x7x7 schedule-(b) build 32 bytes per thread; fp64 would spill 56 - 104, so it is not
    capped; the backward, 180 - 250 registers, would spill 8 - 250 bytes and is not capped either).
    Reasoned from the builds, not timed: ``ATTN_KERNELS_SE_TUNE=maxnreg=255`` lifts it for an A/B."""
    if "maxnreg" in cfg or cfg["num_warps"] != 8 or x.dtype == torch.float64 or torch.version.hip is not None:
        return {}  # (Triton's AMD backend has no maxnreg option)
    return dict(maxnreg=_FWD_MAXNREG)


def _sizes(x: torch.Tensor, w1, w2) -> dict:
    """The byte counts launch_config groups samples by: one sample of x, and the FC weights."""
    c = x.shape[1]
    x_bytes = c * int(torch.Size(x.shape[2:]).numel()) * x.element_size()
    w_bytes = w2.numel() * w2.element_size() + (w1.numel() * w1.element_size() if w1 is not None else 0)
    return dict(x_bytes=x_bytes, w_bytes=w_bytes)


def _acc(x: torch.Tensor):
    return (torch.float64, tl.float64) if x.dtype == torch.float64 else (torch.float32, tl.float32)


def _check_x(x: torch.Tensor) -> None:
    if x.dtype not in _X_DTYPES:
        raise TypeError(f"the triton SE kernel supports x of dtype float16/bfloat16/float32/float64, got {x.dtype}")


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------
_PLANS = {}  # (id(kernel), call signature, ...) -> (kernel, what _fitted returned for them)


def _fitted(kernel, like: torch.Tensor, make_plan, prepared, split: int, signature: tuple = None):
    """(config, sample groups, meta-parameters) of a launch: ``plan(occupancy=1)``, then fitted to what
    the compiled kernel lets an SM hold (``_split.fit_occupancy``; not for the emulated split, a test
    hook that plans its own partition). ``make_plan()``: functools.partial of ``launch_config`` with the
    call's shape; ``prepared(cfg)`` → (groups, args, meta) as for the launch.
    ``signature``: everything the plan, ``prepared`` and the fitting depend on (the planner's inputs --
    shape, device, the dtypes that size x and the weights -- flags, the dtypes of every tensor argument,
    strides). With it the answer is memoised on (kernel, signature, schedule mode, tune text, SM count,
    ``launch_config`` and ``_fit_occupancy`` -- replacing either re-plans; anything else a test replaces
    needs ``clear_plans()``), and a hit builds nothing (no partial, no byte counts): SE layers are small
    and many, and planning took ~15 us of host time per launch on the 2-core VM (bench/host_overhead.py)."""
    memo = None
    if not split and signature is not None:
        # id(kernel), not the kernel: a JITFunction's hash recomputes its cache key; the entry holds the kernel
        memo = (id(kernel), signature, _schedule_mode(), _tune_text(), _device_sms(like.device), launch_config,
                _fit_occupancy)
        hit = _PLANS.get(memo)
        if hit is not None and hit[0] is kernel:
            return hit[1]
    out = _fitted_uncached(kernel, like, make_plan(), prepared, split)
    if memo is not None:
        if len(_PLANS) >= 4096:  # a bound, like the planners' lru caches
            _PLANS.clear()
        _PLANS[memo] = (kernel, out)
    return out


def clear_plans() -> None:
    """Forget the memoised launch plans and replays (after changing what they were planned from in-process)."""
    _PLANS.clear()
    _REPLAYS.clear()
    _split_mod._FITTED.clear()


def _fitted_uncached(kernel, like: torch.Tensor, plan, prepared, split: int):
    first = plan()
    ready = prepared(first)  # the launch of the first plan: fit_occupancy keys on it, most calls launch it
    cfg = first
    if not split:
        key = (plan.args, tuple(sorted(plan.keywords.items())))  # what launch_config planned from
        cfg = _fit_occupancy(kernel, like, first, lambda occ: plan(occupancy=occ),
                             lambda c: ready if c is first else prepared(c), key)
    groups, _, meta = ready if cfg == first else prepared(cfg)
    return cfg, groups, meta


def _dtype_of(t):
    return None if t is None else t.dtype


def _hidden_parts(groups: int, p: int, group: int, r: int, acc: torch.dtype, device) -> torch.Tensor:
    """(groups·P·GROUP, R) scratch for the programs' parts of W1 p (forward) / W2ᵀ dz (backward); P = the
    emulated split's (test hook) or the schedule's."""
    return _alloc.empty((groups * p * group, max(r, 1)), dtype=acc, device=device)


# Replays. A launcher's first call of a signature takes the full path (checks, plan, argument packing,
# Triton's specialisation) and keeps what it launched (``_layout.Replay``); a later call with the same
# signature allocates its outputs and launches that again with its own tensors: the launchers' host time
# for a fused SE forward+backward 110 -> 63 us, the whole call 211 -> 152 us (2-core VM, the Triton stand-in
# of bench/host_overhead.py, one process taking turns). The signature is what
# the plan and the kernel's specialisation depend on: every tensor's shape, strides and dtype, the device,
# the flags, the tuning knobs and the planners (tests replace them); tensor alignment is keyed at the
# launch. A launch is kept only when the full path passed the caller's tensors themselves (no copy of a
# non-contiguous weight or a non-flat x, no separate output buffer) and launched once (no emulated split);
# replayed only while it launches the module's kernel itself (tests wrap the kernels).
_REPLAYS = {}  # replay key -> what the full path launched for it


def _replay_key(*signature):
    """``_layout.replay_key`` with what ``_fitted``'s memo also keys on -- the schedule and tuning knobs and
    the planners (tests replace them) -- and the meeting's spin bound (a scalar argument; tests lower it)."""
    return _replay_key_of(*signature, _schedule_mode(), _tune_text(), launch_config, _fit_occupancy,
                          _split_mod.MAX_SPIN)


def _per_sample(n: int, c: int, r: int, acc: torch.dtype, device):
    """Three per-sample vectors, (N, C), (N, R), (N, C): the forward's (pooled, u, z), saved for the
    backward; the backward's (dz, du, dp), whose dz and du the weight-gradient kernel reduces over N."""
    return (_alloc.empty((n, c), dtype=acc, device=device), _alloc.empty((n, r), dtype=acc, device=device),
            _alloc.empty((n, c), dtype=acc, device=device))


def _fwd_tensors(x, shortcut, y, w1, b1, w2, b2, pooled, u, z, hpart, sync) -> tuple:
    """``_se_fwd_kernel``'s tensor arguments, in order (w2 stands in for what is absent: never read)."""
    return (x, x if shortcut is None else shortcut, y, w2 if w1 is None else w1, w2 if b1 is None else b1, w2,
            w2 if b2 is None else b2, pooled, u, z, hpart, sync)


def se_forward(x, w1, b1, w2, b2, act: str, gate: str, shortcut=None, out_act: str = "identity", *,
               _split: int = 0):
    """(y, pooled, u, z): y like x; pooled (N, C), u (N, R) (R = 0 for eSE), z (N, C) in fp32 (fp64 for
    fp64 x). ``shortcut`` given → se_residual's out_act(x·s + shortcut). ``_split``: test hook, see
    ``_split.launch``."""
    _check_x(x)
    key = None if _split else _replay_key("fwd", x.shape, x.stride(), x.dtype, x.device, _tmeta(w1),
                                          _tmeta(b1), _tmeta(w2), _tmeta(b2), _tmeta(shortcut), act, gate, out_act,
                                          _device_sms(x.device))
    hit = _REPLAYS.get(key) if key is not None else None
    n, c = x.shape[:2]
    r = w1.shape[0] if w1 is not None else 0
    acc, acc_tl = _acc(x)
    if hit is not None and hit[0].kernel is _se_fwd_kernel:  # the recorded launch, on this call's tensors
        launch, hidden_rows, multi, tickets, groups = hit
        y = _alloc.empty_like(x)
        pooled, u, z = _per_sample(n, c, r, acc, x.device)
        hpart = _alloc.empty((hidden_rows, max(r, 1)), dtype=acc, device=x.device)
        sync = _split_mod.sync_buffer(multi, groups, x.device, tickets)  # as _split.launch: per sample group
        with _device_of(x):
            _replay(launch, _fwd_tensors(x, shortcut, y, w1, b1, w2, b2, pooled, u, z, hpart, sync))
        _split_mod.check_error(sync, multi, groups, "SE")
        return y, pooled, u, z
    hw = int(torch.Size(x.shape[2:]).numel())
    y, y_buf, sy = _out_like(x)
    pooled, u, z = _per_sample(n, c, r, acc, x.device)
    if n == 0:
        return y, pooled, u, z
    xk, sx = _as_flat(x)
    if shortcut is not None:
        sck, ss = _as_flat(shortcut)
    else:
        sck, ss = xk, sx
    plan = lambda: functools.partial(launch_config, n, c, r if r else c, hw, sx[1], x.device,  # noqa: E731
                                     resident=True, **_sizes(x, w1, w2))
    w2c = w2.contiguous()
    w1c, b1c, b2c = (t.contiguous() if t is not None else None for t in (w1, b1, b2))
    hpart = [pooled]  # the scratch, sized by the config below; until then a stand-in of its dtype
    args = lambda sync, p, per, spin: (  # noqa: E731
        _fwd_tensors(xk, None if shortcut is None else sck, y_buf, w1c, b1c, w2c, b2c, pooled, u, z, hpart[0], sync)
        + (n, c, max(r, 1), hw, p, per, spin, *sx, *ss, *sy))

    def prepared(cfg):
        return _cdiv(n, cfg["GROUP"]), args, dict(
            HAS_FC1=int(w1 is not None), HAS_B1=int(b1 is not None), HAS_B2=int(b2 is not None), ACT=_ACTS[act],
            GATE=_GATES[gate], RESIDUAL=int(shortcut is not None), OUT_ACT=_ACTS[out_act], ACC=acc_tl,
            RESIDENT=cfg.get("RESIDENT", 0), **_pipeline(cfg, x, hw, (sx, ss, sy), 1 + int(shortcut is not None)),
            **_fwd_register_cap(cfg, x))
    signature = (n, c, r, hw, x.device, act, gate, out_act, _dtype_of(shortcut), sx, ss, sy, x.dtype, _dtype_of(w1),
                 _dtype_of(b1), w2.dtype, _dtype_of(b2))
    cfg, groups, meta = _fitted(_se_fwd_kernel, xk, plan, prepared, _split, signature)
    _split = _resident_split(cfg, _split)
    hpart[0] = _hidden_parts(groups, _split or cfg["P"], cfg["GROUP"], r, acc, x.device)
    launched = _launch(_se_fwd_kernel, xk, groups, c, cfg, args, meta, "SE", _split, (y_buf, u, z))
    if y_buf is not y:
        y.copy_(y_buf)
    elif key is not None and not _split and xk is x and sck is (x if shortcut is None else shortcut) and all(
            a is b for a, b in ((w1c, w1), (b1c, b1), (w2c, w2), (b2c, b2))):
        _remember(_REPLAYS, key, (_Replay(launched, 12), hpart[0].shape[0], cfg["MULTI"],
                                  int(bool(cfg.get("RESIDENT"))), groups))
    return y, pooled, u, z


def _resident_split(cfg: dict, split: int) -> int:
    """The launch's ``_split``: a RESIDENT plan with P > 1 off the GPU (MULTI = 0), or under a test's split,
    runs as the emulated meeting with one tile per program (P = its tiles); anything else as given."""
    if cfg.get("RESIDENT") and (split or not cfg["MULTI"]) and cfg["P"] > 1:
        return cfg["P"]
    return split


def _as_dtype(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t.to(dtype)`` without the call when it is one already (per-call host time: these run every step)."""
    return t if t.dtype == dtype else t.to(dtype)


_PG_BLOCK = dict(BLOCK_N=16, BLOCK_I=32, BLOCK_J=32, num_warps=4)  # tl.dot needs every side >= 16


def _weight_grad(w: torch.Tensor, empty_like=_alloc.empty_like, empty=_alloc.empty) -> torch.Tensor:
    """A weight's gradient buffer, which the kernel writes as the row-major (out, in) matrix: in the weight's
    own strides where it is contiguous (a 1×1 conv weight in a channels_last model: they differ from the
    default ones only on its size-1 dims, so the memory is the same; the gradient then has the strides eager
    autograd gives it), else contiguous."""
    if w.is_contiguous():
        return empty_like(w)
    return empty(tuple(w.shape), dtype=w.dtype, device=w.device)


def _param_grad_outputs(w1, w2, acc: torch.dtype, bias_dtypes):
    """(gw1, gb1, gw2, gb2) as ``_param_grads`` returns them, unwritten."""
    c, device = w2.shape[0], w2.device
    gw2 = _weight_grad(w2)
    gb2 = _alloc.empty((c,), dtype=bias_dtypes[1] or acc, device=device)
    if w1 is None:
        return w2.new_empty((0,)), w2.new_empty((0,), dtype=acc), gw2, gb2  # distinct: outputs must not alias
    return _weight_grad(w1), _alloc.empty((w1.shape[0],), dtype=bias_dtypes[0] or acc, device=device), gw2, gb2


def _param_grad_tensors(dz, du, pooled, u, gw1, gb1, gw2, gb2, has_fc1: bool) -> tuple:
    """``_se_param_grads_kernel``'s tensor arguments, in order (eSE: gw2 / gb2 stand in for W1's)."""
    return (dz, du, pooled, u, gw2, gb2, gw1 if has_fc1 else gw2, gb1 if has_fc1 else gb2)


def _param_grads(w1, w2, act, pooled, u, dz, du, bias_dtypes=(None, None)):
    """Batch reductions of the per-sample partials (``_se_param_grads_kernel``: one launch, deterministic):
    weight grads in their weight's dtype, bias grads in ``bias_dtypes`` (b1's, b2's) where given -- the
    kernel rounds on its store, as a cast would -- else in the accumulation dtype (the backward op does
    not see the biases: its autograd formula casts). Returns them and the launch (None: none made)."""
    n, c = dz.shape
    r = du.shape[1] if w1 is not None else 0
    acc = dz.dtype
    grads = gw1, gb1, gw2, gb2 = _param_grad_outputs(w1, w2, acc, bias_dtypes)
    if c == 0:
        return grads, None
    bi, bj = _PG_BLOCK["BLOCK_I"], _PG_BLOCK["BLOCK_J"]
    tiles_j2, tiles_j1 = _cdiv(r if w1 is not None else c, bj), _cdiv(c, bj)
    jobs_w2 = _cdiv(c, bi) * tiles_j2
    grid = jobs_w2 + (_cdiv(r, bi) * tiles_j1 if w1 is not None else 0)
    pooled, u = pooled.contiguous(), u.contiguous()  # (N, C), (N, R) as the forward returned them: no-ops
    launched = (_se_param_grads_kernel, grid,
                _param_grad_tensors(dz, du, pooled, u, gw1, gb1, gw2, gb2, w1 is not None)
                + (n, c, max(r, 1), jobs_w2, tiles_j2, tiles_j1),
                dict(HAS_FC1=int(w1 is not None), ACT=_ACTS[act],
                     ACC=tl.float64 if acc == torch.float64 else tl.float32, **_PG_BLOCK))
    with _device_of(dz):
        _run_kernel(*launched)
    return grads, launched


def _bwd_tensors(grad_y, x, shortcut, gx, gsc, w1, w2, u, z, dz, du, dp, hpart, sync) -> tuple:
    """``_se_bwd_kernel``'s tensor arguments, in order (stand-ins for what is absent: never read or written)."""
    return (grad_y, x, x if shortcut is None else shortcut, gx, gx if shortcut is None else gsc,
            w2 if w1 is None else w1, w2, u, z, dz, du, dp, hpart, sync)


def se_backward(grad_y, x, w1, w2, pooled, u, z, act: str, gate: str, shortcut=None, out_act: str = "identity",
                *, bias_dtypes=(None, None), _split: int = 0):
    """(grad_x, grad_shortcut, grad_w1, grad_b1, grad_w2, grad_b2). Without a shortcut grad_shortcut is an
    empty tensor; for eSE grad_w1 / grad_b1 are empty. Weight grads in their weight's dtype, bias grads
    in ``bias_dtypes`` (b1's, b2's; the eager path passes them) or else the accumulation dtype (fp32; fp64
    for fp64 x). ``_split``: test hook, see ``_split.launch``."""
    key = None if _split else _replay_key(
        "bwd", grad_y.shape, grad_y.stride(), grad_y.dtype, x.shape, x.stride(), x.dtype, x.device, _tmeta(w1),
        _tmeta(w2), _tmeta(pooled), _tmeta(u), _tmeta(z), _tmeta(shortcut), act, gate, out_act, tuple(bias_dtypes),
        _device_sms(x.device))
    hit = _REPLAYS.get(key) if key is not None else None
    n, c = x.shape[:2]
    r = w1.shape[0] if w1 is not None else 0
    acc, acc_tl = _acc(x)
    if hit is not None and hit[0].kernel is _se_bwd_kernel and hit[1].kernel is _se_param_grads_kernel:
        launch, grads_launch, hidden_rows, multi, tickets, groups = hit  # replayed on this call's tensors
        gx = _alloc.empty_like(x)
        gsc = _alloc.empty_like(x) if shortcut is not None else x.new_empty((0,))
        dz, du, dp = _per_sample(n, c, r, acc, x.device)
        hpart = _alloc.empty((hidden_rows, max(r, 1)), dtype=acc, device=x.device)
        sync = _split_mod.sync_buffer(multi, groups, x.device, tickets)
        grads = gw1, gb1, gw2, gb2 = _param_grad_outputs(w1, w2, acc, bias_dtypes)
        with _device_of(x):
            _replay(launch, _bwd_tensors(grad_y, x, shortcut, gx, gsc, w1, w2, u, z, dz, du, dp, hpart, sync))
            _split_mod.check_error(sync, multi, groups, "SE")
            _replay(grads_launch, _param_grad_tensors(dz, du, pooled, u, gw1, gb1, gw2, gb2, w1 is not None))
        return (gx, gsc) + grads
    hw = int(torch.Size(x.shape[2:]).numel())
    gx, gx_buf, sd = _out_like(x)
    if shortcut is not None:
        gsc, gsc_buf, so = _out_like(x)
    else:
        gsc = gsc_buf = x.new_empty((0,))
        so = sd
    dz, du, dp = _per_sample(n, c, r, acc, x.device)
    replayable = False
    if n > 0:
        xk, sx = _as_flat(x)
        gyk, sg = _as_flat(grad_y)
        if shortcut is not None:
            sck, ss = _as_flat(shortcut)
        else:
            sck, ss = xk, sx
        plan = lambda: functools.partial(launch_config, n, c, r if r else c, hw, sx[1], x.device,  # noqa: E731
                                         resident=True, **_sizes(x, w1, w2))
        w2c = w2.contiguous()
        w1c = w1.contiguous() if w1 is not None else None
        uc, zc = u.contiguous(), z.contiguous()  # (N, R), (N, C) as the forward returned them: no-ops
        hpart = [dp]  # the scratch, sized by the config below; until then a stand-in of its dtype
        args = lambda sync, p, per, spin: (  # noqa: E731
            _bwd_tensors(gyk, xk, None if shortcut is None else sck, gx_buf, gsc_buf, w1c, w2c, uc, zc, dz, du, dp,
                         hpart[0], sync)
            + (n, c, max(r, 1), hw, p, per, spin, *sg, *sx, *ss, *sd, *so))

        def prepared(cfg):
            return _cdiv(n, cfg["GROUP"]), args, dict(
                HAS_FC1=int(w1 is not None), ACT=_ACTS[act], GATE=_GATES[gate], RESIDUAL=int(shortcut is not None),
                OUT_ACT=_ACTS[out_act], ACC=acc_tl, RESIDENT=cfg.get("RESIDENT", 0),
                **_pipeline(cfg, x, hw, (sx, sg, ss, sd, so), 2 + int(shortcut is not None)))
        signature = (n, c, r, hw, x.device, act, gate, out_act, _dtype_of(shortcut), sx, sg, ss, sd, so, x.dtype,
                     grad_y.dtype, _dtype_of(w1), w2.dtype, uc.dtype, zc.dtype)
        cfg, groups, meta = _fitted(_se_bwd_kernel, gyk, plan, prepared, _split, signature)
        _split = _resident_split(cfg, _split)
        hpart[0] = _hidden_parts(groups, _split or cfg["P"], cfg["GROUP"], r, acc, x.device)
        launched = _launch(_se_bwd_kernel, gyk, groups, c, cfg, args, meta, "SE", _split, (gx_buf, gsc_buf, du))
        if gx_buf is not gx:
            gx.copy_(gx_buf)
        if shortcut is not None and gsc_buf is not gsc:
            gsc.copy_(gsc_buf)
        # replayable: the full path launched once on the caller's tensors themselves (see _REPLAYS)
        replayable = (key is not None and not _split and gx_buf is gx and gsc_buf is gsc and gyk is grad_y
                      and xk is x and sck is (x if shortcut is None else shortcut) and w2c is w2 and w1c is w1
                      and uc is u and zc is z)
    grads, grads_launch = _param_grads(w1, w2, act, pooled, u, dz, du, bias_dtypes)
    if replayable and grads_launch is not None and pooled.is_contiguous() and u.is_contiguous():
        _remember(_REPLAYS, key, (_Replay(launched, 14), _Replay(grads_launch, 8), hpart[0].shape[0], cfg["MULTI"],
                                  int(bool(cfg.get("RESIDENT"))), groups))
    return (gx, gsc) + grads


# ----------------------------------------------------------------------------------------------
# torch.library registration
#
# custom_op (not triton_op + wrap_triton): it passes opcheck and torch.compile(fullgraph=True) on CPU
# tensors under the interpreter (triton_op does not). Its per-call host cost (~70 us of Python dispatch
# per forward+backward on the 2-core CPU VM) is why eager calls take ``_eager``'s autograd.Function over
# the same launchers and formulas instead; compile, export, dispatch modes and transforms see the op.
# Optional parameters go in as Optional[Tensor]; missing gradients come back as empty tensors
# (custom ops cannot return None) and are mapped to None in the autograd formula.
#
# Autocast: deliberately NOT registered with a cast — the ops fall through autocast and run in their
# input dtypes. The kernel already accepts x in fp16/bf16 with fp32 (or any float) weights and
# accumulates in fp32, so casting the weights down (what a registered lower-precision autocast would
# do) would only lose precision; the output is in x's dtype, as the eager reference under autocast.
# ----------------------------------------------------------------------------------------------
_T4 = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
_T5 = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
_T6 = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _fake_fwd(x, w1):
    n, c = x.shape[:2]
    acc = _acc(x)[0]
    r = w1.shape[0] if w1 is not None else 0
    return (torch.empty_like(x), x.new_empty((n, c), dtype=acc), x.new_empty((n, r), dtype=acc),
            x.new_empty((n, c), dtype=acc))


def _fake_param_grads(x, w1, w2):
    """As _param_grads returns them: in the weights' shapes and dtypes (strides: ``_weight_grad``), bias
    grads in the accumulation dtype."""
    acc = _acc(x)[0]
    gb2 = w2.new_empty((w2.shape[0],), dtype=acc)
    if w1 is not None:
        return _fake_weight_grad(w1), w1.new_empty((w1.shape[0],), dtype=acc), _fake_weight_grad(w2), gb2
    return w2.new_empty((0,)), w2.new_empty((0,), dtype=acc), _fake_weight_grad(w2), gb2


def _fake_weight_grad(w):
    return _weight_grad(w, torch.empty_like, lambda shape, dtype, device: w.new_empty(shape))


def _se_fwd_impl(x: torch.Tensor, w1: Optional[torch.Tensor], b1: Optional[torch.Tensor], w2: torch.Tensor,
                 b2: Optional[torch.Tensor], act: str, gate: str) -> _T4:
    return tuple(se_forward(x, w1, b1, w2, b2, act, gate))


_se_fwd_op = torch.library.custom_op("attn_kernels::se_fwd", mutates_args=())(_se_fwd_impl)


@_se_fwd_op.register_fake
def _(x, w1, b1, w2, b2, act, gate):
    return _fake_fwd(x, w1)


def _se_bwd_impl(grad_y: torch.Tensor, x: torch.Tensor, w1: Optional[torch.Tensor], w2: torch.Tensor,
                 pooled: torch.Tensor, u: torch.Tensor, z: torch.Tensor, act: str, gate: str) -> _T5:
    gx, _, gw1, gb1, gw2, gb2 = se_backward(grad_y, x, w1, w2, pooled, u, z, act, gate)
    return gx, gw1, gb1, gw2, gb2


_se_bwd_op = torch.library.custom_op("attn_kernels::se_bwd", mutates_args=())(_se_bwd_impl)


@_se_bwd_op.register_fake
def _(grad_y, x, w1, w2, pooled, u, z, act, gate):
    return (torch.empty_like(x),) + _fake_param_grads(x, w1, w2)


def _se_setup(ctx, inputs, output):
    x, w1, b1, w2, b2, act, gate = inputs
    _, pooled, u, z = output
    ctx.act, ctx.gate = act, gate
    ctx.has = (w1 is not None, b1 is not None, b2 is not None)
    ctx.b_dtypes = (None if b1 is None else b1.dtype, None if b2 is None else b2.dtype)
    ctx.save_for_backward(x, w1, w2, pooled, u, z)


def _bias_grad(g, dtype):
    return None if dtype is None else _as_dtype(g, dtype)


def _se_backward(ctx, grad_y, *_, bwd=None):
    x, w1, w2, pooled, u, z = ctx.saved_tensors
    if bwd is None:  # the registered op: bias grads in fp32, cast below
        gx, gw1, gb1, gw2, gb2 = torch.ops.attn_kernels.se_bwd(grad_y, x, w1, w2, pooled, u, z, ctx.act, ctx.gate)
    else:  # the eager path's launcher (se_backward): bias grads stored in the biases' dtypes, no casts
        gx, _, gw1, gb1, gw2, gb2 = bwd(grad_y, x, w1, w2, pooled, u, z, ctx.act, ctx.gate, bias_dtypes=ctx.b_dtypes)
    has_w1 = ctx.has[0]
    return (gx, gw1 if has_w1 else None, _bias_grad(gb1, ctx.b_dtypes[0]), gw2, _bias_grad(gb2, ctx.b_dtypes[1]),
            None, None)


_se_fwd_op.register_autograd(_se_backward, setup_context=_se_setup)


def _se_res_fwd_impl(x: torch.Tensor, shortcut: torch.Tensor, w1: Optional[torch.Tensor],
                     b1: Optional[torch.Tensor], w2: torch.Tensor, b2: Optional[torch.Tensor], act: str, gate: str,
                     out_act: str) -> _T4:
    return tuple(se_forward(x, w1, b1, w2, b2, act, gate, shortcut=shortcut, out_act=out_act))


_se_res_fwd_op = torch.library.custom_op("attn_kernels::se_residual_fwd", mutates_args=())(_se_res_fwd_impl)


@_se_res_fwd_op.register_fake
def _(x, shortcut, w1, b1, w2, b2, act, gate, out_act):
    return _fake_fwd(x, w1)


def _se_res_bwd_impl(grad_y: torch.Tensor, x: torch.Tensor, shortcut: torch.Tensor, w1: Optional[torch.Tensor],
                     w2: torch.Tensor, pooled: torch.Tensor, u: torch.Tensor, z: torch.Tensor, act: str, gate: str,
                     out_act: str) -> _T6:
    return tuple(se_backward(grad_y, x, w1, w2, pooled, u, z, act, gate, shortcut=shortcut, out_act=out_act))


_se_res_bwd_op = torch.library.custom_op("attn_kernels::se_residual_bwd", mutates_args=())(_se_res_bwd_impl)


@_se_res_bwd_op.register_fake
def _(grad_y, x, shortcut, w1, w2, pooled, u, z, act, gate, out_act):
    return (torch.empty_like(x), torch.empty_like(x)) + _fake_param_grads(x, w1, w2)


def _se_res_setup(ctx, inputs, output):
    x, shortcut, w1, b1, w2, b2, act, gate, out_act = inputs
    _, pooled, u, z = output
    ctx.act, ctx.gate, ctx.out_act = act, gate, out_act
    ctx.has_w1 = w1 is not None
    ctx.b_dtypes = (None if b1 is None else b1.dtype, None if b2 is None else b2.dtype)
    ctx.save_for_backward(x, shortcut, w1, w2, pooled, u, z)


def _se_res_backward(ctx, grad_y, *_, bwd=None):
    x, shortcut, w1, w2, pooled, u, z = ctx.saved_tensors
    if bwd is None:  # the registered op: bias grads in fp32, cast below
        gx, gsc, gw1, gb1, gw2, gb2 = torch.ops.attn_kernels.se_residual_bwd(
            grad_y, x, shortcut, w1, w2, pooled, u, z, ctx.act, ctx.gate, ctx.out_act)
    else:  # the eager path's launcher (se_backward): bias grads stored in the biases' dtypes, no casts
        gx, gsc, gw1, gb1, gw2, gb2 = bwd(grad_y, x, w1, w2, pooled, u, z, ctx.act, ctx.gate, shortcut=shortcut,
                                          out_act=ctx.out_act, bias_dtypes=ctx.b_dtypes)
    return (gx, gsc, gw1 if ctx.has_w1 else None, _bias_grad(gb1, ctx.b_dtypes[0]), gw2,
            _bias_grad(gb2, ctx.b_dtypes[1]), None, None, None)


_se_res_fwd_op.register_autograd(_se_res_backward, setup_context=_se_res_setup)
# Eager calls skip the ops' dispatch (``_eager``): same launchers, same formulas.
# The eager path's backward launcher is se_backward itself: it can store the bias grads in the biases'
# dtypes (the backward ops' schemas do not carry them), saving a cast per low-precision bias.
_SE = _eager.OpSpec(torch.ops.attn_kernels.se_fwd, _se_fwd_impl, _se_setup, _se_backward, se_backward)
_SE_RES = _eager.OpSpec(torch.ops.attn_kernels.se_residual_fwd, _se_res_fwd_impl, _se_res_setup, _se_res_backward,
                        se_backward)


# ----------------------------------------------------------------------------------------------
# Public entry points (the ``triton`` backend of functional.se / functional.se_residual)
# ----------------------------------------------------------------------------------------------
def se(x, w1, b1, w2, b2, act: str = "relu", gate: str = "sigmoid") -> torch.Tensor:
    """Fused SE (eSE when w1 is None); arguments as ``reference.se``, already validated."""
    return _eager.call(_SE, x, w1, b1, w2, b2, act, gate)[0]


def se_residual(x, shortcut, w1, b1, w2, b2, act: str = "relu", gate: str = "sigmoid",
                out_act: str = "relu") -> torch.Tensor:
    """Fused out_act(se(x) + shortcut); arguments as ``reference.se_residual``, already validated."""
    return _eager.call(_SE_RES, x, shortcut, w1, b1, w2, b2, act, gate, out_act)[0]
