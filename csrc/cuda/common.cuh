// Device building blocks shared by se_cuda.cu and eca_cuda.cu (CUDA headers only).
//
// Portable schedule (sm_80+), forward: pool (reads x) -> excitation (one block per sample, O(C*R))
// -> scale (reads x, writes y): 3 launches, x read twice (the second read often hits L2).
// Backward: reduce sum_hw gy*x (reads gy, x) -> excitation backward -> grad_x = gy*s + dp/HW (reads gy,
// writes grad_x) -> deterministic parameter-gradient sums (one thread per output, samples in order).
//
// Hopper schedule (sm_90a, forward): one thread-block cluster per sample. Each block of the cluster
// owns a channel slice: it loads the slice into shared memory once while pooling it, publishes its
// pooled means, cluster.sync(), gathers the whole pooled vector from the other blocks' shared memory
// (distributed shared memory, cluster.map_shared_rank), cluster.sync(), computes its share of the SE
// hidden layer (R / cluster size units; exchanged the same way, so W1 is read once per sample, not once
// per block), then the gates of its channels, and scales the slice straight from shared memory: x read
// once, y written once (the 2-bytes-per-byte floor). Used when the slice fits the opt-in shared memory with a cluster of <= 16
// blocks and the occupancy query says such a cluster can be resident; otherwise (or on other GPUs) the
// portable schedule runs. That choice is made on the host from answers cached per device (LaunchCache),
// before anything is launched: steady-state calls do no CUDA queries, and a CUDA-graph capture never
// sees a refused launch (warm up once outside the capture, as torch.cuda.graphs advises anyway, so the
// one-time probes do not run inside it).
#pragma once

#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_pipeline.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <atomic>
#include <map>
#include <mutex>
#include <tuple>
#include <utility>

#include "launchers.h"

namespace cg = cooperative_groups;

