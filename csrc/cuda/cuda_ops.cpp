// Torch glue for the CUDA kernels: checks, layout, allocation, dtype, stream, registration.
// Compiled by the host compiler (only when the extension is built WITH_CUDA); the kernels are in
// se_cuda.cu / eca_cuda.cu behind the C-style API of launchers.h.
// x: float32 / float16 / bfloat16 (float64 is CPU-only: a clear TypeError here). Weights are converted
// to float32 once per call; pooled / s / scratch are float32.
#ifdef WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include "../glue.h"
#include "../ops.h"
#include "launchers.h"

namespace attn_kernels {
namespace {

ak_dtype dtype_of(const Tensor& x, const char* op) {
  switch (x.scalar_type()) {
    case at::kFloat: return AK_F32;
    case at::kHalf: return AK_F16;
    case at::kBFloat16: return AK_BF16;
    default: break;
  }
  TORCH_CHECK_TYPE(false, op, ": the CUDA kernels take float32/float16/bfloat16 x, got ", x.scalar_type(),
                   " (float64 runs on the cpu backend)");
  return AK_F32;
}

ak_view view_of(const Flat& f) { return ak_view{f.t.data_ptr(), f.st[0], f.st[1], f.st[2]}; }

void check_cuda(int err, const char* op) {
  if (err == 0) return;
  // Reported here: clear it from the thread's last-error slot too (when it is the one pending there: the
  // launchers also return codes of their own, which never reach that slot), or it would surface again
  // at the next unrelated launch check (torch's) and be blamed on that kernel.
  if (cudaPeekAtLastError() == static_cast<cudaError_t>(err)) (void)cudaGetLastError();
  TORCH_CHECK(false, op, ": CUDA error ", err, ": ", cudaGetErrorString(static_cast<cudaError_t>(err)));
}

float* fptr(const Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }
const float* cfptr(const Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

Tensor opt_f32(const OptTensor& t) { return t && t->defined() ? t->to(at::kFloat).contiguous() : Tensor(); }

void* stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// The dispatcher picks this CUDA kernel when any tensor argument is on CUDA: x itself must be (the
// weights are checked against x.device() by check_se / check_eca).
void check_x_cuda(const Tensor& x, const char* op) {
  TORCH_CHECK_VALUE(x.is_cuda(), op, ": x is on ", x.device(), " but another argument is on CUDA");
}

}  // namespace

T3 se_fwd_cuda(const Tensor& x, const OptTensor& w1, const OptTensor& b1, const Tensor& w2, const OptTensor& b2,
               int64_t act, int64_t gate) {
  check_se(x, w1, b1, w2, b2, act, gate);
  check_x_cuda(x, "se_fwd_cuda");
  const ak_dtype dt = dtype_of(x, "se_fwd_cuda");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t nb = x.size(0), c = x.size(1), hw = spatial_numel(x);
  const bool has_w1 = w1 && w1->defined();
  const int64_t r = has_w1 ? w1->size(0) : c;
  const auto opt = x.options().dtype(at::kFloat);
  auto [xf, layout] = flatten_input(x);
  auto [y, yf] = output_like(x, layout);
  Tensor pooled = alloc({nb, c}, opt), s = alloc({nb, c}, opt);
  Tensor w1f = opt_f32(w1), b1f = opt_f32(b1), w2f = w2.to(at::kFloat).contiguous(), b2f = opt_f32(b2);
  // Global-memory hidden layer, only when C + R floats pass the device's shared memory (very large C).
  const int64_t scratch_floats = ak_se_forward_scratch_floats(nb, c, r, has_w1 ? 1 : 0);
  Tensor scratch = scratch_floats > 0 ? alloc({scratch_floats}, opt) : Tensor();
  const ak_se_params p{cfptr(w1f), cfptr(b1f), cfptr(w2f), cfptr(b2f), c, r, (int)act, (int)gate};
  check_cuda(ak_se_forward(dt, (int)layout, view_of(xf), view_of(yf), nb, c, hw, &p, fptr(pooled), fptr(s),
                           fptr(scratch), stream()),
             "se_fwd_cuda");
  finish_output(y, yf);
  return {y, pooled, s};
}

T5 se_bwd_cuda(const Tensor& grad_y, const Tensor& x, const OptTensor& w1, const OptTensor& b1, const Tensor& w2,
               const OptTensor& b2, const Tensor& pooled_in, const Tensor& s_in, int64_t act, int64_t gate) {
  check_se(x, w1, b1, w2, b2, act, gate);
  check_x_cuda(x, "se_bwd_cuda");
  const ak_dtype dt = dtype_of(x, "se_bwd_cuda");
  check_bwd_inputs(grad_y, x, pooled_in, s_in, "se_bwd");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t nb = x.size(0), c = x.size(1), hw = spatial_numel(x);
  const bool has_w1 = w1 && w1->defined();
  const int64_t r = has_w1 ? w1->size(0) : c;
  const auto opt = x.options().dtype(at::kFloat);
  Tensor pooled = pooled_in.to(at::kFloat).contiguous(), s = s_in.to(at::kFloat).contiguous();
  auto [xf, layout] = flatten_input(x);
  Flat gyf = match_input(grad_y, layout);
  auto [gx, gxf] = output_like(x, layout);
  Tensor w1f = opt_f32(w1), b1f = opt_f32(b1), w2f = w2.to(at::kFloat).contiguous(), b2f = opt_f32(b2);
  Tensor ds = alloc({nb, c}, opt), dz = alloc({nb, c}, opt), dp = alloc({nb, c}, opt);
  Tensor h = alloc({nb, r}, opt), da = alloc({nb, r}, opt);
  Tensor gw2 = alloc({c, r}, opt), gb2 = alloc({c}, opt);
  Tensor gw1 = has_w1 ? alloc({r, c}, opt) : Tensor(), gb1 = has_w1 ? alloc({r}, opt) : Tensor();
  const ak_se_params p{cfptr(w1f), cfptr(b1f), cfptr(w2f), cfptr(b2f), c, r, (int)act, (int)gate};
  check_cuda(ak_se_backward(dt, (int)layout, view_of(gyf), view_of(xf), view_of(gxf), nb, c, hw, &p, cfptr(pooled),
                            cfptr(s), fptr(ds), fptr(dz), fptr(dp), fptr(h), fptr(da), fptr(gw1), fptr(gb1), fptr(gw2),
                            fptr(gb2), stream()),
             "se_bwd_cuda");
  finish_output(gx, gxf);
  return {gx, has_w1 ? gw1.to(w1->scalar_type()) : x.new_empty({0}, opt),
          b1 && b1->defined() ? gb1.to(b1->scalar_type()) : x.new_empty({0}, opt), gw2.to(w2.scalar_type()),
          b2 && b2->defined() ? gb2.to(b2->scalar_type()) : x.new_empty({0}, opt)};
}

T3 eca_fwd_cuda(const Tensor& x, const Tensor& weight, bool circular) {
  Tensor taps_in = check_eca(x, weight);
  check_x_cuda(x, "eca_fwd_cuda");
  const ak_dtype dt = dtype_of(x, "eca_fwd_cuda");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t nb = x.size(0), c = x.size(1), hw = spatial_numel(x), k = taps_in.size(0);
  const auto opt = x.options().dtype(at::kFloat);
  auto [xf, layout] = flatten_input(x);
  auto [y, yf] = output_like(x, layout);
  Tensor pooled = alloc({nb, c}, opt), s = alloc({nb, c}, opt);
  Tensor taps = taps_in.to(at::kFloat).contiguous();
  check_cuda(ak_eca_forward(dt, (int)layout, view_of(xf), view_of(yf), nb, c, hw, cfptr(taps), k, circular ? 1 : 0,
                            fptr(pooled), fptr(s), stream()),
             "eca_fwd_cuda");
  finish_output(y, yf);
  return {y, pooled, s};
}

std::tuple<Tensor, Tensor> eca_bwd_cuda(const Tensor& grad_y, const Tensor& x, const Tensor& weight,
                                        const Tensor& pooled_in, const Tensor& s_in, bool circular) {
  Tensor taps_in = check_eca(x, weight);
  check_x_cuda(x, "eca_bwd_cuda");
  const ak_dtype dt = dtype_of(x, "eca_bwd_cuda");
  check_bwd_inputs(grad_y, x, pooled_in, s_in, "eca_bwd");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t nb = x.size(0), c = x.size(1), hw = spatial_numel(x), k = taps_in.size(0);
  const auto opt = x.options().dtype(at::kFloat);
  Tensor pooled = pooled_in.to(at::kFloat).contiguous(), s = s_in.to(at::kFloat).contiguous();
  auto [xf, layout] = flatten_input(x);
  Flat gyf = match_input(grad_y, layout);
  auto [gx, gxf] = output_like(x, layout);
  Tensor taps = taps_in.to(at::kFloat).contiguous();
  Tensor ds = alloc({nb, c}, opt), dz = alloc({nb, c}, opt), dp = alloc({nb, c}, opt);
  Tensor part = alloc({nb, k}, opt), gt = alloc({k}, opt);
  check_cuda(ak_eca_backward(dt, (int)layout, view_of(gyf), view_of(xf), view_of(gxf), nb, c, hw, cfptr(taps), k,
                             circular ? 1 : 0, cfptr(pooled), cfptr(s), fptr(ds), fptr(dz), fptr(dp), fptr(part),
                             fptr(gt), stream()),
             "eca_bwd_cuda");
  finish_output(gx, gxf);
  return {gx, gt.to(weight.scalar_type()).reshape(weight.sizes())};
}

}  // namespace attn_kernels

TORCH_LIBRARY_IMPL(attn_kernels_ext, CUDA, m) {
  m.impl("se_fwd", &attn_kernels::se_fwd_cuda);
  m.impl("se_bwd", &attn_kernels::se_bwd_cuda);
  m.impl("eca_fwd", &attn_kernels::eca_fwd_cuda);
  m.impl("eca_bwd", &attn_kernels::eca_bwd_cuda);
}
#endif  // WITH_CUDA
