"""Triton CBAM (channel attention, then spatial attention): one launch forward, one launch backward.

    ca = σ(W2 relu(W1 avg_hw(x)) + W2 relu(W1 max_hw(x)))           (N, C)  channel attention
    x1 = x · ca
    d  = [mean_c(x1), max_c(x1)]                                     (N, 2, *spatial)
    sa = σ(conv_{k×…×k}(d, spatial_weight), zero padding k//2)       (N, 1, *spatial)  spatial attention
    y  = x1 · sa

Channel attention has SE's global dependency (no channel's ca before every channel is pooled), spatial
attention another one across channels (d of a pixel needs every channel) and a k×k pixel halo. The
kernels run on SE's two schedules (ops/_split.py), chosen per call and passed as the constexpr ``MULTI``:
(a) one program per sample (per group of samples, below; P = 1): no cross-program communication; the
    schedule under ``TRITON_INTERPRET=1``. Stages hand vectors to the next through small fp32 buffers
    read back after ``tl.debug_barrier()`` (same program, other threads).
(b) GPU, small batch: P programs per sample group (``split_plan`` on the channel tiles, groups·P ≤ SMs
    / 2). Program j owns a channel slice (whole BLOCK_C tiles) and a pixel slice (whole tiles of the
    pixel passes; see "Pixel slices"). The passes alternate between the two kinds of slice, so the
    group's programs meet at its counter between them (``sample_sync``; the k-th meeting waits for k·P
    arrivals), and a program reads what its peers published with ``.cg`` loads (past L1). Meetings
    (``meetings(GROUP)``): forward 1 + one per sample, backward two per sample + 1 — 2 and 3 for one
    sample.

Sample groups: a program serves GROUP consecutive samples (``_split.sample_group`` on the bytes of W1 +
W2, which every program reads whole, against a sample of x: as SE, ≤ 16, with its two GPU caps). It
pools all of them, runs the shared MLP for all of them at once on [GROUP, FC_R, FC_C] tiles (each weight
tile read once for the avg and max branches of every sample: ``_pair_matvec``), then runs the pixel
passes and scaling sample after sample; the backward likewise runs passes 1-3 sample after sample, the
MLP backward and W1ᵀ for the group, then pass 4 sample after sample. Without it every sample reads the
MLP weights from L2: at the 7×7 stage (C = 2048, R = 128) 2 MB of fp32 weights against 200 KB of bf16
x. The price: a sample's x is pooled GROUP samples before its descriptor pass re-reads it, and in
the backward its x and grad_y are read in pass 3 GROUP samples before pass 4 re-reads them (L2 reuse
distance GROUP slabs, as in SE). Not measured: no GPU has run CBAM.

Forward, one launch: pass A (channel slice) pools avg / max per channel → meet → the MLP in every
program, from the whole pooled vectors: hidden pre-activations pa = W1·avg, pm = W1·max, h = relu(pa) +
relu(pm), and ca for all C (identical bits in every program, each into its own scratch rows [h | ca]
that it alone reads back; the first program stores the per-sample outputs) → pass B (pixel slice)
the channel mean / max of x·ca per pixel → d (fp32, saved) → meet → pass C (pixel slice) the k×k conv
of d (a [pixels, ≤ 256 taps] gather tile, looped; the k//2 halo of d from the peers' pixels) → sa,
then y = x·ca·sa. Why every program computes all of ca rather than its channel slice: pass B needs
ca of every channel, so sharing slices would cost a third meeting (a grid-wide wait) to save one R·C
GEMV per program — the size of the pa / pm GEMV every program does anyway, with W2 from L2 after the
first program.
Backward, one launch: (1, pixel slice) Σ_c grad_y·x1 per pixel → dz_s = ·sa(1−sa), and the count of
channels tied at the channel max → meet → (2, pixel slice) the transposed conv → grad d (the halo of
dz_s from the peers' pixels), and the spatial taps' gradient partial Σ_p dz_s[p]·d[p+off] over the
slice, one row per program → meet → the first program sums the P rows in program order; (3, channel
slice) grad x1 = grad_y·sa + grad_mean/C + grad_max·[x1 = max]/ties → Σ_hw grad x1·x = grad ca → dz,
and the count of pixels tied at each channel's spatial max → meet → the MLP backward in every program
from the whole dz (grads of the two hidden pre-activations, into its own row; the first program
stores them) → (4, channel slice) grad_x = grad x1·ca + grad_avg/HW + grad_max·[x = max]/ties.
In schedule (a) each meeting is a ``tl.debug_barrier()``. In (b) a program whose wait timed out sets
the error flag (``ATTN_KERNELS_SE_CHECK=1`` makes the launcher raise), adds NaN to everything it stores
afterwards, and arrives at no later meeting: the counter is shared by the meetings, so its later
arrivals would otherwise stand in for a missing peer's and let a peer pass early on unpublished data.
With that, and every program reading back only its own MLP rows (and its own channels of the pooled
vectors' grads), each stored element is exact or NaN.
Weight gradients: per-sample fp32 pieces (dz (N, C), hidden grads (N, R) ×2, taps (N, 2·k^rank)) reduced
by torch (three GEMMs and a sum): deterministic, no atomics.

Pixel slices: whole tiles of the pixel passes, cdiv(#tiles, P) tiles per program (programs past the
last tile own no pixels; they still meet). In schedule (b) the pixel passes' tiles (BLOCK_PX for
passes B / 1, BLOCK_P for the conv passes C / 2) shrink to next_pow2(cdiv(HW, P)) pixels, but to no
fewer than _MIN_PX_TILE = 16, so that a 7×7 or 14×14 map still spreads over several programs (with
BLOCK_HW-wide slices one program would own all 49 or 196 pixels); the channel passes keep BLOCK_HW.

Launches per call: forward 1 (Triton), nothing else in schedule (a); backward 1 (Triton) + ~8 small
torch ops for the weight gradients (2 relus + 1 add of the saved (N, R) pre-activations, 3 matmuls +
1 add, 1 sum over N of the (N, 2k²) tap partials) — none touches an (N, C, HW) tensor. Schedule (b)
adds one ``torch.zeros`` fill of the (groups + 1,) counters per launch. The Triton counts are asserted in
tests/ops/test_cbam.py by wrapping the kernel launchers (no GPU profiler run yet; bench/bench_eca.py
counts all device kernels with torch.profiler on a GPU).

Max-pool gradients (both maxes): split evenly among tied elements, as eager ``amax`` does. Ties are
decided on the fp32 values x (spatial max of a channel) and x·ca in fp32 (channel max of a pixel);
eager decides them in x's dtype, so for bf16/fp16 inputs with exact ties the split can differ.

Bytes (E = N·C·HW·|x|): forward reads x 3× (pool, descriptor, scale; the 2nd/3rd from L2 only when the
slabs in flight fit) and writes y: 4E (floor 2E) + O(N·(C + HW)) fp32, plus W1 and W2 (2·R·C, from L2
after the first program) once per group of samples. Backward reads grad_y and x in passes 1, 3 and 4
and writes grad_x: 7E (floor 3E), plus W2 and W1's columns of the program's channels once per group.
Schedule (b) moves the same x traffic, split over P programs, and adds per program: forward W1 and W2
and the pooled vectors (2·GROUP·C) for the MLP, the d halo (k//2 map rows each side, 2 channels);
backward W2 (R·C) and dz (GROUP·C) for the MLP backward, the dz_s halo, its tap rows (2·k^rank per
sample, the first program reads all P).

Status: schedule (b) has run only under the interpreter (the emulated partition, and the MULTI=1 code
with a tiny spin bound; tests/ops/test_cbam.py) and been compiled for sm_90 / sm_80 without a GPU
(Triton 3.6 and 3.8; .ci/compile_triton.py in CI) — never run on a GPU yet (test_gpu_schedules is written for it).

Scope: 1-D, 2-D and 3-D maps (N, C, [D, [H,]] W), all run as (D, H, W) with unit leading dims and a
(KD, KH, KW) kernel. Layouts through (stride_n, stride_c, stride_hw) as in ops/eca.py (NCHW,
channels_last, flattenable views without a copy). Entry point ``cbam(x, w1, w2, spatial_weight)``,
registered as ``torch.ops.attn_kernels.cbam_fwd`` / ``cbam_bwd`` with fake and autograd kernels.
"""
from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

