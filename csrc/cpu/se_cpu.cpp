// Squeeze-and-excitation on the CPU: forward and backward, one pass per sample (gate_driver.h).
//
//   pooled = mean_hw(x)                       (N, C)
//   h      = act(W1 pooled + b1)              (N, R)   [effective SE (w1 absent): h = pooled]
//   s      = gate(W2 h + b2)                  (N, C)
//   y      = x * s
// Backward (grad_y = gy):
//   ds = sum_hw gy * x;  dz = ds * gate'(z);  dh = W2^T dz (streamed rows of W2, no transposed copy);  da = dh * act'(pre);  dp = W1^T da
//   grad_x = gy * s + dp / HW;  grad_W2 = dz^T h;  grad_b2 = sum_n dz;  grad_W1 = da^T pooled; grad_b1 = sum_n da
// se_residual (the SE-ResNet block tail): y = out_act(x * s + shortcut); its backward runs the above with
// gy' = gy * out_act'(x * s + shortcut) in place of gy and returns grad_shortcut = gy' (gate_driver.h epilogues).
// The hidden layer is recomputed from pooled in the backward. Parameter gradients are batch sums, each
// output summed over the samples in order by one task (small_gemm.h): independent of the thread count.
// Bytes: forward reads x once from memory (+ once from cache) and writes y; backward reads gy and x,
// then gy again (from cache on the per-sample schedule), and writes grad_x. se_residual: the forward also
// reads the shortcut once; the backward reads gy, x and the shortcut twice (the second time from cache on
// the per-sample schedule; identity out_act: gy only) and writes grad_x and grad_shortcut.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cmath>

#include "../glue.h"
#include "../ops.h"
#include "gate_driver.h"
#include "small_gemm.h"