namespace ak {

constexpr int kThreads = 256;

// Test / benchmark switches (launchers.h): atomics, as forwards may run on several host threads.
extern std::atomic<int> g_last_path;
extern std::atomic<int> g_cluster_enabled;
// Row loops (ak_set_row_loops; ATTN_KERNELS_CUDA_ROW_LOOPS=1 at load): the cluster forward and the scale
// kernels walk (row, element) loops -- no 64-bit division per element -- and the cluster forward copies
// its slice into shared memory with cp.async, 16 bytes per copy, all in flight at once. Off by default
// until a GPU has run the tests and the A/B (written without one; compile-checked only).
extern std::atomic<int> g_row_loops;

__device__ __forceinline__ float ld(const float* p) { return *p; }
__device__ __forceinline__ float ld(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ float ld(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ void st(float* p, float v) { *p = v; }
__device__ __forceinline__ void st(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void st(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// act codes as csrc/ops.h Act: 0 relu, 1 silu, 2 gelu (erf), 4 hardswish (x * relu6(x + 3) / 6).
__device__ __forceinline__ float act_fwd(float v, int act) {
  if (act == 0) return v > 0.f ? v : 0.f;
  if (act == 1) return v / (1.f + expf(-v));
  if (act == 4) return v * fminf(fmaxf(v + 3.f, 0.f), 6.f) / 6.f;
  return 0.5f * v * (1.f + erff(v * 0.70710678118654752f));
}

__device__ __forceinline__ float act_grad(float v, int act) {
  if (act == 0) return v > 0.f ? 1.f : 0.f;
  if (act == 1) {
    const float sg = 1.f / (1.f + expf(-v));
    return sg * (1.f + v * (1.f - sg));
  }
  if (act == 4) return v < -3.f ? 0.f : (v <= 3.f ? v / 3.f + 0.5f : 1.f);  // torch's hardswish_backward
  return 0.5f * (1.f + erff(v * 0.70710678118654752f)) + v * expf(-0.5f * v * v) * 0.3989422804014327f;
}

__device__ __forceinline__ float gate_fwd(float z, int gate) {
  if (gate == 0) return 1.f / (1.f + expf(-z));
  return z <= -3.f ? 0.f : (z >= 3.f ? 1.f : z / 6.f + 0.5f);
}

// ---- pooling-type reductions: out[n*C + c] = scale * sum_hw a (* b) ---------------------------------
// Planar: one warp per (n, c) row, lanes stride the contiguous spatial axis.
// Grid-stride over rows (warp-uniform loop, so the full-mask shuffles always see 32 live lanes): the grid
// is capped, and N*C can pass 2^34 rows on a 141 GB GPU.
template <typename T, bool kDot>
__global__ void __launch_bounds__(kThreads) reduce_planar_kernel(const T* a, int64_t asn, int64_t asc, const T* b,
                                                                 int64_t bsn, int64_t bsc, int64_t N, int64_t C,
                                                                 int64_t HW, float scale, float* out) {
  const int lane = threadIdx.x % 32;
  const int64_t rows = N * C, step = (int64_t)gridDim.x * (kThreads / 32);
  for (int64_t row = (int64_t)blockIdx.x * (kThreads / 32) + threadIdx.x / 32; row < rows; row += step) {
    const int64_t n = row / C, c = row % C;
    const T* pa = a + n * asn + c * asc;
    const T* pb = kDot ? b + n * bsn + c * bsc : nullptr;
    float acc = 0.f;
    for (int64_t p = lane; p < HW; p += 32) acc += kDot ? ld(pa + p) * ld(pb + p) : ld(pa + p);
    acc = warp_sum(acc);
    if (lane == 0) out[row] = acc * scale;
  }
}

// Channels_last: block (32 channels x 8 row groups), grid (ceil(C/32), N); fixed-order reduction.
template <typename T, bool kDot>
__global__ void __launch_bounds__(kThreads) reduce_cl_kernel(const T* a, int64_t asn, int64_t ashw, const T* b,
                                                             int64_t bsn, int64_t bshw, int64_t N, int64_t C,
                                                             int64_t HW, float scale, float* out) {
  __shared__ float part[8][33];
  const int tx = threadIdx.x % 32, ty = threadIdx.x / 32;
  const int64_t c = (int64_t)blockIdx.x * 32 + tx;
  for (int64_t n = blockIdx.y; n < N; n += gridDim.y) {  // grid-stride over samples (gridDim.y <= 65535)
    float acc = 0.f;
    if (c < C) {
      const T* pa = a + n * asn + c;
      const T* pb = kDot ? b + n * bsn + c : nullptr;
      for (int64_t p = ty; p < HW; p += 8) acc += kDot ? ld(pa + p * ashw) * ld(pb + p * bshw) : ld(pa + p * ashw);
    }
    part[ty][tx] = acc;
    __syncthreads();
    if (ty == 0 && c < C) {
      float t = 0.f;
      for (int i = 0; i < 8; ++i) t += part[i][tx];
      out[n * C + c] = t * scale;
    }
    __syncthreads();
  }
}

// ---- y = x * s[n, c] (+ d[n, c]) over every element, grid-stride ------------------------------------
template <typename T, bool kPlanar, bool kAdd>
__global__ void __launch_bounds__(kThreads) scale_kernel(const T* x, int64_t xsn, int64_t xsc, int64_t xshw, T* y,
                                                         int64_t ysn, int64_t ysc, int64_t yshw, int64_t N,
                                                         int64_t C, int64_t HW, const float* s, const float* d) {
  const int64_t total = N * C * HW;
  for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x) {
    int64_t n, c, p;
    if (kPlanar) {
      p = e % HW;
      const int64_t nc = e / HW;
      c = nc % C;
      n = nc / C;
    } else {
      c = e % C;
      const int64_t np = e / C;
      p = np % HW;
      n = np / HW;
    }
    const int64_t nc = n * C + c;
    float v = ld(x + n * xsn + c * xsc + p * xshw) * s[nc];
    if (kAdd) v += d[nc];
    st(y + n * ysn + c * ysc + p * yshw, v);
  }
}

// Row loops (g_row_loops): one warp per segment of kRowSeg elements of a row -- (n, c) planar, (n, p)
// channels_last -- lanes along the row's contiguous axis: the index math is two divisions per segment, not
// four 64-bit ones per element (what scale_kernel pays), each lane's loads are independent (unrolled:
// several in flight), and a small batch or a long row still spreads over many warps.
constexpr int64_t kRowSeg = 256;
template <typename T, bool kPlanar, bool kAdd>
__global__ void __launch_bounds__(kThreads) scale_rows_kernel(const T* x, int64_t xsn, int64_t xsc, int64_t xshw, T* y,
                                                              int64_t ysn, int64_t ysc, int64_t yshw, int64_t N,
                                                              int64_t C, int64_t HW, const float* s, const float* d) {
  const int lane = threadIdx.x % 32;
  const int64_t inner = kPlanar ? HW : C, outer = kPlanar ? C : HW;
  const int64_t segs = (inner + kRowSeg - 1) / kRowSeg, items = N * outer * segs;
  const int64_t step = (int64_t)gridDim.x * (kThreads / 32);
  for (int64_t item = (int64_t)blockIdx.x * (kThreads / 32) + threadIdx.x / 32; item < items; item += step) {
    const int64_t row = item / segs, n = row / outer, o = row - n * outer;
    const int64_t lo = (item - row * segs) * kRowSeg, hi = lo + kRowSeg < inner ? lo + kRowSeg : inner;
    if (kPlanar) {  // row (n, c): one gate for the whole row
      const float g = s[n * C + o], add = kAdd ? d[n * C + o] : 0.f;
      const T* px = x + n * xsn + o * xsc;
      T* py = y + n * ysn + o * ysc;
#pragma unroll 4
      for (int64_t p = lo + lane; p < hi; p += 32) {
        float v = ld(px + p * xshw) * g;  // as scale_kernel computes it, bit for bit
        if (kAdd) v += add;
        st(py + p * yshw, v);
      }
    } else {  // row (n, p): the gates of every channel, read along the row
      const T* px = x + n * xsn + o * xshw;
      T* py = y + n * ysn + o * yshw;
#pragma unroll 4
      for (int64_t c = lo + lane; c < hi; c += 32) {
        float v = ld(px + c * xsc) * s[n * C + c];
        if (kAdd) v += d[n * C + c];
        st(py + c * ysc, v);
      }
    }
  }
}

// ---- deterministic batch sums: g[r, j] = sum_n a[n, r] * b[n, j]; gb[r] = sum_n a[n, r] --------------
// One thread per (r, j); with cols == 0 (C == 0 for grad_W1) one thread per row still writes gb[r].
static __global__ void __launch_bounds__(kThreads) outer_sum_kernel(const float* a, const float* b, int64_t N, int64_t rows,
                                                             int64_t cols, float* g, float* gb) {
  const int64_t width = cols > 0 ? cols : 1;
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= rows * width) return;
  const int64_t r = i / width, j = i % width;
  float acc = 0.f, bias = 0.f;
  for (int64_t n = 0; n < N; ++n) {
    const float v = a[n * rows + r];
    if (cols > 0) acc += v * b[n * cols + j];
    bias += v;
  }
  if (cols > 0) g[i] = acc;
  if (gb != nullptr && j == 0) gb[r] = bias;
}

constexpr int64_t kMaxGridX = 0x7fffffffLL;  // gridDim.x limit (2^31 - 1)

inline unsigned blocks_for(int64_t work, int64_t per_block, int64_t cap = 65535LL * 32) {
  int64_t b = (work + per_block - 1) / per_block;
  if (b < 1) b = 1;
  return (unsigned)(b < cap ? b : cap);
}

template <typename T>
cudaError_t reduce(int layout, const ak_view& a, const ak_view* b, int64_t N, int64_t C, int64_t HW, float scale,
                   float* out, cudaStream_t st) {
  const T* pa = static_cast<const T*>(a.ptr);
  const T* pb = b ? static_cast<const T*>(b->ptr) : nullptr;
  if (N * C == 0) return cudaSuccess;
  if (layout == 0) {
    const unsigned grid = blocks_for(N * C, kThreads / 32);  // grid-stride kernel: any cap is correct
    if (b) {
      reduce_planar_kernel<T, true><<<grid, kThreads, 0, st>>>(pa, a.sn, a.sc, pb, b->sn, b->sc, N, C, HW, scale, out);
    } else {
      reduce_planar_kernel<T, false><<<grid, kThreads, 0, st>>>(pa, a.sn, a.sc, pa, 0, 0, N, C, HW, scale, out);
    }
  } else {
    dim3 grid((unsigned)((C + 31) / 32), (unsigned)(N < 65535 ? N : 65535));
    if (b) {
      reduce_cl_kernel<T, true><<<grid, kThreads, 0, st>>>(pa, a.sn, a.shw, pb, b->sn, b->shw, N, C, HW, scale, out);
    } else {
      reduce_cl_kernel<T, false><<<grid, kThreads, 0, st>>>(pa, a.sn, a.shw, pa, 0, 0, N, C, HW, scale, out);
    }
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t scale(int layout, const ak_view& x, const ak_view& y, int64_t N, int64_t C, int64_t HW, const float* s,
                  const float* d, cudaStream_t st) {
  const int64_t total = N * C * HW;
  if (total == 0) return cudaSuccess;
  const bool rows = g_row_loops.load(std::memory_order_relaxed) != 0;
  // row loops: one warp per row segment (grid-stride, capped like reduce's); else one thread per element
  const int64_t inner = layout == 0 ? HW : C, segs = (inner + kRowSeg - 1) / kRowSeg;
  const unsigned grid = rows ? blocks_for(N * (layout == 0 ? C : HW) * segs, kThreads / 32) : blocks_for(total, kThreads);
  const T* px = static_cast<const T*>(x.ptr);
  T* py = static_cast<T*>(y.ptr);
#define AK_SCALE(P, ADD)                                                                                             \
  do {                                                                                                               \
    if (rows)                                                                                                        \
      scale_rows_kernel<T, P, ADD><<<grid, kThreads, 0, st>>>(px, x.sn, x.sc, x.shw, py, y.sn, y.sc, y.shw, N, C, HW, \
                                                              s, d);                                                 \
    else                                                                                                             \
      scale_kernel<T, P, ADD><<<grid, kThreads, 0, st>>>(px, x.sn, x.sc, x.shw, py, y.sn, y.sc, y.shw, N, C, HW, s, d); \
  } while (0)
  if (layout == 0) {
    if (d) AK_SCALE(true, true); else AK_SCALE(true, false);
  } else {
    if (d) AK_SCALE(false, true); else AK_SCALE(false, false);
  }
#undef AK_SCALE
  return cudaGetLastError();
}

inline cudaError_t outer_sum(const float* a, const float* b, int64_t N, int64_t rows, int64_t cols, float* g,
                             float* gb, cudaStream_t st) {
  const int64_t threads = rows * (cols > 0 ? cols : 1);
  if (rows == 0 || (cols == 0 && gb == nullptr)) return cudaSuccess;
  outer_sum_kernel<<<blocks_for(threads, kThreads, kMaxGridX), kThreads, 0, st>>>(a, b, N, rows, cols, g, gb);
  return cudaGetLastError();
}

// ---- Hopper: one thread-block cluster per sample (forward) ------------------------------------------
// Shared memory of each block: part[slice] | pfull[C] | sgate[slice] | scratch[ex.scratch_floats()] | tile
// (tile = slice channels x HW elements of x, in the input's layout order). Ex provides:
//   template <class Cluster> __device__ void cluster_gates(const float* pfull, int64_t c0, int64_t c1,
//                                                         float* sgate, float* scratch, Cluster& cluster) const
// computing the gates of channels [c0, c1) (block-wide; may __syncthreads(); every block of the cluster
// calls it, so it may also cluster.sync() and read peers' scratch).
// With kRows (g_row_loops) the slice is copied with cp.async -- 16-byte copies, all in flight before one
// wait -- where it is one contiguous run (planar, x.sc == HW: the tile is shifted so that it shares its
// source's address mod 16, and a scalar head reaches the first 16-byte boundary) or channels_last rows of
// whole 16-byte chunks on 16-byte boundaries; anything else, and the scaling, walk (row, element) loops:
// one warp per row, no division per element. Without it, the first version's per-element loops.
template <typename T, bool kPlanar, typename Ex, bool kRows>
__global__ void __launch_bounds__(512) cluster_forward_kernel(ak_view x, ak_view y, int64_t C, int64_t HW,
                                                              int64_t slice, int64_t scratch_floats, Ex ex,
                                                              float* pooled, float* s) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  cg::cluster_group cluster = cg::this_cluster();
  const unsigned rank = cluster.block_rank();
  const unsigned csize = cluster.num_blocks();
  const int64_t n = blockIdx.x / csize;
  const int64_t c0 = (int64_t)rank * slice;
  const int64_t c1 = c0 + slice < C ? c0 + slice : C;
  const int64_t nc = c1 > c0 ? c1 - c0 : 0;
  extern __shared__ float4 smem_f4[];
  float* part = reinterpret_cast<float*>(smem_f4);
  float* pfull = part + slice;
  float* sgate = pfull + C;
  float* scratch = sgate + slice;
  const T* px = static_cast<const T*>(x.ptr) + n * x.sn;
  T* py = static_cast<T*>(y.ptr) + n * y.sn;
  const T* src0 = px + c0 * x.sc;  // the slice's first element
  T* tile = reinterpret_cast<T*>(scratch + ((scratch_floats + 3) / 4) * 4);
  if (kRows) {  // 16-byte aligned, then shifted by src0's misalignment (the host allows 32 bytes of slack)
    const uintptr_t base = ((uintptr_t)tile + 15) & ~(uintptr_t)15;
    tile = reinterpret_cast<T*>(base + ((uintptr_t)src0 & 15));
  }
  const float inv = 1.f / (float)HW;
  const int64_t elems = nc * HW;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = blockDim.x / 32;
  // 1. load the slice once (coalesced along the contiguous axis), keep it in shared memory
  if (kRows) {
    constexpr int64_t kPer = 16 / sizeof(T);  // elements per 16-byte copy
    if (kPlanar && x.shw == 1 && x.sc == HW) {  // one contiguous run: head, 16-byte copies, tail
      int64_t head = (int64_t)(((16 - ((uintptr_t)src0 & 15)) & 15) / sizeof(T));
      head = head < elems ? head : elems;
      const int64_t chunks = (elems - head) / kPer;
      for (int64_t i = threadIdx.x; i < head; i += blockDim.x) tile[i] = src0[i];
      for (int64_t j = threadIdx.x; j < chunks; j += blockDim.x) {
        __pipeline_memcpy_async(tile + head + j * kPer, src0 + head + j * kPer, 16);
      }
      for (int64_t i = head + chunks * kPer + threadIdx.x; i < elems; i += blockDim.x) tile[i] = src0[i];
    } else if (!kPlanar && x.sc == 1 && ((uintptr_t)src0 & 15) == 0 &&
               (HW == 1 || (x.shw * (int64_t)sizeof(T)) % 16 == 0) &&
               (nc * (int64_t)sizeof(T)) % 16 == 0) {  // channels_last rows of whole 16-byte chunks
      const unsigned per_row = (unsigned)(nc / kPer), chunks = (unsigned)HW * per_row;  // < 2^16: shared memory
      for (unsigned j = threadIdx.x; j < chunks; j += blockDim.x) {
        const unsigned p = j / per_row, k = j - p * per_row;
        __pipeline_memcpy_async(tile + p * nc + k * kPer, src0 + p * x.shw + k * kPer, 16);
      }
    } else if (kPlanar) {  // rows (channels) of the slice, lanes along HW
      for (int64_t c = warp; c < nc; c += nwarps) {
        const T* row = src0 + c * x.sc;
#pragma unroll 4
        for (int64_t p = lane; p < HW; p += 32) tile[c * HW + p] = row[p * x.shw];
      }
    } else {  // rows (pixels), lanes along the slice's channels
      for (int64_t p = warp; p < HW; p += nwarps) {
        const T* row = src0 + p * x.shw;
#pragma unroll 4
        for (int64_t c = lane; c < nc; c += 32) tile[p * nc + c] = row[c * x.sc];
      }
    }
    __pipeline_commit();
    __pipeline_wait_prior(0);
  } else {
    for (int64_t i = threadIdx.x; i < elems; i += blockDim.x) {
      int64_t c, p;
      if (kPlanar) { c = i / HW; p = i % HW; } else { p = i / nc; c = i % nc; }
      tile[i] = px[(c0 + c) * x.sc + p * x.shw];
    }
  }
  __syncthreads();
  // 2. pool the slice from shared memory: one warp per channel, fixed order
  for (int64_t c = warp; c < nc; c += nwarps) {
    float acc = 0.f;
    for (int64_t p = lane; p < HW; p += 32) acc += ld(kPlanar ? tile + c * HW + p : tile + p * nc + c);
    acc = warp_sum(acc);
    if (lane == 0) part[c] = acc * inv;
  }
  // 3. exchange the pooled means through distributed shared memory
  cluster.sync();
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const unsigned owner = (unsigned)(c / slice);
    const float* remote = cluster.map_shared_rank(part, owner);
    pfull[c] = remote[c - (int64_t)owner * slice];
  }
  cluster.sync();  // every block has read every other block's part[]: safe to move on / exit
  // 4. gates of this block's channels
  ex.cluster_gates(pfull, c0, c1, sgate, scratch, cluster);
  __syncthreads();
  for (int64_t c = threadIdx.x; c < nc; c += blockDim.x) {
    pooled[n * C + c0 + c] = pfull[c0 + c];
    s[n * C + c0 + c] = sgate[c];
  }
  // 5. scale straight from shared memory
  if (kRows && kPlanar) {
    for (int64_t c = warp; c < nc; c += nwarps) {
      const float g = sgate[c];
      T* row = py + (c0 + c) * y.sc;
#pragma unroll 4
      for (int64_t p = lane; p < HW; p += 32) st(row + p * y.shw, ld(tile + c * HW + p) * g);
    }
  } else if (kRows) {
    for (int64_t p = warp; p < HW; p += nwarps) {
      T* row = py + c0 * y.sc + p * y.shw;
#pragma unroll 4
      for (int64_t c = lane; c < nc; c += 32) st(row + c * y.sc, ld(tile + p * nc + c) * sgate[c]);
    }
  } else {
    for (int64_t i = threadIdx.x; i < elems; i += blockDim.x) {
      int64_t c, p;
      if (kPlanar) { c = i / HW; p = i % HW; } else { p = i / nc; c = i % nc; }
      st(py + (c0 + c) * y.sc + p * y.shw, ld(tile + i) * sgate[c]);
    }
  }
#else
  __trap();  // never launched: the host checks that sm_90 code exists (ptxVersion >= 90) first
#endif
}

// ---- launch facts, cached per device (host) --------------------------------------------------------
// An SE layer's forward is a few microseconds of GPU work, and a network has dozens of them: device
// attributes, function attributes and occupancy answers cost host time of the same order, so each is
// asked once per key and kept here; a steady-state call only reads the table (one mutex, no CUDA queries).
// Function attributes (cudaFuncSetAttribute) belong to a device's context, hence the device in every key
// (torch runs each device in its primary context; a cudaDeviceReset would make the table stale -- torch
// never does one). Thread-safe: one mutex, never held across a launch.
//
// Error hygiene: every probe checks its own return code. A failing runtime call also becomes the
// thread's "last error"; it is cleared only when no error was pending before the probe (peeked first),
// so an unrelated pending error is never swallowed.
// Launch config of `blocks` 512-thread blocks in clusters of `csize` along x; `attr` holds the attribute.
inline cudaLaunchConfig_t cluster_config(unsigned blocks, int csize, size_t bytes, cudaStream_t st,
                                         cudaLaunchAttribute* attr) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(blocks);
  cfg.blockDim = dim3(512);
  cfg.dynamicSmemBytes = bytes;
  cfg.stream = st;
  attr->id = cudaLaunchAttributeClusterDimension;
  attr->val.clusterDim.x = (unsigned)csize;
  attr->val.clusterDim.y = 1;
  attr->val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return cfg;
}

struct DeviceFacts {
  int major = 0, sms = 0, smem_optin = 0;  // compute capability major, SM count, opt-in smem per block
};

enum class ClusterFit : int8_t { kFits, kRefused, kNoSm90Code };

class LaunchCache {
 public:
  static LaunchCache& get() {
    static LaunchCache cache;  // one instance for both .cu files (inline function: one static)
    return cache;
  }

  // Facts of the current device (and its ordinal), queried once per device.
  cudaError_t current_device(int* dev, DeviceFacts* facts) {
    cudaError_t err = cudaGetDevice(dev);
    if (err != cudaSuccess) return err;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = devices_.find(*dev);
    if (it == devices_.end()) {
      DeviceFacts f;
      if ((err = cudaDeviceGetAttribute(&f.major, cudaDevAttrComputeCapabilityMajor, *dev)) != cudaSuccess ||
          (err = cudaDeviceGetAttribute(&f.sms, cudaDevAttrMultiProcessorCount, *dev)) != cudaSuccess ||
          (err = cudaDeviceGetAttribute(&f.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, *dev)) != cudaSuccess) {
        return err;  // returned to the caller, which reports it
      }
      it = devices_.emplace(*dev, f).first;
    }
    *facts = it->second;
    return cudaSuccess;
  }

  // Lets `kernel` launch with `bytes` of dynamic shared memory on device `dev`. The attribute is only ever
  // raised (a lower value set for a smaller shape would break a cached larger one, or a concurrent launch).
  cudaError_t allow_dynamic_smem(int dev, const void* kernel, size_t bytes) {
    if (bytes <= 48 * 1024) return cudaSuccess;  // the default limit, no opt-in needed
    std::lock_guard<std::mutex> lock(mu_);
    return raise_smem_locked(funcs_[{dev, kernel}], kernel, bytes);
  }

  // Whether one cluster of `csize` blocks x 512 threads with `bytes` of dynamic shared memory of `kernel`
  // can be resident on device `dev` (cudaOccupancyMaxActiveClusters >= 1). Probed once per key; the
  // answer decides the schedule before any launch, so a launch that would be refused is never issued
  // (which also keeps CUDA-graph captures valid: a refused launch inside one invalidates it).
  ClusterFit cluster_fit(int dev, const void* kernel, size_t bytes, int csize) {
    std::lock_guard<std::mutex> lock(mu_);
    const auto key = std::make_tuple(dev, kernel, bytes, csize);
    auto it = fits_.find(key);
    if (it != fits_.end()) return it->second;
    const bool clean = cudaPeekAtLastError() == cudaSuccess;
    const ClusterFit fit = probe_cluster_locked(funcs_[{dev, kernel}], kernel, bytes, csize);
    if (fit != ClusterFit::kFits && clean) (void)cudaGetLastError();  // ours, if any: clear it
    fits_.emplace(key, fit);
    return fit;
  }

  // A launch the cached answer allowed was refused after all: never try this key again.
  void mark_refused(int dev, const void* kernel, size_t bytes, int csize) {
    std::lock_guard<std::mutex> lock(mu_);
    fits_[std::make_tuple(dev, kernel, bytes, csize)] = ClusterFit::kRefused;
  }

 private:
  struct FuncFacts {
    int sm90 = -1;            // -1 not asked yet; 1 the loaded image has sm_90+ code (ptxVersion >= 90)
    size_t smem_allowed = 0;  // cudaFuncAttributeMaxDynamicSharedMemorySize set so far
    bool nonportable = false; // cudaFuncAttributeNonPortableClusterSizeAllowed set
  };

  cudaError_t raise_smem_locked(FuncFacts& ff, const void* kernel, size_t bytes) {
    if (bytes <= ff.smem_allowed) return cudaSuccess;
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
    if (err == cudaSuccess) ff.smem_allowed = bytes;
    return err;
  }

  ClusterFit probe_cluster_locked(FuncFacts& ff, const void* kernel, size_t bytes, int csize) {
    if (ff.sm90 < 0) {  // built without sm_90 code (e.g. TORCH_CUDA_ARCH_LIST=8.0 run on a Hopper)?
      cudaFuncAttributes fa;
      ff.sm90 = cudaFuncGetAttributes(&fa, kernel) == cudaSuccess && fa.ptxVersion >= 90 ? 1 : 0;
    }
    if (!ff.sm90) return ClusterFit::kNoSm90Code;
    if (raise_smem_locked(ff, kernel, bytes) != cudaSuccess) return ClusterFit::kRefused;
    if (csize > 8 && !ff.nonportable) {
      if (cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) != cudaSuccess) {
        return ClusterFit::kRefused;
      }
      ff.nonportable = true;
    }
    cudaLaunchAttribute attr;
    cudaLaunchConfig_t cfg = cluster_config((unsigned)csize, csize, bytes, nullptr, &attr);  // one cluster:
    // the answer does not depend on N
    int clusters = 0;
    if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg) != cudaSuccess || clusters < 1) {
      return ClusterFit::kRefused;
    }
    return ClusterFit::kFits;
  }

  std::mutex mu_;
  std::map<int, DeviceFacts> devices_;
  std::map<std::pair<int, const void*>, FuncFacts> funcs_;
  std::map<std::tuple<int, const void*, size_t, int>, ClusterFit> fits_;
};