from .. import _alloc
from . import _eager
from ._layout import cdiv as _cdiv, next_pow2 as _next_pow2
from ._split import device_sms as _device_sms, launch as _launch, sample_sync as _sample_sync
from ._split import group_plan as _group_plan, schedule_mode as _schedule_mode
from .eca import _acc_dtype, _as_flat, _check_x, _out_like, _sigmoid, _tl_acc
from .se import _group_matvec

__all__ = ["cbam", "cbam_forward", "cbam_backward", "LAUNCHES"]

_TILE = 4096
_MAX_BLOCK_HW = 256
_MAX_BLOCK_T = 256
_MIN_PX_TILE = 16  # schedule (b): pixel-pass tiles no narrower than this (see "Pixel slices")
LAUNCHES = {"forward": 1, "backward": 1}  # Triton launches per call (see the module docstring)


def meetings(group: int = 1) -> dict:
    """Schedule (b): counter meetings per launch of programs serving ``group`` samples — forward: one
    after pooling, then one per sample (between its descriptor and conv passes); backward: two per
    sample (after its dz_s, after its grad d), then one before the MLP backward."""
    return {"forward": 1 + group, "backward": 2 * group + 1}


# ----------------------------------------------------------------------------------------------
# Device helpers
# ----------------------------------------------------------------------------------------------
@triton.jit
def _win(base, offs_p, offs_t, D, H, W, KD, KH, KW, T, ch_stride, SIGN: tl.constexpr):
    """[BLOCK_P, BLOCK_T] gather of base[ch_t·ch_stride + (d'·H + h')·W + w'] with d' = d + SIGN·(kd_t − KD//2),
    h', w' likewise, for pixel p = (d, h, w), tap t = (ch, kd, kh, kw) row-major; zero outside the map
    (zero padding) and for t ≥ T. The window reaches past the program's pixels (in schedule (b), into
    its peers' slices): loaded with ``.cg``, past L1."""
    d = offs_p // (H * W)
    h = (offs_p // W) % H
    w = offs_p % W
    kk = KD * KH * KW
    ch = offs_t // kk
    kd = (offs_t // (KH * KW)) % KD
    kh = (offs_t // KW) % KH
    kw = offs_t % KW
    dd = d[:, None] + SIGN * (kd[None, :] - KD // 2)
    hh = h[:, None] + SIGN * (kh[None, :] - KH // 2)
    ww = w[:, None] + SIGN * (kw[None, :] - KW // 2)
    m = ((dd >= 0) & (dd < D) & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W) & (offs_t < T)[None, :]
         & (offs_p < D * H * W)[:, None])
    return tl.load(base + ch[None, :] * ch_stride + (dd * H + hh) * W + ww, mask=m, other=0.0, cache_modifier=".cg")


@triton.jit
def _x1_grad(gy, x1, sa, dmean, dmax, cmax, cnt, C):
    """grad of x1 = x·ca: through y = x1·sa and through the channel mean / max of x1."""
    tie = tl.where(x1 == cmax[None, :], 1.0, 0.0)
    return gy * sa[None, :] + dmean[None, :] / C + tie * (dmax / cnt)[None, :]


@triton.jit
def _sample_bases(n, gy_ptr, x_ptr, d_ptr, dd_ptr, sgn, sxn, HW):
    """Sample n's grad_y, x, descriptor d and its grad (the backward's per-sample passes)."""
    return gy_ptr + n * sgn, x_ptr + n * sxn, d_ptr + n * 2 * HW, dd_ptr + n * 2 * HW


@triton.jit
def _x1_grad_tile(x_base, gy_base, offs_c, offs_hw, m, mp, ca, sa_row, dd_base, d_base, cnt_row, HW, C,
                  sxc, sxhw, sgc, sghw, ACC: tl.constexpr):
    """(x, grad x1) of a [channels, pixels] tile in passes 3 and 4 of the backward: x1 = x·ca, through
    y = x1·sa and the channel mean / max of x1 (grad d and the channel-max ties of every pixel, the
    peers' too: .cg)."""
    x = tl.load(x_base + offs_c[:, None] * sxc + offs_hw[None, :] * sxhw, mask=m, other=0.0).to(ACC)
    gy = tl.load(gy_base + offs_c[:, None] * sgc + offs_hw[None, :] * sghw, mask=m, other=0.0).to(ACC)
    dx1 = _x1_grad(gy, x * ca[:, None], tl.load(sa_row + offs_hw, mask=mp, other=0.0),
                   tl.load(dd_base + offs_hw, mask=mp, other=0.0, cache_modifier=".cg"),
                   tl.load(dd_base + HW + offs_hw, mask=mp, other=0.0, cache_modifier=".cg"),
                   tl.load(d_base + HW + offs_hw, mask=mp, other=0.0),
                   tl.load(cnt_row + offs_hw, mask=mp, other=1.0, cache_modifier=".cg"), C)
    return x, dx1


@triton.jit
def _meet(sync_ptr, n, P, target, max_spin, poison, MULTI: tl.constexpr):
    """Between two passes on different slices; returns the poison for what the program computes next.

    MULTI: arrive at counter n (sample group n's) and wait for ``target`` arrivals (k·P at the k-th meeting).
    NaN from the first timed-out wait on (``poison`` is the previous meeting's), else 0. A program
    that gave up once arrives at no later meeting: its arrivals cannot stand in for a peer's at the
    next one (the counter is shared by all meetings), so no program passes a meeting before every
    peer has published — what any program stores is exact or NaN, never silently wrong.
    MULTI=0: one program per sample, a barrier suffices (its threads read back what the others stored)."""
    failed = poison != 0.0  # NaN ≠ 0: gave up before
    if MULTI:
        if poison == 0.0:
            failed = _sample_sync(sync_ptr + n, sync_ptr + tl.num_programs(0) // P, target, max_spin)
    else:
        tl.debug_barrier()
    return tl.where(failed, float("nan"), 0.0)


@triton.jit
def _pair_matvec(w_ptr, so, sk, u_ptr, v_ptr, ldv, offs_g, mask_g, offs_o, mask_o, K, ACC: tl.constexpr,
                 GROUP: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr):
    """([GROUP, BLOCK_O], [GROUP, BLOCK_O]): Σ_{k < K} W[o, k] · u[g, k] and Σ_k W[o, k] · v[g, k] for the
    group's samples (rows offs_g of u and v, row stride ldv) and the outputs offs_o, W[o, k] at
    w_ptr + o·so + k·sk. Each weight tile is read once for both vectors (CBAM's avg and max branches
    share the MLP) and all GROUP samples. ``.cg`` loads: u and v may be the peers' stores."""
    acc_u = tl.zeros([GROUP, BLOCK_O], dtype=ACC)
    acc_v = tl.zeros([GROUP, BLOCK_O], dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        offs_k = (k0 + tl.arange(0, BLOCK_K)).to(tl.int64)
        mask_k = offs_k < K
        m = mask_g[:, None] & mask_k[None, :]
        u = tl.load(u_ptr + offs_g[:, None] * ldv + offs_k[None, :], mask=m, other=0.0, cache_modifier=".cg")
        v = tl.load(v_ptr + offs_g[:, None] * ldv + offs_k[None, :], mask=m, other=0.0, cache_modifier=".cg")
        w = tl.load(w_ptr + offs_o[:, None] * so + offs_k[None, :] * sk, mask=mask_o[:, None] & mask_k[None, :],
                    other=0.0).to(ACC)
        acc_u += tl.sum(u[:, None, :] * w[None, :, :], axis=2)
        acc_v += tl.sum(v[:, None, :] * w[None, :, :], axis=2)
    return acc_u, acc_v


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------
@triton.jit
def _cbam_fwd_kernel(
    x_ptr,  # (N, C, HW) strided, x dtype
    y_ptr,  # (N, C, HW) strided (out)
    w1_ptr,  # (R, C) contiguous
    w2_ptr,  # (C, R) contiguous
    sw_ptr,  # (2·KH·KW,) contiguous: spatial conv taps
    avg_ptr, mx_ptr,  # (N, C) ACC (out, saved): spatial mean / max per channel
    pa_ptr, pm_ptr,  # (N, R) ACC (out, saved): hidden pre-activations W1·avg, W1·max
    ca_ptr,  # (N, C) ACC (out, saved): channel attention
    d_ptr,  # (N, 2, HW) ACC (out, saved): channel mean / max of x·ca
    sa_ptr,  # (N, HW) ACC (out, saved): spatial attention
    own_ptr,  # (P·N, R + C) ACC scratch: row j·N + n, program j's own [h | ca] of sample n, read back by it alone
    sync_ptr,  # (groups + 1,) int32: per-group arrival counters, then the error flag (MULTI only)
    N, C, R, D, H, W, KD, KH, KW,
    P, chan_per_prog, px_per_prog, max_spin,
    sxn, sxc, sxhw, syn, syc, syhw,
    MULTI: tl.constexpr, ACC: tl.constexpr, GROUP: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
    BLOCK_PX: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_T: tl.constexpr, FC_C: tl.constexpr, FC_R: tl.constexpr,
):
    """Program (g, j) of P per group of GROUP samples (P = 1 in schedule (a)): samples [g·GROUP, +GROUP),
    channels [j·chan_per_prog, +chan_per_prog) in pass A, pixels [j·px_per_prog, +px_per_prog) in passes B
    and C. Reads x three times (pool; descriptor; scale) and writes y once: 4·C·HW·|x| bytes per sample
    over its P programs, plus per program w1 and w2 (2·R·C) once for its GROUP samples, 2·k² taps,
    O(GROUP·(C + R)) fp32 vectors and the d halo of its pixels."""
    pid = tl.program_id(0).to(tl.int64)
    grp = pid // P
    n0 = grp * GROUP
    j = (pid % P).to(tl.int32)  # int32 slice bounds: the tile loops' counters keep one type
    HW = D * H * W
    c_lo = j * chan_per_prog
    c_hi = tl.minimum(c_lo + chan_per_prog, C)
    p_lo = j * px_per_prog
    p_hi = tl.minimum(p_lo + px_per_prog, HW)
    offs_g = n0 + tl.arange(0, GROUP).to(tl.int64)
    mask_g = offs_g < N
    ld = R + C
    own = own_ptr + j.to(tl.int64) * N * ld  # this program's rows, indexed by sample
    first = j == 0  # the per-sample outputs (pa, pm, ca) are stored by the group's first program
    # pass A (channel slice), each sample of the group: avg / max over HW per channel
    for gi in range(0, GROUP):
        n = n0 + gi
        x_base = x_ptr + n * sxn
        for c0 in range(c_lo, c_hi, BLOCK_C):
            offs_c = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
            mc = (offs_c < c_hi) & (n < N)
            acc = tl.zeros([BLOCK_C], dtype=ACC)
            mxv = tl.full([BLOCK_C], float("-inf"), ACC)
            for hw0 in range(0, HW, BLOCK_HW):
                offs_hw = (hw0 + tl.arange(0, BLOCK_HW)).to(tl.int64)
                m = mc[:, None] & (offs_hw < HW)[None, :]
                v = tl.load(x_base + offs_c[:, None] * sxc + offs_hw[None, :] * sxhw, mask=m, other=0.0).to(ACC)
                acc += tl.sum(v, axis=1)
                mxv = tl.maximum(mxv, tl.max(tl.where(m, v, float("-inf")), axis=1))
            tl.store(avg_ptr + n * C + offs_c, acc / HW, mask=mc)
            tl.store(mx_ptr + n * C + offs_c, mxv, mask=mc)
    poison = _meet(sync_ptr, grp, P, P, max_spin, 0.0, MULTI)  # 1st meeting: every channel pooled
    # shared MLP of the group (every program, whole pooled vectors; each weight tile read once for the
    # group): hidden pre-activations pa = W1·avg, pm = W1·max, h = relu(pa) + relu(pm) into the program's
    # own rows (a peer that timed out cannot overwrite what this program reads back)
    for r0 in range(0, R, FC_R):
        offs_r = (r0 + tl.arange(0, FC_R)).to(tl.int64)
        mr = offs_r < R
        ha, hm = _pair_matvec(w1_ptr, C, 1, avg_ptr, mx_ptr, C, offs_g, mask_g, offs_r, mr, C, ACC, GROUP, FC_R,
                              FC_C)
        m = mask_g[:, None] & mr[None, :]
        # poisoned after the relus: relu (fmax on a GPU) would drop a NaN
        tl.store(own + offs_g[:, None] * ld + offs_r[None, :], tl.maximum(ha, 0.0) + tl.maximum(hm, 0.0) + poison,
                 mask=m)
        tl.store(pa_ptr + offs_g[:, None] * R + offs_r[None, :], ha + poison, mask=m & first)
        tl.store(pm_ptr + offs_g[:, None] * R + offs_r[None, :], hm + poison, mask=m & first)
    tl.debug_barrier()
    # ca for every channel (pass B needs them all; see the module docstring), for the group
    for c0 in range(0, C, FC_C):
        offs_c = (c0 + tl.arange(0, FC_C)).to(tl.int64)
        mc = offs_c < C
        z = _group_matvec(w2_ptr, R, 1, own, ld, offs_g, mask_g, offs_c, mc, 0, R, 0, 0, ACC, GROUP, FC_C, FC_R)
        ca = _sigmoid(z) + poison
        m = mask_g[:, None] & mc[None, :]
        tl.store(own + offs_g[:, None] * ld + R + offs_c[None, :], ca, mask=m)
        tl.store(ca_ptr + offs_g[:, None] * C + offs_c[None, :], ca, mask=m & first)
    tl.debug_barrier()
    # passes B and C, one sample of the group after the other (so the second and third reads of its x
    # follow each other; in schedule (b) a meeting per sample between them)
    T = 2 * KD * KH * KW
    offs_t = tl.arange(0, BLOCK_T)
    for gi in range(0, GROUP):
        n = n0 + gi
        if n < N:  # the last group may be ragged
            x_base = x_ptr + n * sxn
            y_base = y_ptr + n * syn
            ca_row = own + n * ld + R
            # pass B (pixel slice): descriptor d = [mean_c, max_c] of x·ca per pixel
            for hw0 in range(p_lo, p_hi, BLOCK_PX):
                offs_hw = (hw0 + tl.arange(0, BLOCK_PX)).to(tl.int64)
                mp = offs_hw < p_hi
                dsum = tl.zeros([BLOCK_PX], dtype=ACC)
                dmax = tl.full([BLOCK_PX], float("-inf"), ACC)
                for c0 in range(0, C, BLOCK_C):
                    offs_c = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
                    mc = offs_c < C
                    m = mc[:, None] & mp[None, :]
                    ca = tl.load(ca_row + offs_c, mask=mc, other=0.0)
                    x1 = tl.load(x_base + offs_c[:, None] * sxc + offs_hw[None, :] * sxhw, mask=m,
                                 other=0.0).to(ACC) * ca[:, None]
                    dsum += tl.sum(x1, axis=0)
                    dmax = tl.maximum(dmax, tl.max(tl.where(m, x1, float("-inf")), axis=0))
                tl.store(d_ptr + n * 2 * HW + offs_hw, dsum / C + poison, mask=mp)
                tl.store(d_ptr + n * 2 * HW + HW + offs_hw, dmax + poison, mask=mp)
            # (2 + gi)-th meeting: d of every pixel of sample n (the conv halo)
            poison = _meet(sync_ptr, grp, P, (2 + gi) * P, max_spin, poison, MULTI)
            # pass C (pixel slice): sa = σ(conv(d)) per pixel tile, then y = x·ca·sa
            for p0 in range(p_lo, p_hi, BLOCK_P):
                offs_p = (p0 + tl.arange(0, BLOCK_P)).to(tl.int64)
                mp = offs_p < p_hi
                zs = tl.zeros([BLOCK_P], dtype=ACC)
                for t0 in range(0, T, BLOCK_T):
                    tt = t0 + offs_t
                    sw = tl.load(sw_ptr + tt, mask=tt < T, other=0.0).to(ACC)
                    zs += tl.sum(_win(d_ptr + n * 2 * HW, offs_p, tt, D, H, W, KD, KH, KW, T, HW, 1) * sw[None, :],
                                 axis=1)
                sa = _sigmoid(zs) + poison
                tl.store(sa_ptr + n * HW + offs_p, sa, mask=mp)
                for c0 in range(0, C, BLOCK_C):
                    offs_c = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
                    mc = offs_c < C
                    m = mc[:, None] & mp[None, :]
                    ca = tl.load(ca_row + offs_c, mask=mc, other=0.0)
                    v = tl.load(x_base + offs_c[:, None] * sxc + offs_p[None, :] * sxhw, mask=m, other=0.0).to(ACC)
                    out = v * ca[:, None] * sa[None, :]
                    tl.store(y_base + offs_c[:, None] * syc + offs_p[None, :] * syhw, out.to(y_ptr.dtype.element_ty),
                             mask=m)


@triton.jit
def _cbam_bwd_kernel(
    gy_ptr,  # (N, C, HW) strided: grad of y
    x_ptr,  # (N, C, HW) strided
    gx_ptr,  # (N, C, HW) strided (out)
    w1_ptr,  # (R, C) contiguous
    w2_ptr,  # (C, R) contiguous
    sw_ptr,  # (2·KH·KW,) contiguous
    mx_ptr, pa_ptr, pm_ptr, ca_ptr, d_ptr, sa_ptr,  # saved by the forward (see _cbam_fwd_kernel)
    dzs_ptr, cnt_ptr,  # (N, HW) ACC scratch: grad of the conv output; channels tied at the channel max
    dd_ptr,  # (N, 2, HW) ACC scratch: grad of the descriptor
    cntc_ptr,  # (N, C) ACC scratch: pixels tied at each channel's spatial max
    gpart_ptr,  # (groups·P·GROUP, 2·KD·KH·KW) ACC scratch: row pid·GROUP + gi, the program's part of the
                # spatial-tap gradient of the group's sample gi
    own_ptr,  # (P·N, 2·R) ACC scratch: row j·N + n, program j's own [dpa | dpm] of sample n, read back by it alone
    dpool_ptr,  # (2, N, C) ACC scratch: W1ᵀ dpa, W1ᵀ dpm (the grads of avg and max before /HW and /ties)
    dz_ptr,  # (N, C) ACC (out): grad of the channel-attention logits
    dpa_ptr, dpm_ptr,  # (N, R) ACC (out): grads of the hidden pre-activations
    gsw_ptr,  # (N, 2·KH·KW) ACC (out): per-sample spatial-tap gradient
    sync_ptr,  # (groups + 1,) int32 counters + error flag (MULTI only)
    N, C, R, D, H, W, KD, KH, KW,
    P, chan_per_prog, px_per_prog, max_spin,
    sgn, sgc, sghw, sxn, sxc, sxhw, sdn, sdc, sdhw,
    MULTI: tl.constexpr, ACC: tl.constexpr, GROUP: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
    BLOCK_PX: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_T: tl.constexpr, FC_C: tl.constexpr, FC_R: tl.constexpr,
):
    """Program (g, j) as in the forward: pixels [j·px_per_prog, +px_per_prog) in passes 1 and 2, channels
    [j·chan_per_prog, +chan_per_prog) in passes 3 and 4. Reads grad_y and x in passes 1, 3 and 4 and
    writes grad_x: 7·C·HW·|x| bytes per sample over its P programs, plus per program w2 (whole) and
    w1 (its channels) once for its GROUP samples, the taps, O(GROUP·(C + R)) vectors, the dz_s halo of
    its pixels, its tap rows (the first program: all P), and per channel tile of passes 3 and 4 the
    per-pixel fp32 vectors of every pixel (sa, channel max, grad d, ties: 5·HW, from L2)."""
    pid = tl.program_id(0).to(tl.int64)
    grp = pid // P
    n0 = grp * GROUP
    j = (pid % P).to(tl.int32)  # int32 slice bounds: the tile loops' counters keep one type
    HW = D * H * W
    c_lo = j * chan_per_prog
    c_hi = tl.minimum(c_lo + chan_per_prog, C)
    p_lo = j * px_per_prog
    p_hi = tl.minimum(p_lo + px_per_prog, HW)
    offs_g = n0 + tl.arange(0, GROUP).to(tl.int64)
    mask_g = offs_g < N
    own = own_ptr + j.to(tl.int64) * N * 2 * R  # this program's rows, indexed by sample
    first = j == 0  # the per-sample outputs (tap grads, dpa, dpm) are stored by the group's first program
    T = 2 * KD * KH * KW
    kk = KD * KH * KW
    offs_t = tl.arange(0, BLOCK_T)
    poison = tl.where(pid < 0, float("nan"), 0.0)  # 0: the type _meet returns, carried through the sample loop
    # passes 1-3, one sample of the group after the other (two meetings per sample in schedule (b))
    for gi in range(0, GROUP):
        n = n0 + gi
        if n < N:  # the last group may be ragged
            gy_base, x_base, d_base, dd_base = _sample_bases(n, gy_ptr, x_ptr, d_ptr, dd_ptr, sgn, sxn, HW)
            # pass 1 (pixel slice): per pixel Σ_c grad_y·x1 → dz_s; ties at the channel max
            for hw0 in range(p_lo, p_hi, BLOCK_PX):
                offs_hw = (hw0 + tl.arange(0, BLOCK_PX)).to(tl.int64)
                mp = offs_hw < p_hi
                cmax = tl.load(d_base + HW + offs_hw, mask=mp, other=0.0)
                g = tl.zeros([BLOCK_PX], dtype=ACC)
                cnt = tl.zeros([BLOCK_PX], dtype=ACC)
                for c0 in range(0, C, BLOCK_C):
                    offs_c = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
                    mc = offs_c < C
                    m = mc[:, None] & mp[None, :]
                    ca = tl.load(ca_ptr + n * C + offs_c, mask=mc, other=0.0)
                    x1 = tl.load(x_base + offs_c[:, None] * sxc + offs_hw[None, :] * sxhw, mask=m,
                                 other=0.0).to(ACC) * ca[:, None]
                    gy = tl.load(gy_base + offs_c[:, None] * sgc + offs_hw[None, :] * sghw, mask=m,
                                 other=0.0).to(ACC)
                    g += tl.sum(gy * x1, axis=0)
                    cnt += tl.sum(tl.where(m & (x1 == cmax[None, :]), 1.0, 0.0), axis=0)
                sa = tl.load(sa_ptr + n * HW + offs_hw, mask=mp, other=0.0)
                tl.store(dzs_ptr + n * HW + offs_hw, g * sa * (1.0 - sa), mask=mp)
                tl.store(cnt_ptr + n * HW + offs_hw, tl.maximum(cnt, 1.0), mask=mp)
            # meeting 2·gi + 1: dz_s of every pixel (convᵀ halo)
            poison = _meet(sync_ptr, grp, P, (2 * gi + 1) * P, max_spin, poison, MULTI)
            # pass 2 (pixel slice): the spatial taps' grad G_t = Σ_p dz_s[p] · d[ch_t, p + off_t] over this
            # program's pixels, published as its row of gpart; grad d = convᵀ(dz_s)
            row = gpart_ptr + (pid * GROUP + gi) * T
            for t0 in range(0, T, BLOCK_T):
                tt = t0 + offs_t
                gt = tl.zeros([BLOCK_T], dtype=ACC)
                for p0 in range(p_lo, p_hi, BLOCK_P):
                    offs_p = (p0 + tl.arange(0, BLOCK_P)).to(tl.int64)
                    dzs = tl.load(dzs_ptr + n * HW + offs_p, mask=offs_p < p_hi, other=0.0)
                    gt += tl.sum(dzs[:, None] * _win(d_base, offs_p, tt, D, H, W, KD, KH, KW, T, HW, 1), axis=0)
                tl.store(row + tt, gt, mask=tt < T)
            for p0 in range(p_lo, p_hi, BLOCK_P):
                offs_p = (p0 + tl.arange(0, BLOCK_P)).to(tl.int64)
                mp = offs_p < p_hi
                g0 = tl.zeros([BLOCK_P], dtype=ACC)
                g1 = tl.zeros([BLOCK_P], dtype=ACC)
                for t0 in range(0, T, BLOCK_T):
                    tt = t0 + offs_t
                    sw = tl.load(sw_ptr + tt, mask=tt < T, other=0.0).to(ACC)
                    prod = _win(dzs_ptr + n * HW, offs_p, tt, D, H, W, KD, KH, KW, T, 0, -1) * sw[None, :]
                    g0 += tl.sum(tl.where((tt < kk)[None, :], prod, 0.0), axis=1)
                    g1 += tl.sum(tl.where((tt >= kk)[None, :], prod, 0.0), axis=1)
                tl.store(dd_base + offs_p, g0 + poison, mask=mp)
                tl.store(dd_base + HW + offs_p, g1 + poison, mask=mp)
            # meeting 2·gi + 2: grad d of every pixel, all tap rows of sample n
            poison = _meet(sync_ptr, grp, P, (2 * gi + 2) * P, max_spin, poison, MULTI)
            # the sample's tap gradient: its P rows summed in program order, by the first program
            if first:
                for t0 in range(0, T, BLOCK_T):
                    tt = t0 + offs_t
                    gt = tl.zeros([BLOCK_T], dtype=ACC) + poison
                    for q in range(0, P):
                        gt += tl.load(gpart_ptr + ((grp * P + q) * GROUP + gi) * T + tt, mask=tt < T, other=0.0,
                                      cache_modifier=".cg")
                    tl.store(gsw_ptr + n * T + tt, gt, mask=tt < T)
            # pass 3 (channel slice): grad ca[c] = Σ_hw grad_x1 · x over every pixel; pixels tied at each
            # channel's spatial max
            for c0 in range(c_lo, c_hi, BLOCK_C):
                offs_c = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
                mc = offs_c < c_hi
                ca = tl.load(ca_ptr + n * C + offs_c, mask=mc, other=0.0)
                smax = tl.load(mx_ptr + n * C + offs_c, mask=mc, other=0.0)
                dca = tl.zeros([BLOCK_C], dtype=ACC)
                cntc = tl.zeros([BLOCK_C], dtype=ACC)
                for hw0 in range(0, HW, BLOCK_HW):
                    offs_hw = (hw0 + tl.arange(0, BLOCK_HW)).to(tl.int64)
                    mp = offs_hw < HW
                    m = mc[:, None] & mp[None, :]
                    x, dx1 = _x1_grad_tile(x_base, gy_base, offs_c, offs_hw, m, mp, ca, sa_ptr + n * HW, dd_base,
                                           d_base, cnt_ptr + n * HW, HW, C, sxc, sxhw, sgc, sghw, ACC)
                    dca += tl.sum(tl.where(m, dx1 * x, 0.0), axis=1)
                    cntc += tl.sum(tl.where(m & (x == smax[:, None]), 1.0, 0.0), axis=1)
                tl.store(dz_ptr + n * C + offs_c, dca * ca * (1.0 - ca) + poison, mask=mc)
                tl.store(cntc_ptr + n * C + offs_c, tl.maximum(cntc, 1.0), mask=mc)
    # last meeting (2·samples + 1): dz of every channel of every sample of the group
    poison = _meet(sync_ptr, grp, P, (2 * tl.minimum(N - n0, GROUP) + 1) * P, max_spin, poison, MULTI)
    # MLP backward of the group (every program, from the whole dz — .cg: the peers' slices; each W2 tile
    # read once for the group): dh = W2ᵀ dz; grads of the two relu'd pre-activations into the program's
    # own rows
    for r0 in range(0, R, FC_R):
        offs_r = (r0 + tl.arange(0, FC_R)).to(tl.int64)
        mr = offs_r < R
        dh = _group_matvec(w2_ptr, 1, R, dz_ptr, C, offs_g, mask_g, offs_r, mr, 0, C, 0, 0, ACC, GROUP, FC_R, FC_C)
        m = mask_g[:, None] & mr[None, :]
        pa = tl.load(pa_ptr + offs_g[:, None] * R + offs_r[None, :], mask=m, other=0.0)
        pm = tl.load(pm_ptr + offs_g[:, None] * R + offs_r[None, :], mask=m, other=0.0)
        dpa = tl.where(pa > 0.0, dh, 0.0) + poison
        dpm = tl.where(pm > 0.0, dh, 0.0) + poison
        tl.store(own + offs_g[:, None] * 2 * R + offs_r[None, :], dpa, mask=m)
        tl.store(own + offs_g[:, None] * 2 * R + R + offs_r[None, :], dpm, mask=m)
        tl.store(dpa_ptr + offs_g[:, None] * R + offs_r[None, :], dpa, mask=m & first)
        tl.store(dpm_ptr + offs_g[:, None] * R + offs_r[None, :], dpm, mask=m & first)
    tl.debug_barrier()
    # the pooled vectors' grads W1ᵀ dpa, W1ᵀ dpm for this program's channels of the group (each W1 tile
    # read once for both and for the group); read back by this program alone in pass 4
    for c0 in range(c_lo, c_hi, FC_C):
        offs_c = (c0 + tl.arange(0, FC_C)).to(tl.int64)
        mc = offs_c < c_hi
        davg, dmx = _pair_matvec(w1_ptr, 1, C, own, own + R, 2 * R, offs_g, mask_g, offs_c, mc, R, ACC, GROUP,
                                 FC_C, FC_R)
        m = mask_g[:, None] & mc[None, :]
        tl.store(dpool_ptr + offs_g[:, None] * C + offs_c[None, :], davg, mask=m)
        tl.store(dpool_ptr + N * C + offs_g[:, None] * C + offs_c[None, :], dmx, mask=m)
    tl.debug_barrier()
    # pass 4 (channel slice), each sample of the group: grad_x = grad_x1·ca + grad_avg/HW + grad_max·[x = max]/ties
    for gi in range(0, GROUP):
        n = n0 + gi
        if n < N:
            gy_base, x_base, d_base, dd_base = _sample_bases(n, gy_ptr, x_ptr, d_ptr, dd_ptr, sgn, sxn, HW)
            for c0 in range(c_lo, c_hi, BLOCK_C):
                offs_c = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
                mc = offs_c < c_hi
                ca = tl.load(ca_ptr + n * C + offs_c, mask=mc, other=0.0)
                smax = tl.load(mx_ptr + n * C + offs_c, mask=mc, other=0.0)
                dmx = (tl.load(dpool_ptr + N * C + n * C + offs_c, mask=mc, other=0.0)
                       / tl.load(cntc_ptr + n * C + offs_c, mask=mc, other=1.0))
                davg = tl.load(dpool_ptr + n * C + offs_c, mask=mc, other=0.0) / HW + poison
                for hw0 in range(0, HW, BLOCK_HW):
                    offs_hw = (hw0 + tl.arange(0, BLOCK_HW)).to(tl.int64)
                    mp = offs_hw < HW
                    m = mc[:, None] & mp[None, :]
                    x, dx1 = _x1_grad_tile(x_base, gy_base, offs_c, offs_hw, m, mp, ca, sa_ptr + n * HW, dd_base,
                                           d_base, cnt_ptr + n * HW, HW, C, sxc, sxhw, sgc, sghw, ACC)
                    gx = dx1 * ca[:, None] + davg[:, None] + tl.where(x == smax[:, None], dmx[:, None], 0.0)
                    tl.store(gx_ptr + n * sdn + offs_c[:, None] * sdc + offs_hw[None, :] * sdhw,
                             gx.to(gx_ptr.dtype.element_ty), mask=m)


# ----------------------------------------------------------------------------------------------
# Launch settings
# ----------------------------------------------------------------------------------------------
def _settings(c: int, r: int, hw: int, taps: int) -> dict:
    """Tiles from one heuristic: [BLOCK_C, BLOCK_HW] x tiles of ≤ _TILE elements, [BLOCK_P, BLOCK_T] conv
    gather tiles of ≤ _TILE elements (BLOCK_T ≤ _MAX_BLOCK_T taps per chunk)."""
    block_hw = min(_next_pow2(hw), _MAX_BLOCK_HW)
    block_c = max(1, min(_next_pow2(c), _TILE // block_hw))
    block_t = min(_next_pow2(taps), _MAX_BLOCK_T)
    block_p = max(1, min(_next_pow2(hw), _TILE // block_t))
    # 8 warps for full tiles: at 4 the sm_90 builds of both kernels spilled (ptxas: 255 registers plus
    # 80-1000 bytes of stack per thread at every dtype); at 8 only the float64 backward does
    full = max(block_c * block_hw, block_p * block_t) >= _TILE
    return dict(BLOCK_C=block_c, BLOCK_HW=block_hw, BLOCK_P=block_p, BLOCK_T=block_t, num_warps=8 if full else 4)


def _launch_cfg(n: int, c: int, r: int, hw: int, taps: int, device: torch.device, x_bytes: int = 0,
                w_bytes: int = 0) -> dict:
    """Tiles (``_settings``), GROUP samples per program (``_split.sample_group`` on the bytes of a sample
    of x and of W1 + W2, which every program reads whole; none without the byte counts), the MLP's
    [GROUP, FC_R, FC_C] tiles (≤ _TILE elements, FC_R ≤ 32 hidden units) and the schedule over the
    groups: (b) with P programs per group on a GPU when the groups are few and a sample has ≥ 2 channel
    tiles (ops/_split.py), else (a). The pixel slices follow from P at launch (``_pixel_plan``)."""
    cfg = _settings(c, r, hw, taps)
    return dict(cfg, **_group_plan(n, c, cfg["BLOCK_C"], r, _device_sms(device), _schedule_mode(), x_bytes, w_bytes,
                                   _TILE))


def _sizes(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> dict:
    """The byte counts CBAM groups samples by: one sample of x, and the shared MLP's weights."""
    x_bytes = x.shape[1] * int(torch.Size(x.shape[2:]).numel()) * x.element_size()
    return dict(x_bytes=x_bytes, w_bytes=w1.numel() * w1.element_size() + w2.numel() * w2.element_size())


def _pixel_plan(hw: int, p: int, cfg: dict) -> Tuple[int, int, int]:
    """(BLOCK_PX, BLOCK_P, px_per_prog): the pixel passes' tiles and each program's pixel slice, in whole
    tiles. P = 1: BLOCK_PX = BLOCK_HW, BLOCK_P as set, one slice of every pixel (schedule (a) unchanged).
    P > 1: both tiles shrink to next_pow2(cdiv(HW, P)) pixels (no fewer than _MIN_PX_TILE), so that a
    small map still spreads over several programs."""
    block_px, block_p = cfg["BLOCK_HW"], cfg["BLOCK_P"]
    if p > 1:
        grain = max(_MIN_PX_TILE, _next_pow2(_cdiv(hw, p)))
        block_px, block_p = min(block_px, grain), min(block_p, grain)
    tile = max(block_px, block_p)
    return block_px, block_p, _cdiv(_cdiv(hw, tile), p) * tile


def _pixel_meta(hw: int, cfg: dict, acc: torch.dtype):
    """meta for ``_split.launch``: the accumulation type and the pixel passes' tiles for the P the
    launch runs with (the positional px_per_prog comes from the same ``_pixel_plan``)."""
    def meta(p: int) -> dict:
        block_px, block_p, _ = _pixel_plan(hw, p, cfg)
        return dict(BLOCK_PX=block_px, BLOCK_P=block_p, ACC=_tl_acc(acc))
    return meta


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------
def _geometry(x: torch.Tensor, w1: torch.Tensor, spatial_weight: torch.Tensor):
    rank = x.dim() - 2
    dhw = (1,) * (3 - rank) + tuple(int(v) for v in x.shape[2:])
    ks = (1,) * (3 - rank) + tuple(int(v) for v in spatial_weight.shape[2:])
    n, c = x.shape[:2]
    r = w1.shape[0]
    hw = dhw[0] * dhw[1] * dhw[2]
    return n, c, r, dhw, hw, ks, 2 * ks[0] * ks[1] * ks[2]


def cbam_forward(x, w1, w2, spatial_weight, *, _split: int = 0):
    """(y, avg, mx, pre_a, pre_m, ca, d, sa): y like x, the rest fp32 (fp64 for fp64 x) saved vectors.
    ``_split``: test hook, see ``_split.launch``."""
    _check_x(x)
    n, c, r, dhw, hw, ks, taps = _geometry(x, w1, spatial_weight)
    acc = _acc_dtype(x)
    dev = x.device
    y, y_buf, sy = _out_like(x)
    avg, mx, ca = (_alloc.empty((n, c), dtype=acc, device=dev) for _ in range(3))
    pa, pm = (_alloc.empty((n, r), dtype=acc, device=dev) for _ in range(2))
    d = _alloc.empty((n, 2, hw), dtype=acc, device=dev)
    sa = _alloc.empty((n, hw), dtype=acc, device=dev)
    if n == 0:
        return y, avg, mx, pa, pm, ca, d, sa
    xk, sx = _as_flat(x)
    cfg = _launch_cfg(n, c, r, hw, taps, dev, **_sizes(x, w1, w2))
    p_max = _split or cfg["P"]  # programs per group (the emulated split's P ≤ _split)
    own, = _scratch(acc, dev, (p_max * n, r + c))
    w1c, w2c, swc = w1.contiguous(), w2.contiguous(), spatial_weight.reshape(-1).contiguous()
    _launch(_cbam_fwd_kernel, xk, _cdiv(n, cfg["GROUP"]), c, cfg,
            lambda sync, p, per, spin: (xk, y_buf, w1c, w2c, swc, avg, mx, pa, pm, ca, d, sa, own, sync,
                                        n, c, r, *dhw, *ks, p, per, _pixel_plan(hw, p, cfg)[2], spin, *sx, *sy),
            _pixel_meta(hw, cfg, acc), "CBAM", _split, (y_buf, pa, pm, ca, sa), meetings(cfg["GROUP"])["forward"])
    if y_buf is not y:
        y.copy_(y_buf)
    return y, avg, mx, pa, pm, ca, d, sa


def _scratch(acc: torch.dtype, dev, *shapes) -> Tuple[torch.Tensor, ...]:
    """Kernel scratch, NaN-filled under ATTN_KERNELS_NAN_FILL like the outputs: a read of a value no
    program wrote is loud in tests."""
    return tuple(_alloc.empty(shape, dtype=acc, device=dev) for shape in shapes)


def cbam_backward(grad_y, x, w1, w2, spatial_weight, avg, mx, pa, pm, ca, d, sa, *, _split: int = 0):
    """(grad_x, grad_w1, grad_w2, grad_spatial_weight), each in its input's dtype. ``_split``: test hook,
    see ``_split.launch``."""
    n, c, r, dhw, hw, ks, taps = _geometry(x, w1, spatial_weight)
    acc = ca.dtype
    dev = x.device
    gx, gx_buf, sd = _out_like(x)
    dz = _alloc.empty((n, c), dtype=acc, device=dev)
    dpa, dpm = (_alloc.empty((n, r), dtype=acc, device=dev) for _ in range(2))
    gsw = _alloc.empty((n, taps), dtype=acc, device=dev)
    if n == 0:
        gx.zero_()
        return gx, torch.zeros_like(w1), torch.zeros_like(w2), torch.zeros_like(spatial_weight)
    xk, sx = _as_flat(x)
    gyk, sg = _as_flat(grad_y)
    cfg = _launch_cfg(n, c, r, hw, taps, dev, **_sizes(x, w1, w2))
    groups = _cdiv(n, cfg["GROUP"])
    p_max = _split or cfg["P"]  # programs per group (the emulated split's P ≤ _split)
    # dz_s, channel-max ties, grad d, spatial-max ties, the tap rows (per program and sample), the MLP-grad
    # rows of every program, the pooled vectors' grads
    scratch = _scratch(acc, dev, (n, hw), (n, hw), (n, 2, hw), (n, c), (groups * p_max * cfg["GROUP"], taps),
                       (p_max * n, 2 * r), (2, n, c))
    w1c, w2c, swc = w1.contiguous(), w2.contiguous(), spatial_weight.reshape(-1).contiguous()
    _launch(_cbam_bwd_kernel, gyk, groups, c, cfg,
            lambda sync, p, per, spin: (gyk, xk, gx_buf, w1c, w2c, swc, mx, pa, pm, ca, d, sa, *scratch,
                                        dz, dpa, dpm, gsw, sync, n, c, r, *dhw, *ks, p, per,
                                        _pixel_plan(hw, p, cfg)[2], spin, *sg, *sx, *sd),
            _pixel_meta(hw, cfg, acc), "CBAM", _split, (gx_buf, dpa, dpm, gsw), meetings(cfg["GROUP"])["backward"])
    if gx_buf is not gx:
        gx.copy_(gx_buf)
    hidden = torch.relu(pa) + torch.relu(pm)
    grad_w2 = (dz.t() @ hidden).to(w2.dtype)  # Σ_n dz_n ⊗ h_n, one deterministic GEMM
    grad_w1 = (dpa.t() @ avg + dpm.t() @ mx).to(w1.dtype)
    grad_sw = gsw.sum(0).reshape(spatial_weight.shape).to(spatial_weight.dtype)
    return gx, grad_w1, grad_w2, grad_sw


# ----------------------------------------------------------------------------------------------
# torch.library registration
# ----------------------------------------------------------------------------------------------
_T8 = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
            torch.Tensor]
_T4 = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@torch.library.custom_op("attn_kernels::cbam_fwd", mutates_args=())
def _cbam_fwd_op(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, spatial_weight: torch.Tensor) -> _T8:
    return tuple(cbam_forward(x, w1, w2, spatial_weight))


@_cbam_fwd_op.register_fake
def _(x, w1, w2, spatial_weight):
    n, c = x.shape[:2]
    r = w1.shape[0]
    hw = x.shape[2:].numel()
    acc = _acc_dtype(x)
    e = lambda *s: x.new_empty(s, dtype=acc)  # noqa: E731
    return torch.empty_like(x), e(n, c), e(n, c), e(n, r), e(n, r), e(n, c), e(n, 2, hw), e(n, hw)


@torch.library.custom_op("attn_kernels::cbam_bwd", mutates_args=())
def _cbam_bwd_op(grad_y: torch.Tensor, x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
                 spatial_weight: torch.Tensor, avg: torch.Tensor, mx: torch.Tensor, pa: torch.Tensor,
                 pm: torch.Tensor, ca: torch.Tensor, d: torch.Tensor, sa: torch.Tensor) -> _T4:
    return tuple(cbam_backward(grad_y, x, w1, w2, spatial_weight, avg, mx, pa, pm, ca, d, sa))


@_cbam_bwd_op.register_fake
def _(grad_y, x, w1, w2, spatial_weight, avg, mx, pa, pm, ca, d, sa):
    return torch.empty_like(x), torch.empty_like(w1), torch.empty_like(w2), torch.empty_like(spatial_weight)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs, *output[1:])


def _backward(ctx, grad_y, *_, bwd=None):
    return tuple((bwd or torch.ops.attn_kernels.cbam_bwd)(grad_y, *ctx.saved_tensors))


_cbam_fwd_op.register_autograd(_backward, setup_context=_setup)
# Eager calls skip the op's dispatch (``_eager``): same launchers, same formula.
_SPEC = _eager.OpSpec(torch.ops.attn_kernels.cbam_fwd, cbam_forward, _setup, _backward, cbam_backward)
# Autocast: deliberately no rule — the op runs in x's dtype with fp32 accumulation (as ops/eca.py).


def cbam(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, spatial_weight: torch.Tensor) -> torch.Tensor:
    """Fused CBAM; arguments as ``reference.cbam`` (x checked by ``functional.cbam``; the rest here)."""
    if x.dim() > 5:
        raise ValueError(f"CBAM supports 1-, 2- or 3-D spatial maps, got {x.dim() - 2}-D")
    _check_params(x, w1, w2, spatial_weight)
    return _eager.call(_SPEC, x, w1, w2, spatial_weight)[0]


def _check_params(x, w1, w2, spatial_weight) -> None:
    """The shape checks of reference.cbam (functional.cbam validates only x)."""
    c = x.shape[1]
    rank = x.dim() - 2
    for name, t in (("w1", w1), ("w2", w2), ("spatial_weight", spatial_weight)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point torch.Tensor")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
    if w1.dim() != 2 or w1.shape[1] != c or w1.shape[0] < 1:
        raise ValueError(f"w1 has shape {tuple(w1.shape)}, expected (R, {c}) with R ≥ 1")
    if tuple(w2.shape) != (c, w1.shape[0]):
        raise ValueError(f"w2 has shape {tuple(w2.shape)}, expected {(c, w1.shape[0])}")
    k_shape = tuple(spatial_weight.shape[2:])
    if tuple(spatial_weight.shape[:2]) != (1, 2) or len(k_shape) != rank:
        raise ValueError(f"spatial_weight must be (1, 2{', k' * rank}), got {tuple(spatial_weight.shape)}")
    if any(k % 2 == 0 for k in k_shape):
        raise ValueError(f"CBAM spatial kernel must be odd, got {k_shape}")
