// ECA / CECA CUDA kernels (CUDA headers only; launchers in launchers.h).
//   forward:  pooled = mean_hw x;  z[c] = sum_j t[j] pooled[c + j - k/2] (zero padded, or mod C);
//             s = sigmoid(z);  y = x * s
//   backward: ds = sum_hw gy*x;  dz = ds s (1 - s);  dp[c] = sum_j t[j] dz[c - j + k/2];
//             grad_t[j] = sum_n sum_c dz[n, c] pooled[n, c + j - k/2];  grad_x = gy*s + dp/HW
// Schedules as in common.cuh; every reduction has one owner thread and a fixed order (deterministic).
#include "common.cuh"

namespace ak {

__device__ __forceinline__ int64_t tap_src(int64_t c, int64_t j, int64_t half, int64_t C, int circular) {
  int64_t i = c + j - half;
  if (circular) return ((i % C) + C) % C;
  return (i >= 0 && i < C) ? i : -1;
}

struct ECADev {
  const float* taps;
  int64_t k, C;
  int circular;

  __device__ float gate_of(const float* p, int64_t c) const {
    float z = 0.f;
    for (int64_t j = 0; j < k; ++j) {
      const int64_t src = tap_src(c, j, k / 2, C, circular);
      if (src >= 0) z += taps[j] * p[src];
    }
    return 1.f / (1.f + expf(-z));
  }

  __device__ void gates(const float* p, int64_t c0, int64_t c1, float* sgate, float*) const {
    for (int64_t c = c0 + threadIdx.x; c < c1; c += blockDim.x) sgate[c - c0] = gate_of(p, c);
  }

  template <class Cluster>  // no weights to share: each block's gates need only the pooled vector
  __device__ void cluster_gates(const float* p, int64_t c0, int64_t c1, float* sgate, float* scratch,
                                Cluster&) const {
    gates(p, c0, c1, sgate, scratch);
  }
};

__global__ void __launch_bounds__(kThreads) eca_excite_kernel(ECADev ex, int64_t N, const float* pooled, float* s) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= N * ex.C) return;
  s[i] = ex.gate_of(pooled + (i / ex.C) * ex.C, i % ex.C);
}

__global__ void __launch_bounds__(kThreads) eca_dz_kernel(int64_t total, const float* s, const float* ds, float* dz) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < total) dz[i] = ds[i] * s[i] * (1.f - s[i]);
}

__global__ void __launch_bounds__(kThreads) eca_dp_kernel(ECADev ex, int64_t N, const float* dz, float inv_hw,
                                                          float* dp) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= N * ex.C) return;
  const int64_t n = i / ex.C, c = i % ex.C, half = ex.k / 2;
  float acc = 0.f;
  for (int64_t j = 0; j < ex.k; ++j) {
    int64_t d = c - j + half;
    if (ex.circular) {
      d = ((d % ex.C) + ex.C) % ex.C;
    } else if (d < 0 || d >= ex.C) {
      continue;
    }
    acc += ex.taps[j] * dz[n * ex.C + d];
  }
  dp[i] = acc * inv_hw;
}

__global__ void __launch_bounds__(kThreads) eca_dtap_kernel(ECADev ex, int64_t N, const float* dz,
                                                            const float* pooled, float* part) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= N * ex.k) return;
  const int64_t n = i / ex.k, j = i % ex.k;
  float acc = 0.f;
  for (int64_t c = 0; c < ex.C; ++c) {
    const int64_t src = tap_src(c, j, ex.k / 2, ex.C, ex.circular);
    if (src >= 0) acc += dz[n * ex.C + c] * pooled[n * ex.C + src];
  }
  part[i] = acc;
}

__global__ void eca_tap_sum_kernel(int64_t N, int64_t k, const float* part, float* g) {
  const int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= k) return;
  float acc = 0.f;
  for (int64_t n = 0; n < N; ++n) acc += part[n * k + j];
  g[j] = acc;
}

