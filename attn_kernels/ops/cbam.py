"""Triton CBAM (channel attention, then spatial attention): one launch forward, one launch backward.

    ca = σ(W2 relu(W1 avg_hw(x)) + W2 relu(W1 max_hw(x)))           (N, C)  channel attention
    x1 = x · ca
    d  = [mean_c(x1), max_c(x1)]                                     (N, 2, *spatial)
    sa = σ(conv_{k×…×k}(d, spatial_weight), zero padding k//2)       (N, 1, *spatial)  spatial attention
    y  = x1 · sa

Schedule: one program per sample (the interpreter-safe schedule: channel attention has SE's global
dependency on every channel, spatial attention on every channel of a pixel and a k×k pixel halo).
Forward, one launch: pass A pools avg/max per channel → MLP → ca; pass B the channel mean/max of x·ca
per pixel → d (fp32 scratch, saved); pass C the k×k conv of d (a [pixels, ≤ 256 taps] gather tile, looped) →
sa, then y = x·ca·sa. Stages hand vectors to the next through small fp32 buffers read back after
``tl.debug_barrier()`` (same program, other threads). Backward, one launch, four passes over the sample:
(1) Σ_c grad_y·x1 per pixel → dz_s = ·sa(1−sa), and the count of channels tied at the channel max;
(2) the transposed conv → grad d (2, *spatial), and the spatial taps' gradient partial Σ_p dz_s[p]·d[p+off];
(3) grad x1 = grad_y·sa + grad_mean/C + grad_max·[x1 = max]/ties → Σ_hw grad x1·x = grad ca, the count
of pixels tied at each channel's spatial max; then the MLP backward (grad of the two hidden
pre-activations, grad avg, grad max); (4) grad_x = grad x1·ca + grad_avg/HW + grad_max·[x = max]/ties.
Weight gradients: per-sample fp32 pieces (dz (N, C), hidden grads (N, R) ×2, taps (N, 2·k^rank)) reduced
by torch (three GEMMs and a sum): deterministic, no atomics.

Launches per call: forward 1 (Triton), nothing else; backward 1 (Triton) + ~8 small torch ops for
the weight gradients (2 relus + 1 add of the saved (N, R) pre-activations, 3 matmuls + 1 add, 1 sum
over N of the (N, 2k²) tap partials) — none touches an (N, C, HW) tensor. The Triton counts are
asserted in tests/ops/test_cbam.py by wrapping the kernel launchers (no GPU profiler run yet;
bench/bench_eca.py counts all device kernels with torch.profiler on a GPU).

Max-pool gradients (both maxes): split evenly among tied elements, as eager ``amax`` does. Ties are
decided on the fp32 values x (spatial max of a channel) and x·ca in fp32 (channel max of a pixel);
eager decides them in x's dtype, so for bf16/fp16 inputs with exact ties the split can differ.

Bytes (E = N·C·HW·|x|): forward reads x 3× (pool, descriptor, scale; the 2nd/3rd from L2 only when a
sample's slab fits) and writes y: 4E (floor 2E) + O(N·(C + HW)) fp32. Backward reads grad_y and x in
passes 1, 3 and 4 and writes grad_x: 7E (floor 3E). One program per sample: a small batch uses few
SMs — a GPU-tuned split schedule (per (sample, channel tile) pooling + a second launch) is not done.

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
from ._layout import device_of as _device_of, next_pow2 as _next_pow2
from .eca import _acc_dtype, _as_flat, _check_x, _out_like, _sigmoid, _tl_acc

__all__ = ["cbam", "cbam_forward", "cbam_backward", "LAUNCHES"]

_TILE = 4096
_MAX_BLOCK_HW = 256
LAUNCHES = {"forward": 1, "backward": 1}  # Triton launches per call (see the module docstring)


# ----------------------------------------------------------------------------------------------
# Device helpers
# ----------------------------------------------------------------------------------------------
@triton.jit
def _win(base, offs_p, offs_t, D, H, W, KD, KH, KW, T, ch_stride, SIGN: tl.constexpr):
    """[BLOCK_P, BLOCK_T] gather of base[ch_t·ch_stride + (d'·H + h')·W + w'] with d' = d + SIGN·(kd_t − KD//2),
    h', w' likewise, for pixel p = (d, h, w), tap t = (ch, kd, kh, kw) row-major; zero outside the map
    (zero padding) and for t ≥ T."""
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
    return tl.load(base + ch[None, :] * ch_stride + (dd * H + hh) * W + ww, mask=m, other=0.0)


@triton.jit
def _x1_grad(gy, x1, sa, dmean, dmax, cmax, cnt, C):
    """grad of x1 = x·ca: through y = x1·sa and through the channel mean / max of x1."""
    tie = tl.where(x1 == cmax[None, :], 1.0, 0.0)
    return gy * sa[None, :] + dmean[None, :] / C + tie * (dmax / cnt)[None, :]


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
    C, R, D, H, W, KD, KH, KW,
    sxn, sxc, sxhw, syn, syc, syhw,
    ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """One program per sample. Reads x three times (pool; descriptor; scale) and writes y once:
    4·C·HW·|x| bytes per sample, plus w1, w2 (2·R·C), 2·k² taps and O(C + R + HW) fp32 vectors."""
    n = tl.program_id(0).to(tl.int64)
    HW = D * H * W
    x_base = x_ptr + n * sxn
    y_base = y_ptr + n * syn
    # pass A: avg / max over HW per channel
    for c0 in range(0, C, BLOCK_C):
        offs_c = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
        mc = offs_c < C
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
    tl.debug_barrier()
    # shared MLP: hidden pre-activations for both pooled vectors
    for r0 in range(0, R, BLOCK_R):
        offs_r = (r0 + tl.arange(0, BLOCK_R)).to(tl.int64)
        mr = offs_r < R
        ha = tl.zeros([BLOCK_R], dtype=ACC)
        hm = tl.zeros([BLOCK_R], dtype=ACC)
        for c0 in range(0, C, BLOCK_C):
            offs_c = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
            mc = offs_c < C
            w1 = tl.load(w1_ptr + offs_r[:, None] * C + offs_c[None, :], mask=mr[:, None] & mc[None, :],
                         other=0.0).to(ACC)
            ha += tl.sum(w1 * tl.load(avg_ptr + n * C + offs_c, mask=mc, other=0.0)[None, :], axis=1)
            hm += tl.sum(w1 * tl.load(mx_ptr + n * C + offs_c, mask=mc, other=0.0)[None, :], axis=1)
        tl.store(pa_ptr + n * R + offs_r, ha, mask=mr)
        tl.store(pm_ptr + n * R + offs_r, hm, mask=mr)
    tl.debug_barrier()
    for c0 in range(0, C, BLOCK_C):
        offs_c = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
        mc = offs_c < C
        z = tl.zeros([BLOCK_C], dtype=ACC)
        for r0 in range(0, R, BLOCK_R):
            offs_r = (r0 + tl.arange(0, BLOCK_R)).to(tl.int64)
            mr = offs_r < R
            h = (tl.maximum(tl.load(pa_ptr + n * R + offs_r, mask=mr, other=0.0), 0.0)
                 + tl.maximum(tl.load(pm_ptr + n * R + offs_r, mask=mr, other=0.0), 0.0))
            w2 = tl.load(w2_ptr + offs_c[:, None] * R + offs_r[None, :], mask=mc[:, None] & mr[None, :],
                         other=0.0).to(ACC)
            z += tl.sum(w2 * h[None, :], axis=1)
        tl.store(ca_ptr + n * C + offs_c, _sigmoid(z), mask=mc)
    tl.debug_barrier()
    # pass B: descriptor d = [mean_c, max_c] of x·ca per pixel
    for hw0 in range(0, HW, BLOCK_HW):
        offs_hw = (hw0 + tl.arange(0, BLOCK_HW)).to(tl.int64)
        mp = offs_hw < HW
        dsum = tl.zeros([BLOCK_HW], dtype=ACC)
        dmax = tl.full([BLOCK_HW], float("-inf"), ACC)
        for c0 in range(0, C, BLOCK_C):
            offs_c = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
            mc = offs_c < C
            m = mc[:, None] & mp[None, :]
            ca = tl.load(ca_ptr + n * C + offs_c, mask=mc, other=0.0)
            x1 = tl.load(x_base + offs_c[:, None] * sxc + offs_hw[None, :] * sxhw, mask=m,
                         other=0.0).to(ACC) * ca[:, None]
            dsum += tl.sum(x1, axis=0)
            dmax = tl.maximum(dmax, tl.max(tl.where(m, x1, float("-inf")), axis=0))
        tl.store(d_ptr + n * 2 * HW + offs_hw, dsum / C, mask=mp)
        tl.store(d_ptr + n * 2 * HW + HW + offs_hw, dmax, mask=mp)
    tl.debug_barrier()
    # pass C: sa = σ(conv(d)) per pixel tile, then y = x·ca·sa
    T = 2 * KD * KH * KW
    offs_t = tl.arange(0, BLOCK_T)
    for p0 in range(0, HW, BLOCK_P):
        offs_p = (p0 + tl.arange(0, BLOCK_P)).to(tl.int64)
        mp = offs_p < HW
        zs = tl.zeros([BLOCK_P], dtype=ACC)
        for t0 in range(0, T, BLOCK_T):
            tt = t0 + offs_t
            sw = tl.load(sw_ptr + tt, mask=tt < T, other=0.0).to(ACC)
            zs += tl.sum(_win(d_ptr + n * 2 * HW, offs_p, tt, D, H, W, KD, KH, KW, T, HW, 1) * sw[None, :], axis=1)
        sa = _sigmoid(zs)
        tl.store(sa_ptr + n * HW + offs_p, sa, mask=mp)
        for c0 in range(0, C, BLOCK_C):
            offs_c = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
            mc = offs_c < C
            m = mc[:, None] & mp[None, :]
            ca = tl.load(ca_ptr + n * C + offs_c, mask=mc, other=0.0)
            v = tl.load(x_base + offs_c[:, None] * sxc + offs_p[None, :] * sxhw, mask=m, other=0.0).to(ACC)
            out = v * ca[:, None] * sa[None, :]
            tl.store(y_base + offs_c[:, None] * syc + offs_p[None, :] * syhw, out.to(y_ptr.dtype.element_ty), mask=m)


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
    dz_ptr,  # (N, C) ACC (out): grad of the channel-attention logits
    cntc_ptr,  # (N, C) ACC scratch: pixels tied at each channel's spatial max
    dpa_ptr, dpm_ptr,  # (N, R) ACC (out): grads of the hidden pre-activations
    gsw_ptr,  # (N, 2·KH·KW) ACC (out): per-sample spatial-tap gradient
    C, R, D, H, W, KD, KH, KW,
    sgn, sgc, sghw, sxn, sxc, sxhw, sdn, sdc, sdhw,
    ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """One program per sample. Reads grad_y and x in passes 1, 3 and 4 and writes grad_x:
    7·C·HW·|x| bytes per sample, plus w1, w2 (read twice), the taps and O(C + R + HW) fp32 vectors."""
    n = tl.program_id(0).to(tl.int64)
    HW = D * H * W
    gy_base = gy_ptr + n * sgn
    x_base = x_ptr + n * sxn
    d_base = d_ptr + n * 2 * HW
    # pass 1: per pixel Σ_c grad_y·x1 → dz_s; ties at the channel max
    for hw0 in range(0, HW, BLOCK_HW):
        offs_hw = (hw0 + tl.arange(0, BLOCK_HW)).to(tl.int64)
        mp = offs_hw < HW
        cmax = tl.load(d_base + HW + offs_hw, mask=mp, other=0.0)
        g = tl.zeros([BLOCK_HW], dtype=ACC)
        cnt = tl.zeros([BLOCK_HW], dtype=ACC)
        for c0 in range(0, C, BLOCK_C):
            offs_c = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
            mc = offs_c < C
            m = mc[:, None] & mp[None, :]
            ca = tl.load(ca_ptr + n * C + offs_c, mask=mc, other=0.0)
            x1 = tl.load(x_base + offs_c[:, None] * sxc + offs_hw[None, :] * sxhw, mask=m,
                         other=0.0).to(ACC) * ca[:, None]
            gy = tl.load(gy_base + offs_c[:, None] * sgc + offs_hw[None, :] * sghw, mask=m, other=0.0).to(ACC)
            g += tl.sum(gy * x1, axis=0)
            cnt += tl.sum(tl.where(m & (x1 == cmax[None, :]), 1.0, 0.0), axis=0)
        sa = tl.load(sa_ptr + n * HW + offs_hw, mask=mp, other=0.0)
        tl.store(dzs_ptr + n * HW + offs_hw, g * sa * (1.0 - sa), mask=mp)
        tl.store(cnt_ptr + n * HW + offs_hw, tl.maximum(cnt, 1.0), mask=mp)
    tl.debug_barrier()
    # pass 2: grad d = convᵀ(dz_s); spatial taps' grad G_t = Σ_p dz_s[p] · d[ch_t, p + off_t]
    T = 2 * KD * KH * KW
    kk = KD * KH * KW
    offs_t = tl.arange(0, BLOCK_T)
    for t0 in range(0, T, BLOCK_T):
        tt = t0 + offs_t
        gt = tl.zeros([BLOCK_T], dtype=ACC)
        for p0 in range(0, HW, BLOCK_P):
            offs_p = (p0 + tl.arange(0, BLOCK_P)).to(tl.int64)
            dzs = tl.load(dzs_ptr + n * HW + offs_p, mask=offs_p < HW, other=0.0)
            gt += tl.sum(dzs[:, None] * _win(d_base, offs_p, tt, D, H, W, KD, KH, KW, T, HW, 1), axis=0)
        tl.store(gsw_ptr + n * T + tt, gt, mask=tt < T)
    for p0 in range(0, HW, BLOCK_P):
        offs_p = (p0 + tl.arange(0, BLOCK_P)).to(tl.int64)
        mp = offs_p < HW
        g0 = tl.zeros([BLOCK_P], dtype=ACC)
        g1 = tl.zeros([BLOCK_P], dtype=ACC)
        for t0 in range(0, T, BLOCK_T):
            tt = t0 + offs_t
            sw = tl.load(sw_ptr + tt, mask=tt < T, other=0.0).to(ACC)
            prod = _win(dzs_ptr + n * HW, offs_p, tt, D, H, W, KD, KH, KW, T, 0, -1) * sw[None, :]
            g0 += tl.sum(tl.where((tt < kk)[None, :], prod, 0.0), axis=1)
            g1 += tl.sum(tl.where((tt >= kk)[None, :], prod, 0.0), axis=1)
        tl.store(dd_ptr + n * 2 * HW + offs_p, g0, mask=mp)
        tl.store(dd_ptr + n * 2 * HW + HW + offs_p, g1, mask=mp)
    tl.debug_barrier()
    # pass 3: grad ca[c] = Σ_hw grad_x1 · x; pixels tied at each channel's spatial max
    for c0 in range(0, C, BLOCK_C):
        offs_c = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
        mc = offs_c < C
        ca = tl.load(ca_ptr + n * C + offs_c, mask=mc, other=0.0)
        smax = tl.load(mx_ptr + n * C + offs_c, mask=mc, other=0.0)
        dca = tl.zeros([BLOCK_C], dtype=ACC)
        cntc = tl.zeros([BLOCK_C], dtype=ACC)
        for hw0 in range(0, HW, BLOCK_HW):
            offs_hw = (hw0 + tl.arange(0, BLOCK_HW)).to(tl.int64)
            mp = offs_hw < HW
            m = mc[:, None] & mp[None, :]
            x = tl.load(x_base + offs_c[:, None] * sxc + offs_hw[None, :] * sxhw, mask=m, other=0.0).to(ACC)
            gy = tl.load(gy_base + offs_c[:, None] * sgc + offs_hw[None, :] * sghw, mask=m, other=0.0).to(ACC)
            dx1 = _x1_grad(gy, x * ca[:, None], tl.load(sa_ptr + n * HW + offs_hw, mask=mp, other=0.0),
                           tl.load(dd_ptr + n * 2 * HW + offs_hw, mask=mp, other=0.0),
                           tl.load(dd_ptr + n * 2 * HW + HW + offs_hw, mask=mp, other=0.0),
                           tl.load(d_base + HW + offs_hw, mask=mp, other=0.0),
                           tl.load(cnt_ptr + n * HW + offs_hw, mask=mp, other=1.0), C)
            dca += tl.sum(tl.where(m, dx1 * x, 0.0), axis=1)
            cntc += tl.sum(tl.where(m & (x == smax[:, None]), 1.0, 0.0), axis=1)
        tl.store(dz_ptr + n * C + offs_c, dca * ca * (1.0 - ca), mask=mc)
        tl.store(cntc_ptr + n * C + offs_c, tl.maximum(cntc, 1.0), mask=mc)
    tl.debug_barrier()
    # MLP backward: dh = W2ᵀ dz; grads of the two relu'd pre-activations
    for r0 in range(0, R, BLOCK_R):
        offs_r = (r0 + tl.arange(0, BLOCK_R)).to(tl.int64)
        mr = offs_r < R
        dh = tl.zeros([BLOCK_R], dtype=ACC)
        for c0 in range(0, C, BLOCK_C):
            offs_c = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
            mc = offs_c < C
            w2 = tl.load(w2_ptr + offs_c[None, :] * R + offs_r[:, None], mask=mr[:, None] & mc[None, :],
                         other=0.0).to(ACC)
            dh += tl.sum(w2 * tl.load(dz_ptr + n * C + offs_c, mask=mc, other=0.0)[None, :], axis=1)
        pa = tl.load(pa_ptr + n * R + offs_r, mask=mr, other=0.0)
        pm = tl.load(pm_ptr + n * R + offs_r, mask=mr, other=0.0)
        tl.store(dpa_ptr + n * R + offs_r, tl.where(pa > 0.0, dh, 0.0), mask=mr)
        tl.store(dpm_ptr + n * R + offs_r, tl.where(pm > 0.0, dh, 0.0), mask=mr)
    tl.debug_barrier()
    # pass 4: grad_x = grad_x1·ca + grad_avg/HW + grad_max·[x = max]/ties
    for c0 in range(0, C, BLOCK_C):
        offs_c = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
        mc = offs_c < C
        davg = tl.zeros([BLOCK_C], dtype=ACC)
        dmx = tl.zeros([BLOCK_C], dtype=ACC)
        for r0 in range(0, R, BLOCK_R):
            offs_r = (r0 + tl.arange(0, BLOCK_R)).to(tl.int64)
            mr = offs_r < R
            w1 = tl.load(w1_ptr + offs_r[None, :] * C + offs_c[:, None], mask=mc[:, None] & mr[None, :],
                         other=0.0).to(ACC)
            davg += tl.sum(w1 * tl.load(dpa_ptr + n * R + offs_r, mask=mr, other=0.0)[None, :], axis=1)
            dmx += tl.sum(w1 * tl.load(dpm_ptr + n * R + offs_r, mask=mr, other=0.0)[None, :], axis=1)
        ca = tl.load(ca_ptr + n * C + offs_c, mask=mc, other=0.0)
        smax = tl.load(mx_ptr + n * C + offs_c, mask=mc, other=0.0)
        dmx = dmx / tl.load(cntc_ptr + n * C + offs_c, mask=mc, other=1.0)
        davg = davg / HW
        for hw0 in range(0, HW, BLOCK_HW):
            offs_hw = (hw0 + tl.arange(0, BLOCK_HW)).to(tl.int64)
            mp = offs_hw < HW
            m = mc[:, None] & mp[None, :]
            x = tl.load(x_base + offs_c[:, None] * sxc + offs_hw[None, :] * sxhw, mask=m, other=0.0).to(ACC)
            gy = tl.load(gy_base + offs_c[:, None] * sgc + offs_hw[None, :] * sghw, mask=m, other=0.0).to(ACC)
            dx1 = _x1_grad(gy, x * ca[:, None], tl.load(sa_ptr + n * HW + offs_hw, mask=mp, other=0.0),
                           tl.load(dd_ptr + n * 2 * HW + offs_hw, mask=mp, other=0.0),
                           tl.load(dd_ptr + n * 2 * HW + HW + offs_hw, mask=mp, other=0.0),
                           tl.load(d_base + HW + offs_hw, mask=mp, other=0.0),
                           tl.load(cnt_ptr + n * HW + offs_hw, mask=mp, other=1.0), C)
            gx = dx1 * ca[:, None] + davg[:, None] + tl.where(x == smax[:, None], dmx[:, None], 0.0)
            tl.store(gx_ptr + n * sdn + offs_c[:, None] * sdc + offs_hw[None, :] * sdhw,
                     gx.to(gx_ptr.dtype.element_ty), mask=m)


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
    block_hw = min(_next_pow2(hw), _MAX_BLOCK_HW)
    block_c = max(1, min(_next_pow2(c), _TILE // block_hw))
    block_r = max(1, min(_next_pow2(r), _TILE // block_c))
    block_t = min(_next_pow2(2 * ks[0] * ks[1] * ks[2]), 256)
    block_p = max(1, min(_next_pow2(hw), _TILE // block_t))
    cfg = dict(BLOCK_C=block_c, BLOCK_HW=block_hw, BLOCK_R=block_r, BLOCK_P=block_p, BLOCK_T=block_t, num_warps=4)
    return n, c, r, dhw, ks, cfg


def cbam_forward(x, w1, w2, spatial_weight):
    """(y, avg, mx, pre_a, pre_m, ca, d, sa): y like x, the rest fp32 (fp64 for fp64 x) saved vectors."""
    _check_x(x)
    n, c, r, dhw, ks, cfg = _geometry(x, w1, spatial_weight)
    hw = dhw[0] * dhw[1] * dhw[2]
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
    with _device_of(xk):
        _cbam_fwd_kernel[(n,)](
            xk, y_buf, w1.contiguous(), w2.contiguous(), spatial_weight.reshape(-1).contiguous(),
            avg, mx, pa, pm, ca, d, sa, c, r, *dhw, *ks, *sx, *sy, ACC=_tl_acc(acc), **cfg)
    if y_buf is not y:
        y.copy_(y_buf)
    return y, avg, mx, pa, pm, ca, d, sa


def cbam_backward(grad_y, x, w1, w2, spatial_weight, avg, mx, pa, pm, ca, d, sa):
    """(grad_x, grad_w1, grad_w2, grad_spatial_weight), each in its input's dtype."""
    n, c, r, dhw, ks, cfg = _geometry(x, w1, spatial_weight)
    hw = dhw[0] * dhw[1] * dhw[2]
    acc = ca.dtype
    dev = x.device
    gx, gx_buf, sd = _out_like(x)
    dz = _alloc.empty((n, c), dtype=acc, device=dev)
    dpa, dpm = (_alloc.empty((n, r), dtype=acc, device=dev) for _ in range(2))
    gsw = _alloc.empty((n, 2 * ks[0] * ks[1] * ks[2]), dtype=acc, device=dev)
    if n == 0:
        gx.zero_()
        return gx, torch.zeros_like(w1), torch.zeros_like(w2), torch.zeros_like(spatial_weight)
    xk, sx = _as_flat(x)
    gyk, sg = _as_flat(grad_y)
    scratch = [torch.empty((n, hw), dtype=acc, device=dev), torch.empty((n, hw), dtype=acc, device=dev),
               torch.empty((n, 2, hw), dtype=acc, device=dev)]
    cntc = torch.empty((n, c), dtype=acc, device=dev)
    with _device_of(gyk):
        _cbam_bwd_kernel[(n,)](
            gyk, xk, gx_buf, w1.contiguous(), w2.contiguous(), spatial_weight.reshape(-1).contiguous(),
            mx, pa, pm, ca, d, sa, *scratch, dz, cntc, dpa, dpm, gsw, c, r, *dhw, *ks, *sg, *sx, *sd,
            ACC=_tl_acc(acc), **cfg)
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


def _backward(ctx, grad_y, *_):
    return tuple(torch.ops.attn_kernels.cbam_bwd(grad_y, *ctx.saved_tensors))


_cbam_fwd_op.register_autograd(_backward, setup_context=_setup)
# Autocast: deliberately no rule — the op runs in x's dtype with fp32 accumulation (as ops/eca.py).


def cbam(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, spatial_weight: torch.Tensor) -> torch.Tensor:
    """Fused CBAM; arguments as ``reference.cbam`` (x checked by ``functional.cbam``; the rest here)."""
    if x.dim() > 5:
        raise ValueError(f"CBAM supports 1-, 2- or 3-D spatial maps, got {x.dim() - 2}-D")
    _check_params(x, w1, w2, spatial_weight)
    return torch.ops.attn_kernels.cbam_fwd(x, w1, w2, spatial_weight)[0]


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
