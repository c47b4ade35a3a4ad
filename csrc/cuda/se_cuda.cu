// Squeeze-and-excitation CUDA kernels (CUDA headers only; launchers in launchers.h).
//   forward:  pooled = mean_hw x;  h = act(W1 pooled + b1);  s = gate(W2 h + b2);  y = x * s
//   backward: ds = sum_hw gy*x; dz = ds*gate'(z); da = (W2^T dz)*act'(pre); dp = W1^T da;
//             grad_x = gy*s + dp/HW; grad_W2 = dz^T h; grad_b2 = sum dz; grad_W1 = da^T pooled; grad_b1 = sum da
// Schedules: see common.cuh (portable 3-launch path for sm_80+, cluster-per-sample path on sm_90).
// Bytes: portable forward reads x twice, writes y (3·|x|); cluster forward reads x once, writes y
// (2·|x|); backward reads gy, x, gy again and writes grad_x (4·|x|), plus O(N·C·R) for the excitation.
#include "common.cuh"

namespace ak {

int g_last_path = 0;
int g_cluster_enabled = 1;

struct SEDev {
  const float *w1, *b1, *w2, *b2;
  int64_t C, R, K;  // K = R, or C for effective SE (w1 == nullptr)
  int act, gate;

  // Block-wide: hidden layer (into scratch, R floats) then the gates of channels [c0, c1).
  __device__ void gates(const float* p, int64_t c0, int64_t c1, float* sgate, float* scratch) const {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = blockDim.x / 32;
    const float* h = p;
    if (w1 != nullptr) {
      for (int64_t r = warp; r < R; r += nwarps) {
        float acc = 0.f;
        for (int64_t c = lane; c < C; c += 32) acc += w1[r * C + c] * p[c];
        acc = warp_sum(acc);
        if (lane == 0) scratch[r] = act_fwd(acc + (b1 ? b1[r] : 0.f), act);
      }
      __syncthreads();
      h = scratch;
    }
    for (int64_t c = c0 + warp; c < c1; c += nwarps) {
      float acc = 0.f;
      for (int64_t j = lane; j < K; j += 32) acc += w2[c * K + j] * h[j];
      acc = warp_sum(acc);
      if (lane == 0) sgate[c - c0] = gate_fwd(acc + (b2 ? b2[c] : 0.f), gate);
    }
  }
};

// Portable excitation: one block per sample; pooled means -> gates (shared memory: C + R floats).
__global__ void __launch_bounds__(kThreads) se_excite_kernel(SEDev ex, const float* pooled, float* s) {
  extern __shared__ float sm[];
  float* p = sm;
  float* hs = sm + ex.C;
  const int64_t n = blockIdx.x;
  for (int64_t c = threadIdx.x; c < ex.C; c += blockDim.x) p[c] = pooled[n * ex.C + c];
  __syncthreads();
  // gates written straight to global s (sgate indexed from c0 = 0)
  ex.gates(p, 0, ex.C, s + n * ex.C, hs);
}

// Excitation backward, one block per sample. Shared: p[C], dz[C], pre[R], h[R], da[R].
__global__ void __launch_bounds__(kThreads) se_excite_bwd_kernel(SEDev ex, const float* pooled, const float* s,
                                                                 const float* ds, float inv_hw, float* dz_out,
                                                                 float* dp_out, float* h_out, float* da_out) {
  extern __shared__ float sm[];
  const int64_t C = ex.C, R = ex.R, K = ex.K, n = blockIdx.x;
  float* p = sm;
  float* dz = p + C;
  float* pre = dz + C;
  float* h = pre + R;
  float* da = h + R;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = blockDim.x / 32;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) p[c] = pooled[n * C + c];
  __syncthreads();
  const float* hid = p;
  if (ex.w1 != nullptr) {
    for (int64_t r = warp; r < R; r += nwarps) {
      float acc = 0.f;
      for (int64_t c = lane; c < C; c += 32) acc += ex.w1[r * C + c] * p[c];
      acc = warp_sum(acc);
      if (lane == 0) {
        const float v = acc + (ex.b1 ? ex.b1[r] : 0.f);
        pre[r] = v;
        h[r] = act_fwd(v, ex.act);
        h_out[n * R + r] = h[r];
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
      dz[c] = ds[n * C + c] * g;
      dz_out[n * C + c] = dz[c];
    }
  }
  __syncthreads();
  if (ex.w1 != nullptr) {
    for (int64_t r = warp; r < R; r += nwarps) {  // dh[r] = sum_c W2[c, r] dz[c]
      float acc = 0.f;
      for (int64_t c = lane; c < C; c += 32) acc += ex.w2[c * R + r] * dz[c];
      acc = warp_sum(acc);
      if (lane == 0) {
        da[r] = acc * act_grad(pre[r], ex.act);
        da_out[n * R + r] = da[r];
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

static cudaError_t set_smem(const void* kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
}

static SEDev make_dev(const ak_se_params* p) {
  SEDev d{p->w1, p->b1, p->w2, p->b2, p->C, p->w1 ? p->R : p->C, p->w1 ? p->R : p->C, p->act, p->gate};
  return d;
}

template <typename T>
static cudaError_t se_forward_t(int layout, ak_view x, ak_view y, int64_t N, int64_t C, int64_t HW,
                                const ak_se_params* p, float* pooled, float* s, cudaStream_t st) {
  const SEDev ex = make_dev(p);
  if (try_cluster_forward<T>(layout, x, y, N, C, HW, ex, ex.w1 ? ex.R : 0, pooled, s, st) == cudaSuccess) {
    g_last_path = 1;
    return cudaSuccess;
  }
  g_last_path = 0;
  cudaError_t err = reduce<T>(layout, x, nullptr, N, C, HW, 1.f / (float)HW, pooled, st);
  if (err != cudaSuccess || N == 0) return err;
  const size_t smem = (size_t)(C + ex.R) * sizeof(float);
  if ((err = set_smem((const void*)se_excite_kernel, smem)) != cudaSuccess) return err;
  se_excite_kernel<<<(unsigned)N, kThreads, smem, st>>>(ex, pooled, s);
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
  if (N > 0) {
    if ((err = reduce<T>(layout, gy, &x, N, C, HW, 1.f, ds, st)) != cudaSuccess) return err;
    const size_t smem = (size_t)(2 * C + 3 * ex.R) * sizeof(float);
    if ((err = set_smem((const void*)se_excite_bwd_kernel, smem)) != cudaSuccess) return err;
    se_excite_bwd_kernel<<<(unsigned)N, kThreads, smem, st>>>(ex, pooled, s, ds, 1.f / (float)HW, dz, dp, h, da);
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

int ak_last_forward_path(void) { return ak::g_last_path; }
void ak_set_cluster_enabled(int enabled) { ak::g_cluster_enabled = enabled; }

int ak_se_forward(ak_dtype dt, int layout, ak_view x, ak_view y, int64_t N, int64_t C, int64_t HW,
                  const ak_se_params* p, float* pooled, float* s, float* scratch, void* stream) {
  (void)scratch;  // the hidden layer lives in shared memory
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  switch (dt) {
    case AK_F32: return ak::se_forward_t<float>(layout, x, y, N, C, HW, p, pooled, s, st);
    case AK_F16: return ak::se_forward_t<__half>(layout, x, y, N, C, HW, p, pooled, s, st);
    case AK_BF16: return ak::se_forward_t<__nv_bfloat16>(layout, x, y, N, C, HW, p, pooled, s, st);
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