template <typename T>
static cudaError_t eca_forward_t(int layout, ak_view x, ak_view y, int64_t N, int64_t C, int64_t HW,
                                 const ECADev& ex, float* pooled, float* s, cudaStream_t st) {
  int dev = 0;
  DeviceFacts facts;
  cudaError_t err = LaunchCache::get().current_device(&dev, &facts);
  if (err != cudaSuccess) return err;
  err = try_cluster_forward<T>(dev, facts, layout, x, y, N, C, HW, ex, 0, pooled, s, st);
  if (err != cudaErrorNotSupported) {  // ran, or failed where falling back is not possible (see there)
    if (err == cudaSuccess) g_last_path.store(1, std::memory_order_relaxed);
    return err;
  }
  g_last_path.store(0, std::memory_order_relaxed);
  err = reduce<T>(layout, x, nullptr, N, C, HW, 1.f / (float)HW, pooled, st);
  if (err != cudaSuccess || N * C == 0) return err;
  eca_excite_kernel<<<blocks_for(N * C, kThreads, kMaxGridX), kThreads, 0, st>>>(ex, N, pooled, s);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  return scale<T>(layout, x, y, N, C, HW, s, nullptr, st);
}

template <typename T>
static cudaError_t eca_backward_t(int layout, ak_view gy, ak_view x, ak_view gx, int64_t N, int64_t C, int64_t HW,
                                  const ECADev& ex, const float* pooled, const float* s, float* ds, float* dz,
                                  float* dp, float* part, float* gtaps, cudaStream_t st) {
  cudaError_t err = cudaSuccess;
  if (N * C > 0) {
    const unsigned grid = blocks_for(N * C, kThreads, kMaxGridX);
    if ((err = reduce<T>(layout, gy, &x, N, C, HW, 1.f, ds, st)) != cudaSuccess) return err;
    eca_dz_kernel<<<grid, kThreads, 0, st>>>(N * C, s, ds, dz);
    eca_dp_kernel<<<grid, kThreads, 0, st>>>(ex, N, dz, 1.f / (float)HW, dp);
    eca_dtap_kernel<<<blocks_for(N * ex.k, kThreads, kMaxGridX), kThreads, 0, st>>>(ex, N, dz, pooled, part);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
    if ((err = scale<T>(layout, gy, gx, N, C, HW, s, dp, st)) != cudaSuccess) return err;
  } else if (N > 0) {
    if ((err = cudaMemsetAsync(part, 0, sizeof(float) * N * ex.k, st)) != cudaSuccess) return err;
  }
  eca_tap_sum_kernel<<<blocks_for(ex.k, kThreads), kThreads, 0, st>>>(N, ex.k, part, gtaps);
  return cudaGetLastError();
}

}  // namespace ak

extern "C" {

int ak_eca_forward(ak_dtype dt, int layout, ak_view x, ak_view y, int64_t N, int64_t C, int64_t HW,
                   const float* taps, int64_t k, int circular, float* pooled, float* s, void* stream) {
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  const ak::ECADev ex{taps, k, C, circular};
  switch (dt) {
    case AK_F32: return ak::eca_forward_t<float>(layout, x, y, N, C, HW, ex, pooled, s, st);
    case AK_F16: return ak::eca_forward_t<__half>(layout, x, y, N, C, HW, ex, pooled, s, st);
    case AK_BF16: return ak::eca_forward_t<__nv_bfloat16>(layout, x, y, N, C, HW, ex, pooled, s, st);
  }
  return cudaErrorInvalidValue;
}

int ak_eca_backward(ak_dtype dt, int layout, ak_view gy, ak_view x, ak_view gx, int64_t N, int64_t C, int64_t HW,
                    const float* taps, int64_t k, int circular, const float* pooled, const float* s, float* ds,
                    float* dz, float* dp, float* dtap_partial, float* gtaps, void* stream) {
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  const ak::ECADev ex{taps, k, C, circular};
  switch (dt) {
    case AK_F32:
      return ak::eca_backward_t<float>(layout, gy, x, gx, N, C, HW, ex, pooled, s, ds, dz, dp, dtap_partial, gtaps, st);
    case AK_F16:
      return ak::eca_backward_t<__half>(layout, gy, x, gx, N, C, HW, ex, pooled, s, ds, dz, dp, dtap_partial, gtaps, st);
    case AK_BF16:
      return ak::eca_backward_t<__nv_bfloat16>(layout, gy, x, gx, N, C, HW, ex, pooled, s, ds, dz, dp, dtap_partial,
                                               gtaps, st);
  }
  return cudaErrorInvalidValue;
}

}  // extern "C"
