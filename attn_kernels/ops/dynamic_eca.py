"""Triton kernels for the two input-dependent ECA variants: DynamicMultiKernelECA and BidirectionalECA.

Both blend their 1-D convs across channels with weights computed from the *whole* pooled vector
p = mean_spatial(x) (N, C): a softmax over fc(p) (DMK) or over a small MLP of p (BiECA). That is
SE's global dependency — no channel's gate is known before every channel is pooled — so they run
on SE's two schedules (ops/_split.py), one launch forward, one launch backward:
(a) one program per sample (BiECA: per group of samples, below): pools every channel, computes the
    blend, then gates and scales its sample. No cross-program synchronisation: the schedule under
    ``TRITON_INTERPRET=1``.
(b) GPU, small batch: P programs per sample, each on a slice of whole channel tiles. Forward: pool
    the slice into the (N, C) pooled buffer, meet the sample's other programs, compute the blend
    (DMK: 3 logits; BiECA: the R-wide MLP) from the whole pooled vector — every program, identical
    bits — then gate and scale the slice, reading the conv's k//2 halo from the peers' pooled means.
    Backward: pass 1 over the slice publishes dz (and the slice's part of the tap-gradient
    correlations and of the blend gradients) as one row per program and sample; after the meeting
    every program sums the P rows in program order, derives the blend / MLP gradients and runs pass 2
    on its slice (the transposed conv's halo from the peers' dz). Per-sample outputs (blend, hidden,
    tap and logit gradients) are stored by the sample's (group's) first program.

    dmk_eca:  z = Σ_i β_i conv_{k_i}(p),  β = softmax(W p + b)                    (W (3, C))
    bi_eca:   z = a_0 σ(conv_f(p)) + a_1 σ(conv_b~(p)),  a = softmax(W2 relu(W1 p + b1) + b2)
    y = x · σ(z)

Convs are zero-padded cross-correlations (``F.conv1d``): conv(p)_c = Σ_j t_j p_{c+j−h}, h = k//2.
The backward branch of BiECA, flip(conv_b(flip(p))), is in index form Σ_j w_j p_{c+h−j}: the same
conv with the taps reversed. DMK's three branches share one pass: with the blend known, Σ_i β_i
conv_i = one conv with the effective taps T = Σ_i β_i t_i (each centred in a k_max-wide window).

The gate is computed from *shifted loads of the pooled vector*: a [BLOCK_C, BLOCK_K] tile
p[c + j − h] (masked to [0, C)) dotted with the taps. The pooled vector lives in a small (N, C)
buffer written in the pooling pass and re-read after ``tl.debug_barrier()`` (threads of a program
read values other threads stored). The transposed conv of the backward is the same shifted load
with the opposite sign.

Accumulation is fp32 (fp64 for fp64 x, so ``gradcheck`` is meaningful); the pooled vector, the gate
s and the blend are kept in that dtype (O(N·C)) for the backward. Parameter gradients are reduced
over the batch deterministically, without atomics: the kernel writes per-sample fp32 pieces (tap
partials (N, k), softmax-logit grads (N, ·), MLP hidden grads (N, R)) and torch sums them — the FC
weight grads as one GEMM (grad_logits^T @ pooled), the batch sum of per-sample outer products.

Layouts: x is read through (stride_n, stride_c, stride_hw), so NCHW, channels_last (NHWC) and views
whose spatial dims flatten to one stride (x[::2], x[:, :, 1:4] cropping H with W whole, an expanded
grad_y with stride 0) run without a copy; any spatial rank, HW = 1. Other views (e.g. spatial dims
transposed, or W cropped) are copied to contiguous first; an output whose empty_like layout does not
flatten is written to a contiguous buffer and copied (both only in those rare layouts).

Bytes per pass (|x| = element size; N·C·HW elements):
    forward   reads x twice (pool, then scale) + writes y once = 3·N·C·HW·|x|
    backward  reads grad_y, x (Σ_hw grad_y·x), grad_y again, writes grad_x = 4·N·C·HW·|x|
plus O(N·C) fp32 vectors (pooled, gate, dz) and the parameters once per program (BiECA's W1: once per
group of samples, below). Why two reads: the gate of any channel needs the blend, which needs every
channel pooled, and a sample's slab is too big to keep in registers; the second read of a sample's
slab comes from L2 when it fits (the slabs of the samples in flight must fit together: one per DMK
program; a group's per BiECA program, which pools — backward: reduces grad_y·x over — all GROUP
samples before it re-reads the first). The compulsory floor
is 2·N·C·HW·|x| forward (read x, write y) and 3·N·C·HW·|x| backward.
Launches: forward 1; backward 1 kernel + the batch reductions of the parameter grads in torch (tap
sums, one GEMM per FC weight, bias sums; O(N·(C + R)) work).
Sample groups (BiECA, as SE): a program serves GROUP consecutive samples (``_split.sample_group``: the
smallest power of two with |W1| / GROUP ≤ a sample's x bytes / 4, ≤ 16, with two caps on a GPU that keep
the SMs busy).
It pools, gates and scales its channel slice of each of them one after another, but runs the gate MLP
for all of them at once on [GROUP, FC_R, FC_C] tiles, so W1 (R·C, read whole by every program in the
forward, its slice's columns in the backward for W1ᵀ dh) is read once per group instead of once per
sample: at the 7×7 stage (C = 2048, R = 128) that is 1 MB of fp32 weights against 200 KB of bf16 x per
sample. In (b) the meeting, the counters and the published rows are per group. DMK's FC weights are
3·C: no grouping.
Grid: groups (N for DMK) programs in schedule (a), groups·P ≤ half the SM count in (b) (chosen as for
SE: 4·groups ≤ SMs and ≥ 2 channel tiles). Schedule (b) adds per program: the pooled vectors (GROUP·C
fp32) and, for BiECA, W1 (R·C) read from L2, and P rows of partial sums per sample. It has run only
under the interpreter (emulated partition; MULTI=1 code with a tiny spin bound) — never on a GPU yet,
so GROUP has no measured figure either.

Entry points: ``dmk_eca(x, fc_weight, fc_bias, taps3, taps5, taps7)`` and
``bi_eca(x, w_fwd, w_bwd, w1, b1, w2, b2)``, the ``triton`` backend of ``attn_kernels.functional``;
registered as ``torch.ops.attn_kernels.{dmk_eca,bi_eca}_{fwd,bwd}`` with fake and autograd kernels.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .. import _alloc
from . import _eager
from ._layout import as_flat as _as_flat, cdiv as _cdiv, flat_strides as _flat_strides
from ._layout import next_pow2 as _next_pow2, out_like as _out_like
from ._split import device_sms as _device_sms, launch as _launch, meet as _meet
from ._split import group_plan as _group_plan, schedule_mode as _schedule_mode, split_plan as _split_plan
from .se import _group_matvec, _program_slice

__all__ = ["dmk_eca", "bi_eca", "dmk_eca_forward", "dmk_eca_backward", "bi_eca_forward", "bi_eca_backward"]

_X_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_TILE = 4096  # elements of x per [BLOCK_C, BLOCK_HW] tile
_TILE_K = 4096  # elements of a [BLOCK_C, BLOCK_K] vector tile or a [GROUP, FC_R, FC_C] MLP tile
_MAX_BLOCK_HW = 1024


# ----------------------------------------------------------------------------------------------
# Shared device helpers
# ----------------------------------------------------------------------------------------------
@triton.jit
def _sigmoid(z):
    return 1.0 / (1.0 + tl.exp(-z))


@triton.jit
def _pool_tile(base, offs_c, mask_c, HW, stride_c, stride_hw, ACC: tl.constexpr, BLOCK_C: tl.constexpr,
               BLOCK_HW: tl.constexpr):
    """Σ_hw x[c, hw] for the channels offs_c, in ACC."""
    acc = tl.zeros([BLOCK_C], dtype=ACC)
    for hw0 in range(0, HW, BLOCK_HW):
        offs_hw = (hw0 + tl.arange(0, BLOCK_HW)).to(tl.int64)
        m = mask_c[:, None] & (offs_hw < HW)[None, :]
        v = tl.load(base + offs_c[:, None] * stride_c + offs_hw[None, :] * stride_hw, mask=m, other=0.0)
        acc += tl.sum(v.to(ACC), axis=1)
    return acc


@triton.jit
def _pool_and_meet(x_base, p_base, c_lo, c_hi, HW, sxc, sxhw, sync_ptr, n, P, max_spin, MULTI: tl.constexpr,
                   ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    """Pass 1 of the DMK forward: the means of channels [c_lo, c_hi) into p_base, then the meeting with
    the sample's other programs (schedule (b)) or a barrier (a: the pooled vector stored by every
    thread is read back by others). Returns the poison: NaN after a timed-out wait, else 0."""
    for c0 in range(c_lo, c_hi, BLOCK_C):
        offs_c = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
        mask_c = offs_c < c_hi
        p = _pool_tile(x_base, offs_c, mask_c, HW, sxc, sxhw, ACC, BLOCK_C, BLOCK_HW) / HW
        tl.store(p_base + offs_c, p, mask=mask_c)
    poison = _meet(sync_ptr, n, P, P, max_spin, MULTI)
    return poison


@triton.jit
def _dot_tile(a_base, b_base, offs_c, mask_c, HW, sac, sahw, sbc, sbhw, ACC: tl.constexpr,
              BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    """Σ_hw a[c, hw] · b[c, hw] for the channels offs_c (the backward's Σ grad_y · x), in ACC."""
    acc = tl.zeros([BLOCK_C], dtype=ACC)
    for hw0 in range(0, HW, BLOCK_HW):
        offs_hw = (hw0 + tl.arange(0, BLOCK_HW)).to(tl.int64)
        m = mask_c[:, None] & (offs_hw < HW)[None, :]
        a = tl.load(a_base + offs_c[:, None] * sac + offs_hw[None, :] * sahw, mask=m, other=0.0)
        b = tl.load(b_base + offs_c[:, None] * sbc + offs_hw[None, :] * sbhw, mask=m, other=0.0)
        acc += tl.sum(a.to(ACC) * b.to(ACC), axis=1)
    return acc


@triton.jit
def _scale_tile(x_base, y_base, s, offs_c, mask_c, HW, sxc, sxhw, syc, syhw, ACC: tl.constexpr,
                BLOCK_HW: tl.constexpr):
    """y[c, hw] = x[c, hw] · s[c] for the channels offs_c."""
    for hw0 in range(0, HW, BLOCK_HW):
        offs_hw = (hw0 + tl.arange(0, BLOCK_HW)).to(tl.int64)
        m = mask_c[:, None] & (offs_hw < HW)[None, :]
        v = tl.load(x_base + offs_c[:, None] * sxc + offs_hw[None, :] * sxhw, mask=m, other=0.0)
        out = v.to(ACC) * s[:, None]
        tl.store(y_base + offs_c[:, None] * syc + offs_hw[None, :] * syhw,
                 out.to(y_base.dtype.element_ty), mask=m)


@triton.jit
def _grad_x_tile(gy_base, gx_base, s, dp, offs_c, mask_c, HW, sgc, sghw, sdc, sdhw, ACC: tl.constexpr,
                 BLOCK_HW: tl.constexpr):
    """grad_x[c, hw] = grad_y[c, hw] · s[c] + dp[c] / HW (dp: gradient of the pooled mean)."""
    dp_hw = dp / HW
    for hw0 in range(0, HW, BLOCK_HW):
        offs_hw = (hw0 + tl.arange(0, BLOCK_HW)).to(tl.int64)
        m = mask_c[:, None] & (offs_hw < HW)[None, :]
        g = tl.load(gy_base + offs_c[:, None] * sgc + offs_hw[None, :] * sghw, mask=m, other=0.0)
        out = g.to(ACC) * s[:, None] + dp_hw[:, None]
        tl.store(gx_base + offs_c[:, None] * sdc + offs_hw[None, :] * sdhw,
                 out.to(gx_base.dtype.element_ty), mask=m)


@triton.jit
def _shifted(vec_base, offs_c, offs_k, shift, C, K, SIGN: tl.constexpr):
    """[BLOCK_C, BLOCK_K] tile v[c + SIGN·(j − shift)], zero outside [0, C) and for j ≥ K.

    SIGN = 1: the conv's window p[c + j − h]; SIGN = −1: the transposed conv's dz[c − j + h].
    The window reaches past the program's own channels (in schedule (b), into its peers' slices).
    """
    idx = offs_c[:, None] + SIGN * (offs_k[None, :] - shift)
    m = (idx >= 0) & (idx < C) & (offs_k < K)[None, :]
    return tl.load(vec_base + idx, mask=m, other=0.0, cache_modifier=".cg")  # .cg: the halo may be a peer's


@triton.jit
def _taps_at(t_ptr, pos, k, ACC: tl.constexpr):
    """t[pos] where 0 ≤ pos < k, else 0 (a tap vector placed in a wider window)."""
    return tl.load(t_ptr + pos, mask=(pos >= 0) & (pos < k), other=0.0).to(ACC)


# ----------------------------------------------------------------------------------------------
# DynamicMultiKernelECA
# ----------------------------------------------------------------------------------------------
@triton.jit
def _dmk_eca_fwd_kernel(
    x_ptr,  # (N, C, HW) strided, x dtype
    y_ptr,  # (N, C, HW) strided, x dtype (out)
    fcw_ptr,  # (3, C) contiguous
    fcb_ptr,  # (3,) (unused unless HAS_BIAS)
    t0_ptr, t1_ptr, t2_ptr,  # (k0,), (k1,), (k2,) taps
    pooled_ptr,  # (N, C) ACC (out, saved for backward)
    s_ptr,  # (N, C) ACC (out, saved): the gate
    blend_ptr,  # (N, 3) ACC (out, saved): softmax(fc(p))
    sync_ptr,  # (N + 1,) int32: per-sample arrival counters, then the error flag (MULTI only)
    C, HW, k0, k1, k2, half,  # half = max(k) // 2
    P, chan_per_prog, max_spin,
    sxn, sxc, sxhw, syn, syc, syhw,
    HAS_BIAS: tl.constexpr, MULTI: tl.constexpr, ACC: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Program (n, j) of P per sample (P = 1 in schedule (a)) on channels [j·chan_per_prog, +chan_per_prog).
    Reads its x slice twice (pool; then scale, from L2 when the slabs in flight fit) and writes y
    once: 3·C·HW·|x| bytes per sample, plus O(C): the fc rows and the pooled vector (the whole
    sample's, for the blend logits; a halo of k//2 channels past the slice, for the conv), the taps."""
    pid = tl.program_id(0).to(tl.int64)
    n = pid // P
    j = pid % P
    c_lo = j * chan_per_prog
    c_hi = tl.minimum(c_lo + chan_per_prog, C)
    x_base = x_ptr + n * sxn
    y_base = y_ptr + n * syn
    p_base = pooled_ptr + n * C
    s_base = s_ptr + n * C
    # pass 1: pool this program's channels, meet (a timed-out program's blend, so its outputs, is NaN)
    poison = _pool_and_meet(x_base, p_base, c_lo, c_hi, HW, sxc, sxhw, sync_ptr, n, P, max_spin,
                            MULTI, ACC, BLOCK_C, BLOCK_HW)
    # the three blend logits: dot products of the whole pooled vector with the fc rows (every program)
    l0 = tl.zeros([BLOCK_C], dtype=ACC)
    l1 = tl.zeros([BLOCK_C], dtype=ACC)
    l2 = tl.zeros([BLOCK_C], dtype=ACC)
    for c0 in range(0, C, BLOCK_C):
        offs_c = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
        mask_c = offs_c < C
        p = tl.load(p_base + offs_c, mask=mask_c, other=0.0, cache_modifier=".cg")
        l0 += p * tl.load(fcw_ptr + offs_c, mask=mask_c, other=0.0).to(ACC)
        l1 += p * tl.load(fcw_ptr + C + offs_c, mask=mask_c, other=0.0).to(ACC)
        l2 += p * tl.load(fcw_ptr + 2 * C + offs_c, mask=mask_c, other=0.0).to(ACC)
    z0 = tl.sum(l0, axis=0) + poison
    z1 = tl.sum(l1, axis=0) + poison
    z2 = tl.sum(l2, axis=0) + poison
    if HAS_BIAS:
        z0 += tl.load(fcb_ptr).to(ACC)
        z1 += tl.load(fcb_ptr + 1).to(ACC)
        z2 += tl.load(fcb_ptr + 2).to(ACC)
    zm = tl.maximum(tl.maximum(z0, z1), z2)
    e0 = tl.exp(z0 - zm)
    e1 = tl.exp(z1 - zm)
    e2 = tl.exp(z2 - zm)
    tot = e0 + e1 + e2
    b0 = e0 / tot
    b1 = e1 / tot
    b2 = e2 / tot
    first = j == 0  # the per-sample outputs are stored by the sample's first program
    tl.store(blend_ptr + n * 3, b0, mask=first)
    tl.store(blend_ptr + n * 3 + 1, b1, mask=first)
    tl.store(blend_ptr + n * 3 + 2, b2, mask=first)
    # effective taps: Σ_i β_i t_i, each centred in the (2·half + 1)-wide window
    offs_k = tl.arange(0, BLOCK_K)
    taps = (b0 * _taps_at(t0_ptr, offs_k - (half - k0 // 2), k0, ACC)
            + b1 * _taps_at(t1_ptr, offs_k - (half - k1 // 2), k1, ACC)
            + b2 * _taps_at(t2_ptr, offs_k - (half - k2 // 2), k2, ACC))
    # pass 2: gate and scale this program's channel tiles
    for c0 in range(c_lo, c_hi, BLOCK_C):
        offs_c = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
        mask_c = offs_c < c_hi
        win = _shifted(p_base, offs_c, offs_k, half, C, 2 * half + 1, 1)
        s = _sigmoid(tl.sum(win * taps[None, :], axis=1))
        tl.store(s_base + offs_c, s, mask=mask_c)
        _scale_tile(x_base, y_base, s, offs_c, mask_c, HW, sxc, sxhw, syc, syhw, ACC, BLOCK_HW)


@triton.jit
def _dmk_eca_bwd_kernel(
    gy_ptr,  # (N, C, HW) strided: grad of y
    x_ptr,  # (N, C, HW) strided
    gx_ptr,  # (N, C, HW) strided (out)
    fcw_ptr,  # (3, C) contiguous
    t0_ptr, t1_ptr, t2_ptr,  # (k0,), (k1,), (k2,) taps
    pooled_ptr, s_ptr,  # (N, C) ACC, saved by the forward
    blend_ptr,  # (N, 3) ACC, saved by the forward
    dz_ptr,  # (N, C) ACC scratch: grad of the conv output z
    gpart_ptr,  # (N·P, BLOCK_K) ACC scratch: each program's part of the tap-gradient correlation G
    gt0_ptr, gt1_ptr, gt2_ptr,  # (N, k0), (N, k1), (N, k2) ACC (out): per-sample tap grads
    dl_ptr,  # (N, 3) ACC (out): per-sample grad of the fc logits
    sync_ptr,  # (N + 1,) int32 counters + error flag (MULTI only)
    C, HW, k0, k1, k2, half,
    P, chan_per_prog, max_spin,
    sgn, sgc, sghw, sxn, sxc, sxhw, sdn, sdc, sdhw,
    MULTI: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Program (n, j) as in the forward. Pass 1 reads grad_y and x of its slice (Σ_hw grad_y·x per
    channel); pass 2 reads grad_y again (from L2 when the slabs fit) and writes grad_x: 4·C·HW·|x|
    bytes per sample, plus O(C) vectors (pooled, s, dz with a k//2 halo), P partial G rows, the fc rows."""
    pid = tl.program_id(0).to(tl.int64)
    n = pid // P
    j = pid % P
    c_lo = j * chan_per_prog
    c_hi = tl.minimum(c_lo + chan_per_prog, C)
    gy_base = gy_ptr + n * sgn
    x_base = x_ptr + n * sxn
    gx_base = gx_ptr + n * sdn
    p_base = pooled_ptr + n * C
    s_base = s_ptr + n * C
    dz_base = dz_ptr + n * C
    kw = 2 * half + 1
    offs_k = tl.arange(0, BLOCK_K)
    # pass 1: dz = (Σ_hw grad_y·x) · s(1−s); G_j = Σ_c dz_c p_{c+j−half} (the tap-gradient correlation)
    # over this program's channels, published as its row of gpart
    g_acc = tl.zeros([BLOCK_K], dtype=ACC)
    for c0 in range(c_lo, c_hi, BLOCK_C):
        offs_c = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
        mask_c = offs_c < c_hi
        g = _dot_tile(gy_base, x_base, offs_c, mask_c, HW, sgc, sghw, sxc, sxhw, ACC, BLOCK_C, BLOCK_HW)
        s = tl.load(s_base + offs_c, mask=mask_c, other=0.0)
        dz = g * s * (1.0 - s)
        tl.store(dz_base + offs_c, dz, mask=mask_c)
        win = _shifted(p_base, offs_c, offs_k, half, C, kw, 1)
        g_acc += tl.sum(dz[:, None] * win, axis=0)
    tl.store(gpart_ptr + pid * BLOCK_K + offs_k, g_acc)
    # dz and the G row stored by every thread are read back below
    poison = _meet(sync_ptr, n, P, P, max_spin, MULTI)
    # the sample's G: its P rows summed in program order (every program: identical bits)
    g_acc = tl.zeros([BLOCK_K], dtype=ACC) + poison
    for q in range(0, P):
        g_acc += tl.load(gpart_ptr + (n * P + q) * BLOCK_K + offs_k, cache_modifier=".cg")
    first = j == 0
    b0 = tl.load(blend_ptr + n * 3)
    b1 = tl.load(blend_ptr + n * 3 + 1)
    b2 = tl.load(blend_ptr + n * 3 + 2)
    # branch i sees G shifted by (half − h_i): d t_i[j] = β_i G[j + half − h_i], dβ_i = Σ_j t_i[j] G[...]
    pos0 = offs_k - (half - k0 // 2)
    pos1 = offs_k - (half - k1 // 2)
    pos2 = offs_k - (half - k2 // 2)
    tw0 = _taps_at(t0_ptr, pos0, k0, ACC)
    tw1 = _taps_at(t1_ptr, pos1, k1, ACC)
    tw2 = _taps_at(t2_ptr, pos2, k2, ACC)
    tl.store(gt0_ptr + n * k0 + pos0, b0 * g_acc, mask=(pos0 >= 0) & (pos0 < k0) & first)
    tl.store(gt1_ptr + n * k1 + pos1, b1 * g_acc, mask=(pos1 >= 0) & (pos1 < k1) & first)
    tl.store(gt2_ptr + n * k2 + pos2, b2 * g_acc, mask=(pos2 >= 0) & (pos2 < k2) & first)
    db0 = tl.sum(tw0 * g_acc, axis=0)
    db1 = tl.sum(tw1 * g_acc, axis=0)
    db2 = tl.sum(tw2 * g_acc, axis=0)
    dot = b0 * db0 + b1 * db1 + b2 * db2  # softmax backward: dl_i = β_i (dβ_i − Σ_j β_j dβ_j)
    dl0 = b0 * (db0 - dot)
    dl1 = b1 * (db1 - dot)
    dl2 = b2 * (db2 - dot)
    tl.store(dl_ptr + n * 3, dl0, mask=first)
    tl.store(dl_ptr + n * 3 + 1, dl1, mask=first)
    tl.store(dl_ptr + n * 3 + 2, dl2, mask=first)
    taps = b0 * tw0 + b1 * tw1 + b2 * tw2
    # pass 2: dp = convᵀ(dz) + Wᵀ dl; grad_x = grad_y · s + dp / HW for this program's channels
    for c0 in range(c_lo, c_hi, BLOCK_C):
        offs_c = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
        mask_c = offs_c < c_hi
        win = _shifted(dz_base, offs_c, offs_k, half, C, kw, -1)
        dp = tl.sum(win * taps[None, :], axis=1)
        dp += dl0 * tl.load(fcw_ptr + offs_c, mask=mask_c, other=0.0).to(ACC)
        dp += dl1 * tl.load(fcw_ptr + C + offs_c, mask=mask_c, other=0.0).to(ACC)
        dp += dl2 * tl.load(fcw_ptr + 2 * C + offs_c, mask=mask_c, other=0.0).to(ACC)
        s = tl.load(s_base + offs_c, mask=mask_c, other=0.0)
        _grad_x_tile(gy_base, gx_base, s, dp + poison, offs_c, mask_c, HW, sgc, sghw, sdc, sdhw, ACC, BLOCK_HW)


# ----------------------------------------------------------------------------------------------
# BidirectionalECA
# ----------------------------------------------------------------------------------------------
@triton.jit
def _bi_eca_fwd_kernel(
    x_ptr,  # (N, C, HW) strided, x dtype
    y_ptr,  # (N, C, HW) strided, x dtype (out)
    wf_ptr, wb_ptr,  # (kf,), (kb,) taps of the forward / backward branch
    w1_ptr,  # (R, C) contiguous
    b1_ptr,  # (R,) (unused unless HAS_B1)
    w2_ptr,  # (2, R) contiguous
    b2_ptr,  # (2,) (unused unless HAS_B2)
    pooled_ptr,  # (N, C) ACC (out, saved)
    s_ptr,  # (N, C) ACC (out, saved): the gate
    hid_ptr,  # (N, R) ACC (out, saved): relu(W1 p + b1)
    a_ptr,  # (N, 2) ACC (out, saved): the branch blend softmax(W2 h + b2)
    sync_ptr,  # (groups + 1,) int32: per-group arrival counters, then the error flag (MULTI only)
    N, C, HW, R, kf, kb, half,  # half = max(kf, kb) // 2
    P, chan_per_prog, max_spin,
    sxn, sxc, sxhw, syn, syc, syhw,
    HAS_B1: tl.constexpr, HAS_B2: tl.constexpr, MULTI: tl.constexpr, ACC: tl.constexpr, GROUP: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_K: tl.constexpr, FC_C: tl.constexpr, FC_R: tl.constexpr,
):
    """Program (g, j) of P per group of GROUP samples (P = 1 in schedule (a)): samples [g·GROUP, +GROUP),
    channels [j·chan_per_prog, +chan_per_prog). Reads its x slice of each sample twice (pool; then
    scale, from L2 when the slabs in flight fit) and writes y once: 3·C·HW·|x| bytes per sample, plus
    the gate MLP's R·C weights once for its GROUP samples (every program of the group computes the
    MLP; from L2 after the first) and O(GROUP·(C + R)) vectors."""
    pid, grp, n0, c_lo, c_hi, offs_g, mask_g = _program_slice(N, C, P, chan_per_prog, GROUP)
    first = pid % P == 0  # the per-sample outputs (hidden, blend) are stored by the group's first program
    # pass 1: pool this program's channels of each sample of the group, meet (a timed-out program's hidden
    # and blend are NaN)
    for gi in range(0, GROUP):
        n = n0 + gi
        for c0 in range(c_lo, c_hi, BLOCK_C):
            offs_c = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
            mask_c = (offs_c < c_hi) & (n < N)
            p = _pool_tile(x_ptr + n * sxn, offs_c, mask_c, HW, sxc, sxhw, ACC, BLOCK_C, BLOCK_HW) / HW
            tl.store(pooled_ptr + n * C + offs_c, p, mask=mask_c)
    poison = _meet(sync_ptr, grp, P, P, max_spin, MULTI)
    # gate MLP of the group's samples over R chunks (every program, from the whole pooled vectors; each W1
    # tile read once for the group): h = relu(W1 p + b1) (saved), logits = W2 h + b2
    la = tl.zeros([GROUP, FC_R], dtype=ACC)
    lb = tl.zeros([GROUP, FC_R], dtype=ACC)
    for r0 in range(0, R, FC_R):
        offs_r = (r0 + tl.arange(0, FC_R)).to(tl.int64)
        mask_r = offs_r < R
        h = _group_matvec(w1_ptr, C, 1, pooled_ptr, C, offs_g, mask_g, offs_r, mask_r, 0, C, 0, 0, ACC,
                          GROUP, FC_R, FC_C)
        if HAS_B1:
            h += tl.load(b1_ptr + offs_r, mask=mask_r, other=0.0).to(ACC)[None, :]
        h = tl.maximum(h, 0.0) + poison
        tl.store(hid_ptr + offs_g[:, None] * R + offs_r[None, :], h, mask=mask_g[:, None] & mask_r[None, :] & first)
        la += h * tl.load(w2_ptr + offs_r, mask=mask_r, other=0.0).to(ACC)[None, :]
        lb += h * tl.load(w2_ptr + R + offs_r, mask=mask_r, other=0.0).to(ACC)[None, :]
    z0 = tl.sum(la, axis=1) + poison  # [GROUP] (R = 0 cannot happen: the reference requires a hidden width >= 1)
    z1 = tl.sum(lb, axis=1) + poison
    if HAS_B2:
        z0 += tl.load(b2_ptr).to(ACC)
        z1 += tl.load(b2_ptr + 1).to(ACC)
    a0 = _sigmoid(z0 - z1)  # softmax of two logits
    a1 = _sigmoid(z1 - z0)
    tl.store(a_ptr + offs_g * 2, a0, mask=mask_g & first)
    tl.store(a_ptr + offs_g * 2 + 1, a1, mask=mask_g & first)
    # window position j ↔ offset j − half. Forward branch: wf[j − (half − hf)]. Backward branch
    # Σ_j wb_j p_{c+hb−j}: offset j' − half = hb − j  →  wb[half + hb − j'] (reversed taps).
    offs_k = tl.arange(0, BLOCK_K)
    tf = _taps_at(wf_ptr, offs_k - (half - kf // 2), kf, ACC)
    tb = _taps_at(wb_ptr, half + kb // 2 - offs_k, kb, ACC)
    # pass 2: gate and scale this program's channels of each sample of the group
    offs_gi = tl.arange(0, GROUP)
    for gi in range(0, GROUP):
        n = n0 + gi
        if n < N:  # the last group may be ragged (the conv window below is masked to [0, C) only)
            a0n = tl.sum(tl.where(offs_gi == gi, a0, 0.0), axis=0)
            a1n = tl.sum(tl.where(offs_gi == gi, a1, 0.0), axis=0)
            for c0 in range(c_lo, c_hi, BLOCK_C):
                offs_c = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
                mask_c = offs_c < c_hi
                win = _shifted(pooled_ptr + n * C, offs_c, offs_k, half, C, 2 * half + 1, 1)
                f = _sigmoid(tl.sum(win * tf[None, :], axis=1))
                b = _sigmoid(tl.sum(win * tb[None, :], axis=1))
                s = _sigmoid(a0n * f + a1n * b)
                tl.store(s_ptr + n * C + offs_c, s, mask=mask_c)
                _scale_tile(x_ptr + n * sxn, y_ptr + n * syn, s, offs_c, mask_c, HW, sxc, sxhw, syc, syhw, ACC,
                            BLOCK_HW)


@triton.jit
def _bi_eca_bwd_kernel(
    gy_ptr,  # (N, C, HW) strided: grad of y
    x_ptr,  # (N, C, HW) strided
    gx_ptr,  # (N, C, HW) strided (out)
    wf_ptr, wb_ptr,  # (kf,), (kb,) taps
    w1_ptr,  # (R, C) contiguous
    w2_ptr,  # (2, R) contiguous
    pooled_ptr, s_ptr,  # (N, C) ACC, saved
    hid_ptr,  # (N, R) ACC, saved
    a_ptr,  # (N, 2) ACC, saved
    dzf_ptr, dzb_ptr,  # (N, C) ACC scratch: grads of the two branches' conv outputs
    dp_ptr,  # (N, C) ACC scratch: W1ᵀ dh, the MLP's part of the pooled gradient
    part_ptr,  # (groups·P·GROUP, 2·BLOCK_K + 1) ACC scratch: per program and sample, its parts of the two tap
               # correlations and of Σ du·(f − b)
    gtf_ptr, gtb_ptr,  # (N, kf), (N, kb) ACC (out): per-sample tap grads
    dl_ptr,  # (N, 2) ACC (out): grad of the blend logits
    dh_ptr,  # (N, R) ACC (out): grad of the hidden pre-activation
    sync_ptr,  # (groups + 1,) int32 counters + error flag (MULTI only)
    N, C, HW, R, kf, kb, half,
    P, chan_per_prog, max_spin,
    sgn, sgc, sghw, sxn, sxc, sxhw, sdn, sdc, sdhw,
    MULTI: tl.constexpr, ACC: tl.constexpr, GROUP: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
    BLOCK_K: tl.constexpr, FC_C: tl.constexpr, FC_R: tl.constexpr,
):
    """Program (g, j) as in the forward. Pass 1 reads grad_y and x of its slice, pass 2 reads grad_y
    again and writes grad_x: 4·C·HW·|x| bytes per sample, plus W1's columns of its slice once for its
    GROUP samples, P partial rows per sample and O(GROUP·(C + R)) vectors."""
    pid, grp, n0, c_lo, c_hi, offs_g, mask_g = _program_slice(N, C, P, chan_per_prog, GROUP)
    first = pid % P == 0  # the per-sample outputs (tap and blend grads) are stored by the group's first program
    kw = 2 * half + 1
    offs_k = tl.arange(0, BLOCK_K)
    posf = offs_k - (half - kf // 2)
    posb = half + kb // 2 - offs_k
    tf = _taps_at(wf_ptr, posf, kf, ACC)
    tb = _taps_at(wb_ptr, posb, kb, ACC)
    row = 2 * BLOCK_K + 1
    # pass 1, each sample of the group: du = (Σ_hw grad_y·x) s(1−s); recompute f, b from p; branch and
    # blend grads over this program's channels, published as its row of part for the sample:
    # [gf (BLOCK_K), gb (BLOCK_K), Σ du·(f − b)]
    for gi in range(0, GROUP):
        n = n0 + gi
        if n < N:
            a0 = tl.load(a_ptr + n * 2)
            a1 = tl.load(a_ptr + n * 2 + 1)
            gf = tl.zeros([BLOCK_K], dtype=ACC)
            gb = tl.zeros([BLOCK_K], dtype=ACC)
            dfb = tl.zeros([BLOCK_C], dtype=ACC)
            for c0 in range(c_lo, c_hi, BLOCK_C):
                offs_c = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
                mask_c = offs_c < c_hi
                g = _dot_tile(gy_ptr + n * sgn, x_ptr + n * sxn, offs_c, mask_c, HW, sgc, sghw, sxc, sxhw, ACC,
                              BLOCK_C, BLOCK_HW)
                s = tl.load(s_ptr + n * C + offs_c, mask=mask_c, other=0.0)
                du = g * s * (1.0 - s)
                win = _shifted(pooled_ptr + n * C, offs_c, offs_k, half, C, kw, 1)
                f = _sigmoid(tl.sum(win * tf[None, :], axis=1))
                b = _sigmoid(tl.sum(win * tb[None, :], axis=1))
                dfb += du * (f - b)  # masked channels: du = 0
                dzf = du * a0 * f * (1.0 - f)
                dzb = du * a1 * b * (1.0 - b)
                tl.store(dzf_ptr + n * C + offs_c, dzf, mask=mask_c)
                tl.store(dzb_ptr + n * C + offs_c, dzb, mask=mask_c)
                gf += tl.sum(dzf[:, None] * win, axis=0)
                gb += tl.sum(dzb[:, None] * win, axis=0)
            part = part_ptr + (pid * GROUP + gi) * row
            tl.store(part + offs_k, gf)
            tl.store(part + BLOCK_K + offs_k, gb)
            tl.store(part + 2 * BLOCK_K, tl.sum(dfb, axis=0))
    # dzf, dzb and the part rows stored by every thread are read back below
    poison = _meet(sync_ptr, grp, P, P, max_spin, MULTI)
    # each sample's sums: its P rows in program order (every program: identical bits); the blend-logit
    # grads; the hidden grads dh = (W2ᵀ dl) · [h > 0] (ReLU backward), stored for dW1/db1 and for dp below
    # (every program stores the same bits; a timed-out one stores NaN)
    for gi in range(0, GROUP):
        n = n0 + gi
        if n < N:
            gf = tl.zeros([BLOCK_K], dtype=ACC) + poison
            gb = tl.zeros([BLOCK_K], dtype=ACC) + poison
            gd = tl.sum(gf, axis=0) * 0.0  # an ACC-typed 0 (NaN when poisoned): loop-carried types must not change
            for q in range(0, P):
                base = part_ptr + ((grp * P + q) * GROUP + gi) * row
                gf += tl.load(base + offs_k, cache_modifier=".cg")
                gb += tl.load(base + BLOCK_K + offs_k, cache_modifier=".cg")
                gd += tl.load(base + 2 * BLOCK_K, cache_modifier=".cg")
            tl.store(gtf_ptr + n * kf + posf, gf, mask=(posf >= 0) & (posf < kf) & first)
            tl.store(gtb_ptr + n * kb + posb, gb, mask=(posb >= 0) & (posb < kb) & first)
            a0 = tl.load(a_ptr + n * 2)
            a1 = tl.load(a_ptr + n * 2 + 1)
            # softmax of two logits: dl0 = a0·(g0 − a0·g0 − a1·g1) = a0·a1·(g0 − g1) = −dl1, with g0 − g1 =
            # Σ du·(f − b) summed as one sum: Σ du·f and Σ du·b are each far larger than their difference
            # (f ≈ b), so subtracting the two sums (as eager's softmax backward does) keeps mostly their rounding
            # errors. fp32 (2, 1100, 7, 7), interpreter, vs float64, seeds 0 / 1: grad_w2 off by 5e-4 / 1e-3 of
            # its largest element in eager, 1.5e-4 (seed 0) as two sums, 3e-6 / 1.2e-5 as one. (The two-sum
            # form failed the H200 parity test at 2.8x eager's error.)
            dl0 = a0 * a1 * gd
            dl1 = -dl0
            tl.store(dl_ptr + n * 2, dl0, mask=first)
            tl.store(dl_ptr + n * 2 + 1, dl1, mask=first)
            for r0 in range(0, R, FC_R):
                offs_r = (r0 + tl.arange(0, FC_R)).to(tl.int64)
                mask_r = offs_r < R
                h = tl.load(hid_ptr + n * R + offs_r, mask=mask_r, other=0.0)
                dh = (dl0 * tl.load(w2_ptr + offs_r, mask=mask_r, other=0.0).to(ACC)
                      + dl1 * tl.load(w2_ptr + R + offs_r, mask=mask_r, other=0.0).to(ACC))
                tl.store(dh_ptr + n * R + offs_r, tl.where(h > 0, dh, 0.0), mask=mask_r)
    tl.debug_barrier()  # dh stored by every thread is read back below
    # the MLP's part of the pooled gradient, W1ᵀ dh, for this program's channels of the group's samples
    # (each W1 tile read once for the group); the program reads it back alone, in pass 2
    for c0 in range(c_lo, c_hi, FC_C):
        offs_c = (c0 + tl.arange(0, FC_C)).to(tl.int64)
        mask_c = offs_c < c_hi
        dpm = _group_matvec(w1_ptr, 1, C, dh_ptr, R, offs_g, mask_g, offs_c, mask_c, 0, R, 0, 0, ACC,
                            GROUP, FC_C, FC_R)
        tl.store(dp_ptr + offs_g[:, None] * C + offs_c[None, :], dpm, mask=mask_g[:, None] & mask_c[None, :])
    tl.debug_barrier()  # dp stored by every thread is read back below
    # pass 2, each sample of the group: dp = convᵀ_f(dzf) + convᵀ_b(dzb) + W1ᵀ dh; grad_x = grad_y · s + dp / HW
    for gi in range(0, GROUP):
        n = n0 + gi
        if n < N:
            for c0 in range(c_lo, c_hi, BLOCK_C):
                offs_c = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
                mask_c = offs_c < c_hi
                dp = tl.sum(_shifted(dzf_ptr + n * C, offs_c, offs_k, half, C, kw, -1) * tf[None, :], axis=1)
                dp += tl.sum(_shifted(dzb_ptr + n * C, offs_c, offs_k, half, C, kw, -1) * tb[None, :], axis=1)
                dp += tl.load(dp_ptr + n * C + offs_c, mask=mask_c, other=0.0)
                s = tl.load(s_ptr + n * C + offs_c, mask=mask_c, other=0.0)
                _grad_x_tile(gy_ptr + n * sgn, gx_ptr + n * sdn, s, dp + poison, offs_c, mask_c, HW, sgc, sghw, sdc,
                             sdhw, ACC, BLOCK_HW)


# ----------------------------------------------------------------------------------------------
# Launch settings and layout
# ----------------------------------------------------------------------------------------------


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _settings(channels: int, hw: int, stride_c: int, block_k: int) -> dict:
    """Tile shape from one heuristic: the contiguous axis gets the long side of a ≤ _TILE-element tile
    (HW for NCHW, C for channels_last), the [BLOCK_C, BLOCK_K] conv window stays ≤ _TILE_K."""
    k_cap = max(1, _TILE_K // block_k)
    if stride_c == 1 and channels > 1 and hw > 1:  # channels_last: channels are contiguous
        block_c = min(_next_pow2(channels), 256, k_cap)
        block_hw = max(1, min(_next_pow2(hw), _MAX_BLOCK_HW, _TILE // block_c))
    else:
        block_hw = min(_next_pow2(hw), _MAX_BLOCK_HW)
        block_c = max(1, min(_next_pow2(channels), _TILE // block_hw, k_cap))
    return dict(BLOCK_C=block_c, BLOCK_HW=block_hw, BLOCK_K=block_k,
                num_warps=8 if block_c * block_hw >= 4096 else 4)


def _launch_cfg(n: int, channels: int, hw: int, stride_c: int, block_k: int, device: torch.device) -> dict:
    """Tiles (``_settings``) and the schedule: (b) with P programs per sample on a GPU when the batch is
    small and a sample has ≥ 2 channel tiles (ops/_split.py), else (a)."""
    cfg = _settings(channels, hw, stride_c, block_k)
    multi, p, per = _split_plan(n, channels, cfg["BLOCK_C"], _device_sms(device), _schedule_mode())
    return dict(cfg, MULTI=multi, P=p, chan_per_prog=per)


def _bi_launch_cfg(n: int, channels: int, hw: int, r: int, stride_c: int, block_k: int, device: torch.device,
                   x_bytes: int, w_bytes: int) -> dict:
    """BiECA's launch: ``_launch_cfg``'s tiles, then ``_split.group_plan``: GROUP samples per program (on
    the bytes of a sample of x and of W1, which every program reads whole), the schedule over the
    groups, and the [GROUP, FC_R, FC_C] tiles of the MLP (≤ _TILE_K elements)."""
    cfg = _settings(channels, hw, stride_c, block_k)
    return dict(cfg, **_group_plan(n, channels, cfg["BLOCK_C"], r, _device_sms(device), _schedule_mode(), x_bytes,
                                   w_bytes, _TILE_K))


def _bi_sizes(x: torch.Tensor, w1: torch.Tensor) -> dict:
    """The byte counts BiECA groups samples by: one sample of x, and W1 (W2 is 2·R: negligible)."""
    x_bytes = x.shape[1] * int(torch.Size(x.shape[2:]).numel()) * x.element_size()
    return dict(x_bytes=x_bytes, w_bytes=w1.numel() * w1.element_size())


def _check_x(x: torch.Tensor) -> None:
    if x.dtype not in _X_DTYPES:
        raise TypeError(f"the triton kernel supports x of dtype float16/bfloat16/float32/float64, got {x.dtype}")


def _taps_vec(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).contiguous()


def _sum_like(partial: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """Batch sum of a per-sample fp32 partial (N, ...) → param's shape and dtype."""
    return partial.sum(0).reshape(param.shape).to(param.dtype)


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------
def dmk_eca_forward(x, fc_weight, fc_bias, taps3, taps5, taps7, *, _split: int = 0):
    """(y, pooled, s, blend): y like x; pooled, s (N, C) and blend (N, 3) in the accumulation dtype.
    ``_split``: test hook, see ``_split.launch``."""
    _check_x(x)
    n, c = x.shape[:2]
    hw = int(torch.Size(x.shape[2:]).numel())
    acc = _acc_dtype(x)
    y, y_buf, sy = _out_like(x)
    pooled = _alloc.empty((n, c), dtype=acc, device=x.device)
    s = _alloc.empty((n, c), dtype=acc, device=x.device)
    blend = _alloc.empty((n, 3), dtype=acc, device=x.device)
    if n == 0 or c == 0:
        if n:  # no channels: the blend is softmax(bias) (or uniform), the rest is empty
            logits = fc_bias.to(acc) if fc_bias is not None else torch.zeros(3, dtype=acc, device=x.device)
            blend.copy_(torch.softmax(logits, 0).expand(n, 3))
        return y, pooled, s, blend
    xk, sx = _as_flat(x)
    taps = [_taps_vec(t) for t in (taps3, taps5, taps7)]
    ks = [t.numel() for t in taps]
    half = max(ks) // 2
    cfg = _launch_cfg(n, c, hw, sx[1], _next_pow2(2 * half + 1), x.device)
    fcw = fc_weight.contiguous()
    fcb = fc_bias.contiguous() if fc_bias is not None else fcw
    _launch(_dmk_eca_fwd_kernel, xk, n, c, cfg,
            lambda sync, p, per, spin: (xk, y_buf, fcw, fcb, *taps, pooled, s, blend, sync,
                                        c, hw, *ks, half, p, per, spin, *sx, *sy),
            dict(HAS_BIAS=int(fc_bias is not None), ACC=tl.float64 if acc == torch.float64 else tl.float32),
            "DynamicMultiKernelECA", _split, (y_buf, s, blend))
    if y_buf is not y:
        y.copy_(y_buf)
    return y, pooled, s, blend


def dmk_eca_backward(grad_y, x, fc_weight, taps3, taps5, taps7, pooled, s, blend, *, _split: int = 0):
    """(grad_x, grad_fc_weight, grad_fc_bias, grad_taps3, grad_taps5, grad_taps7), each in its input's
    dtype (grad_fc_bias in fc_weight's). ``_split``: test hook, see ``_split.launch``."""
    n, c = x.shape[:2]
    hw = int(torch.Size(x.shape[2:]).numel())
    acc = pooled.dtype
    gx, gx_buf, sd = _out_like(x)
    taps = [_taps_vec(t) for t in (taps3, taps5, taps7)]
    ks = [t.numel() for t in taps]
    gts = [_alloc.empty((n, k), dtype=acc, device=x.device) for k in ks]
    dl = _alloc.empty((n, 3), dtype=acc, device=x.device)
    if n == 0 or c == 0:
        gx.zero_()
        for g in gts:
            g.zero_()
        dl.zero_()
    else:
        xk, sx = _as_flat(x)
        gyk, sg = _as_flat(grad_y)
        half = max(ks) // 2
        cfg = _launch_cfg(n, c, hw, sx[1], _next_pow2(2 * half + 1), x.device)
        p_max = _split or cfg["P"]  # rows of gpart: one per program (the emulated split's P <= _split)
        dz = _alloc.empty((n, c), dtype=acc, device=x.device)
        gpart = _alloc.empty((n * p_max, cfg["BLOCK_K"]), dtype=acc, device=x.device)
        fcw = fc_weight.contiguous()
        _launch(_dmk_eca_bwd_kernel, gyk, n, c, cfg,
                lambda sync, p, per, spin: (gyk, xk, gx_buf, fcw, *taps, pooled, s, blend, dz, gpart, *gts, dl,
                                            sync, c, hw, *ks, half, p, per, spin, *sg, *sx, *sd),
                dict(ACC=tl.float64 if acc == torch.float64 else tl.float32),
                "DynamicMultiKernelECA", _split, (gx_buf, *gts, dl))
        if gx_buf is not gx:
            gx.copy_(gx_buf)
    grad_w = (dl.t() @ pooled).to(fc_weight.dtype)  # Σ_n dl_n ⊗ p_n, one deterministic GEMM
    grad_b = dl.sum(0).to(fc_weight.dtype)
    return (gx, grad_w, grad_b) + tuple(_sum_like(g, t) for g, t in zip(gts, (taps3, taps5, taps7)))


def bi_eca_forward(x, w_fwd, w_bwd, w1, b1, w2, b2, *, _split: int = 0):
    """(y, pooled, s, hidden, blend): pooled, s (N, C), hidden (N, R), blend (N, 2), accumulation dtype.
    ``_split``: test hook, see ``_split.launch``."""
    _check_x(x)
    n, c = x.shape[:2]
    hw = int(torch.Size(x.shape[2:]).numel())
    r = w1.shape[0]
    acc = _acc_dtype(x)
    y, y_buf, sy = _out_like(x)
    pooled = _alloc.empty((n, c), dtype=acc, device=x.device)
    s = _alloc.empty((n, c), dtype=acc, device=x.device)
    hidden = _alloc.empty((n, r), dtype=acc, device=x.device)
    blend = _alloc.empty((n, 2), dtype=acc, device=x.device)
    if n == 0 or c == 0:
        if n:  # no channels: p is empty, the MLP sees only its biases
            h = torch.relu(b1.to(acc)) if b1 is not None else torch.zeros(r, dtype=acc, device=x.device)
            hidden.copy_(h.expand(n, r))
            logits = h @ w2.to(acc).t() + (b2.to(acc) if b2 is not None else 0)
            blend.copy_(torch.softmax(logits, 0).expand(n, 2))
        return y, pooled, s, hidden, blend
    xk, sx = _as_flat(x)
    tf, tb = _taps_vec(w_fwd), _taps_vec(w_bwd)
    kf, kb = tf.numel(), tb.numel()
    half = max(kf, kb) // 2
    cfg = _bi_launch_cfg(n, c, hw, r, sx[1], _next_pow2(2 * half + 1), x.device, **_bi_sizes(x, w1))
    w1c, w2c = w1.contiguous(), w2.contiguous()
    b1c = b1.contiguous() if b1 is not None else w1c  # the kernel reads the biases at unit stride
    b2c = b2.contiguous() if b2 is not None else w2c
    _launch(_bi_eca_fwd_kernel, xk, _cdiv(n, cfg["GROUP"]), c, cfg,
            lambda sync, p, per, spin: (xk, y_buf, tf, tb, w1c, b1c, w2c, b2c, pooled, s, hidden, blend, sync,
                                        n, c, hw, r, kf, kb, half, p, per, spin, *sx, *sy),
            dict(HAS_B1=int(b1 is not None), HAS_B2=int(b2 is not None),
                 ACC=tl.float64 if acc == torch.float64 else tl.float32),
            "BidirectionalECA", _split, (y_buf, s, hidden, blend))
    if y_buf is not y:
        y.copy_(y_buf)
    return y, pooled, s, hidden, blend


def bi_eca_backward(grad_y, x, w_fwd, w_bwd, w1, w2, pooled, s, hidden, blend, *, _split: int = 0):
    """(grad_x, grad_w_fwd, grad_w_bwd, grad_w1, grad_b1, grad_w2, grad_b2), each in its input's dtype
    (bias grads in their weight's). ``_split``: test hook, see ``_split.launch``."""
    n, c = x.shape[:2]
    hw = int(torch.Size(x.shape[2:]).numel())
    r = w1.shape[0]
    acc = pooled.dtype
    gx, gx_buf, sd = _out_like(x)
    tf, tb = _taps_vec(w_fwd), _taps_vec(w_bwd)
    kf, kb = tf.numel(), tb.numel()
    gtf = _alloc.empty((n, kf), dtype=acc, device=x.device)
    gtb = _alloc.empty((n, kb), dtype=acc, device=x.device)
    dl = _alloc.empty((n, 2), dtype=acc, device=x.device)
    dh = _alloc.empty((n, r), dtype=acc, device=x.device)
    if n == 0 or c == 0:
        for t in (gx, gtf, gtb, dl, dh):
            t.zero_()
    else:
        xk, sx = _as_flat(x)
        gyk, sg = _as_flat(grad_y)
        half = max(kf, kb) // 2
        cfg = _bi_launch_cfg(n, c, hw, r, sx[1], _next_pow2(2 * half + 1), x.device, **_bi_sizes(x, w1))
        groups = _cdiv(n, cfg["GROUP"])
        p_max = _split or cfg["P"]
        dzf = _alloc.empty((n, c), dtype=acc, device=x.device)
        dzb = _alloc.empty((n, c), dtype=acc, device=x.device)
        dp = _alloc.empty((n, c), dtype=acc, device=x.device)
        part = _alloc.empty((groups * p_max * cfg["GROUP"], 2 * cfg["BLOCK_K"] + 1), dtype=acc, device=x.device)
        w1c, w2c = w1.contiguous(), w2.contiguous()
        _launch(_bi_eca_bwd_kernel, gyk, groups, c, cfg,
                lambda sync, p, per, spin: (gyk, xk, gx_buf, tf, tb, w1c, w2c, pooled, s, hidden, blend,
                                            dzf, dzb, dp, part, gtf, gtb, dl, dh, sync, n, c, hw, r, kf, kb, half,
                                            p, per, spin, *sg, *sx, *sd),
                dict(ACC=tl.float64 if acc == torch.float64 else tl.float32),
                "BidirectionalECA", _split, (gx_buf, gtf, gtb, dl, dh))
        if gx_buf is not gx:
            gx.copy_(gx_buf)
    return (gx, _sum_like(gtf, w_fwd), _sum_like(gtb, w_bwd),
            (dh.t() @ pooled).to(w1.dtype), dh.sum(0).to(w1.dtype),
            (dl.t() @ hidden).to(w2.dtype), dl.sum(0).to(w2.dtype))


# ----------------------------------------------------------------------------------------------
# torch.library registration: forward and backward as custom ops, fake kernels, autograd
# ----------------------------------------------------------------------------------------------
_T4 = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
_T5 = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
_T6 = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
_T7 = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]

def _fake_like(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("attn_kernels::dmk_eca_fwd", mutates_args=())
def _dmk_eca_fwd_op(x: torch.Tensor, fc_weight: torch.Tensor, fc_bias: Optional[torch.Tensor],
                    taps3: torch.Tensor, taps5: torch.Tensor, taps7: torch.Tensor) -> _T4:
    return tuple(dmk_eca_forward(x, fc_weight, fc_bias, taps3, taps5, taps7))


@_dmk_eca_fwd_op.register_fake
def _(x, fc_weight, fc_bias, taps3, taps5, taps7):
    n, c = x.shape[:2]
    acc = _acc_dtype(x)
    return (_fake_like(x), x.new_empty((n, c), dtype=acc), x.new_empty((n, c), dtype=acc),
            x.new_empty((n, 3), dtype=acc))


@torch.library.custom_op("attn_kernels::dmk_eca_bwd", mutates_args=())
def _dmk_eca_bwd_op(grad_y: torch.Tensor, x: torch.Tensor, fc_weight: torch.Tensor, taps3: torch.Tensor,
                    taps5: torch.Tensor, taps7: torch.Tensor, pooled: torch.Tensor, s: torch.Tensor,
                    blend: torch.Tensor) -> _T6:
    return tuple(dmk_eca_backward(grad_y, x, fc_weight, taps3, taps5, taps7, pooled, s, blend))


@_dmk_eca_bwd_op.register_fake
def _(grad_y, x, fc_weight, taps3, taps5, taps7, pooled, s, blend):
    return (_fake_like(x), torch.empty_like(fc_weight), fc_weight.new_empty((3,)),
            torch.empty_like(taps3), torch.empty_like(taps5), torch.empty_like(taps7))


def _dmk_setup(ctx, inputs, output):
    x, fc_weight, fc_bias, taps3, taps5, taps7 = inputs
    _, pooled, s, blend = output
    ctx.has_bias = fc_bias is not None
    ctx.save_for_backward(x, fc_weight, taps3, taps5, taps7, pooled, s, blend)


def _dmk_backward(ctx, grad_y, *_, bwd=None):
    x, fc_weight, taps3, taps5, taps7, pooled, s, blend = ctx.saved_tensors
    gx, gw, gb, g3, g5, g7 = (bwd or torch.ops.attn_kernels.dmk_eca_bwd)(
        grad_y, x, fc_weight, taps3, taps5, taps7, pooled, s, blend)
    return gx, gw, (gb if ctx.has_bias else None), g3, g5, g7


_dmk_eca_fwd_op.register_autograd(_dmk_backward, setup_context=_dmk_setup)


@torch.library.custom_op("attn_kernels::bi_eca_fwd", mutates_args=())
def _bi_eca_fwd_op(x: torch.Tensor, w_fwd: torch.Tensor, w_bwd: torch.Tensor, w1: torch.Tensor,
                   b1: Optional[torch.Tensor], w2: torch.Tensor, b2: Optional[torch.Tensor]) -> _T5:
    return tuple(bi_eca_forward(x, w_fwd, w_bwd, w1, b1, w2, b2))


@_bi_eca_fwd_op.register_fake
def _(x, w_fwd, w_bwd, w1, b1, w2, b2):
    n, c = x.shape[:2]
    acc = _acc_dtype(x)
    return (_fake_like(x), x.new_empty((n, c), dtype=acc), x.new_empty((n, c), dtype=acc),
            x.new_empty((n, w1.shape[0]), dtype=acc), x.new_empty((n, 2), dtype=acc))


@torch.library.custom_op("attn_kernels::bi_eca_bwd", mutates_args=())
def _bi_eca_bwd_op(grad_y: torch.Tensor, x: torch.Tensor, w_fwd: torch.Tensor, w_bwd: torch.Tensor,
                   w1: torch.Tensor, w2: torch.Tensor, pooled: torch.Tensor, s: torch.Tensor,
                   hidden: torch.Tensor, blend: torch.Tensor) -> _T7:
    return tuple(bi_eca_backward(grad_y, x, w_fwd, w_bwd, w1, w2, pooled, s, hidden, blend))


@_bi_eca_bwd_op.register_fake
def _(grad_y, x, w_fwd, w_bwd, w1, w2, pooled, s, hidden, blend):
    return (_fake_like(x), torch.empty_like(w_fwd), torch.empty_like(w_bwd), torch.empty_like(w1),
            w1.new_empty((w1.shape[0],)), torch.empty_like(w2), w2.new_empty((2,)))


def _bi_setup(ctx, inputs, output):
    x, w_fwd, w_bwd, w1, b1, w2, b2 = inputs
    _, pooled, s, hidden, blend = output
    ctx.has_b1, ctx.has_b2 = b1 is not None, b2 is not None
    ctx.save_for_backward(x, w_fwd, w_bwd, w1, w2, pooled, s, hidden, blend)


def _bi_backward(ctx, grad_y, *_, bwd=None):
    x, w_fwd, w_bwd, w1, w2, pooled, s, hidden, blend = ctx.saved_tensors
    gx, gf, gb, gw1, gb1, gw2, gb2 = (bwd or torch.ops.attn_kernels.bi_eca_bwd)(
        grad_y, x, w_fwd, w_bwd, w1, w2, pooled, s, hidden, blend)
    return gx, gf, gb, gw1, (gb1 if ctx.has_b1 else None), gw2, (gb2 if ctx.has_b2 else None)


_bi_eca_fwd_op.register_autograd(_bi_backward, setup_context=_bi_setup)
# Eager calls skip the ops' dispatch (``_eager``): same launchers, same formulas.
_DMK = _eager.OpSpec(torch.ops.attn_kernels.dmk_eca_fwd, dmk_eca_forward, _dmk_setup, _dmk_backward,
                     dmk_eca_backward)
_BI = _eager.OpSpec(torch.ops.attn_kernels.bi_eca_fwd, bi_eca_forward, _bi_setup, _bi_backward, bi_eca_backward)


# ----------------------------------------------------------------------------------------------
# Public entry points (the ``triton`` backend of functional.dmk_eca / functional.bi_eca)
# ----------------------------------------------------------------------------------------------
def dmk_eca(x, fc_weight, fc_bias, taps3, taps5, taps7) -> torch.Tensor:
    """Fused DynamicMultiKernelECA; arguments as ``reference.dmk_eca`` (validated by the caller)."""
    return _eager.call(_DMK, x, fc_weight, fc_bias, taps3, taps5, taps7)[0]


def bi_eca(x, w_fwd, w_bwd, w1, b1, w2, b2) -> torch.Tensor:
    """Fused BidirectionalECA; arguments as ``reference.bi_eca`` (validated by the caller)."""
    return _eager.call(_BI, x, w_fwd, w_bwd, w1, b1, w2, b2)[0]