// Try the cluster schedule; returns cudaSuccess when it ran, cudaErrorNotSupported when it does not
// apply (the caller runs the portable schedule), or the launch's own error when a launch the cached
// occupancy answer allowed is refused inside a CUDA-graph capture (the capture is invalid by then: the
// error is reported, not hidden). The schedule is decided from cached answers only, before launching.
template <typename T, typename Ex>
cudaError_t try_cluster_forward(int dev, const DeviceFacts& facts, int layout, const ak_view& x, const ak_view& y,
                                int64_t N, int64_t C, int64_t HW, const Ex& ex, int64_t scratch_floats,
                                float* pooled, float* s, cudaStream_t st) {
  if (!g_cluster_enabled.load(std::memory_order_relaxed) || N == 0 || C == 0 || N > (1LL << 26)) {
    return cudaErrorNotSupported;
  }
  if (facts.major < 9) return cudaErrorNotSupported;
  const bool rows = g_row_loops.load(std::memory_order_relaxed) != 0;
  auto kernel = layout == 0 ? (rows ? cluster_forward_kernel<T, true, Ex, true> : cluster_forward_kernel<T, true, Ex, false>)
                            : (rows ? cluster_forward_kernel<T, false, Ex, true> : cluster_forward_kernel<T, false, Ex, false>);
  LaunchCache& cache = LaunchCache::get();
  // Smallest power-of-two cluster (>= enough blocks to fill the SMs, capped at 8) whose slice fits.
  int want = 1;
  while (want < 8 && (int64_t)want * N < facts.sms) want *= 2;
  for (int csize = want; csize <= 16; csize *= 2) {
    const int64_t slice = (C + csize - 1) / csize;
    const size_t bytes = (size_t)(2 * slice + C + ((scratch_floats + 3) / 4) * 4) * sizeof(float) +
                         (size_t)(slice * HW) * sizeof(T) + (rows ? 32 : 16);  // rows: the tile's alignment
    if (bytes > (size_t)facts.smem_optin) continue;
    const ClusterFit fit = cache.cluster_fit(dev, (const void*)kernel, bytes, csize);
    if (fit == ClusterFit::kNoSm90Code) return cudaErrorNotSupported;
    if (fit != ClusterFit::kFits) continue;
    cudaLaunchAttribute attr;
    cudaLaunchConfig_t cfg = cluster_config((unsigned)(N * csize), csize, bytes, st, &attr);
    const bool clean = cudaPeekAtLastError() == cudaSuccess;
    const cudaError_t err = cudaLaunchKernelEx(&cfg, kernel, x, y, C, HW, slice, scratch_floats, ex, pooled, s);
    if (err == cudaSuccess) return cudaSuccess;
    // Not expected (the occupancy answer said it fits): remember, and fall back -- unless a capture is
    // in progress, which the refused launch has already invalidated.
    cache.mark_refused(dev, (const void*)kernel, bytes, csize);
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(st, &capture) != cudaSuccess || capture != cudaStreamCaptureStatusNone) return err;
    if (clean) (void)cudaGetLastError();  // the refusal is the pending error: ours, clear it
    return cudaErrorNotSupported;
  }
  return cudaErrorNotSupported;
}

}  // namespace ak
