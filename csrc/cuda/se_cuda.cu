// Squeeze-and-excitation CUDA kernels (CUDA headers only; launchers in launchers.h).
//   forward:  pooled = mean_hw x;  h = act(W1 pooled + b1);  s = gate(W2 h + b2);  y = x * s
//   backward: ds = sum_hw gy*x; dz = ds*gate'(z); da = (W2^T dz)*act'(pre); dp = W1^T da;
//             grad_x = gy*s + dp/HW; grad_W2 = dz^T h; grad_b2 = sum dz; grad_W1 = da^T pooled; grad_b1 = sum da
// Schedules: see common.cuh (portable 3-launch path for sm_80+, cluster-per-sample path on sm_90).
// Bytes: portable forward reads x twice, writes y (3·|x|); cluster forward reads x once, writes y
// (2·|x|); backward reads gy, x, gy again and writes grad_x (4·|x|), plus O(N·C·R) for the excitation.
#include <cstdlib>

#include "common.cuh"

namespace ak {

std::atomic<int> g_last_path{0};
std::atomic<int> g_cluster_enabled{1};
std::atomic<int> g_row_loops{[] {
  const char* env = std::getenv("ATTN_KERNELS_CUDA_ROW_LOOPS");
  return env && *env && std::atoi(env) != 0 ? 1 : 0;
}()};

struct SEDev {
  const float *w1, *b1, *w2, *b2;
  int64_t C, R, K;  // K = R, or C for effective SE (w1 == nullptr)
  int act, gate;

  // Block-wide, one warp per row: hidden units [r0, r1) = act(W1 p + b1) into h[r0, r1).
  __device__ void hidden_rows(const float* p, int64_t r0, int64_t r1, float* h) const {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = blockDim.x / 32;
    for (int64_t r = r0 + warp; r < r1; r += nwarps) {
      float acc = 0.f;
      for (int64_t c = lane; c < C; c += 32) acc += w1[r * C + c] * p[c];
      acc = warp_sum(acc);
      if (lane == 0) h[r] = act_fwd(acc + (b1 ? b1[r] : 0.f), act);
    }
  }

  // Block-wide, one warp per row: the gates of channels [c0, c1) from the K-vector h.
  __device__ void gate_rows(const float* h, int64_t c0, int64_t c1, float* sgate) const {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = blockDim.x / 32;
    for (int64_t c = c0 + warp; c < c1; c += nwarps) {
      float acc = 0.f;
      for (int64_t j = lane; j < K; j += 32) acc += w2[c * K + j] * h[j];
      acc = warp_sum(acc);
      if (lane == 0) sgate[c - c0] = gate_fwd(acc + (b2 ? b2[c] : 0.f), gate);
    }
  }

  // Block-wide: hidden layer (into scratch, R floats) then the gates of channels [c0, c1).
  __device__ void gates(const float* p, int64_t c0, int64_t c1, float* sgate, float* scratch) const {
    if (w1 == nullptr) return gate_rows(p, c0, c1, sgate);  // effective SE: h is the pooled vector
    hidden_rows(p, 0, R, scratch);
    __syncthreads();
    gate_rows(scratch, c0, c1, sgate);
  }

