// Declarations of the per-device implementations registered in ops.cpp.
//
// Schemas (namespace attn_kernels_ext; act: 0 relu, 1 silu, 2 gelu, 4 hardswish; gate: 0 sigmoid, 1 hardsigmoid):
//   se_fwd(x, w1?, b1?, w2, b2?, act, gate) -> (y, pooled, s)
//   se_bwd(grad_y, x, w1?, b1?, w2, b2?, pooled, s, act, gate) -> (grad_x, grad_w1, grad_b1, grad_w2, grad_b2)
//   eca_fwd(x, weight, circular) -> (y, pooled, s)
//   eca_bwd(grad_y, x, weight, pooled, s, circular) -> (grad_x, grad_weight)
//   se_residual_fwd(x, shortcut, w1?, b1?, w2, b2?, act, gate, out_act) -> (y, pooled, s)
//   se_residual_bwd(grad_y, x, shortcut, w1?, b1?, w2, b2?, pooled, s, act, gate, out_act)
//       -> (grad_x, grad_shortcut, grad_w1, grad_b1, grad_w2, grad_b2)
//   eca_residual_fwd(x, shortcut, weight, circular, out_act) -> (y, pooled, s)
//   eca_residual_bwd(grad_y, x, shortcut, weight, pooled, s, circular, out_act) -> (grad_x, grad_shortcut, grad_weight)
// The residual ops are the block tail y = out_act(x * s + shortcut) (out_act: 0 relu, 1 silu, 2 gelu,
// 3 identity); shortcut has x's shape and dtype, any layout. CPU only (no CUDA implementation).
// pooled = mean_spatial(x) and s = the gate, both (N, C) in the accumulation dtype (float32; float64
// for float64 x), saved for the backward. The excitation's hidden layer is recomputed in the backward
// from pooled (O(N*C*R), negligible next to the map). Gradients come back in their input's dtype and
// shape; a gradient of an absent (None) parameter is an empty (0,) tensor, dropped by the Python glue.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace attn_kernels {

using Tensor = at::Tensor;
using OptTensor = std::optional<at::Tensor>;
using T3 = std::tuple<Tensor, Tensor, Tensor>;
using T5 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;
using T6 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

// kIdentity: out_act only; kHardswish: the SE hidden layer only (no residual tail uses it)
enum Act : int64_t { kRelu = 0, kSilu = 1, kGelu = 2, kIdentity = 3, kHardswish = 4 };
enum Gate : int64_t { kSigmoid = 0, kHardSigmoid = 1 };

// Shape / dtype checks shared by the CPU and CUDA implementations.
void check_se(const Tensor& x, const OptTensor& w1, const OptTensor& b1, const Tensor& w2, const OptTensor& b2,
              int64_t act, int64_t gate);
Tensor check_eca(const Tensor& x, const Tensor& weight);  // returns the (k,) taps view
void check_residual(const Tensor& x, const Tensor& shortcut, int64_t out_act, const char* op);
void check_bwd_inputs(const Tensor& grad_y, const Tensor& x, const Tensor& pooled, const Tensor& s, const char* op);

T3 se_fwd_cpu(const Tensor& x, const OptTensor& w1, const OptTensor& b1, const Tensor& w2, const OptTensor& b2,
              int64_t act, int64_t gate);
T5 se_bwd_cpu(const Tensor& grad_y, const Tensor& x, const OptTensor& w1, const OptTensor& b1, const Tensor& w2,
              const OptTensor& b2, const Tensor& pooled, const Tensor& s, int64_t act, int64_t gate);
T3 eca_fwd_cpu(const Tensor& x, const Tensor& weight, bool circular);
std::tuple<Tensor, Tensor> eca_bwd_cpu(const Tensor& grad_y, const Tensor& x, const Tensor& weight,
                                       const Tensor& pooled, const Tensor& s, bool circular);
T3 se_residual_fwd_cpu(const Tensor& x, const Tensor& shortcut, const OptTensor& w1, const OptTensor& b1,
                       const Tensor& w2, const OptTensor& b2, int64_t act, int64_t gate, int64_t out_act);
T6 se_residual_bwd_cpu(const Tensor& grad_y, const Tensor& x, const Tensor& shortcut, const OptTensor& w1,
                       const OptTensor& b1, const Tensor& w2, const OptTensor& b2, const Tensor& pooled,
                       const Tensor& s, int64_t act, int64_t gate, int64_t out_act);
T3 eca_residual_fwd_cpu(const Tensor& x, const Tensor& shortcut, const Tensor& weight, bool circular, int64_t out_act);
T3 eca_residual_bwd_cpu(const Tensor& grad_y, const Tensor& x, const Tensor& shortcut, const Tensor& weight,
                        const Tensor& pooled, const Tensor& s, bool circular, int64_t out_act);

#ifdef WITH_CUDA
T3 se_fwd_cuda(const Tensor& x, const OptTensor& w1, const OptTensor& b1, const Tensor& w2, const OptTensor& b2,
               int64_t act, int64_t gate);
T5 se_bwd_cuda(const Tensor& grad_y, const Tensor& x, const OptTensor& w1, const OptTensor& b1, const Tensor& w2,
               const OptTensor& b2, const Tensor& pooled, const Tensor& s, int64_t act, int64_t gate);
T3 eca_fwd_cuda(const Tensor& x, const Tensor& weight, bool circular);
std::tuple<Tensor, Tensor> eca_bwd_cuda(const Tensor& grad_y, const Tensor& x, const Tensor& weight,
                                        const Tensor& pooled, const Tensor& s, bool circular);
#endif

}  // namespace attn_kernels
