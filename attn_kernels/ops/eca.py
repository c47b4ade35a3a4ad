"""Triton ECA / CECA and the ECA-ResNet block tail ``eca_residual``: one launch forward, one backward.

    ECA     y = x · s,                s_c = σ(z_c),  z_c = Σ_j t_j p_{c+j−h},  p = mean_spatial(x), h = k//2
    CECA    the same with the channel index taken modulo C (defined for any k, also k > C)
    eca_residual   y = out_act(x · s + shortcut),  out_act ∈ relu / silu / gelu / identity

Schedule — the conv across channels is *local*: the gate of channel c needs only p_{c−h..c+h}. So the
grid is (sample, channel tile): program (n, t) owns channels [c0, c0 + BLOCK_C) of sample n and

  1. pools its tile plus a halo of h channels on each side (the halo wraps modulo C for CECA and is
     zero outside [0, C) for ECA) into a private (BLOCK_C + 2h)-long fp32 scratch row,
  2. ``tl.debug_barrier()`` (the row is written and read back shifted by different threads of the
     *same* program), computes the gates of its own BLOCK_C channels from the shifted row,
  3. scales its tile (and adds the shortcut / applies out_act for eca_residual).

No program waits on another (safe under ``TRITON_INTERPRET=1``, where programs run one at a time),
one launch. The halo channels are also pooled by the neighbouring tile: the pooling pass reads
(1 + 2h/BLOCK_C)·|x| instead of |x|. The tile's x is read twice — pool, then scale — and the second
read is meant to hit L2 (the tile slab BLOCK_C·HW·|x| is kept ≲ ``_SLAB_BYTES`` = 128 KiB), except
when the whole [BLOCK_C, HW] tile fits one ≤ 8192-element register tile (``RESIDENT``: 7×7 maps and
smaller at BLOCK_C = 128): then the forward holds it in registers across the barrier and reads x once
(the backward likewise holds grad_u and reads grad_y and x once). What ``settings`` picks at the
ECA-ResNet-50 stages (adaptive k; ρ = 2h/BLOCK_C, the extra fraction of the pooling read; bf16 / fp32):
    256×56² (k 5): BLOCK_C 16 / 16, ρ 25 % / 25 %      512×28² (k 5): 64 / 32, ρ 6.3 % / 12.5 %
    1024×14² (k 5): 128 / 128, ρ 3.1 %                  2048×7² (k 7): 128 / 128, ρ 4.7 %, RESIDENT
so the forward's DRAM traffic is (2 + ρ)/2 of the floor when the scale pass hits L2 (≤ 12.5 % over).
The streaming loops are software-pipelined (cp.async) where the rows are aligned, NCHW rows told their
alignment (``_stream_plan``). Measured once, before that, on an H200 (2026-12-04, 128x1024x14x14 bf16):
forward 0.128 ms NCHW (eager 0.208) but 0.275 ms channels_last (eager 0.100); not measured since
(bench/bench_eca.py, `attn-kernels bench --ops eca`).

Backward, same grid and halo logic: per channel of tile+halo g_c = Σ_hw grad_u·x (grad_u = grad_y, or
grad_y·out_act'(x·s + shortcut) recomputed for eca_residual), dz_c = g_c·s_c(1 − s_c) into the scratch
row; barrier; dp_c = Σ_j t_j dz_{c−j+h} (the transposed conv, same wrap / zero padding);
grad_x = grad_u·s + dp/HW (and grad_shortcut = grad_u). The taps' gradient Σ_c dz_c p_{c+j−h} is
written as one fp32 row of k partials per program and summed by torch (deterministic, no atomics).
Saved for backward: x (and shortcut) as given, plus pooled p and s, (N, C) each in the accumulation
dtype (fp32; fp64 for fp64 x so gradcheck is meaningful).

Bytes (E = N·C·HW elements of |x| bytes, ρ = 2h/BLOCK_C the halo fraction; "(L2)" = the second read
of a tile, from L2 when the slab fits):
    eca fwd           read x (1+ρ)E, read x (L2) E, write y E                   floor 2E
    eca bwd           read grad_y, x (1+ρ)E each, read grad_y (L2) E, write grad_x E  floor 3E
    eca_residual fwd  + read shortcut E                                          floor 3E
    eca_residual bwd  read grad_y, x, shortcut (1+ρ)E each, again (L2) E each, write grad_x, grad_sc E each
                                                                                 floor 5E
plus O(N·C) fp32 vectors and the k taps per program. With RESIDENT (small maps) the "(L2)" reads
do not happen: forward (2+ρ)E, backward (3+2ρ)E, i.e. the floor up to the halo.

Layouts: x (and grad_y, shortcut, outputs) are addressed through (stride_n, stride_c, stride_hw): NCHW,
channels_last, and any view whose spatial dims flatten to one stride (x[::2], an expanded grad_y) run
without a copy, any spatial rank, HW = 1; other views are made contiguous first. Outputs have
``empty_like(x)``'s layout. N = 0: nothing is launched. Offsets are int64.

Entry points ``eca(x, weight, circular)`` and ``eca_residual(x, shortcut, weight, circular, out_act)``
(the ``triton`` backend of ``attn_kernels.functional``), registered as
``torch.ops.attn_kernels.eca_fwd`` / ``eca_bwd`` with fake and autograd kernels; eager calls run the same
launchers and formula without the op's dispatch (``_eager``).
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .. import _alloc
from . import _eager
from ._layout import as_flat as _as_flat, cdiv as _cdiv, device_of as _device_of, multiple as _aligned
from ._layout import multiple_rows as _aligned_rows
from ._layout import next_pow2 as _next_pow2, out_like as _out_like, run_kernel as _run_kernel
from ._layout import stream_alignment as _stream_alignment, Replay as _Replay, replay as _replay
from ._layout import meta as _meta, remember as _remember, replay_key as _replay_key

__all__ = ["eca", "eca_residual", "eca_forward", "eca_backward", "settings"]

_X_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
OUT_ACT_CODES = {"none": 0, "identity": 0, "relu": 1, "silu": 2, "gelu": 3}
_TILE = 4096  # elements of one [BLOCK_C, BLOCK_HW] register tile
_MAX_BLOCK_HW = 1024
_SLAB_BYTES = 1 << 17  # target bytes of x per program (its tile slab), so the scale pass re-reads from L2
_MIN_BLOCK_C, _MAX_BLOCK_C = 16, 128
_MAX_BLOCK_K = 64
_RESIDENT_TILE = 8192  # forward keeps the tile in registers (x read once) when it fits in this many elements


# ----------------------------------------------------------------------------------------------
# Device helpers
# ----------------------------------------------------------------------------------------------
@triton.jit
def _sigmoid(z):
    return 1.0 / (1.0 + tl.exp(-z))


@triton.jit
def _act(u, OUT_ACT: tl.constexpr):
    """out_act(u): 0 identity, 1 relu, 2 silu, 3 gelu (erf form, as F.gelu)."""
    if OUT_ACT == 1:
        u = tl.maximum(u, 0.0)
    elif OUT_ACT == 2:
        u = u * _sigmoid(u)
    elif OUT_ACT == 3:
        u = 0.5 * u * (1.0 + tl.math.erf(u * 0.7071067811865476))
    return u


@triton.jit
def _act_grad(u, OUT_ACT: tl.constexpr):
    """out_act'(u) (relu'(0) = 0, as autograd)."""
    if OUT_ACT == 1:
        d = tl.where(u > 0.0, 1.0, 0.0)
    elif OUT_ACT == 2:
        sg = _sigmoid(u)
        d = sg * (1.0 + u * (1.0 - sg))
    elif OUT_ACT == 3:
        d = 0.5 * (1.0 + tl.math.erf(u * 0.7071067811865476)) + u * 0.3989422804014327 * tl.exp(-0.5 * u * u)
    else:
        d = u * 0.0 + 1.0
    return d


@triton.jit
def _ext_channels(p, c_end, C, half, CIRCULAR: tl.constexpr):
    """Channel coordinate p (may be < 0 or ≥ C) → (channel index, needed). ECA: zero outside [0, C).
    CECA: p mod C, needed while some channel < c_end (the tile's last real one) reaches it."""
    if CIRCULAR:
        chan = ((p % C) + C) % C
        valid = p < c_end + half
    else:
        chan = p
        valid = (p >= 0) & (p < C)
    return chan, valid


@triton.jit
def _grad_u(gy, x, s, sc, RESIDUAL: tl.constexpr, OUT_ACT: tl.constexpr):
    """Gradient reaching x·s: grad_y, or grad_y · out_act'(x·s + shortcut) for eca_residual."""
    if RESIDUAL:
        gy = gy * _act_grad(x * s[:, None] + sc, OUT_ACT)
    return gy


@triton.jit
def _channel_sums(x_base, gy_base, sc_base, s_base, chan, valid, HW, sxc, sxhw, sgc, sghw, ssc, sshw,
                  BWD: tl.constexpr, RESIDUAL: tl.constexpr, OUT_ACT: tl.constexpr, ACC: tl.constexpr,
                  ROWS: tl.constexpr, BLOCK_HW: tl.constexpr, NUM_STAGES: tl.constexpr):
    """Per channel in ``chan``: Σ_hw x (forward) or Σ_hw grad_u·x (backward), 0 where not valid. The loop
    is software-pipelined (cp.async, NUM_STAGES − 1 tiles ahead) where the launcher found the rows
    aligned (``_stream_plan``)."""
    acc = tl.zeros([ROWS], dtype=ACC)
    if BWD:
        s = tl.load(s_base + chan, mask=valid, other=0.0)
    for hw0 in tl.range(0, HW, BLOCK_HW, num_stages=NUM_STAGES):
        offs_hw = (hw0 + tl.arange(0, BLOCK_HW)).to(tl.int64)
        m = valid[:, None] & (offs_hw < HW)[None, :]
        x = tl.load(x_base + chan[:, None] * sxc + offs_hw[None, :] * sxhw, mask=m, other=0.0).to(ACC)
        if BWD:
            gy = tl.load(gy_base + chan[:, None] * sgc + offs_hw[None, :] * sghw, mask=m, other=0.0).to(ACC)
            sc = gy
            if RESIDUAL:
                sc = tl.load(sc_base + chan[:, None] * ssc + offs_hw[None, :] * sshw, mask=m, other=0.0).to(ACC)
            x = x * _grad_u(gy, x, s, sc, RESIDUAL, OUT_ACT)
        acc += tl.sum(x, axis=1)
    if BWD:
        acc = acc * s * (1.0 - s)  # dz = g · σ'(z)
    return acc


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------
@triton.jit
def _eca_fwd_kernel(
    x_ptr,  # (N, C, HW) strided, x dtype
    sc_ptr,  # (N, C, HW) strided, x dtype: the shortcut (unused unless RESIDUAL)
    y_ptr,  # (N, C, HW) strided, x dtype (out)
    taps_ptr,  # (k,) contiguous, any float dtype
    pooled_ptr,  # (N, C) ACC (out, saved): mean over HW
    s_ptr,  # (N, C) ACC (out, saved): the gate
    ext_ptr,  # (N·T, W) ACC scratch: the pooled tile + halo, W = BLOCK_C + 2·half
    C, HW, k, half, T, W,
    sxn, sxc, sxhw, ssn, ssc, sshw, syn, syc, syhw,
    CIRCULAR: tl.constexpr, RESIDUAL: tl.constexpr, OUT_ACT: tl.constexpr, ACC: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_K: tl.constexpr,
    RESIDENT: tl.constexpr, NUM_STAGES: tl.constexpr, ROW_ALIGN: tl.constexpr,
):
    """Program (n, t): pool channels [c0 − h, c0 + BLOCK_C + h) → gates of [c0, c0 + BLOCK_C) → scale.
    Reads x (1 + 2h/BLOCK_C)·BLOCK_C·HW (pool, halo included) + BLOCK_C·HW again (scale, L2) — or,
    with RESIDENT (the whole [BLOCK_C, HW] tile in one register tile), only the first read — writes y
    BLOCK_C·HW; eca_residual also reads the shortcut BLOCK_C·HW once. Plus k taps, 2·BLOCK_C + W fp32
    vector elements."""
    HW = _aligned(HW, ROW_ALIGN)  # NCHW rows: alignment the launcher knows (_stream_plan), told to Triton
    sxn, sxc = _aligned_rows(sxn, sxc, ROW_ALIGN)
    ssn, ssc = _aligned_rows(ssn, ssc, ROW_ALIGN)
    syn, syc = _aligned_rows(syn, syc, ROW_ALIGN)
    pid = tl.program_id(0).to(tl.int64)
    n = pid // T
    c0 = (pid % T) * BLOCK_C
    c_end = tl.minimum(c0 + BLOCK_C, C)
    x_base = x_ptr + n * sxn
    ext_base = ext_ptr + pid * W
    # 1. pool the tile (window positions half .. half + BLOCK_C) ...
    offs_i = tl.arange(0, BLOCK_C).to(tl.int64)
    chan, valid = _ext_channels(c0 + offs_i, c_end, C, half, CIRCULAR)
    if RESIDENT:  # the tile stays in registers for the scale step: x is read once
        offs_r = tl.arange(0, BLOCK_HW).to(tl.int64)
        xt = tl.load(x_base + chan[:, None] * sxc + offs_r[None, :] * sxhw,
                     mask=valid[:, None] & (offs_r < HW)[None, :], other=0.0).to(ACC)
        p = tl.sum(xt, axis=1) / HW
    else:
        p = _channel_sums(x_base, x_base, x_base, s_ptr, chan, valid, HW, sxc, sxhw, sxc, sxhw, sxc, sxhw,
                          0, 0, 0, ACC, BLOCK_C, BLOCK_HW, NUM_STAGES) / HW
    tl.store(ext_base + half + offs_i, p)
    own = (c0 + offs_i) < C
    tl.store(pooled_ptr + n * C + c0 + offs_i, p, mask=own)
    # ... and its halo: h < half → channel c0 − half + h (window h); else c0 + BLOCK_C + h − half
    for h0 in range(0, 2 * half, BLOCK_H):
        offs_h = (h0 + tl.arange(0, BLOCK_H)).to(tl.int64)
        left = offs_h < half
        pos = tl.where(left, c0 - half + offs_h, c0 + BLOCK_C + offs_h - half)
        chan_h, valid_h = _ext_channels(pos, c_end, C, half, CIRCULAR)
        valid_h = valid_h & (offs_h < 2 * half)
        ph = _channel_sums(x_base, x_base, x_base, s_ptr, chan_h, valid_h, HW, sxc, sxhw, sxc, sxhw, sxc,
                           sxhw, 0, 0, 0, ACC, BLOCK_H, BLOCK_HW, NUM_STAGES) / HW
        tl.store(ext_base + tl.where(left, offs_h, BLOCK_C + offs_h), ph, mask=offs_h < 2 * half)
    tl.debug_barrier()  # the scratch row written above by all threads is read back shifted below
    # 2. gates of the tile: z_i = Σ_j t_j · ext[i + j]
    z = tl.zeros([BLOCK_C], dtype=ACC)
    for j0 in range(0, k, BLOCK_K):
        offs_j = j0 + tl.arange(0, BLOCK_K)
        mj = offs_j < k
        t = tl.load(taps_ptr + offs_j, mask=mj, other=0.0).to(ACC)
        win = tl.load(ext_base + offs_i[:, None] + offs_j[None, :], mask=mj[None, :], other=0.0)
        z += tl.sum(win * t[None, :], axis=1)
    s = _sigmoid(z)
    tl.store(s_ptr + n * C + c0 + offs_i, s, mask=own)
    # 3. scale (+ shortcut, out_act)
    offs_c = c0 + offs_i
    y_base = y_ptr + n * syn
    sc_base = sc_ptr + n * ssn
    for hw0 in tl.range(0, HW, BLOCK_HW, num_stages=NUM_STAGES):  # one iteration when RESIDENT
        offs_hw = (hw0 + tl.arange(0, BLOCK_HW)).to(tl.int64)
        m = own[:, None] & (offs_hw < HW)[None, :]
        if RESIDENT:
            v = xt  # own channels: chan == c0 + i
        else:
            v = tl.load(x_base + offs_c[:, None] * sxc + offs_hw[None, :] * sxhw, mask=m, other=0.0).to(ACC)
        out = v * s[:, None]
        if RESIDUAL:
            out += tl.load(sc_base + offs_c[:, None] * ssc + offs_hw[None, :] * sshw, mask=m, other=0.0).to(ACC)
            out = _act(out, OUT_ACT)
        tl.store(y_base + offs_c[:, None] * syc + offs_hw[None, :] * syhw, out.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _eca_bwd_kernel(
    gy_ptr,  # (N, C, HW) strided: grad of y
    x_ptr,  # (N, C, HW) strided
    sc_ptr,  # (N, C, HW) strided: shortcut (unused unless RESIDUAL)
    gx_ptr,  # (N, C, HW) strided (out)
    gsc_ptr,  # (N, C, HW) strided (out, unused unless RESIDUAL): grad of the shortcut
    taps_ptr,  # (k,) contiguous
    pooled_ptr, s_ptr,  # (N, C) ACC, saved by the forward
    ext_ptr,  # (N·T, W) ACC scratch: dz of the tile + halo
    gt_ptr,  # (N·T, k) ACC (out): per-program partials of the taps' gradient
    C, HW, k, half, T, W,
    sgn, sgc, sghw, sxn, sxc, sxhw, ssn, ssc, sshw, sdn, sdc, sdhw, sen, sec, sehw,
    CIRCULAR: tl.constexpr, RESIDUAL: tl.constexpr, OUT_ACT: tl.constexpr, ACC: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_K: tl.constexpr,
    RESIDENT: tl.constexpr, NUM_STAGES: tl.constexpr, ROW_ALIGN: tl.constexpr,
):
    """Program (n, t). Pass 1 reads grad_y and x (and the shortcut) on the tile + halo:
    (1 + 2h/BLOCK_C)·BLOCK_C·HW each; pass 2 reads them again on the tile (L2; not at all with
    RESIDENT, which keeps grad_u in registers) and writes grad_x (and grad_shortcut) BLOCK_C·HW each.
    Plus O(W + k) vector elements."""
    HW = _aligned(HW, ROW_ALIGN)  # NCHW rows: alignment the launcher knows (_stream_plan), told to Triton
    sgn, sgc = _aligned_rows(sgn, sgc, ROW_ALIGN)
    sxn, sxc = _aligned_rows(sxn, sxc, ROW_ALIGN)
    ssn, ssc = _aligned_rows(ssn, ssc, ROW_ALIGN)
    sdn, sdc = _aligned_rows(sdn, sdc, ROW_ALIGN)
    sen, sec = _aligned_rows(sen, sec, ROW_ALIGN)
    pid = tl.program_id(0).to(tl.int64)
    n = pid // T
    c0 = (pid % T) * BLOCK_C
    c_end = tl.minimum(c0 + BLOCK_C, C)
    gy_base = gy_ptr + n * sgn
    x_base = x_ptr + n * sxn
    sc_base = sc_ptr + n * ssn
    s_base = s_ptr + n * C
    p_base = pooled_ptr + n * C
    ext_base = ext_ptr + pid * W
    # pass 1: dz on the tile (window half + i) and its halo
    offs_i = tl.arange(0, BLOCK_C).to(tl.int64)
    chan, valid = _ext_channels(c0 + offs_i, c_end, C, half, CIRCULAR)
    if RESIDENT:  # keep grad_u of the tile in registers for pass 2
        offs_r = tl.arange(0, BLOCK_HW).to(tl.int64)
        mr = valid[:, None] & (offs_r < HW)[None, :]
        s_t = tl.load(s_base + chan, mask=valid, other=0.0)
        x_t = tl.load(x_base + chan[:, None] * sxc + offs_r[None, :] * sxhw, mask=mr, other=0.0).to(ACC)
        gu_t = tl.load(gy_base + chan[:, None] * sgc + offs_r[None, :] * sghw, mask=mr, other=0.0).to(ACC)
        if RESIDUAL:
            sc_t = tl.load(sc_base + chan[:, None] * ssc + offs_r[None, :] * sshw, mask=mr, other=0.0).to(ACC)
            gu_t = _grad_u(gu_t, x_t, s_t, sc_t, RESIDUAL, OUT_ACT)
        dz = tl.sum(gu_t * x_t, axis=1) * s_t * (1.0 - s_t)
    else:
        dz = _channel_sums(x_base, gy_base, sc_base, s_base, chan, valid, HW, sxc, sxhw, sgc, sghw, ssc, sshw,
                           1, RESIDUAL, OUT_ACT, ACC, BLOCK_C, BLOCK_HW, NUM_STAGES)
    tl.store(ext_base + half + offs_i, dz)
    for h0 in range(0, 2 * half, BLOCK_H):
        offs_h = (h0 + tl.arange(0, BLOCK_H)).to(tl.int64)
        left = offs_h < half
        pos = tl.where(left, c0 - half + offs_h, c0 + BLOCK_C + offs_h - half)
        chan_h, valid_h = _ext_channels(pos, c_end, C, half, CIRCULAR)
        valid_h = valid_h & (offs_h < 2 * half)
        dzh = _channel_sums(x_base, gy_base, sc_base, s_base, chan_h, valid_h, HW, sxc, sxhw, sgc, sghw, ssc,
                            sshw, 1, RESIDUAL, OUT_ACT, ACC, BLOCK_H, BLOCK_HW, NUM_STAGES)
        tl.store(ext_base + tl.where(left, offs_h, BLOCK_C + offs_h), dzh, mask=offs_h < 2 * half)
    # taps' gradient partial: G_j = Σ_{own c} dz_c · p_{c+j−h}
    own = (c0 + offs_i) < C
    dz_own = tl.where(own, dz, 0.0)
    for j0 in range(0, k, BLOCK_K):
        offs_j = j0 + tl.arange(0, BLOCK_K)
        mj = offs_j < k
        pch, pvalid = _ext_channels(c0 + offs_i[:, None] + offs_j[None, :] - half, c_end, C, half, CIRCULAR)
        pw = tl.load(p_base + pch, mask=pvalid & mj[None, :] & own[:, None], other=0.0)
        tl.store(gt_ptr + pid * k + offs_j, tl.sum(dz_own[:, None] * pw, axis=0), mask=mj)
    tl.debug_barrier()  # dz of the halo, stored by other threads, is read back shifted below
    # pass 2: dp_i = Σ_j t_j · dz[window i + 2h − j]; grad_x = grad_u · s + dp / HW
    dp = tl.zeros([BLOCK_C], dtype=ACC)
    for j0 in range(0, k, BLOCK_K):
        offs_j = j0 + tl.arange(0, BLOCK_K)
        mj = offs_j < k
        t = tl.load(taps_ptr + offs_j, mask=mj, other=0.0).to(ACC)
        win = tl.load(ext_base + offs_i[:, None] + 2 * half - offs_j[None, :], mask=mj[None, :], other=0.0)
        dp += tl.sum(win * t[None, :], axis=1)
    dp = dp / HW
    s = tl.load(s_base + c0 + offs_i, mask=own, other=0.0)
    offs_c = c0 + offs_i
    gx_base = gx_ptr + n * sdn
    gsc_base = gsc_ptr + n * sen
    for hw0 in tl.range(0, HW, BLOCK_HW, num_stages=NUM_STAGES):  # one iteration when RESIDENT
        offs_hw = (hw0 + tl.arange(0, BLOCK_HW)).to(tl.int64)
        m = own[:, None] & (offs_hw < HW)[None, :]
        if RESIDENT:
            gy = gu_t
            if RESIDUAL:
                tl.store(gsc_base + offs_c[:, None] * sec + offs_hw[None, :] * sehw,
                         gy.to(gsc_ptr.dtype.element_ty), mask=m)
        else:
            gy = tl.load(gy_base + offs_c[:, None] * sgc + offs_hw[None, :] * sghw, mask=m, other=0.0).to(ACC)
        if RESIDUAL and not RESIDENT:
            x = tl.load(x_base + offs_c[:, None] * sxc + offs_hw[None, :] * sxhw, mask=m, other=0.0).to(ACC)
            sc = tl.load(sc_base + offs_c[:, None] * ssc + offs_hw[None, :] * sshw, mask=m, other=0.0).to(ACC)
            gy = _grad_u(gy, x, s, sc, RESIDUAL, OUT_ACT)
            tl.store(gsc_base + offs_c[:, None] * sec + offs_hw[None, :] * sehw,
                     gy.to(gsc_ptr.dtype.element_ty), mask=m)
        gx = gy * s[:, None] + dp[:, None]
        tl.store(gx_base + offs_c[:, None] * sdc + offs_hw[None, :] * sdhw, gx.to(gx_ptr.dtype.element_ty), mask=m)


# ----------------------------------------------------------------------------------------------
# Launch helpers
# ----------------------------------------------------------------------------------------------


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _tl_acc(acc: torch.dtype):
    return tl.float64 if acc == torch.float64 else tl.float32


def settings(channels: int, hw: int, elem_bytes: int, k: int) -> dict:
    """Tile sizes from one heuristic (not tuned on a GPU yet).

    BLOCK_C (the channel tile): the largest power of two with BLOCK_C·HW·|x| ≤ _SLAB_BYTES, clamped to
    [16, 128] and to next_pow2(C) — big enough that the halo costs ≤ 2h/16 of the pooling read, small
    enough that the scale pass finds the slab in L2. BLOCK_HW fills a ≤ 4096-element register tile, or
    RESIDENT = 1 when the whole [BLOCK_C, next_pow2(HW)] tile is ≤ 8192 elements (7×7 maps and smaller):
    the forward then keeps it in registers and reads x once, the backward keeps grad_u (reads grad_y,
    x once).
    BLOCK_H (halo rows per step) = next_pow2(2h) ≤ BLOCK_C; BLOCK_K (taps per step) = next_pow2(k) ≤ 64.
    """
    by_slab = max(1, _SLAB_BYTES // max(1, hw * elem_bytes))
    block_c = min(max(_next_pow2(by_slab + 1) // 2, _MIN_BLOCK_C), _MAX_BLOCK_C)
    block_c = max(1, min(block_c, _next_pow2(channels)))
    block_hw = max(1, min(_next_pow2(hw), _MAX_BLOCK_HW, _TILE // block_c))
    resident = block_c * _next_pow2(hw) <= _RESIDENT_TILE
    if resident:
        block_hw = _next_pow2(hw)
    half = k // 2
    block_h = max(1, min(_next_pow2(max(1, 2 * half)), block_c))
    block_k = min(_next_pow2(k), _MAX_BLOCK_K)
    return dict(BLOCK_C=block_c, BLOCK_H=block_h, BLOCK_HW=block_hw, BLOCK_K=block_k, RESIDENT=int(resident),
                num_warps=8 if block_c * block_hw >= 4096 else 4)


_STAGE_SMEM = 64 * 1024  # bytes of shared memory the pipelined loops may hold (_stream_plan)


def _stream_plan(cfg: dict, elem: int, hw: int, strides, loads: int) -> dict:
    """NUM_STAGES and ROW_ALIGN of the streaming loops for tensors with the (N, C, HW) ``strides`` (x first,
    then the others the kernel streams): pipelined (cp.async into shared memory, NUM_STAGES − 1 tiles
    ahead) where ``_layout.stream_alignment`` finds the rows aligned, 2 … 3 stages of ``loads`` [BLOCK_C,
    BLOCK_HW] tiles within _STAGE_SMEM; NCHW rows get ROW_ALIGN (bf16 at 14×14: 4). RESIDENT tiles are one
    iteration: nothing to pipeline. Before this the loops were plain ``range`` loops, which Triton did
    not pipeline (no cp.async in the sm_90 PTX): one tile in flight per program -- the H200 run measured
    the channels_last forward at 0.275 ms against eager's 0.100 (128x1024x14x14 bf16). Not measured since."""
    aligned, row_align = _stream_alignment(elem, hw, strides, cfg["BLOCK_C"])
    stages = 1
    if aligned and not cfg["RESIDENT"]:
        per_stage = cfg["BLOCK_C"] * cfg["BLOCK_HW"] * elem * loads
        stages = min(3, _STAGE_SMEM // max(1, per_stage))
        stages = stages if stages >= 2 else 1
    return dict(NUM_STAGES=stages, ROW_ALIGN=row_align)


def _check_x(x: torch.Tensor) -> None:
    if x.dtype not in _X_DTYPES:
        raise TypeError(f"the triton ECA kernel supports x of dtype float16/bfloat16/float32/float64, got {x.dtype}")


@functools.lru_cache(maxsize=4096)
def _plan(shape: torch.Size, elem: int, k: int, strides: tuple, loads: int) -> tuple:
    """(hw, tiles, width, meta) of a launch: what it derives from x's shape and element size, the number
    of taps and the (N, C, HW) strides of the tensors the kernel streams (x first; ``loads`` of them per
    tile) -- the tiles (``settings``) and the loops' pipelining (``_stream_plan``). Memoised: ECA layers
    are small and many, and this runs on every call (host time per call: bench/host_overhead.py). The
    dict is shared: callers pass it on as keywords, never modify it."""
    c = shape[1]
    hw = 1
    for d in shape[2:]:
        hw *= int(d)
    cfg = settings(c, hw, elem, k)
    tiles = _cdiv(c, cfg["BLOCK_C"]) if c else 0
    width = cfg["BLOCK_C"] + 2 * (k // 2)
    return hw, tiles, width, dict(cfg, **_stream_plan(cfg, elem, hw, strides, loads))


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------
# Replays (``_layout.Replay``): a call signature's first call takes the full path and keeps its launch; later
# ones allocate and launch it again with their tensors. Kept only where the full path launched on the
# caller's x / shortcut / grad_y themselves and wrote the outputs directly (flat layouts, as usual).
_REPLAYS = {}


def _taps(weight: torch.Tensor) -> torch.Tensor:
    """The (k,) taps the kernels read, from (k,) or the Conv1d weight (1, 1, k)."""
    return weight.reshape(-1).contiguous()


def _pooled_and_gate(n: int, c: int, acc: torch.dtype, device):
    """The forward's (pooled, s), (N, C) each, saved for the backward."""
    return _alloc.empty((n, c), dtype=acc, device=device), _alloc.empty((n, c), dtype=acc, device=device)


def _fwd_tensors(x, shortcut, y, taps, pooled, s, ext) -> tuple:
    """``_eca_fwd_kernel``'s tensor arguments, in order (x stands in for an absent shortcut: never read)."""
    return x, x if shortcut is None else shortcut, y, taps, pooled, s, ext


def eca_forward(x: torch.Tensor, shortcut: Optional[torch.Tensor], weight: torch.Tensor, circular: bool,
                out_act: str = "none"):
    """(y, pooled, s): y like x; pooled and s (N, C) in the accumulation dtype. ``shortcut=None`` is
    plain ECA/CECA; otherwise y = out_act(x·s + shortcut). One launch (none when N·C = 0)."""
    _check_x(x)
    key = _replay_key("fwd", x.shape, x.stride(), x.dtype, x.device, _meta(shortcut), _meta(weight), circular,
                      out_act)
    hit = _REPLAYS.get(key) if key is not None else None
    taps = _taps(weight)
    n, c = x.shape[:2]
    acc = _acc_dtype(x)
    if hit is not None and hit[0].kernel is _eca_fwd_kernel:  # (a test may have replaced the kernel since)
        launch, ext_shape = hit
        y = _alloc.empty_like(x)
        pooled, s = _pooled_and_gate(n, c, acc, x.device)
        ext = torch.empty(ext_shape, dtype=acc, device=x.device)
        with _device_of(x):
            _replay(launch, _fwd_tensors(x, shortcut, y, taps, pooled, s, ext))
        return y, pooled, s
    k = taps.numel()
    y, y_buf, sy = _out_like(x)
    pooled, s = _pooled_and_gate(n, c, acc, x.device)
    if n * c == 0:
        return y, pooled, s
    xk, sx = _as_flat(x)
    residual = shortcut is not None
    sck, ss = _as_flat(shortcut) if residual else (xk, sx)
    hw, tiles, width, meta = _plan(x.shape, x.element_size(), k, (sx, ss, sy), 1 + int(residual))
    ext = torch.empty((n * tiles, width), dtype=acc, device=x.device)  # scratch, fully written before read
    launched = (_eca_fwd_kernel, n * tiles,
                _fwd_tensors(xk, sck if residual else None, y_buf, taps, pooled, s, ext)
                + (c, hw, k, k // 2, tiles, width, *sx, *ss, *sy),
                dict(CIRCULAR=int(bool(circular)), RESIDUAL=int(residual),
                     OUT_ACT=OUT_ACT_CODES[out_act] if residual else 0, ACC=_tl_acc(acc), **meta))
    with _device_of(xk):
        _run_kernel(*launched)
    if y_buf is not y:
        y.copy_(y_buf)
    elif key is not None and xk is x and (not residual or sck is shortcut):
        _remember(_REPLAYS, key, (_Replay(launched, 7), ext.shape))
    return y, pooled, s


def _bwd_tensors(grad_y, x, shortcut, gx, gsc, taps, pooled, s, ext, gt) -> tuple:
    """``_eca_bwd_kernel``'s tensor arguments, in order (stand-ins for an absent shortcut: never touched)."""
    return grad_y, x, x if shortcut is None else shortcut, gx, gx if shortcut is None else gsc, taps, pooled, s, ext, gt


def _tap_grads(gt: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """grad_weight from the per-tile partials ``gt`` (tiles, k): their sum, in weight's shape and dtype."""
    gw = gt.sum(0).reshape(weight.shape)
    return gw if gw.dtype == weight.dtype else gw.to(weight.dtype)


def eca_backward(grad_y: torch.Tensor, x: torch.Tensor, shortcut: Optional[torch.Tensor], weight: torch.Tensor,
                 pooled: torch.Tensor, s: torch.Tensor, circular: bool, out_act: str = "none"):
    """(grad_x, grad_shortcut or None, grad_weight): grad_weight in weight's shape and dtype."""
    key = _replay_key("bwd", grad_y.shape, grad_y.stride(), grad_y.dtype, x.shape, x.stride(), x.dtype, x.device,
                      _meta(shortcut), _meta(weight), _meta(pooled), _meta(s), circular, out_act)
    hit = _REPLAYS.get(key) if key is not None else None
    taps = _taps(weight)
    n, c = x.shape[:2]
    acc = pooled.dtype
    residual = shortcut is not None
    if hit is not None and hit[0].kernel is _eca_bwd_kernel:
        launch, ext_shape, gt_shape = hit
        gx = _alloc.empty_like(x)
        gsc = _alloc.empty_like(x) if residual else None
        ext = torch.empty(ext_shape, dtype=acc, device=x.device)
        gt = _alloc.empty(gt_shape, dtype=acc, device=x.device)
        with _device_of(grad_y):
            _replay(launch, _bwd_tensors(grad_y, x, shortcut, gx, gsc, taps, pooled, s, ext, gt))
        return gx, gsc, _tap_grads(gt, weight)
    k = taps.numel()
    gx, gx_buf, sd = _out_like(x)
    gsc, gsc_buf, se = _out_like(x) if residual else (None, gx_buf, sd)
    if n * c == 0:
        gx.zero_()
        if residual:
            gsc.zero_()
        return gx, gsc, torch.zeros_like(weight)
    xk, sx = _as_flat(x)
    gyk, sg = _as_flat(grad_y)
    sck, ss = _as_flat(shortcut) if residual else (xk, sx)
    hw, tiles, width, meta = _plan(x.shape, x.element_size(), k, (sx, sg, ss, sd, se), 2 + int(residual))
    ext = torch.empty((n * tiles, width), dtype=acc, device=x.device)
    gt = _alloc.empty((n * tiles, k), dtype=acc, device=x.device)
    launched = (_eca_bwd_kernel, n * tiles,
                _bwd_tensors(gyk, xk, sck if residual else None, gx_buf, gsc_buf, taps, pooled, s, ext, gt)
                + (c, hw, k, k // 2, tiles, width, *sg, *sx, *ss, *sd, *se),
                dict(CIRCULAR=int(bool(circular)), RESIDUAL=int(residual),
                     OUT_ACT=OUT_ACT_CODES[out_act] if residual else 0, ACC=_tl_acc(acc), **meta))
    with _device_of(gyk):
        _run_kernel(*launched)
    if gx_buf is not gx:
        gx.copy_(gx_buf)
    if residual and gsc_buf is not gsc:
        gsc.copy_(gsc_buf)
    if (key is not None and gx_buf is gx and (not residual or gsc_buf is gsc) and gyk is grad_y and xk is x
            and (not residual or sck is shortcut)):
        _remember(_REPLAYS, key, (_Replay(launched, 10), ext.shape, gt.shape))
    return gx, gsc, _tap_grads(gt, weight)


# ----------------------------------------------------------------------------------------------
# torch.library registration
# ----------------------------------------------------------------------------------------------
@torch.library.custom_op("attn_kernels::eca_fwd", mutates_args=())
def _eca_fwd_op(x: torch.Tensor, shortcut: Optional[torch.Tensor], weight: torch.Tensor, circular: bool,
                out_act: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return tuple(eca_forward(x, shortcut, weight, circular, out_act))


@_eca_fwd_op.register_fake
def _(x, shortcut, weight, circular, out_act):
    n, c = x.shape[:2]
    acc = _acc_dtype(x)
    return torch.empty_like(x), x.new_empty((n, c), dtype=acc), x.new_empty((n, c), dtype=acc)


@torch.library.custom_op("attn_kernels::eca_bwd", mutates_args=())
def _eca_bwd_op(grad_y: torch.Tensor, x: torch.Tensor, shortcut: Optional[torch.Tensor], weight: torch.Tensor,
                pooled: torch.Tensor, s: torch.Tensor, circular: bool, out_act: str
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gx, gsc, gw = eca_backward(grad_y, x, shortcut, weight, pooled, s, circular, out_act)
    # a custom op cannot return None: without a shortcut grad_shortcut is an empty placeholder
    return gx, (gsc if gsc is not None else torch.zeros((0,), dtype=x.dtype, device=x.device)), gw


@_eca_bwd_op.register_fake
def _(grad_y, x, shortcut, weight, pooled, s, circular, out_act):
    gsc = torch.empty_like(x) if shortcut is not None else x.new_empty((0,))
    return torch.empty_like(x), gsc, torch.empty_like(weight)


def _setup(ctx, inputs, output):
    x, shortcut, weight, circular, out_act = inputs
    _, pooled, s = output
    ctx.circular, ctx.out_act, ctx.residual = circular, out_act, shortcut is not None
    ctx.save_for_backward(x, shortcut, weight, pooled, s)


def _backward(ctx, grad_y, *_, bwd=None):
    x, shortcut, weight, pooled, s = ctx.saved_tensors
    gx, gsc, gw = (bwd or torch.ops.attn_kernels.eca_bwd)(grad_y, x, shortcut, weight, pooled, s, ctx.circular,
                                                         ctx.out_act)
    return gx, (gsc if ctx.residual else None), gw, None, None


_eca_fwd_op.register_autograd(_backward, setup_context=_setup)
# Eager calls skip the op's dispatch (``_eager``): same launchers, same formula.
_SPEC = _eager.OpSpec(torch.ops.attn_kernels.eca_fwd, eca_forward, _setup, _backward, eca_backward)


# Autocast: deliberately no autocast rule. Under autocast the op runs in x's dtype (fp32 accumulation
# inside, taps upcast in the kernel) and returns x's dtype — what eager ECA returns too (x · gate promotes
# to x's dtype); casting x to fp16/bf16 would cost a full read and write of x for nothing.


# ----------------------------------------------------------------------------------------------
# Public entry points (the ``triton`` backend of functional.eca / functional.eca_residual)
# ----------------------------------------------------------------------------------------------
def eca(x: torch.Tensor, weight: torch.Tensor, circular: bool = False) -> torch.Tensor:
    """Fused ECA (CECA when ``circular``); arguments validated by ``functional.eca``."""
    return _eager.call(_SPEC, x, None, weight, bool(circular), "none")[0]


def eca_residual(x: torch.Tensor, shortcut: torch.Tensor, weight: torch.Tensor, circular: bool = False,
                 out_act: str = "relu") -> torch.Tensor:
    """Fused ECA-ResNet block tail ``out_act(eca(x) + shortcut)``; validated by ``functional.eca_residual``."""
    return _eager.call(_SPEC, x, shortcut, weight, bool(circular), out_act)[0]