  // The cluster schedule's gates: each block of the cluster computes R / csize of the hidden units (so
  // the cluster reads W1 once per sample, not once per block: 1 MB fp32 at C 2048, R 128, against a
  // 200 KB bf16 sample), the blocks gather the rest from each other's scratch (distributed shared
  // memory), then each computes the gates of its own channels (its slice of W2 rows).
  template <class Cluster>
  __device__ void cluster_gates(const float* p, int64_t c0, int64_t c1, float* sgate, float* scratch,
                                Cluster& cluster) const {
    if (w1 == nullptr) return gate_rows(p, c0, c1, sgate);
    const int64_t csize = cluster.num_blocks(), rank = cluster.block_rank();
    const int64_t rows = (R + csize - 1) / csize;
    const int64_t r0 = rank * rows < R ? rank * rows : R, r1 = r0 + rows < R ? r0 + rows : R;
    hidden_rows(p, r0, r1, scratch);
    cluster.sync();  // every block's own rows are written
    for (int64_t r = threadIdx.x; r < R; r += blockDim.x) {
      const int64_t owner = r / rows;  // the peer's own rows are never written again: no race
      if (owner != rank) scratch[r] = cluster.map_shared_rank(scratch, (unsigned)owner)[r];
    }
    cluster.sync();  // no block leaves (its shared memory) while a peer may still read its rows
    gate_rows(scratch, c0, c1, sgate);
  }
};

// Portable excitation: one block per sample; pooled means -> gates. Working arrays (p[C], h[R]) in shared
// memory (C + R floats; C for effective SE), or -- kGlobal, when that passes the device's opt-in limit
// (C ~ 58k on H100/H200) -- read / written in global memory: p straight from pooled, h in `hidden`
// (N x R floats; unused for effective SE). Same arithmetic and order either way.
template <bool kGlobal>
__global__ void __launch_bounds__(kThreads) se_excite_kernel(SEDev ex, const float* pooled, float* s, float* hidden) {
  extern __shared__ float sm[];
  const int64_t n = blockIdx.x;
  const float* p = pooled + n * ex.C;
  float* hs = hidden != nullptr ? hidden + n * ex.R : nullptr;
  if (!kGlobal) {
    for (int64_t c = threadIdx.x; c < ex.C; c += blockDim.x) sm[c] = p[c];
    __syncthreads();
    p = sm;
    hs = sm + ex.C;
  }
  // gates written straight to global s (sgate indexed from c0 = 0)
  ex.gates(p, 0, ex.C, s + n * ex.C, hs);
}

// Excitation backward, one block per sample. Working arrays p[C], dz[C], h[R], da[R] (the pre-activation
// lives in da[r] until da[r] replaces it, read and written by the same thread): in shared memory (2C + 2R
// floats; 2C for effective SE), or -- kGlobal, past the opt-in limit -- in the global outputs themselves
// (p = pooled, dz = dz_out, h = h_out, da = da_out).
template <bool kGlobal>
__global__ void __launch_bounds__(kThreads) se_excite_bwd_kernel(SEDev ex, const float* pooled, const float* s,
                                                                 const float* ds, float inv_hw, float* dz_out,
                                                                 float* dp_out, float* h_out, float* da_out) {
  extern __shared__ float sm[];
  const int64_t C = ex.C, R = ex.R, K = ex.K, n = blockIdx.x;
  const float* p = pooled + n * C;
  float* dz = dz_out + n * C;
  float* h = h_out + n * R;
  float* da = da_out + n * R;
  if (!kGlobal) {
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) sm[c] = p[c];
    __syncthreads();
    p = sm;
    dz = sm + C;
    h = dz + C;  // h, da: not touched for effective SE (no shared memory reserved for them then)
    da = h + R;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = blockDim.x / 32;
  const float* hid = p;
  if (ex.w1 != nullptr) {
    for (int64_t r = warp; r < R; r += nwarps) {
      float acc = 0.f;
      for (int64_t c = lane; c < C; c += 32) acc += ex.w1[r * C + c] * p[c];
      acc = warp_sum(acc);
      if (lane == 0) {
        const float v = acc + (ex.b1 ? ex.b1[r] : 0.f);
        const float hv = act_fwd(v, ex.act);
        da[r] = v;  // pre-activation, until the da loop below
        h[r] = hv;
        if (!kGlobal) h_out[n * R + r] = hv;
      }
    }
    __syncthreads();
    hid = h;
  }
  for (int64_t c = warp; c < C; c += nwarps) {
    float g;
    if (ex.gate == 0) {
      const float sv = s[n * C + c];
      g = sv * (1.f - sv);
    } else {
      float acc = 0.f;
      for (int64_t j = lane; j < K; j += 32) acc += ex.w2[c * K + j] * hid[j];
      const float z = warp_sum(acc) + (ex.b2 ? ex.b2[c] : 0.f);
      g = (z > -3.f && z < 3.f) ? (1.f / 6.f) : 0.f;
    }
    if (lane == 0) {
      const float v = ds[n * C + c] * g;
      dz[c] = v;
      if (!kGlobal) dz_out[n * C + c] = v;
    }
  }
  __syncthreads();
  if (ex.w1 != nullptr) {
    for (int64_t r = warp; r < R; r += nwarps) {  // dh[r] = sum_c W2[c, r] dz[c]
      float acc = 0.f;
      for (int64_t c = lane; c < C; c += 32) acc += ex.w2[c * R + r] * dz[c];
      acc = warp_sum(acc);
      if (lane == 0) {
        const float v = acc * act_grad(da[r], ex.act);  // da[r] still holds the pre-activation
        da[r] = v;
        if (!kGlobal) da_out[n * R + r] = v;
      }
    }
    __syncthreads();
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {  // dp[c] = sum_r W1[r, c] da[r]
      float acc = 0.f;
      for (int64_t r = 0; r < R; ++r) acc += ex.w1[r * C + c] * da[r];
      dp_out[n * C + c] = acc * inv_hw;
    }
  } else {
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {  // dp[c] = sum_c' W2[c', c] dz[c']
      float acc = 0.f;
      for (int64_t j = 0; j < C; ++j) acc += ex.w2[j * C + c] * dz[j];
      dp_out[n * C + c] = acc * inv_hw;
    }
  }
}

// Shared memory of the portable excitation kernels (forward / backward), in bytes.
static size_t excite_smem(int64_t C, int64_t R, bool has_w1) { return (size_t)(C + (has_w1 ? R : 0)) * sizeof(float); }
static size_t excite_bwd_smem(int64_t C, int64_t R, bool has_w1) {
  return (size_t)(2 * C + (has_w1 ? 2 * R : 0)) * sizeof(float);
}

static SEDev make_dev(const ak_se_params* p) {
  SEDev d{p->w1, p->b1, p->w2, p->b2, p->C, p->w1 ? p->R : p->C, p->w1 ? p->R : p->C, p->act, p->gate};
  return d;
}

template <typename T>
static cudaError_t se_forward_t(int layout, ak_view x, ak_view y, int64_t N, int64_t C, int64_t HW,
                                const ak_se_params* p, float* pooled, float* s, float* scratch, cudaStream_t st) {
  const SEDev ex = make_dev(p);
  int dev = 0;
  DeviceFacts facts;
  cudaError_t err = LaunchCache::get().current_device(&dev, &facts);
  if (err != cudaSuccess) return err;
  err = try_cluster_forward<T>(dev, facts, layout, x, y, N, C, HW, ex, ex.w1 ? ex.R : 0, pooled, s, st);
  if (err != cudaErrorNotSupported) {  // ran, or failed where falling back is not possible (see there)
    if (err == cudaSuccess) g_last_path.store(1, std::memory_order_relaxed);
    return err;
  }
  g_last_path.store(0, std::memory_order_relaxed);
  if (N > kMaxGridX) return cudaErrorInvalidConfiguration;  // se_excite_kernel: one block per sample
  if ((err = reduce<T>(layout, x, nullptr, N, C, HW, 1.f / (float)HW, pooled, st)) != cudaSuccess || N == 0) return err;
  const size_t smem = excite_smem(C, ex.R, ex.w1 != nullptr);
  if (smem > (size_t)facts.smem_optin) {
    if (ex.w1 != nullptr && scratch == nullptr) return cudaErrorInvalidValue;  // see ak_se_forward_scratch_floats
    se_excite_kernel<true><<<(unsigned)N, kThreads, 0, st>>>(ex, pooled, s, scratch);
  } else {
    if ((err = LaunchCache::get().allow_dynamic_smem(dev, (const void*)se_excite_kernel<false>, smem)) != cudaSuccess) {
      return err;
    }
    se_excite_kernel<false><<<(unsigned)N, kThreads, smem, st>>>(ex, pooled, s, nullptr);
  }
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  return scale<T>(layout, x, y, N, C, HW, s, nullptr, st);
}

template <typename T>
static cudaError_t se_backward_t(int layout, ak_view gy, ak_view x, ak_view gx, int64_t N, int64_t C, int64_t HW,
                                 const ak_se_params* p, const float* pooled, const float* s, float* ds, float* dz,
                                 float* dp, float* h, float* da, float* gw1, float* gb1, float* gw2, float* gb2,
                                 cudaStream_t st) {
  const SEDev ex = make_dev(p);
  cudaError_t err = cudaSuccess;
  if (N > kMaxGridX) return cudaErrorInvalidConfiguration;  // se_excite_bwd_kernel: one block per sample
  if (N > 0) {
    int dev = 0;
    DeviceFacts facts;
    if ((err = LaunchCache::get().current_device(&dev, &facts)) != cudaSuccess) return err;
    if ((err = reduce<T>(layout, gy, &x, N, C, HW, 1.f, ds, st)) != cudaSuccess) return err;
    const size_t smem = excite_bwd_smem(C, ex.R, ex.w1 != nullptr);
    const float inv_hw = 1.f / (float)HW;
    if (smem > (size_t)facts.smem_optin) {  // working arrays in the global outputs (see the kernel)
      se_excite_bwd_kernel<true><<<(unsigned)N, kThreads, 0, st>>>(ex, pooled, s, ds, inv_hw, dz, dp, h, da);
    } else {
      const void* kernel = (const void*)se_excite_bwd_kernel<false>;
      if ((err = LaunchCache::get().allow_dynamic_smem(dev, kernel, smem)) != cudaSuccess) return err;
      se_excite_bwd_kernel<false><<<(unsigned)N, kThreads, smem, st>>>(ex, pooled, s, ds, inv_hw, dz, dp, h, da);
    }
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
    if ((err = scale<T>(layout, gy, gx, N, C, HW, s, dp, st)) != cudaSuccess) return err;
  }
  // parameter gradients: batch sums, one thread per output element (N = 0 gives zeros)
  if ((err = outer_sum(dz, ex.w1 ? h : pooled, N, C, ex.K, gw2, gb2, st)) != cudaSuccess) return err;
  if (ex.w1) err = outer_sum(da, pooled, N, ex.R, C, gw1, gb1, st);
  return err;
}

}  // namespace ak