namespace attn_kernels {
namespace {

using cpu::const_view;
using cpu::mutable_view;
using cpu::View;

template <typename A>
inline A gate_fwd(A z, int64_t gate) {
  if (gate == kSigmoid) return A(1) / (A(1) + std::exp(-z));
  return z <= A(-3) ? A(0) : (z >= A(3) ? A(1) : z / A(6) + A(0.5));
}

template <typename A>
struct SEParams {
  const A* w1 = nullptr;   // (R, C) or null (effective SE)
  const A* b1 = nullptr;   // (R,) or null
  const A* w2 = nullptr;   // (C, K), K = R (or C for effective SE)
  const A* b2 = nullptr;   // (C,) or null
  int64_t C = 0, R = 0, K = 0, act = 0, gate = 0;
  at::Tensor tw2, tb2;  // W2 and b2 as tensors (for the GEMM path of se_logits)
  bool gemm_ok = false;  // forward only: the backward stays on the fixed-order tiles (bitwise reproducible)
};

// The FCs run on small_gemm.h's register tiles (fixed summation order: bitwise reproducible whatever the
// thread count). One exception, forward only: z = W2 h + b2 with a short k = R and many rows, where ATen's
// GEMM (MKL) is faster (small_gemm.h) -- never inside a per-sample task (n1 - n0 == 1 there).
template <typename A>
bool use_gemm(const SEParams<A>& p, int64_t nn) {
  return p.gemm_ok && nn > std::max<int64_t>(8, p.K / 2) && nn * p.C * p.K >= (1 << 20) && !at::in_parallel_region();
}

// out (nn, cols) = in (nn, k) @ w^T + b, through at::addmm_out on views of the raw buffers.
template <typename A>
void gemm_rows(const A* in, int64_t nn, int64_t k, const at::Tensor& w, const at::Tensor& b, A* out, int64_t cols) {
  const auto opt = w.options();
  at::Tensor tin = at::from_blob(const_cast<A*>(in), {nn, k}, opt);
  at::Tensor tout = at::from_blob(out, {nn, cols}, opt);
  if (b.defined()) {
    at::addmm_out(tout, b, tin, w.t());
  } else {
    at::mm_out(tout, tin, w.t());
  }
}

// pre (N, R) = W1 pooled + b1 and h = act(pre), rows [n0, n1).
template <typename A>
void se_hidden(const SEParams<A>& p, const A* pooled, A* pre, A* h, int64_t n0, int64_t n1) {
  A* dst = (pre ? pre : h) + n0 * p.R;
  cpu::linear_rows<A>(pooled + n0 * p.C, n1 - n0, p.C, p.w1, p.b1, p.R, dst);
  for (int64_t i = 0; i < (n1 - n0) * p.R; ++i) h[n0 * p.R + i] = cpu::act_scalar(dst[i], p.act);
}

// z (N, C) = W2 hid + b2, rows [n0, n1).
template <typename A>
void se_logits(const SEParams<A>& p, const A* hid, A* z, int64_t n0, int64_t n1) {
  if (use_gemm(p, n1 - n0)) {
    gemm_rows<A>(hid + n0 * p.K, n1 - n0, p.K, p.tw2, p.tb2, z + n0 * p.C, p.C);
  } else {
    cpu::linear_rows<A>(hid + n0 * p.K, n1 - n0, p.K, p.w2, p.b2, p.C, z + n0 * p.C);
  }
}

template <typename A>
void se_excite(const SEParams<A>& p, const A* pooled, A* h, A* s, int64_t n0, int64_t n1) {
  const A* hid = pooled;
  if (p.w1) {
    se_hidden(p, pooled, static_cast<A*>(nullptr), h, n0, n1);
    hid = h;
  }
  se_logits(p, hid, s, n0, n1);  // logits into s, then the gate in place
  A* z = s + n0 * p.C;
  if (p.gate == kSigmoid) {
    // Row by row: which elements take the vector exp and which the scalar tail must not depend on how
    // many samples one call covers (one per task, or all of them on the phased schedule).
    for (int64_t n = n0; n < n1; ++n) cpu::sigmoid_inplace<A>(s + n * p.C, p.C);
  } else {
    for (int64_t i = 0; i < (n1 - n0) * p.C; ++i) z[i] = gate_fwd(z[i], p.gate);
  }
}

// ds rows [n0, n1) -> dp rows (gradient w.r.t. pooled); keeps dz (N, C), da (N, R), pre and h (N, R).
template <typename A>
void se_excite_bwd(const SEParams<A>& p, const A* pooled, const A* s, const A* ds, A* dp, A* dz, A* pre, A* h,
                   A* da, int64_t n0, int64_t n1) {
  const A* hid = pooled;
  if (p.w1) {
    se_hidden(p, pooled, pre, h, n0, n1);
    hid = h;
  }
  if (p.gate == kSigmoid) {
    for (int64_t i = n0 * p.C; i < n1 * p.C; ++i) dz[i] = ds[i] * s[i] * (A(1) - s[i]);
  } else {
    se_logits(p, hid, dz, n0, n1);  // z, then dz in place
    for (int64_t i = n0 * p.C; i < n1 * p.C; ++i) {
      dz[i] = (dz[i] > A(-3) && dz[i] < A(3)) ? ds[i] / A(6) : A(0);
    }
  }
  if (p.w1) {  // da = (W2^T dz) * act'(pre)
    cpu::matmul_rows<A>(dz + n0 * p.C, n1 - n0, p.C, p.w2, p.R, da + n0 * p.R);
    for (int64_t i = n0 * p.R; i < n1 * p.R; ++i) da[i] *= cpu::act_grad_scalar(pre[i], p.act);
    cpu::matmul_rows<A>(da + n0 * p.R, n1 - n0, p.R, p.w1, p.C, dp + n0 * p.C);  // dp = W1^T da
  } else {
    cpu::matmul_rows<A>(dz + n0 * p.C, n1 - n0, p.C, p.w2, p.C, dp + n0 * p.C);  // dp = W2^T dz (effective SE)
  }
}

// g (rows, cols) = sum_n a[n, row] * b[n, :cols] (small_gemm.h);  gb[row] = sum_n a[n, row]. Fixed order.
template <typename A>
void outer_sum(const A* a, const A* b, int64_t nb, int64_t rows, int64_t cols, A* g, A* gb) {
  cpu::outer_rows<A>(a, nb, rows, b, cols, g);
  if (!gb) return;
  std::fill(gb, gb + rows, A(0));
  for (int64_t n = 0; n < nb; ++n) {
    for (int64_t r = 0; r < rows; ++r) gb[r] += a[n * rows + r];
  }
}

// One sample per task (the sample stays in cache from pooling to scaling) pays off while the FC
// weights, re-read by every task, weigh well under a sample (< 1/4), or no more than a sample when sample and
// weights fit the core's L2 together (then the scale pass reads x from L2 and the weights come from L2 / L3:
// measured on the 2-core Xeon VM, 2 MB L2, SE 16x1024x14x14 fp32 (800 KB sample, 512 KB weights), interleaved
// medians: forward 936 vs 1091 us, backward 1248 vs 1428 us; the AMD EPYC VM's 1 MB L2 keeps the phased
// schedule there). Otherwise (e.g. 2048x7x7 with R = 128: 2 MB of weights) the phased schedule runs one batched
// excitation that reads them once.
// elem: bytes of an x element; weight_elem: of a weight as the excitation reads it (the accumulation type).
bool per_sample_ok(int64_t c, int64_t r, bool has_w1, int64_t hw, size_t elem, size_t weight_elem) {
  static const double l2 = static_cast<double>(cpu::cache_bytes(2, int64_t(1) << 20, /*per_cpu=*/true));
  const double weights = static_cast<double>(c) * r * (has_w1 ? 2 : 1) * weight_elem;
  const double sample = static_cast<double>(c) * hw * elem;
  return 4 * weights <= sample || (weights <= sample && sample + weights <= l2);
}

}  // namespace

namespace {

// SE forward; with a shortcut (se_residual) y = out_act(x * s + shortcut).
T3 se_forward(const char* op, const Tensor& x, const Tensor* shortcut, const OptTensor& w1, const OptTensor& b1,
              const Tensor& w2, const OptTensor& b2, int64_t act, int64_t gate, int64_t out_act) {
  check_se(x, w1, b1, w2, b2, act, gate);
  TORCH_CHECK_VALUE(x.device().is_cpu(), op, ": x must be a CPU tensor, got ", x.device());
  if (shortcut) check_residual(x, *shortcut, out_act, op);
  const int64_t nb = x.size(0), c = x.size(1), hw = spatial_numel(x);
  const bool has_w1 = w1 && w1->defined();
  const int64_t r = has_w1 ? w1->size(0) : c;
  const auto acc = acc_type(x);
  const auto opt = x.options().dtype(acc);
  auto [xf, layout] = flatten_input(x);
  auto [y, yf] = output_like(x, layout);
  Tensor pooled = alloc({nb, c}, opt), s = alloc({nb, c}, opt);
  if (nb == 0) return {y, pooled, s};
  const Flat rf = shortcut ? match_input(*shortcut, layout) : Flat{};
  Tensor w1a = has_w1 ? param_acc(*w1, acc) : Tensor();
  Tensor b1a = b1 && b1->defined() ? param_acc(*b1, acc) : Tensor();
  Tensor w2a = param_acc(w2, acc);
  Tensor b2a = b2 && b2->defined() ? param_acc(*b2, acc) : Tensor();
  Tensor h = has_w1 ? alloc({nb, r}, opt) : Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "se_fwd_cpu", [&] {
    using A = at::opmath_type<scalar_t>;
    SEParams<A> p;
    p.w1 = has_w1 ? w1a.const_data_ptr<A>() : nullptr;
    p.b1 = b1a.defined() ? b1a.const_data_ptr<A>() : nullptr;
    p.w2 = w2a.const_data_ptr<A>();
    p.b2 = b2a.defined() ? b2a.const_data_ptr<A>() : nullptr;
    p.C = c, p.R = r, p.K = r, p.act = act, p.gate = gate;
    p.tw2 = w2a, p.tb2 = b2a, p.gemm_ok = true;
    A* pp = pooled.mutable_data_ptr<A>();
    A* sp = s.mutable_data_ptr<A>();
    A* hp = has_w1 ? h.mutable_data_ptr<A>() : nullptr;
    const auto xv = const_view<scalar_t>(xf);
    const auto yv = mutable_view<scalar_t>(yf);
    const auto rv = const_view<scalar_t>(rf);
    cpu::with_forward_epilogue<scalar_t>(shortcut ? &rv : nullptr, out_act, [&](const auto& ep) {
      cpu::gate_forward<scalar_t>(
          xv, yv, layout, nb, c, hw, pp, sp, [&](int64_t n0, int64_t n1) { se_excite<A>(p, pp, hp, sp, n0, n1); },
          per_sample_ok(c, r, has_w1, hw, sizeof(scalar_t), sizeof(A)), ep);
    });
  });
  finish_output(y, yf);
  return {y, pooled, s};
}

// SE backward: (grad_x, grad_shortcut (undefined without a shortcut), grad_w1, grad_b1, grad_w2, grad_b2).
T6 se_backward(const char* op, const Tensor& grad_y, const Tensor& x, const Tensor* shortcut, const OptTensor& w1,
               const OptTensor& b1, const Tensor& w2, const OptTensor& b2, const Tensor& pooled_in,
               const Tensor& s_in, int64_t act, int64_t gate, int64_t out_act) {
  check_se(x, w1, b1, w2, b2, act, gate);
  TORCH_CHECK_VALUE(x.device().is_cpu(), op, ": x must be a CPU tensor, got ", x.device());
  if (shortcut) check_residual(x, *shortcut, out_act, op);
  check_bwd_inputs(grad_y, x, pooled_in, s_in, op);
  const int64_t nb = x.size(0), c = x.size(1), hw = spatial_numel(x);
  const bool has_w1 = w1 && w1->defined();
  const int64_t r = has_w1 ? w1->size(0) : c;
  const auto acc = acc_type(x);
  const auto opt = x.options().dtype(acc);
  Tensor pooled = pooled_in.to(acc).contiguous(), s = s_in.to(acc).contiguous();
  auto [xf, layout] = flatten_input(x);
  Flat gyf = match_input(grad_y, layout);
  auto [gx, gxf] = output_like(x, layout);
  Tensor gsc;
  Flat gscf{}, rf{};
  if (shortcut) {
    std::tie(gsc, gscf) = output_like(x, layout);
    if (out_act != kIdentity && nb > 0) rf = match_input(*shortcut, layout);  // identity: never read
  }
  Tensor w1a = has_w1 ? param_acc(*w1, acc) : Tensor();
  Tensor b1a = b1 && b1->defined() ? param_acc(*b1, acc) : Tensor();
  Tensor w2a = param_acc(w2, acc);
  Tensor b2a = b2 && b2->defined() ? param_acc(*b2, acc) : Tensor();
  Tensor gw2 = alloc({c, r}, opt), gb2 = alloc({c}, opt);
  Tensor gw1 = has_w1 ? alloc({r, c}, opt) : Tensor(), gb1 = has_w1 ? alloc({r}, opt) : Tensor();
  if (nb == 0) {
    for (Tensor* t : {&gw2, &gb2, &gw1, &gb1}) {
      if (t->defined()) t->zero_();
    }
  } else {
    Tensor ds = alloc({nb, c}, opt), dp = alloc({nb, c}, opt), dz = alloc({nb, c}, opt);
    Tensor pre = has_w1 ? alloc({nb, r}, opt) : Tensor(), h = has_w1 ? alloc({nb, r}, opt) : Tensor();
    Tensor da = has_w1 ? alloc({nb, r}, opt) : Tensor();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "se_bwd_cpu", [&] {
      using A = at::opmath_type<scalar_t>;
      SEParams<A> p;
      p.w1 = has_w1 ? w1a.const_data_ptr<A>() : nullptr;
      p.b1 = b1a.defined() ? b1a.const_data_ptr<A>() : nullptr;
      p.w2 = w2a.const_data_ptr<A>();
      p.b2 = b2a.defined() ? b2a.const_data_ptr<A>() : nullptr;
      p.C = c, p.R = r, p.K = r, p.act = act, p.gate = gate;
      p.tw2 = w2a, p.tb2 = b2a;
      const A* pp = pooled.const_data_ptr<A>();
      const A* sp = s.const_data_ptr<A>();
      A* dsp = ds.mutable_data_ptr<A>();
      A* dpp = dp.mutable_data_ptr<A>();
      A* dzp = dz.mutable_data_ptr<A>();
      A* prep = has_w1 ? pre.mutable_data_ptr<A>() : nullptr;
      A* hp = has_w1 ? h.mutable_data_ptr<A>() : nullptr;
      A* dap = has_w1 ? da.mutable_data_ptr<A>() : nullptr;
      const auto gyv = const_view<scalar_t>(gyf), xv = const_view<scalar_t>(xf), rv = const_view<scalar_t>(rf);
      const auto gxv = mutable_view<scalar_t>(gxf), gscv = mutable_view<scalar_t>(gscf);
      cpu::with_backward_epilogue<scalar_t>(xv, shortcut ? &rv : nullptr, gscv, sp, c, out_act, [&](const auto& ep) {
        cpu::gate_backward<scalar_t>(
            gyv, xv, gxv, layout, nb, c, hw, sp, dsp, dpp,
            [&](int64_t n0, int64_t n1) { se_excite_bwd<A>(p, pp, sp, dsp, dpp, dzp, prep, hp, dap, n0, n1); },
            per_sample_ok(c, r, has_w1, hw, sizeof(scalar_t), sizeof(A)), ep);
      });
      outer_sum<A>(dzp, has_w1 ? hp : pp, nb, c, r, gw2.mutable_data_ptr<A>(), gb2.mutable_data_ptr<A>());
      if (has_w1) outer_sum<A>(dap, pp, nb, r, c, gw1.mutable_data_ptr<A>(), gb1.mutable_data_ptr<A>());
    });
  }
  finish_output(gx, gxf);
  if (shortcut) finish_output(gsc, gscf);
  return {gx, gsc, has_w1 ? gw1.to(w1->scalar_type()) : x.new_empty({0}, opt),
          b1 && b1->defined() ? gb1.to(b1->scalar_type()) : x.new_empty({0}, opt), gw2.to(w2.scalar_type()),
          b2 && b2->defined() ? gb2.to(b2->scalar_type()) : x.new_empty({0}, opt)};
}

}  // namespace

