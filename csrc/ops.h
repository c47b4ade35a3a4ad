// Declarations of the per-device implementations registered in ops.cpp.
//
// Schemas (namespace attn_kernels_ext; act: 0 relu, 1 silu, 2 gelu; gate: 0 sigmoid, 1 hardsigmoid):
//   se_fwd(x, w1?, b1?, w2, b2?, act, gate) -> (y, pooled, s)
//   se_bwd(grad_y, x, w1?, b1?, w2, b2?, pooled, s, act, gate) -> (grad_x, grad_w1, grad_b1, grad_w2, grad_b2)
//   eca_fwd(x, weight, circular) -> (y, pooled, s)
//   eca_bwd(grad_y, x, weight, pooled, s, circular) -> (grad_x, grad_weight)
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

enum Act : int64_t { kRelu = 0, kSilu = 1, kGelu = 2 };
enum Gate : int64_t { kSigmoid = 0, kHardSigmoid = 1 };

// Shape / dtype checks shared by the CPU and CUDA implementations.
void check_se(const Tensor& x, const OptTensor& w1, const OptTensor& b1, const Tensor& w2, const OptTensor& b2,
              int64_t act, int64_t gate);
Tensor check_eca(const Tensor& x, const Tensor& weight);  // returns the (k,) taps view

T3 se_fwd_cpu(const Tensor& x, const OptTensor& w1, const OptTensor& b1, const Tensor& w2, const OptTensor& b2,
              int64_t act, int64_t gate);
T5 se_bwd_cpu(const Tensor& grad_y, const Tensor& x, const OptTensor& w1, const OptTensor& b1, const Tensor& w2,
              const OptTensor& b2, const Tensor& pooled, const Tensor& s, int64_t act, int64_t gate);
T3 eca_fwd_cpu(const Tensor& x, const Tensor& weight, bool circular);
std::tuple<Tensor, Tensor> eca_bwd_cpu(const Tensor& grad_y, const Tensor& x, const Tensor& weight,
                                       const Tensor& pooled, const Tensor& s, bool circular);

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