extern "C" {

int ak_last_forward_path(void) { return ak::g_last_path.load(std::memory_order_relaxed); }
void ak_set_cluster_enabled(int enabled) { ak::g_cluster_enabled.store(enabled ? 1 : 0, std::memory_order_relaxed); }
void ak_set_row_loops(int enabled) { ak::g_row_loops.store(enabled ? 1 : 0, std::memory_order_relaxed); }
int ak_row_loops(void) { return ak::g_row_loops.load(std::memory_order_relaxed); }

int64_t ak_se_forward_scratch_floats(int64_t N, int64_t C, int64_t R, int has_w1) {
  if (!has_w1) return 0;  // effective SE: h is the pooled vector itself
  if (ak::excite_smem(C, R, true) <= 48 * 1024) return 0;  // fits every device: no lookup (the usual case)
  int dev = 0;
  ak::DeviceFacts facts;
  if (ak::LaunchCache::get().current_device(&dev, &facts) != cudaSuccess) return N * R;  // unknown: be safe
  return ak::excite_smem(C, R, true) > (size_t)facts.smem_optin ? N * R : 0;  // the test of se_forward_t
}

int ak_se_forward(ak_dtype dt, int layout, ak_view x, ak_view y, int64_t N, int64_t C, int64_t HW,
                  const ak_se_params* p, float* pooled, float* s, float* scratch, void* stream) {
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  switch (dt) {
    case AK_F32: return ak::se_forward_t<float>(layout, x, y, N, C, HW, p, pooled, s, scratch, st);
    case AK_F16: return ak::se_forward_t<__half>(layout, x, y, N, C, HW, p, pooled, s, scratch, st);
    case AK_BF16: return ak::se_forward_t<__nv_bfloat16>(layout, x, y, N, C, HW, p, pooled, s, scratch, st);
  }
  return cudaErrorInvalidValue;
}

int ak_se_backward(ak_dtype dt, int layout, ak_view gy, ak_view x, ak_view gx, int64_t N, int64_t C, int64_t HW,
                   const ak_se_params* p, const float* pooled, const float* s, float* ds, float* dz, float* dp,
                   float* h, float* da, float* gw1, float* gb1, float* gw2, float* gb2, void* stream) {
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  switch (dt) {
    case AK_F32:
      return ak::se_backward_t<float>(layout, gy, x, gx, N, C, HW, p, pooled, s, ds, dz, dp, h, da, gw1, gb1, gw2, gb2, st);
    case AK_F16:
      return ak::se_backward_t<__half>(layout, gy, x, gx, N, C, HW, p, pooled, s, ds, dz, dp, h, da, gw1, gb1, gw2, gb2, st);
    case AK_BF16:
      return ak::se_backward_t<__nv_bfloat16>(layout, gy, x, gx, N, C, HW, p, pooled, s, ds, dz, dp, h, da, gw1, gb1,
                                              gw2, gb2, st);
  }
  return cudaErrorInvalidValue;
}

}  // extern "C"