T3 se_fwd_cpu(const Tensor& x, const OptTensor& w1, const OptTensor& b1, const Tensor& w2, const OptTensor& b2,
              int64_t act, int64_t gate) {
  return se_forward("se_fwd_cpu", x, nullptr, w1, b1, w2, b2, act, gate, kIdentity);
}

T5 se_bwd_cpu(const Tensor& grad_y, const Tensor& x, const OptTensor& w1, const OptTensor& b1, const Tensor& w2,
              const OptTensor& b2, const Tensor& pooled, const Tensor& s, int64_t act, int64_t gate) {
  auto [gx, gsc, gw1, gb1, gw2, gb2] = se_backward("se_bwd", grad_y, x, nullptr, w1, b1, w2, b2, pooled, s, act, gate,
                                                   kIdentity);
  return {gx, gw1, gb1, gw2, gb2};
}

T3 se_residual_fwd_cpu(const Tensor& x, const Tensor& shortcut, const OptTensor& w1, const OptTensor& b1,
                       const Tensor& w2, const OptTensor& b2, int64_t act, int64_t gate, int64_t out_act) {
  return se_forward("se_residual_fwd_cpu", x, &shortcut, w1, b1, w2, b2, act, gate, out_act);
}

T6 se_residual_bwd_cpu(const Tensor& grad_y, const Tensor& x, const Tensor& shortcut, const OptTensor& w1,
                       const OptTensor& b1, const Tensor& w2, const OptTensor& b2, const Tensor& pooled,
                       const Tensor& s, int64_t act, int64_t gate, int64_t out_act) {
  return se_backward("se_residual_bwd", grad_y, x, &shortcut, w1, b1, w2, b2, pooled, s, act, gate, out_act);
}

}  // namespace attn_kernels
