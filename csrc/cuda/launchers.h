/* C-style launcher API of the CUDA kernels (se_cuda.cu, eca_cuda.cu). No torch types: the .cu files include
 * only CUDA headers, so they compile in seconds; the torch glue (checks, dtype, stream, allocation)
 * is in cuda_ops.cpp.
 *
 * Conventions: a feature map is (N, C, HW) seen through element strides (sn, sc, shw); layout 0 =
 * planar (shw == 1 or HW == 1), 1 = channels_last (sc == 1). x dtype: AK_F32 / AK_F16 / AK_BF16.
 * Weights, pooled means, gates and every scratch buffer are float32, contiguous, on the device.
 * Every function enqueues on `stream` (a cudaStream_t) and returns a cudaError_t (0 = success).
 */
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { AK_F32 = 0, AK_F16 = 1, AK_BF16 = 2 } ak_dtype;

typedef struct {
  void* ptr;
  int64_t sn, sc, shw;
} ak_view;

typedef struct {
  const float* w1; /* (R, C), or NULL for effective SE (then R == C and h = pooled) */
  const float* b1; /* (R,) or NULL */
  const float* w2; /* (C, R) */
  const float* b2; /* (C,) or NULL */
  int64_t C, R;
  int act;  /* 0 relu, 1 silu, 2 gelu, 4 hardswish (csrc/ops.h Act) */
  int gate; /* 0 sigmoid, 1 hardsigmoid */
} ak_se_params;

/* Which forward schedule ran (for tests / benchmarks): 0 portable (pool, excite, scale), 1 Hopper cluster. */
int ak_last_forward_path(void);
/* 0 disables the sm_90 cluster path (forces the portable one), nonzero (the default) re-enables it. */
void ak_set_cluster_enabled(int enabled);
/* Nonzero: the cluster forward copies its slice with cp.async and the cluster forward and scale kernels walk
 * (row, element) loops (common.cuh g_row_loops); 0 (the default, or ATTN_KERNELS_CUDA_ROW_LOOPS unset at load):
 * the per-element loops. */
void ak_set_row_loops(int enabled);
int ak_row_loops(void);

/* Floats of `scratch` that ak_se_forward needs on the current device: N * R when the portable excitation's
 * working set (C + R floats) passes the opt-in shared memory per block (C ~ 58k on H100/H200) and runs from
 * global memory, else 0. The device limit is queried once per device. */
int64_t ak_se_forward_scratch_floats(int64_t N, int64_t C, int64_t R, int has_w1);

/* y = x * gate(W2 act(W1 mean(x) + b1) + b2); writes pooled (N, C) means and s (N, C) gates.
 * scratch: ak_se_forward_scratch_floats(N, C, R, w1 != NULL) floats (NULL when that is 0). */
int ak_se_forward(ak_dtype dt, int layout, ak_view x, ak_view y, int64_t N, int64_t C, int64_t HW,
                  const ak_se_params* p, float* pooled, float* s, float* scratch, void* stream);

/* grad_x = gy * s + dp / HW and the parameter gradients (deterministic; any of gw1/gb1/gb2 may be NULL
 * when absent). scratch: ds, dz, dp (N, C each); h, da (N, R each). */
int ak_se_backward(ak_dtype dt, int layout, ak_view gy, ak_view x, ak_view gx, int64_t N, int64_t C, int64_t HW,
                   const ak_se_params* p, const float* pooled, const float* s, float* ds, float* dz, float* dp,
                   float* h, float* da, float* gw1, float* gb1, float* gw2, float* gb2, void* stream);

/* y = x * sigmoid(conv1d_k(mean(x))) across channels (zero padding, or circular). */
int ak_eca_forward(ak_dtype dt, int layout, ak_view x, ak_view y, int64_t N, int64_t C, int64_t HW,
                   const float* taps, int64_t k, int circular, float* pooled, float* s, void* stream);

/* scratch: ds, dz, dp (N, C each), dtap_partial (N, k); gtaps (k,). */
int ak_eca_backward(ak_dtype dt, int layout, ak_view gy, ak_view x, ak_view gx, int64_t N, int64_t C, int64_t HW,
                    const float* taps, int64_t k, int circular, const float* pooled, const float* s, float* ds,
                    float* dz, float* dp, float* dtap_partial, float* gtaps, void* stream);

#ifdef __cplusplus
}
#endif
